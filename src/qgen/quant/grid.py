"""Fake quantization primitives shared by every method and by export.

A weight matrix W [out_features, in_features] is quantized per output row, either over the whole row
(`group_size = -1`, per channel) or in groups of `group_size` input columns. When the group size does not divide
in_features the last group is simply shorter, as in the reference GPTQ (SmolLM2's 576-wide layers with g128 get
four groups of 128 and one of 64).

Asymmetric: q = clamp(round(w / scale) + zero, 0, 2^b - 1), w_hat = scale * (q - zero), with the range widened
to include 0. Symmetric: the same with zero fixed at the grid's middle, (2^b) / 2, and the range [-max|w|, max|w|].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightFormat:
    bits: int
    group_size: int = -1  # -1: one group per output row (per channel)
    symmetric: bool = False

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def groups(self, in_features: int) -> list[tuple[int, int]]:
        """[start, end) column ranges of the groups; the last one is shorter when the size does not divide."""
        size = in_features if self.group_size in (-1, 0) or self.group_size >= in_features else self.group_size
        return [(s, min(s + size, in_features)) for s in range(0, in_features, size)]


def column_groups(fmt: WeightFormat, in_features: int) -> torch.Tensor:
    """Group index of each input column when groups are consecutive columns."""
    idx = torch.empty(in_features, dtype=torch.long)
    for g, (s, e) in enumerate(fmt.groups(in_features)):
        idx[s:e] = g
    return idx


@dataclass
class QuantParams:
    """Per-row, per-group grid: scale and zero are [out_features, n_groups]. `g_idx` maps each input column to
    its group when the groups are not consecutive columns (GPTQ act-order without static groups)."""

    scale: torch.Tensor
    zero: torch.Tensor
    fmt: WeightFormat
    in_features: int
    g_idx: torch.Tensor | None = None

    def column_group(self) -> torch.Tensor:
        """Group index of each input column."""
        return self.g_idx.clone() if self.g_idx is not None else column_groups(self.fmt, self.in_features)

    def integers(self, w: torch.Tensor) -> torch.Tensor:
        """The grid integers of weights that lie on this grid, [out_features, in_features]."""
        g = self.column_group().to(w.device)
        return quantize_int(w.float(), self.scale.to(w.device)[:, g], self.zero.to(w.device)[:, g], self.fmt.maxq)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        g = self.column_group().to(q.device)
        return dequantize(q, self.scale.to(q.device)[:, g], self.zero.to(q.device)[:, g])


_GRID_ATTR = "_qgen_grid"


def attach_grid(linear, params: QuantParams) -> None:
    """Remember on the module the grid its weights were put on (for tests and export), on the CPU."""
    setattr(linear, _GRID_ATTR, QuantParams(params.scale.detach().float().cpu(), params.zero.detach().float().cpu(),
                                            params.fmt, params.in_features,
                                            None if params.g_idx is None else params.g_idx.cpu()))


def grid_of(linear) -> QuantParams | None:
    return getattr(linear, _GRID_ATTR, None)


def fit_grid(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [rows, 1] of the min-max grid for each row of w [rows, cols]."""
    w = w.float()
    maxq = 2**bits - 1
    zeros = torch.zeros(w.shape[0], device=w.device)
    xmin = torch.minimum(w.min(dim=1).values, zeros)
    xmax = torch.maximum(w.max(dim=1).values, zeros)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)
    xmin[empty], xmax[empty] = -1.0, 1.0
    scale = (xmax - xmin) / maxq
    if symmetric:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize_int(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    return dequantize(quantize_int(w, scale, zero, maxq), scale, zero)


def quantize_weight(w: torch.Tensor, fmt: WeightFormat) -> tuple[torch.Tensor, QuantParams]:
    """Round-to-nearest of a whole matrix on its min-max grid; returns (w_hat in float32, the grid)."""
    w = w.float()
    out = torch.empty_like(w)
    scales, zeros = [], []
    for s, e in fmt.groups(w.shape[1]):
        scale, zero = fit_grid(w[:, s:e], fmt.bits, fmt.symmetric)
        out[:, s:e] = fake_quantize(w[:, s:e], scale, zero, fmt.maxq)
        scales.append(scale)
        zeros.append(zero)
    return out, QuantParams(torch.cat(scales, 1), torch.cat(zeros, 1), fmt, w.shape[1])


def quantize_activation(x: torch.Tensor, bits: int, granularity: str = "per_token",
                        scale: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric fake quantization of activations: dynamic per token (default) or per tensor, or with a given
    static scale (calibrated ahead of time)."""
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    if scale is None:
        if granularity == "per_token":
            scale = xf.abs().amax(dim=-1, keepdim=True) / qmax
        elif granularity == "per_tensor":
            scale = xf.abs().amax() / qmax
        else:
            raise ValueError(f"unknown activation granularity {granularity!r}")
    scale = torch.clamp(scale, min=1e-8)
    return (torch.clamp(torch.round(xf / scale), -qmax - 1, qmax) * scale).to(x.dtype)
