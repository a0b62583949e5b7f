"""Round-to-nearest: every weight to the nearest point of its group's min-max grid. Needs no data."""

from __future__ import annotations

import torch

from qgen.quant.grid import attach_grid, quantize_weight
from qgen.quant.methods.base import QuantMethod, SubsetContext, register


@register
class RTN(QuantMethod):
    name = "rtn"

    def apply(self, ctx: SubsetContext) -> dict[str, dict]:
        report = {}
        for path, linear in ctx.linears.items():
            w_hat, params = quantize_weight(linear.weight.data.to(ctx.device), self.weight)
            linear.weight.data.copy_(w_hat.to(linear.weight.dtype))
            attach_grid(linear, params)
            report[path] = grid_report(linear.weight.shape, self.weight)
        return report


def grid_report(shape: torch.Size, fmt) -> dict:
    groups = fmt.groups(shape[1])
    return {"shape": list(shape), "bits": fmt.bits, "group_size": fmt.group_size, "n_groups": len(groups),
            "last_group_size": groups[-1][1] - groups[-1][0]}
