"""The engine's true-sequential switch: with it off, one observation pass per block (fewer forward passes), the
block's first subset gets exactly the true-sequential result, and the methods still beat round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from qgen.errors import QgenError
from qgen.models.arch import adapter_for
from qgen.quant.activations import ActFormat
from qgen.quant.engine import EngineSettings, quantize_model
from qgen.quant.grid import WeightFormat
from qgen.quant.methods import build
from quant_util import CONF, calib_ids, layer_errors, quantized, tiny_llama

pytestmark = pytest.mark.numeric  # also run under every float path: make test-numerics

W3G128 = {"bits": 3, "group_size": 128}


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(seed=0)
    return model, calib_ids(model.config.vocab_size, n=16, seq=64)


def _block_calls(model, ids, steps, **engine) -> tuple[int, torch.nn.Module]:
    calls = []
    handle = model.model.layers[1].register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        q, _ = quantized(model, steps, ids=ids, **W3G128, **engine)
    finally:
        handle.remove()
    return len(calls), q


def test_one_observation_pass_per_block_without_true_sequential(setup):
    model, ids = setup
    n_seq, q_seq = _block_calls(model, ids, [("gptq", {})], true_sequential=True)
    n_one, q_one = _block_calls(model, ids, [("gptq", {})], true_sequential=False)
    batches = 2  # 16 samples, batches of 8
    assert n_seq == batches * (4 + 1)  # each of the 4 subsets observed, then the output pass
    assert n_one == batches * (1 + 1)
    block_seq, block_one = q_seq.model.layers[0], q_one.model.layers[0]
    for name in ("q_proj", "k_proj", "v_proj"):  # the first subset sees the same inputs either way
        assert torch.equal(getattr(block_seq.self_attn, name).weight, getattr(block_one.self_attn, name).weight)
    assert not torch.equal(block_seq.mlp.down_proj.weight, block_one.mlp.down_proj.weight)


@pytest.mark.parametrize("method", [("gptq", {}), ("spqr", {"damp_percent": 0.01}), ("awq", {})])
def test_methods_beat_rtn_without_true_sequential(setup, method):
    model, ids = setup
    rtn = layer_errors(model, quantized(model, [("rtn", {})], ids=ids, **W3G128)[0], ids)
    one = layer_errors(model, quantized(model, [method], ids=ids, true_sequential=False, **W3G128)[0], ids)
    assert sum(one.values()) < 0.9 * sum(rtn.values())
    if method[0] != "awq":  # AWQ is compared per subset in test_quant_methods; GPTQ-type per layer
        worse = {p: (e, rtn[p]) for p, e in one.items() if e > rtn[p]}
        assert not worse, worse


def test_engine_settings_come_from_the_engine_group_and_the_methods_preferences():
    from qgen import conf_store
    from qgen.job import build_methods

    def resolved(*overrides):
        cfg = conf_store.compose(list(overrides))
        return EngineSettings.from_config(cfg.engine, build_methods(cfg)[0])

    assert resolved("quantizer=smoothquant", "bits=w8a8") == EngineSettings(true_sequential=False)  # its preference
    assert resolved("quantizer=awq") == EngineSettings(batch_size=2)  # AWQ keeps search tokens: batches of 2
    assert resolved("quantizer=awq+gptq") == EngineSettings(batch_size=2, true_sequential=True)  # a combination
    assert resolved("quantizer=gptq") == EngineSettings()
    assert resolved("quantizer=awq", "engine.batch_size=8", "engine.feed=full_precision") == EngineSettings(
        batch_size=8, feed="full_precision")  # what the config says wins
    assert resolved("quantizer=smoothquant", "bits=w8a8", "engine.true_sequential=true").true_sequential


def test_method_defaults_are_declared_once_in_the_class():
    from qgen import conf_store
    from qgen.quant.methods import METHODS

    cfg = conf_store.compose(["quantizer=awq+gptq", "quantizer.methods.gptq.desc_act=true"])
    assert list(cfg.quantizer.methods) == ["awq", "gptq"]  # in the order applied
    for name in ("awq", "gptq"):
        defaults = {k: spec.default for k, spec in METHODS[name].settings.items()}
        assert dict(cfg.quantizer.methods[name]) == {**defaults, **({"desc_act": True} if name == "gptq" else {})}
    for yaml_file in (CONF / "quantizer").glob("*.yaml"):  # no yaml repeats a method's settings
        assert "damp_percent" not in yaml_file.read_text() and "n_grid" not in yaml_file.read_text(), yaml_file


def test_a_combination_needs_true_sequential(setup):
    model, ids = setup
    fmt, act = WeightFormat(3, 128), ActFormat()
    methods = [build("awq", fmt, act, {}), build("gptq", fmt, act, {})]
    with pytest.raises(QgenError, match="true_sequential=false needs a single method"):
        quantize_model(model, adapter_for("llama"), methods, act, ids, torch.device("cpu"),
                       EngineSettings(true_sequential=False))


@pytest.mark.parametrize("columns", [48, 192, 576, 1000])
def test_hessian_accumulated_in_upper_bands_equals_the_full_product(columns):
    from qgen.quant.hessian import HessianAccumulator

    g = torch.Generator().manual_seed(columns)
    batches = [torch.randn(n, columns, generator=g, dtype=torch.float64).float() for n in (300, 17, 512)]
    acc = HessianAccumulator(columns, torch.device("cpu"))
    for x in batches:
        acc.add(x)
    x = torch.cat(batches).double()
    expected = 2 * x.t() @ x / x.shape[0]
    assert torch.equal(acc.H, acc.H.t())
    assert torch.allclose(acc.H.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.diagonal().mean()))
