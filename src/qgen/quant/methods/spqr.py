"""SpQR (Dettmers et al., 2023): GPTQ with tiny groups whose statistics are themselves quantized, plus a sparse set
of outlier weights kept in full precision.

The solver is GPTQ's (Hessian of the layer's inputs, act-order permutation, dampening, upper Cholesky factor U of
H⁻¹, error feedback in blocks). Differences: every `group_size` (16) solver columns a grid is fitted per output row;
its scales and zeros are quantized to `stat_bits` (3) in groups of `stat_group_size` (16) rows. Outliers: with d_j
= U_jj and the threshold τ = outlier_threshold · mean_j(var(W_:,j) / d_j²), a weight is an outlier when its
quantization error (w - q)² / d_j² exceeds τ; outliers keep their value and cause no error feedback. Before a grid
is fitted, the weights whose leave-one-out removal lowers the group's error by more than τ are left out of the fit
(replaced by the row's mean). The per-layer report gives the outlier fraction and the resulting average bits.
"""

from __future__ import annotations

import torch

from qgen.quant.grid import WeightFormat, fit_grid, quantize_weight
from qgen.quant.hessian import HessianAccumulator, inverse_factor
from qgen.quant.methods.base import QuantMethod, SubsetContext, register
from qgen.spec import Bool, Float, Int


def _round_trip(w, scale, zero, maxq):
    """Quantize with a possibly fractional zero (quantized statistics): q = clamp(round(w/s + z)), ŵ = s(q - z)."""
    q = torch.clamp(torch.round(w / scale.clamp(min=1e-12) + zero), 0, maxq)
    return scale * (q - zero)


@register
class SpQR(QuantMethod):
    name = "spqr"
    needs_calibration = True
    on_grid = False  # outliers stay in full precision and the group statistics are quantized themselves

    settings = {
        "group_size": Int(1, default=16, doc="columns per first-level group"),
        "stat_bits": Int(1, 8, default=3, doc="bits of the quantized group scales and zeros"),
        "stat_group_size": Int(1, default=16, doc="rows per group of statistics"),
        "outlier_threshold": Float(0, lo_open=True, infinite=True, default=0.2,
                                   doc="relative sensitivity threshold for full-precision outliers"),
        "damp_percent": Float(0, 10, lo_open=True, default=1.0, doc="SpQR's published --percdamp 1e0"),
        "act_order": Bool(default=True, doc="permutation_order act_order"),
        "block_size": Int(1, default=128, doc="columns per lazy batch update"),
    }

    def __init__(self, weight, act, **hparams):
        super().__init__(weight, act, **hparams)
        self.fmt = WeightFormat(weight.bits, self.group_size, weight.symmetric)
        self.stats = WeightFormat(self.stat_bits, self.stat_group_size)
        self.threshold = self.outlier_threshold

    def start(self, ctx: SubsetContext) -> None:
        self.hessian = HessianAccumulator(next(iter(ctx.linears.values())).in_features, ctx.device)

    def observe(self, ctx: SubsetContext, x: torch.Tensor) -> None:
        self.hessian.add(x)

    def apply(self, ctx: SubsetContext) -> dict[str, dict]:
        report, H = {}, self.hessian.H
        for path, linear in ctx.linears.items():
            w_hat, info = self.solve(linear.weight.data.to(ctx.device).float(), H)
            linear.weight.data.copy_(w_hat.to(linear.weight.dtype))
            report[path] = info
        self.hessian = None
        return report

    def fit_group(self, wg: torch.Tensor, d: torch.Tensor, tau: float):
        """Grid of one group [rows, k] fitted without its likely outliers, statistics quantized."""
        rows, k = wg.shape
        if k > 1:
            base = (((_fit_rt(wg, self.fmt) - wg) / d) ** 2).sum(1, keepdim=True)
            keep = ~torch.eye(k, dtype=torch.bool, device=wg.device)  # row j: all columns but j
            loo = wg[:, None, :].expand(rows, k, k)[:, keep].reshape(rows * k, k - 1)
            dl = d[None, :].expand(k, k)[keep].reshape(k, k - 1).repeat(rows, 1)
            loo_err = (((_fit_rt(loo, self.fmt) - loo) / dl) ** 2).sum(1).reshape(rows, k)
            likely = (base - loo_err) > tau
            mean = (wg * ~likely).sum(1, keepdim=True) / (~likely).sum(1, keepdim=True).clamp(min=1)
            wg = torch.where(likely, mean, wg)
        scale, zero = fit_grid(wg, self.fmt.bits, self.fmt.symmetric)
        scale = quantize_weight(scale.t(), self.stats)[0].t()
        zero = quantize_weight(zero.t(), self.stats)[0].t()
        return scale, zero

    def solve(self, w: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, dict]:
        rows, cols = w.shape
        f = inverse_factor(H, self.damp_percent, self.act_order)
        w = w.clone()
        w[:, f.dead] = 0
        perm = f.perm if f.perm is not None else torch.arange(cols, device=w.device)
        w = w[:, perm]
        U = f.hinv
        d = torch.diag(U)
        tau = self.threshold * float((w.var(dim=0) / d**2).mean())
        starts = {s: e for s, e in self.fmt.groups(cols)}
        outliers = torch.zeros_like(w, dtype=torch.bool)
        for b0 in range(0, cols, self.block_size):
            b1 = min(b0 + self.block_size, cols)
            err = torch.zeros(rows, b1 - b0, device=w.device)
            for pos in range(b0, b1):
                if pos in starts:
                    scale, zero = self.fit_group(w[:, pos : starts[pos]], d[pos : starts[pos]], tau)
                col = w[:, pos].unsqueeze(1)
                q = _round_trip(col, scale, zero, self.fmt.maxq)
                out = ((col - q) / d[pos]) ** 2 > tau
                q = torch.where(out, col, q)
                outliers[:, pos] = out[:, 0]
                e = ((col - q) / d[pos])[:, 0]
                w[:, pos] = q[:, 0]
                w[:, pos + 1 : b1] -= e.unsqueeze(1) * U[pos, pos + 1 : b1].unsqueeze(0)
                err[:, pos - b0] = e
            w[:, b1:] -= err @ U[b0:b1, b1:]
        out = torch.empty_like(w)
        out[:, perm] = w
        frac = float(outliers.float().mean())
        # per group: a quantized scale and zero; per group of statistics: their fp16 scale and zero; per outlier:
        # its fp16 value and a 16-bit column index (the paper's accounting)
        n_groups = len(starts)
        stat_bits = n_groups * rows * (2 * self.stats.bits + 2 * 2 * 16 / self.stats.group_size) / (rows * cols)
        info = {"outlier_fraction": frac, "outliers": int(outliers.sum()), "threshold": tau,
                "damp_percent": f.damp_percent, "damp_retries": f.damp_retries, "dead_columns": int(f.dead.sum()),
                "group_size": self.fmt.group_size, "avg_bits": self.fmt.bits + stat_bits + 32 * frac}
        return out, info


def _fit_rt(w: torch.Tensor, fmt: WeightFormat) -> torch.Tensor:
    """Round trip of each row of w on its own min-max grid."""
    scale, zero = fit_grid(w, fmt.bits, fmt.symmetric)
    return _round_trip(w, scale, zero, fmt.maxq)
