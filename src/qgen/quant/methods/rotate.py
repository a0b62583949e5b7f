"""QuaRot (Ashkboos et al., 2024): rotate the residual stream so that no channel stands out, then quantize.

Calibration-free. Once, on the whole model, before the engine walks the blocks (`transform_model`):
1. every RMSNorm's weight is absorbed into the linears it feeds (W ← W·diag(g), g ← 1), after which the norm
   commutes with any rotation (‖x·Q‖ = ‖x‖);
2. the residual stream is rotated by one seeded randomized Hadamard matrix Q of the hidden width: the embedding's
   rows E ← E·Q, the readers W ← W·Q (q, k, v, gate, up; lm_head after absorbing the final norm), the writers
   W ← Qᵀ·W and their bias b ← b·Q (o_proj, down_proj). Tied input and output embeddings are untied first (the
   output side also takes the final norm), so the model then holds both;
3. v_proj's output rows and o_proj's input columns, head by head, by one Hadamard of the head width (fused in the
   weights, nothing at run time; the same one for every head, so grouped-query attention stays exact);
4. down_proj's input by a Hadamard R of the intermediate width: W ← W·R in the weights and x ↦ x·R at run time, a
   forward pre-hook on down_proj (qgen.quant.rotation.attach_online) — QuaRot's online Hadamard.
The model computes the same function (up to float rounding: the folding runs in float64), and the method that
follows (rtn, gptq, ...) quantizes weights whose input columns no longer carry outliers. Per subset it does
nothing. The widths: a power of two gets a Walsh–Hadamard matrix; another width a Hadamard of its power-of-two
part times a Paley Hadamard, or where none is built, times a small random orthogonal matrix (qgen.quant.rotation;
the quant report names each). The per-architecture facts (embedding, final norm, head, writers, the online
linear) are the adapter's `residual` declaration (qgen.models.arch).
"""

from __future__ import annotations

import torch

from qgen.errors import QgenError
from qgen.models.arch import ADAPTERS
from qgen.models.load import untie
from qgen.quant.fold import is_norm
from qgen.quant.methods.base import QuantMethod, SubsetContext, register
from qgen.quant.rotation import CHUNK, attach_online, random_hadamard
from qgen.spec import Int


@register
class Rotate(QuantMethod):
    name = "rotate"
    transforms_model = True
    settings = {"seed": Int(0, 2**32 - 1, default=0, doc="seed of the rotations' random signs (and random cores)")}

    @classmethod
    def export_refusal(cls, settings: dict, final: bool) -> str | None:
        return "the online Hadamard rotation of down_proj's input is not part of the format"

    def check_model(self, model, adapter) -> None:
        if adapter.residual is None:
            rotatable = ", ".join(a.name for a in ADAPTERS if a.residual is not None)
            raise QgenError(f"quantizer method rotate needs the residual stream's layout, which the {adapter.name} "
                            f"adapter does not declare; rotatable families: {rotatable}")

    @torch.no_grad()
    def transform_model(self, model, adapter, device: torch.device) -> dict:
        self.check_model(model, adapter)
        layout, blocks = adapter.residual, adapter.block_list(model)
        embedding, head = model.get_submodule(layout.embedding), model.get_submodule(layout.head)
        heads = model.config.num_attention_heads
        head_dim = blocks[0].get_submodule(layout.attn_out).in_features // heads
        g = torch.Generator().manual_seed(self.seed)
        q = random_hadamard(embedding.weight.shape[1], g)
        r_head = random_hadamard(head_dim, g)
        r_online = random_hadamard(blocks[0].get_submodule(layout.online).in_features, g)
        untied = untie(model, [f"{layout.embedding}.weight", f"{layout.head}.weight"])
        work = torch.float64 if torch.device(device).type in ("cpu", "cuda") else torch.float32

        def edit(param, fn, outputs: bool = False):
            """param's rows ← fn(rows) in the work dtype, a chunk of rows at a time (fn acts on each row alone);
            outputs: the rows of paramᵀ, i.e. a linear's output side (W ← (fn(Wᵀ))ᵀ)."""
            data = param.data.t() if outputs else param.data.reshape(-1, param.shape[-1])
            step = max(1, CHUNK // data.shape[1])
            for start in range(0, data.shape[0], step):
                rows = data[start : start + step]
                rows.copy_(fn(rows.to(device, work)).to(rows.device, rows.dtype))

        def per_head(fn):  # fn on each head's slice of the last dimension
            return lambda w: fn(w.reshape(*w.shape[:-1], -1, head_dim)).reshape(w.shape)

        edit(embedding.weight, q.apply)
        for block in blocks:
            for subset in adapter.subsets_for(model):
                norm = block.get_submodule(subset.prev_op) if subset.prev_op else None
                if not is_norm(norm):
                    continue
                gamma = norm.weight.data.to(device, work)
                for path in subset.linears:
                    edit(block.get_submodule(path).weight, lambda w, gamma=gamma: q.apply(w * gamma))
                norm.weight.data.fill_(1.0)
            for path in layout.writers:
                writer = block.get_submodule(path)
                edit(writer.weight, q.apply, outputs=True)
                if writer.bias is not None:
                    edit(writer.bias, q.apply)
            value, attn_out = block.get_submodule(layout.value), block.get_submodule(layout.attn_out)
            edit(value.weight, per_head(r_head.apply), outputs=True)
            if value.bias is not None:
                edit(value.bias, per_head(r_head.apply))
            edit(attn_out.weight, per_head(r_head.apply))
            online = block.get_submodule(layout.online)
            edit(online.weight, r_online.apply)
            attach_online(online, r_online)
        final_norm = model.get_submodule(layout.final_norm)
        gamma = final_norm.weight.data.to(device, work)
        edit(head.weight, lambda w: q.apply(w * gamma))
        final_norm.weight.data.fill_(1.0)
        return {"calibration": "none", "seed": self.seed, "residual": q.kind, "heads": r_head.kind,
                f"online ({layout.online} input)": r_online.kind, "untied": untied}

    def apply(self, ctx: SubsetContext) -> dict[str, dict]:
        return {}
