"""SmoothQuant (Xiao et al., 2023): W8A8 made accurate by moving activation outliers into the weights.

Per subset, from the calibration inputs: the largest |x_j| of each input channel. With migration strength α,
s_j = max|x_j|^α / max|W_:,j|^(1-α) (max over all linears of the subset), folded into the preceding norm
(x / s) and multiplied into the weight columns (W·diag(s)) — as in the paper, only where a norm produces the input;
the other subsets (o_proj, down_proj) are quantized without smoothing. The weights then go to the configured grid
(per output channel for W8A8) and the activations are fake-quantized on every forward: dynamic (scale from each
token or the whole tensor at run time) or static (one per-tensor scale calibrated here, max|x/s| / 127).
"""

from __future__ import annotations

import torch

from qgen.errors import QgenError
from qgen.quant import activations
from qgen.quant.fold import fold_scales, is_norm
from qgen.quant.grid import attach_grid, quantize_weight
from qgen.quant.methods.base import QuantMethod, SubsetContext, register
from qgen.spec import Bool, Float


@register
class SmoothQuant(QuantMethod):
    name = "smoothquant"
    needs_calibration = True

    engine_defaults = {"true_sequential": False}  # one observation pass per block, as the reference
    settings = {
        "alpha": Float(0, 1, default=0.5, doc="migration strength: s = max|x|^α / max|w|^(1-α)"),
        "static": Bool(default=False, doc="one calibrated per-tensor activation scale (needs "
                                          "bits.act_granularity=per_tensor)"),
    }

    def check_formats(self, weight, act) -> None:
        if self.static and act.enabled and act.granularity != "per_tensor":
            raise QgenError("smoothquant.static=true needs bits.act_granularity=per_tensor (a static scale cannot "
                            "follow each token); use per_tensor or static=false")

    def start(self, ctx: SubsetContext) -> None:
        self.act_max = None

    def observe(self, ctx: SubsetContext, x: torch.Tensor) -> None:
        m = x.abs().amax(0)
        self.act_max = m if self.act_max is None else torch.maximum(self.act_max, m)

    def apply(self, ctx: SubsetContext) -> dict[str, dict]:
        linears = list(ctx.linears.values())
        smoothed = ctx.subset.foldable and is_norm(ctx.prev_op)
        act_max = self.act_max
        if smoothed:
            w_max = torch.stack([lin.weight.data.to(ctx.device).float().abs().amax(0) for lin in linears]).amax(0)
            s = (act_max.clamp(min=1e-5).pow(self.alpha) / w_max.clamp(min=1e-5).pow(1 - self.alpha)).clamp(min=1e-5)
            fold_scales(ctx.prev_op, linears, s)
            act_max = act_max / s
        static_scale = None
        if self.static and self.act.enabled:
            static_scale = (act_max.max() / (2 ** (self.act.bits - 1) - 1)).reshape(())
        report = {}
        for path, linear in ctx.linears.items():
            if ctx.final:
                w_hat, params = quantize_weight(linear.weight.data.to(ctx.device), self.weight)
                linear.weight.data.copy_(w_hat.to(linear.weight.dtype))
                attach_grid(linear, params)
            if self.act.enabled:
                activations.attach(linear, self.act, static_scale=static_scale)
            report[path] = {"smoothed": smoothed, "alpha": self.alpha if smoothed else None,
                            "act_max_before": float(self.act_max.max()), "act_max_after": float(act_max.max()),
                            "static_act_scale": None if static_scale is None else float(static_scale)}
        return report
