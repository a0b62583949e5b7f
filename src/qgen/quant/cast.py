"""Tensors and a module's parameters in another floating dtype, for forward passes: the engine's block passes in
the compute dtype, AWQ's scale search in float32."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def to_dtype(value, dtype: torch.dtype | None):
    """Floating tensors (also inside tuples, e.g. rotary tables) in dtype; masks' lowest values kept finite."""
    if dtype is not None and isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        lowest = torch.finfo(dtype).min
        return (value.clamp(min=lowest) if lowest > torch.finfo(value.dtype).min else value).to(dtype)
    if isinstance(value, tuple):
        return tuple(to_dtype(v, dtype) for v in value)
    return value


@contextmanager
def params_in(module: nn.Module, dtype: torch.dtype):
    """Inside: the module's floating parameters are copies in dtype (for its forward passes). On exit the original
    tensors are put back, so the methods read and write the full-precision weights; the copies are made anew at
    every entry, so they follow what the methods changed (quantized weights, folded scales)."""
    saved = [(p, p.data) for p in module.parameters() if p.is_floating_point() and p.dtype != dtype]
    try:
        for p, data in saved:
            p.data = data.to(dtype)
        yield
    finally:
        for p, data in saved:
            p.data = data
