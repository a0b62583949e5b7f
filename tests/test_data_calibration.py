"""Calibration from registered datasets: `calib=<any dataset>` composes, mixtures follow their weights, and a
prepared calibration set loads fast."""

from __future__ import annotations

import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qgen import conf_store
from qgen.data import calib_configs, registry
from qgen.data.calibration import build_calibration
from qgen.models.tiny import byte_tokenizer


@pytest.fixture(scope="module")
def composed():
    conf_store.register()

    def run(*overrides):
        with initialize_config_dir(config_dir=str(calib_configs.CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    return run


def test_any_registered_dataset_is_a_calib_option(composed):
    default = composed()
    assert default.calib.dataset == "xsum"
    for name in ("squad", "mmlu_stem", "c4", "multiemo_de"):
        cfg = composed(f"calib={name}")
        assert cfg.calib.dataset == cfg.calib.name == name
        assert cfg.calib.n_samples == default.calib.n_samples and cfg.calib.seed == cfg.seed
    assert set(calib_configs.dataset_options()) | {"xsum"} >= set(registry.all_datasets())


def test_mixture_config_file(composed):
    cfg = composed("calib=mix_xsum_squad", "calib.n_samples=8", "calib.seq_len=64")
    assert list(cfg.calib.dataset) == ["xsum", "squad"] and list(cfg.calib.weights) == [3, 1]


@pytest.mark.asset
def test_mixture_takes_weighted_shares(composed):
    for name in ("xsum", "squad"):
        if not (registry.get(name).folder / "calib.jsonl").is_file():
            pytest.skip(f"{name} is not prepared; run `make assets`")
    cfg = composed("calib=mix_xsum_squad", "calib.n_samples=8", "calib.seq_len=64").calib
    calib = build_calibration(cfg, byte_tokenizer())
    assert tuple(calib.input_ids.shape) == (8, 64)
    assert [(s["dataset"], s["windows"]) for s in calib.info["sources"]] == [("xsum", 6), ("squad", 2)]
    again = build_calibration(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), byte_tokenizer())
    assert again.info["tokens_sha256"] == calib.info["tokens_sha256"]  # seeded: reproducible


@pytest.mark.asset
def test_prepared_calibration_set_loads_under_a_second():
    if not (registry.get("xsum").folder / "calib.jsonl").is_file():
        pytest.skip("xsum is not prepared; run `make assets`")
    start = time.perf_counter()
    rows = registry.load_split("xsum", "calib")
    texts = [registry.render(registry.get("xsum").calib_text, r) for r in rows]
    assert time.perf_counter() - start < 1.0 and len(texts) == 800


def test_command_line_calib_options_are_checked_in_one_line():
    from qgen.errors import QgenError
    from qgen.validate import check_overrides

    check_overrides(["-m", "calib=c4,wiki,squad"])  # a sweep over registered datasets
    with pytest.raises(QgenError, match=r"add -m .*calib.dataset=\[c4,wiki\]"):
        check_overrides(["calib=c4,wiki"])
    with pytest.raises(QgenError, match="unknown calib option 'c5'"):
        check_overrides(["-m", "calib=c4,c5"])
