"""AWQ (Lin et al., 2024): protect the weights that meet large activations by scaling them up before rounding.

Per subset, from the calibration inputs X: the mean magnitude of each input channel, x̄, over every calibration
token. For α on a grid of `n_grid` points in [0, 1): s = x̄^α, normalised by sqrt(max s · min s); the subset's
weights are replaced by Q(W·diag(s))·diag(s)⁻¹ and the module that reads X — the one the adapter names
(`Subset.inspect`: the attention for q/k/v, the MLP for gate/up; o_proj and down_proj: the linear itself) — is
run on the kept calibration sequences with the block's keyword arguments it needs (attention mask, position
embeddings). The α whose module output is closest (mean squared error) to the module's output with the original
weights wins, as in llm-awq's auto_scale (`module2inspect`). Its scales are folded into the op producing X (norm
weight, or a linear's output rows; see qgen.quant.fold) — only where the adapter marks the subset foldable. Then,
per linear, a clipping search: per output row and group, the largest |w| is shrunk over (1 - i/n_grid) for
i < max_shrink·n_grid and the value with the smallest output error on `clip_tokens` tokens is kept — except for
the linears the adapter declares in `Subset.qk`, whose outputs meet in q·kᵀ. As the last method, AWQ puts the
weights on the grid (round to nearest); before GPTQ (awq+gptq) it only scales and clips.

What it keeps: the attention mixes tokens, so the search runs on whole sequences: the subset's input in the first
calibration batches holding `search_samples` sequences (whole batches: up to batch_size − 1 more), with the block
keyword arguments the inspected module needs. In float32 that is search_samples × seq_len × width × 4 bytes: 19 MB
for SmolLM2's 576-wide inputs at 16 × 512, 50 MB for down_proj's 1536-wide ones; the search adds the module's
reference output on them (19 MB) and one batch's forward temporaries.

Where it departs from llm-awq:
- llm-awq searches on every calibration sequence (128 × 512 in its entry point); here on `search_samples` of them
  (the memory above). Its clipping search takes 512 tokens strided over all calibration tokens; here `clip_tokens`
  spread evenly over the kept ones.
- llm-awq gathers a block's inputs once, from the full-precision model, and quantizes after every search; here the
  engine decides (`engine.feed`, `engine.true_sequential`): by default each block sees the quantized blocks
  before it, and each subset its input as changed by the subsets quantized before it.
- llm-awq runs the search in the model's dtype (fp16); here the inspected module runs in float32 (its parameters as
  float32 copies during the search), whatever the model's and the engine's dtypes.
- llm-awq skips clipping by name (any layer whose name holds "q_", "k_", "query", "key", "Wqkv"); here the adapter
  declares the linears.
"""

from __future__ import annotations

import torch

from qgen.quant.cast import params_in
from qgen.quant.fold import fold_scales
from qgen.quant.grid import attach_grid, fake_quantize, fit_grid, quantize_weight
from qgen.quant.methods.base import QuantMethod, SubsetContext, register
from qgen.spec import Bool, Float, Int


def _rtn(w: torch.Tensor, fmt) -> torch.Tensor:
    return quantize_weight(w, fmt)[0]


