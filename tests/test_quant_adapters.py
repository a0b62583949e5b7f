"""Each declared architecture adapter against a tiny randomly initialised model of that family (no download)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from qgen.errors import QgenError
from qgen.models.arch import Subset, adapter_for
from qgen.quant.activations import ActFormat
from qgen.quant.engine import quantize_model
from qgen.quant.fold import fold_scales
from qgen.quant.grid import WeightFormat
from qgen.quant.methods import build
from quant_util import calib_ids, layer_errors, quantized

pytestmark = pytest.mark.numeric  # also run under every float path: make test-numerics

SMALL = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}


def _tiny(family: str):
    import transformers as tf

    torch.manual_seed(0)
    if family == "opt":
        cfg = tf.OPTConfig(vocab_size=300, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                           word_embed_proj_dim=64, max_position_embeddings=128)
        return tf.OPTForCausalLM(cfg).eval()
    config_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                             "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                             "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[family]
    return model_cls(config_cls(**SMALL, num_attention_heads=4, num_key_value_heads=2)).eval()


FAMILIES = ["llama", "mistral", "qwen2", "opt"]


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_declares_real_layers(family):
    model = _tiny(family)
    adapter = adapter_for(model.config.model_type)
    block = adapter.block_list(model)[0]
    declared = set()
    for subset in adapter.subsets_for(model):
        widths = {block.get_submodule(p).in_features for p in subset.linears}
        assert len(widths) == 1, subset  # the linears of a subset read the same input
        prev = block.get_submodule(subset.prev_op)
        out_width = prev.out_features if isinstance(prev, nn.Linear) else prev.weight.numel()
        if subset.foldable:
            assert out_width == widths.pop(), subset
        declared.update(subset.linears)
    linears = {n for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    assert declared == linears  # every linear of the block is quantized, none twice


@pytest.mark.parametrize("family", FAMILIES)
def test_folding_into_every_foldable_subset_keeps_the_function(family):
    model = _tiny(family)
    ids = calib_ids(300, n=2, seq=16)
    with torch.no_grad():
        ref = model(ids).logits
        adapter = adapter_for(model.config.model_type)
        g = torch.Generator().manual_seed(1)
        for block in adapter.block_list(model):
            for subset in adapter.subsets_for(model):
                if not subset.foldable:
                    continue
                linears = [block.get_submodule(p) for p in subset.linears]
                s = torch.rand(linears[0].in_features, generator=g) * 4 + 0.25
                fold_scales(block.get_submodule(subset.prev_op), linears, s)
        torch.testing.assert_close(model(ids).logits, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_inspected_modules_run_on_the_declared_block_arguments(family):
    """The module AWQ's search inspects, run on its input and the block keyword arguments the adapter declares for it,
    computes what it computes inside the block; only q·kᵀ's linears go unclipped."""
    model = _tiny(family)
    adapter = adapter_for(model.config.model_type)
    block = adapter.block_list(model)[0]
    inspected = [s for s in adapter.subsets_for(model) if s.inspect]
    assert {s.inspect.module for s in inspected} == {"self_attn", "mlp"} - ({"mlp"} if family == "opt" else set())
    assert {q.rsplit(".", 1)[-1] for s in adapter.subsets for q in s.qk} == {"q_proj", "k_proj"}
    seen = {}

    def grab_block(module, args, kwargs):
        seen["block"] = kwargs

    def grab(module, args, kwargs, out, path):
        seen[path] = (args[0] if args else kwargs["hidden_states"], out[0] if isinstance(out, tuple) else out)

    handles = [block.register_forward_pre_hook(grab_block, with_kwargs=True)]
    handles += [block.get_submodule(s.inspect.module).register_forward_hook(
        lambda m, a, k, o, p=s.inspect.module: grab(m, a, k, o, p), with_kwargs=True) for s in inspected]
    with torch.no_grad():
        model(calib_ids(300, n=2, seq=16), use_cache=False)
        for h in handles:
            h.remove()
        for s in inspected:
            x, out = seen[s.inspect.module]
            kwargs = {k: seen["block"][k] for k in s.inspect.kwargs if k in seen["block"]}
            mine = block.get_submodule(s.inspect.module)(x, **kwargs)
            torch.testing.assert_close(mine[0] if isinstance(mine, tuple) else mine, out, rtol=0, atol=0)


def test_a_subset_of_several_linears_names_the_module_reading_their_input():
    with pytest.raises(ValueError, match="declare the module that reads their input"):
        Subset("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj"))
    assert Subset("mlp.up_proj", ("mlp.down_proj",)).inspect is None  # one linear: AWQ inspects it


def test_grouped_query_attention_makes_v_to_o_unfoldable():
    model = _tiny("qwen2")  # 4 heads, 2 KV heads
    vo = [s for s in adapter_for("qwen2").subsets_for(model) if s.prev_op == "self_attn.v_proj"]
    assert vo and not vo[0].foldable


