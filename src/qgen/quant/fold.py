"""Scale migration shared by AWQ and SmoothQuant: divide the input of a subset by per-channel scales s, folded into
the op that produces it, and multiply the subset's weight columns by s. The model computes the same function
(exactly, up to rounding), while the weights' and activations' ranges move between the two.

The op is either a norm (RMSNorm/LayerNorm: weight and bias divided by s) or a linear (its output rows and bias
divided by s, e.g. v_proj before o_proj, up_proj before down_proj). Each linear remembers the accumulated
factors (`in_scale` on the subset's linears, `out_scale` on a producing linear) so that a quantized layer can be
compared with the original one in its original coordinates. A producing linear that is already quantized keeps
lying on a grid: each output row is divided by one number, so its row of grid scales is divided too.
"""

from __future__ import annotations

import torch
from torch import nn

from qgen.errors import QgenError
from qgen.quant.grid import grid_of

_IN, _OUT = "_qgen_in_scale", "_qgen_out_scale"


def is_norm(op: nn.Module | None) -> bool:
    return op is not None and not isinstance(op, nn.Linear) and isinstance(getattr(op, "weight", None), torch.Tensor)


def fold_scales(prev_op: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """x -> x / s in prev_op's output, W -> W · diag(s) in each linear. s: [in_features], positive."""
    s = s.detach().float()
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise QgenError("scale folding needs positive finite scales")
    if isinstance(prev_op, nn.Linear):
        w = prev_op.weight.data
        if w.shape[0] != s.numel():
            raise QgenError(f"cannot fold {s.numel()} scales into a linear with {w.shape[0]} outputs")
        w.copy_((w.float() / s.to(w.device).unsqueeze(1)).to(w.dtype))
        _record(prev_op, _OUT, s)
        grid = grid_of(prev_op)
        if grid is not None:  # already quantized: each row's grid scales with the row, so it stays on a grid
            grid.scale = grid.scale / s.cpu().unsqueeze(1)
    elif is_norm(prev_op):
        w = prev_op.weight.data
        if w.numel() != s.numel():
            raise QgenError(f"cannot fold {s.numel()} scales into a norm of width {w.numel()}")
        w.copy_((w.float() / s.to(w.device)).to(w.dtype))
    else:
        raise QgenError(f"cannot fold scales into {type(prev_op).__name__}: only norms and linears absorb scales")
    bias = getattr(prev_op, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.data.copy_((bias.data.float() / s.to(bias.device)).to(bias.dtype))
    for linear in linears:
        w = linear.weight.data
        w.copy_((w.float() * s.to(w.device).unsqueeze(0)).to(w.dtype))
        _record(linear, _IN, s)


def _record(linear: nn.Linear, attr: str, s: torch.Tensor) -> None:
    old = getattr(linear, attr, None)
    setattr(linear, attr, s.cpu() if old is None else old * s.cpu())


def input_scale(linear: nn.Linear) -> torch.Tensor | None:
    """The product of the scales multiplied into this linear's input columns (None: never scaled)."""
    return getattr(linear, _IN, None)


def output_scale(linear: nn.Linear) -> torch.Tensor | None:
    """The product of the scales its output rows were divided by (None: never scaled)."""
    return getattr(linear, _OUT, None)
