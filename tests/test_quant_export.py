"""Export to compressed-tensors pack-quantized, reloaded by transformers, against the fake-quant model."""

from __future__ import annotations

import json

import pytest
import torch

from qgen.errors import QgenError
from qgen.quant.export import export_compressed_tensors
from quant_util import calib_ids, quantized, tiny_llama

pytestmark = pytest.mark.numeric  # also run under every float path: make test-numerics

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def wide_llama():
    """A tiny Llama whose widths (256, 512) are multiples of 128, so W4 g128 fits the format."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _reload(path, dequantize: bool):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    kwargs = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()


@pytest.mark.parametrize("steps,symmetric", [
    ([("rtn", {})], True), ([("gptq", {"desc_act": True, "static_groups": True})], True),
    ([("awq", {})], False), ([("gptq", {})], False)])
def test_export_reloads_and_matches_fake_quant(wide_llama, tmp_path, steps, symmetric):
    ids = calib_ids(300, n=8, seq=32)
    qmodel, _ = quantized(wide_llama, steps, bits=4, group_size=128, symmetric=symmetric, ids=ids)
    export_compressed_tensors(qmodel, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
    assert "model.layers.0.mlp.down_proj.weight" not in keys and packed.dtype == torch.int32
    assert packed.shape == (256, 512 * 4 // 32)  # really 4 bits per weight
    # transformers' default (compressed-module) route mis-sizes packed asymmetric zero points
    # (transformers 5.24 + compressed-tensors 0.20); its dequantize-at-load route reads them.
    reloaded = _reload(tmp_path, dequantize=not symmetric)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, qmodel(ids).logits, rtol=1e-4, atol=1e-4)


def test_export_refuses_a_short_last_group(tmp_path):
    qmodel, _ = quantized(tiny_llama(0), [("rtn", {})], bits=4, group_size=128)  # 192-wide layers
    with pytest.raises(QgenError, match="not a multiple of group size 128"):
        export_compressed_tensors(qmodel, tmp_path)
    assert not list(tmp_path.iterdir())


def test_export_refuses_scattered_act_order_groups(wide_llama, tmp_path):
    ids = calib_ids(300, n=8, seq=32)
    qmodel, _ = quantized(wide_llama, [("gptq", {"desc_act": True})], bits=4, group_size=128, ids=ids)
    with pytest.raises(QgenError, match="static_groups=true"):
        export_compressed_tensors(qmodel, tmp_path)


def test_export_refuses_a_model_without_grids(wide_llama, tmp_path):
    with pytest.raises(QgenError, match="nothing to export"):
        export_compressed_tensors(wide_llama, tmp_path)
