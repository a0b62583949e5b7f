"""Activation fake quantization on a Linear's input, attached as a forward pre-hook (module names unchanged)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qgen.quant.grid import quantize_activation

_HOOK_ATTR = "_qgen_act_quant"


@dataclass(frozen=True)
class ActFormat:
    bits: int = 16  # 16: activations stay in full precision
    granularity: str = "per_token"  # per_token | per_tensor

    @property
    def enabled(self) -> bool:
        return self.bits < 16


def attach(linear: nn.Linear, fmt: ActFormat, static_scale: torch.Tensor | None = None) -> None:
    """Quantize this linear's input on every forward (dynamic, or with a calibrated static scale)."""
    detach(linear)
    if static_scale is not None:
        linear.register_buffer("act_scale", static_scale.detach().clone(), persistent=False)

    def hook(module, args):
        x = args[0]
        scale = getattr(module, "act_scale", None)
        return (quantize_activation(x, fmt.bits, fmt.granularity, scale),) + tuple(args[1:])

    setattr(linear, _HOOK_ATTR, linear.register_forward_pre_hook(hook))


def detach(linear: nn.Linear) -> None:
    handle = getattr(linear, _HOOK_ATTR, None)
    if handle is not None:
        handle.remove()
        delattr(linear, _HOOK_ATTR)


def is_attached(linear: nn.Linear) -> bool:
    return getattr(linear, _HOOK_ATTR, None) is not None
