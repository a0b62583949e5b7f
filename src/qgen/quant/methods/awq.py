"""AWQ (Lin et al., 2024): protect the weights that meet large activations by scaling them up before rounding.

Per subset, from the calibration inputs X: the mean magnitude of each input channel, x̄. For α on a grid of
`n_grid` points in [0, 1): s = x̄^α, normalised by sqrt(max s · min s); the subset's weights are quantized as
Q(W·diag(s))·diag(s)⁻¹ and the α whose outputs X·Ŵᵀ are closest (MSE) to X·Wᵀ wins. Its scales are folded into the
op producing X (norm weight, or a linear's output rows; see qgen.quant.fold) — only where the adapter marks the
subset foldable. Then, per linear, a clipping search: per output row and group, the largest |w| is shrunk over
(1 - i/n_grid) for i < max_shrink·n_grid and the value with the smallest output error on `clip_tokens` tokens is
kept (skipped for the layers named in `clip_skip`, whose outputs meet in q·kᵀ). As the last method, AWQ puts the
weights on the round-to-nearest grid; before GPTQ (awq+gptq) it only scales and clips.
"""

from __future__ import annotations

import torch

from qgen.quant.fold import fold_scales
from qgen.quant.grid import attach_grid, fake_quantize, fit_grid, quantize_weight
from qgen.quant.methods.base import QuantMethod, SubsetContext, register
from qgen.spec import Bool, Float, Int, ListOf, Str


def _rtn(w: torch.Tensor, fmt) -> torch.Tensor:
    return quantize_weight(w, fmt)[0]


def _output_mse(chunks: list[torch.Tensor], w_error: torch.Tensor) -> float:
    """mean((X·Ŵᵀ − X·Wᵀ)²) computed as X·(Ŵ − W)ᵀ one chunk of tokens at a time: neither X (kept as the per-batch
    chunks it was observed in) nor a full-size output is ever materialised (at 128 × 512 calibration tokens,
    down_proj's search tokens are 25 MB and gate/up's outputs on them 50 MB each)."""
    total = sum(float((x @ w_error.t()).square().sum()) for x in chunks)
    return total / (sum(x.shape[0] for x in chunks) * w_error.shape[0])


def _take_rows(chunks: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """Rows `index` (sorted, into the chunks laid end to end) gathered into one tensor."""
    sizes = torch.tensor([x.shape[0] for x in chunks])
    ends = sizes.cumsum(0)
    starts, which = ends - sizes, torch.searchsorted(ends, index, right=True)
    return torch.stack([chunks[k][i - starts[k]] for k, i in zip(which.tolist(), index.tolist())])


@register
class AWQ(QuantMethod):
    name = "awq"
    needs_calibration = True

    # it keeps every token_stride-th token (25 MB at 128x512): batches of 2 keep the peak under 1.5x the model
    engine_defaults = {"batch_size": 2}
    settings = {
        "n_grid": Int(1, default=20, doc="α in {0, 1/n_grid, …} for s = mean|x|^α, and the clipping grid"),
        "max_shrink": Float(0, 1, hi_open=True, default=0.5,
                            doc="clipping tries max|w| · (1 - i/n_grid) for i < max_shrink · n_grid"),
        "clip": Bool(default=True, doc="run the clipping search"),
        "clip_tokens": Int(1, default=512, doc="tokens used by the clipping search"),
        "clip_skip": ListOf(item=Str(), default=["q_proj", "k_proj", "W_pack"],
                            doc="layers not clipped (their outputs meet in q·kᵀ)"),
        "token_stride": Int(1, default=16, doc="keep every n-th calibration token for the searches"),
    }

    def start(self, ctx: SubsetContext) -> None:
        self.abs_sum, self.count, self.kept = None, 0, []

    def observe(self, ctx: SubsetContext, x: torch.Tensor) -> None:
        s = x.abs().sum(0)
        self.abs_sum = s if self.abs_sum is None else self.abs_sum + s
        self.count += x.shape[0]
        self.kept.append(x[:: self.token_stride].clone())  # every token_stride-th token for the searches

    def apply(self, ctx: SubsetContext) -> dict[str, dict]:
        x, self.kept = self.kept, []  # the search tokens, per batch: never concatenated (one copy alive)
        n_tokens = sum(chunk.shape[0] for chunk in x)
        linears = list(ctx.linears.values())
        w = torch.cat([lin.weight.data.to(ctx.device).float() for lin in linears])
        ratio, loss = None, None
        if ctx.subset.foldable and ctx.prev_op is not None:
            ratio, s, loss = self.search_scale(x, w, self.abs_sum / self.count)
            fold_scales(ctx.prev_op, linears, s)
            for chunk in x:  # the inputs the scaled weights now see; our own copies, so in place
                chunk.div_(s)
        # the clipping search's tokens, evenly spread over the kept ones: the same for every linear of the subset
        clip_index = torch.linspace(0, n_tokens - 1, min(self.clip_tokens, n_tokens)).long()
        clip_x = _take_rows(x, clip_index) if self.clip else None
        report = {}
        for (path, linear) in ctx.linears.items():
            shrink = None
            if self.clip and path.rsplit(".", 1)[-1] not in self.clip_skip:
                shrink = self.clip_weight(linear, clip_x)
            if ctx.final:
                w_hat, params = quantize_weight(linear.weight.data.to(ctx.device), self.weight)
                linear.weight.data.copy_(w_hat.to(linear.weight.dtype))
                attach_grid(linear, params)
            report[path] = {"scaled": ratio is not None, "ratio": ratio, "search_loss": loss,
                            "clip_mean_shrink": shrink, "search_tokens": n_tokens}
        return report

    def search_scale(self, x: list[torch.Tensor], w: torch.Tensor, x_mean: torch.Tensor):
        best = (float("inf"), None, None)
        for i in range(self.n_grid):
            ratio = i / self.n_grid
            s = x_mean.pow(ratio).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            loss = _output_mse(x, _rtn(w * s, self.weight) / s - w)
            if loss < best[0]:
                best = (loss, ratio, s)
        return best[1], best[2], best[0]

    def clip_weight(self, linear, xs: torch.Tensor) -> float:
        """Shrink each row's range per group where that lowers the group's output error on the tokens `xs`;
        returns the mean shrink."""
        fmt, w = self.weight, linear.weight.data.to(xs.device).float()
        chosen = []
        for s0, s1 in fmt.groups(w.shape[1]):
            wg, xg = w[:, s0:s1], xs[:, s0:s1].t()
            ref = wg @ xg
            org_max = wg.abs().amax(1, keepdim=True)
            best_err = torch.full_like(org_max, float("inf"))
            best_max = org_max.clone()
            for i in range(int(self.max_shrink * self.n_grid)):
                max_val = org_max * (1 - i / self.n_grid)
                cw = torch.clamp(wg, -max_val, max_val)
                scale, zero = fit_grid(cw, fmt.bits, fmt.symmetric)
                err = ((fake_quantize(cw, scale, zero, fmt.maxq) @ xg - ref) ** 2).mean(1, keepdim=True)
                better = err < best_err
                best_err[better], best_max[better] = err[better], max_val[better]
            w[:, s0:s1] = torch.clamp(wg, -best_max, best_max)
            chosen.append((best_max / org_max.clamp(min=1e-12)).mean())
        linear.weight.data.copy_(w.to(linear.weight.device, linear.weight.dtype))
        return float(1 - torch.stack(chosen).mean())