def _run(module: torch.nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = module(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out  # attention modules also return their weights


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

    # it keeps search_samples whole sequences of each subset's input (50 MB for SmolLM2's down_proj at 16 x 512):
    # batches of 2 keep the peak under 1.5x the model
    engine_defaults = {"batch_size": 2}
    settings = {
        "n_grid": Int(1, default=20, doc="α in {0, 1/n_grid, …} for s = mean|x|^α, and the clipping grid"),
        "max_shrink": Float(0, 1, hi_open=True, default=0.5,
                            doc="clipping tries max|w| · (1 - i/n_grid) for i < max_shrink · n_grid"),
        "clip": Bool(default=True, doc="run the clipping search"),
        "clip_tokens": Int(1, default=512, doc="tokens used by the clipping search"),
        "search_samples": Int(1, default=16, doc="calibration sequences kept whole for the searches (the first "
                                                 "batches holding that many)"),
    }

    def start(self, ctx: SubsetContext) -> None:
        self.abs_sum, self.count, self.kept, self.kept_samples = None, 0, [], 0

    def observe_batch(self, ctx: SubsetContext, x: torch.Tensor, block_kwargs: dict) -> None:
        tokens = x.reshape(-1, x.shape[-1])
        s = tokens.abs().sum(0)
        self.abs_sum = s if self.abs_sum is None else self.abs_sum + s
        self.count += tokens.shape[0]
        if self.kept_samples < self.search_samples:  # whole sequences, with what the inspected module needs
            needs = ctx.subset.inspect.kwargs if ctx.subset.inspect else ()
            self.kept.append((x.clone(), {k: block_kwargs[k] for k in needs if k in block_kwargs}))
            self.kept_samples += x.shape[0]

    def apply(self, ctx: SubsetContext) -> dict[str, dict]:
        kept, self.kept = self.kept, []  # [(input [batch, seq, width], kwargs)]: our own copies
        linears = list(ctx.linears.values())
        inspected = ctx.subset.inspect.module if ctx.subset.inspect else ctx.subset.linears[0]
        ratio, loss = None, None
        if ctx.subset.foldable and ctx.prev_op is not None:
            module = ctx.block.get_submodule(inspected)
            ratio, s, loss = self.search_scale(module, linears, kept, self.abs_sum / self.count)
            fold_scales(ctx.prev_op, linears, s)
            for x, _ in kept:  # the inputs the scaled weights now see
                x.div_(s)
        tokens = [x.reshape(-1, x.shape[-1]) for x, _ in kept]
        n_tokens = sum(t.shape[0] for t in tokens)
        # the clipping search's tokens, evenly spread over the kept ones: the same for every linear of the subset
        clip_index = torch.linspace(0, n_tokens - 1, min(self.clip_tokens, n_tokens)).long()
        clip_x = _take_rows(tokens, clip_index) if self.clip else None
        report = {}
        for name, (path, linear) in zip(ctx.subset.linears, ctx.linears.items()):
            shrink = None
            if self.clip and name not in ctx.subset.qk:
                shrink = self.clip_weight(linear, clip_x)
            if ctx.final:
                w_hat, params = quantize_weight(linear.weight.data.to(ctx.device), self.weight)
                linear.weight.data.copy_(w_hat.to(linear.weight.dtype))
                attach_grid(linear, params)
            report[path] = {"scaled": ratio is not None, "ratio": ratio, "search_loss": loss, "inspected": inspected,
                            "clip_mean_shrink": shrink, "search_tokens": n_tokens}
        return report

    @torch.no_grad()
    def search_scale(self, module: torch.nn.Module, linears: list[torch.nn.Linear],
                     kept: list[tuple[torch.Tensor, dict]], x_mean: torch.Tensor):
        """The α of least mean squared error of `module`'s output over the kept (input, kwargs) batches when
        `linears` (which read the module's input) are Q(W·diag(s))·diag(s)⁻¹ with s = x_mean^α, normalised; returns
        (α, s, that error). The linears' weights are as they were on return."""
        best = (float("inf"), None, None)
        with params_in(module, torch.float32):
            weights = [lin.weight.data for lin in linears]
            reference = [_run(module, x, kwargs) for x, kwargs in kept]
            n = sum(ref.numel() for ref in reference)
            try:
                for i in range(self.n_grid):
                    ratio = i / self.n_grid
                    s = x_mean.pow(ratio).clamp(min=1e-4)
                    s = s / (s.max() * s.min()).sqrt()
                    for lin, w in zip(linears, weights):
                        lin.weight.data = _rtn(w * s, self.weight) / s
                    loss = sum(float((_run(module, x, kwargs) - ref).square().sum())
                               for (x, kwargs), ref in zip(kept, reference)) / n
                    if loss < best[0]:
                        best = (loss, ratio, s)
            finally:
                for lin, w in zip(linears, weights):
                    lin.weight.data = w
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
