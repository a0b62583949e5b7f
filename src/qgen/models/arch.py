"""Per-architecture knowledge, declared once per family and nowhere else.

For each decoder block an adapter lists its *subsets*: linear layers that read the same input, with the op
whose output that input is (`prev_op`). Scale-migrating methods (AWQ, SmoothQuant) fold per-channel scales into
`prev_op` — a norm's weight or a linear's output rows — and the inverse into the subset's input columns. The
engine walks blocks and subsets in the declared order and never names a layer itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from qgen.errors import QgenError


@dataclass(frozen=True)
class Subset:
    """Linears (paths inside a block) that share one input, and the op that produces that input."""

    prev_op: str | None
    linears: tuple[str, ...]
    # False where prev_op's output is not the linears' input channel for channel (e.g. v_proj -> o_proj under
    # grouped-query attention, where heads repeat): the subset is quantized, but no scales are folded.
    foldable: bool = True

    @property
    def name(self) -> str:
        return "+".join(path.rsplit(".", 1)[-1] for path in self.linears)


@dataclass(frozen=True)
class Residual:
    """Where a pre-RMSNorm decoder's residual stream enters, is written and leaves, for rotations of it
    (qgen.quant.methods.rotate). The linears reading it are the subsets whose prev_op is a norm. Declared for the
    Llama-like families; not for Baichuan2 (its NormHead renormalises lm_head's rows, which absorbing the final
    norm changes) nor OPT (LayerNorm subtracts the mean, which a rotation does not commute with)."""

    embedding: str = "model.embed_tokens"  # model paths (the defaults: the Llama layout)
    final_norm: str = "model.norm"
    head: str = "lm_head"
    writers: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")  # block paths: outputs added to the stream
    value: str = "self_attn.v_proj"  # its output rows and attn_out's input columns are rotated head by head
    attn_out: str = "self_attn.o_proj"
    online: str = "mlp.down_proj"  # its input is rotated at run time


@dataclass(frozen=True)
class ArchAdapter:
    name: str
    model_types: tuple[str, ...]
    blocks: str  # path of the ModuleList of decoder blocks
    subsets: tuple[Subset, ...]
    residual: Residual | None = None  # None: no rotation of the residual stream for this family

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def subsets_for(self, model: nn.Module) -> tuple[Subset, ...]:
        """The subsets, with v->o marked unfoldable when grouped-query attention repeats KV heads."""
        cfg = model.config
        heads, kv_heads = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
        gqa = heads is not None and kv_heads is not None and kv_heads != heads
        out = []
        for s in self.subsets:
            if gqa and s.prev_op is not None and s.prev_op.endswith("v_proj"):
                s = Subset(s.prev_op, s.linears, foldable=False)
            out.append(s)
        return tuple(out)

    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for s in self.subsets for name in s.linears)


def _llama_like(name: str, model_types: tuple[str, ...]) -> ArchAdapter:
    return ArchAdapter(
        name=name,
        model_types=model_types,
        blocks="model.layers",
        subsets=(
            Subset("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            Subset("self_attn.v_proj", ("self_attn.o_proj",)),
            Subset("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
            Subset("mlp.up_proj", ("mlp.down_proj",)),
        ),
        residual=Residual(),
    )


ADAPTERS: tuple[ArchAdapter, ...] = (
    _llama_like("llama", ("llama", "mistral")),  # SmolLM2, Llama-2/3, Mistral
    _llama_like("qwen2", ("qwen2",)),
    ArchAdapter(  # Baichuan2: q, k and v fused into one W_pack; no scale can fold into o_proj's input
        name="baichuan",
        model_types=("baichuan",),
        blocks="model.layers",
        subsets=(
            Subset("input_layernorm", ("self_attn.W_pack",)),
            Subset(None, ("self_attn.o_proj",)),
            Subset("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
            Subset("mlp.up_proj", ("mlp.down_proj",)),
        ),
    ),
    ArchAdapter(  # OPT: LayerNorm with bias, ReLU MLP (fc1 -> relu -> fc2, positively homogeneous)
        name="opt",
        model_types=("opt",),
        blocks="model.decoder.layers",
        subsets=(
            Subset("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            Subset("self_attn.v_proj", ("self_attn.out_proj",)),
            Subset("final_layer_norm", ("fc1",)),
            Subset("fc1", ("fc2",)),
        ),
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str) -> ArchAdapter:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise QgenError(
        f"architecture {model_type!r} has no adapter; supported model types: {', '.join(supported_model_types())}"
    )