@pytest.mark.parametrize("family", FAMILIES)
def test_awq_gptq_and_spqr_run_on_every_family(family):
    model = _tiny(family)
    ids = calib_ids(300, n=4, seq=32)
    rtn = layer_errors(model, quantized(model, [("rtn", {})], bits=4, group_size=32)[0], ids)
    q, report = quantized(model, [("awq", {}), ("gptq", {})], bits=4, group_size=32, ids=ids)
    awq_gptq = layer_errors(model, q, ids)
    assert set(report["layers"]) == set(rtn)
    assert sum(awq_gptq.values()) < sum(rtn.values())
    q, _ = quantized(model, [("spqr", {})], bits=4, ids=ids)
    assert sum(layer_errors(model, q, ids).values()) < sum(rtn.values())


class _Baichuan(nn.Module):
    """The module tree of Baichuan2 (remote code, so no transformers class here): fused W_pack = [q; k; v]."""

    def __init__(self, hidden=64, inter=128, layers=2):
        super().__init__()
        self.config = SimpleNamespace(model_type="baichuan", num_attention_heads=4)

        def layer():
            blk = nn.Module()
            blk.input_layernorm = nn.LayerNorm(hidden, bias=False)
            blk.self_attn = nn.Module()
            blk.self_attn.W_pack = nn.Linear(hidden, 3 * hidden, bias=False)
            blk.self_attn.o_proj = nn.Linear(hidden, hidden, bias=False)
            blk.post_attention_layernorm = nn.LayerNorm(hidden, bias=False)
            blk.mlp = nn.Module()
            blk.mlp.gate_proj = nn.Linear(hidden, inter, bias=False)
            blk.mlp.up_proj = nn.Linear(hidden, inter, bias=False)
            blk.mlp.down_proj = nn.Linear(inter, hidden, bias=False)
            return blk

        self.model = nn.Module()
        self.model.layers = nn.ModuleList(layer() for _ in range(layers))


def test_baichuan_declaration_matches_its_module_tree():
    model = _Baichuan()
    adapter = adapter_for("baichuan")
    block = adapter.block_list(model)[0]
    for subset in adapter.subsets_for(model):
        for p in subset.linears:
            assert isinstance(block.get_submodule(p), nn.Linear)
        if subset.prev_op:
            prev = block.get_submodule(subset.prev_op)
            width = prev.out_features if isinstance(prev, nn.Linear) else prev.weight.numel()
            assert width == block.get_submodule(subset.linears[0]).in_features
    for subset in adapter.subsets_for(model):  # the modules AWQ inspects and the linears it does not clip
        if subset.inspect:
            assert block.get_submodule(subset.inspect.module) is not None
        assert set(subset.qk) <= set(subset.linears)
    assert [q for s in adapter.subsets for q in s.qk] == ["self_attn.W_pack"]
    fmt = WeightFormat(4, 32)
    report = quantize_model(model, adapter, [build("rtn", fmt, ActFormat(), {})], ActFormat(), None,
                            torch.device("cpu"))
    assert len(report["layers"]) == 2 * 5


def test_unknown_architecture_is_refused_with_the_supported_list():
    with pytest.raises(QgenError, match="supported model types: baichuan, llama, mistral, opt, qwen2"):
        adapter_for("gpt_neox")


def test_sliding_window_layers_quantize_only_with_windows_that_fit():
    """Qwen2 with sliding-window layers hands those layers another mask than block 0's, which the engine reuses.
    Within the window the masks agree: GPTQ gives the same weights as on the same model without sliding layers.
    Longer calibration windows change what those layers compute, and the job refuses them before quantizing."""
    import transformers as tf

    from qgen.quant.engine import check_uniform_attention

    def qwen(sliding: bool):
        torch.manual_seed(0)
        cfg = tf.Qwen2Config(**{**SMALL, "num_hidden_layers": 3}, num_attention_heads=4, num_key_value_heads=2,
                             use_sliding_window=sliding, sliding_window=16, max_window_layers=1)
        return tf.Qwen2ForCausalLM(cfg).eval()

    mixed, full = qwen(True), qwen(False)
    assert len(set(mixed.config.layer_types)) == 2 and len(set(full.config.layer_types)) == 1
    with torch.no_grad():
        long_ids = calib_ids(300, n=2, seq=32)
        assert not torch.allclose(mixed(long_ids).logits, full(long_ids).logits, atol=1e-4)  # the window matters
    ids = calib_ids(300, n=4, seq=16)
    check_uniform_attention(mixed, 16)
    q_mixed, _ = quantized(mixed, [("gptq", {})], bits=3, ids=ids)
    q_full, _ = quantized(full, [("gptq", {})], bits=3, ids=ids)
    for (name, a), b in zip(q_mixed.state_dict().items(), q_full.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(QgenError, match=r"calib.seq_len=32 is not allowed.*use calib.seq_len <= 16"):
        check_uniform_attention(mixed, 32)
    check_uniform_attention(full, 32)
