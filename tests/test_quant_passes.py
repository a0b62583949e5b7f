"""Fewer forward passes without changing results: with feed=full_precision and true_sequential off, the one
observation pass runs the original block to its end and its outputs feed the next block, so each block is run once
per batch instead of twice — and the quantized weights are bit-identical to the two-pass way (same computation)."""

from __future__ import annotations

import pytest
import torch

from qgen.quant import engine
from quant_util import calib_ids, quantized, tiny_llama


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(seed=0)
    return model, calib_ids(model.config.vocab_size, n=16, seq=64)


def _run(model, ids, steps, fuse: bool, monkeypatch, **engine_settings):
    monkeypatch.setattr(engine, "FUSE_FULL_PRECISION_PASS", fuse)
    calls = []
    handle = model.model.layers[1].register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        q, report = quantized(model, steps, 3, 128, ids=ids, **engine_settings)
    finally:
        handle.remove()
    return q, report, len(calls)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("steps", [[("gptq", {})], [("awq", {})], [("spqr", {})]])
def test_full_precision_feed_observes_in_its_output_pass(setup, monkeypatch, steps, dtype):
    model, ids = setup
    settings = {"feed": "full_precision", "true_sequential": False, "dtype": dtype}
    two, two_report, two_calls = _run(model, ids, steps, False, monkeypatch, **settings)
    one, one_report, one_calls = _run(model, ids, steps, True, monkeypatch, **settings)
    batches = 2  # 16 samples in batches of 8
    assert (two_calls, one_calls) == (2 * batches, batches)
    assert (two_report["engine"]["passes"], one_report["engine"]["passes"]) == (4, 2)  # 2 blocks
    for (name, a), (_, b) in zip(two.named_parameters(), one.named_parameters()):
        assert torch.equal(a, b), name
    assert two_report["layers"] == one_report["layers"]


def test_other_modes_keep_their_passes(setup, monkeypatch):
    model, ids = setup
    for settings, passes in (({"feed": "quantized", "true_sequential": False}, 2 * 2),
                             ({"feed": "quantized", "true_sequential": True}, 2 * (4 + 1)),
                             ({"feed": "full_precision", "true_sequential": True}, 2 * (1 + 4))):
        _, report, _ = _run(model, ids, [("gptq", {})], True, monkeypatch, **settings)
        assert report["engine"]["passes"] == passes, settings
