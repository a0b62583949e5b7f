"""Per-architecture knowledge, declared once per family and nowhere else.

For each decoder block an adapter lists its *subsets*: linear layers that read the same input, with the op
whose output that input is (`prev_op`). Scale-migrating methods (AWQ, SmoothQuant) fold per-channel scales into
`prev_op` — a norm's weight or a linear's output rows — and the inverse into the subset's input columns. The
engine walks blocks and subsets in the declared order and never names a layer itself.

AWQ also needs to know what a subset's scales are judged by: the module whose output its scale search compares
(`Subset.inspect`: the attention for q/k/v, the MLP for gate/up, as in llm-awq's `module2inspect`), with the block
keyword arguments that module needs to run; and which linears' outputs meet in q·kᵀ (`Subset.qk`), which it
does not clip.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from qgen.errors import QgenError


@dataclass(frozen=True)
class Inspect:
    """A module of the block (path) that reads a subset's input, and the names of the keyword arguments of the
    block it needs to run (attention mask, position embeddings, ...): they are passed on as the block got them."""

    module: str
    kwargs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Subset:
    """Linears (paths inside a block) that share one input, and the op that produces that input."""

    prev_op: str | None
    linears: tuple[str, ...]
    # False where prev_op's output is not the linears' input channel for channel: the subset is quantized, but no
    # scales are folded.
    foldable: bool = True
    # prev_op's output reaches the linears through the attention's key/value heads (v_proj -> o_proj): under
    # grouped-query attention each KV head is repeated for several query heads, so channels no longer line up and
    # the subset is not foldable on such a model.
    through_kv_heads: bool = False
    # The module whose output AWQ's scale search compares; None: the subset's only linear.
    inspect: Inspect | None = None
    # Linears whose outputs meet in q·kᵀ (AWQ does not clip them: their error is not an output error of their own).
    qk: tuple[str, ...] = ()

    def __post_init__(self):
        if self.inspect is None and len(self.linears) > 1:
            raise ValueError(f"subset {self.linears} has several linears: declare the module that reads their input")

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
            if gqa and s.through_kv_heads:
                s = replace(s, foldable=False)
            out.append(s)
        return tuple(out)

    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for s in self.subsets for name in s.linears)


def _llama_like(name: str, model_types: tuple[str, ...]) -> ArchAdapter:
    # the attention reads rotary tables (position_embeddings), the mask and position_ids as the block gets them
    attention = Inspect("self_attn", ("attention_mask", "position_ids", "position_embeddings"))
    return ArchAdapter(
        name=name,
        model_types=model_types,
        blocks="model.layers",
        subsets=(
            Subset("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), inspect=attention,
                   qk=("self_attn.q_proj", "self_attn.k_proj")),
            Subset("self_attn.v_proj", ("self_attn.o_proj",), through_kv_heads=True),
            Subset("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), inspect=Inspect("mlp")),
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
            # Baichuan2-7B's attention takes position_ids (rotary inside it); 13B's ALiBi comes in the mask
            Subset("input_layernorm", ("self_attn.W_pack",),
                   inspect=Inspect("self_attn", ("attention_mask", "position_ids")), qk=("self_attn.W_pack",)),
            Subset(None, ("self_attn.o_proj",)),
            Subset("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), inspect=Inspect("mlp")),
            Subset("mlp.up_proj", ("mlp.down_proj",)),
        ),
    ),
    ArchAdapter(  # OPT: LayerNorm with bias, ReLU MLP (fc1 -> relu -> fc2, positively homogeneous)
        name="opt",
        model_types=("opt",),
        blocks="model.decoder.layers",
        subsets=(
            Subset("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                   inspect=Inspect("self_attn", ("attention_mask", "position_ids")),
                   qk=("self_attn.q_proj", "self_attn.k_proj")),
            Subset("self_attn.v_proj", ("self_attn.out_proj",), through_kv_heads=True),
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
