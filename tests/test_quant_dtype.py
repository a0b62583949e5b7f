"""The engine's compute dtype: block forward passes in bf16 (or fp16) while Hessians, solvers and the stored weights
stay fp32, and `auto` choosing bf16 only where the hardware runs it fast.

Tolerance of bf16 passes against fp32 passes, from bf16's precision: bf16 keeps 8 significant bits, so every
value it stores is off by up to u = 2⁻⁸ relative. On tiny-llama's deepest layer (block 1's down_proj) an input
has been through about 24 such roundings (per block: the stored hidden state, norm, q/k/v, rotary, attention,
o_proj, residual, norm, gate/up, SiLU, product, down_proj), so the inputs a layer is fitted and measured on — and
with them the Hessian — move by at most 24·u relative; the layer error ‖ΔW x‖² is quadratic in x, so it moves by
at most 2 · 24 · u = 3/16 (18.75 %), the per-layer tolerance. The mean over the 14 layers averages the rounding
decisions GPTQ flips: it gets 4·u (1.56 %). Measured on this project's CPUs (AVX-512 with AVX512-BF16 kernels,
oneDNN limited to AVX2 with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2, 1 and 2 threads, model seeds
0–5, W3 and W4 g128): at most 5.4 % per layer and 0.36 % on the mean.
"""

from __future__ import annotations

import pytest
import torch

from qgen.errors import QgenError
from qgen.quant.engine import EngineSettings, compute_dtype, cpu_bf16_flags
from qgen.quant.grid import grid_of
from quant_util import calib_ids, layer_errors, quantized, tiny_llama

U_BF16 = 2.0**-8
LAYER_TOL = 2 * 24 * U_BF16
MEAN_TOL = 4 * U_BF16


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(seed=0)
    return model, calib_ids(model.config.vocab_size, n=16, seq=64)


@pytest.mark.parametrize("bits", [3, 4])
def test_bf16_passes_match_fp32_passes_and_beat_rtn(setup, bits):
    model, ids = setup
    rtn = layer_errors(model, quantized(model, [("rtn", {})], bits, 128, ids=ids)[0], ids)
    fp32_model, fp32_report = quantized(model, [("gptq", {})], bits, 128, ids=ids, dtype="float32")
    bf16_model, bf16_report = quantized(model, [("gptq", {})], bits, 128, ids=ids, dtype="bfloat16")
    assert fp32_report["engine"]["dtype"] == "float32" and bf16_report["engine"]["dtype"] == "bfloat16"
    fp32, bf16 = layer_errors(model, fp32_model, ids), layer_errors(model, bf16_model, ids)
    apart = {p: (bf16[p], fp32[p]) for p in fp32 if abs(bf16[p] / fp32[p] - 1) > LAYER_TOL}
    assert not apart, apart
    assert abs(sum(bf16.values()) / sum(fp32.values()) - 1) < MEAN_TOL
    for errors in (fp32, bf16):
        worse = {p: (e, rtn[p]) for p, e in errors.items() if e >= rtn[p]}
        assert not worse, worse
        assert sum(errors.values()) < 0.9 * sum(rtn.values())
    assert not all(torch.equal(a, b) for a, b in zip(fp32_model.parameters(), bf16_model.parameters()))


def test_bf16_passes_leave_fp32_weights_on_their_grid(setup):
    """The stored weights stay fp32 (not rounded through bf16) and lie exactly on the grid GPTQ recorded."""
    model, ids = setup
    q, _ = quantized(model, [("gptq", {})], 4, 64, ids=ids, dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in q.parameters())
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        lin = q.model.layers[1].get_submodule(name)
        params = grid_of(lin)
        w = lin.weight.data
        on_grid = params.dequantize(params.integers(w))
        assert torch.allclose(on_grid, w, rtol=0, atol=1e-6 * float(w.abs().max()))
        assert not torch.equal(w, w.bfloat16().float())  # values bf16 cannot hold: computed and kept in fp32


@pytest.mark.parametrize("method", [("awq", {}), ("spqr", {"damp_percent": 0.01})])
def test_other_methods_run_in_bf16_and_beat_rtn(setup, method):
    model, ids = setup
    rtn = layer_errors(model, quantized(model, [("rtn", {})], 3, 128, ids=ids)[0], ids)
    errors = layer_errors(model, quantized(model, [method], 3, 128, ids=ids, dtype="bfloat16")[0], ids)
    assert sum(errors.values()) < 0.9 * sum(rtn.values())


def test_auto_picks_bf16_only_on_fast_bf16_hardware(tmp_path):
    cpu = torch.device("cpu")
    for flags, expected in (("fpu avx2 amx_bf16 amx_tile", torch.bfloat16),
                            ("avx2 avx512f avx512_bf16", torch.bfloat16), ("fpu sse avx2 fma avx512f", torch.float32)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert compute_dtype("auto", cpu, info) == expected
    assert cpu_bf16_flags(tmp_path / "missing") == []
    assert compute_dtype("auto", cpu, tmp_path / "missing") == torch.float32
    assert compute_dtype("float16", cpu) == torch.float16 and compute_dtype("float32", cpu) == torch.float32
    with pytest.raises(QgenError, match="engine.dtype='fp8' is not allowed"):
        compute_dtype("fp8", cpu)


def test_dtype_comes_from_config_and_defaults_to_auto():
    from omegaconf import OmegaConf

    assert EngineSettings().dtype == "auto"
    assert EngineSettings.from_config(OmegaConf.create({"batch_size": 2})).dtype == "auto"
    assert EngineSettings.from_config(OmegaConf.create({"dtype": "bfloat16"})).dtype == "bfloat16"
