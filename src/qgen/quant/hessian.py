"""The layer Hessian H = 2/n Σ x xᵀ of the squared-error objective ||W X - Ŵ X||², shared by GPTQ and SpQR.

`HessianAccumulator` keeps a running average over calibration batches (float32 or float64 for precision), so the
result does not depend on how the tokens were split into batches beyond rounding. `inverse_factor` prepares what
the column-by-column solvers need: dead columns (H_ii = 0, the input is always zero) pinned, the optional
act-order permutation, dampening λ·mean(diag H) added to the diagonal — raised ×10 until the Cholesky
factorisation succeeds — and the upper Cholesky factor of H⁻¹.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qgen.errors import QgenError

MAX_DAMP_RETRIES = 6


class HessianAccumulator:
    """H is symmetric, so only its upper triangle is accumulated, as `chunks` row bands of column blocks (band i
    from its diagonal block rightwards): (chunks + 1) / (2 chunks) of the full product's work, 5/8 with 4 bands.
    Reading `H` mirrors the upper triangle into the lower one."""

    def __init__(self, columns: int, device: torch.device, chunks: int = 4):
        self._upper = torch.zeros(columns, columns, device=device, dtype=torch.float32)
        self.n = 0
        step = -(-columns // max(1, min(chunks, columns // 64)))  # bands of at least 64 columns
        self._bands = [(s, min(s + step, columns)) for s in range(0, columns, step)]

    def add(self, x: torch.Tensor) -> None:
        """x: [tokens, columns]."""
        m = x.shape[0]
        self._upper.mul_(self.n / (self.n + m))
        self.n += m
        x = x.float() * (2.0 / self.n) ** 0.5
        for s, e in self._bands:
            self._upper[s:e, s:].addmm_(x[:, s:e].t(), x[:, s:])

    @property
    def H(self) -> torch.Tensor:
        upper = torch.triu(self._upper)
        return upper + torch.triu(upper, diagonal=1).t()


@dataclass
class InverseFactor:
    hinv: torch.Tensor  # upper Cholesky factor of (H + λI)⁻¹ in the permuted order, [cols, cols]
    perm: torch.Tensor | None  # column order used (act-order), or None for the natural order
    dead: torch.Tensor  # bool [cols] in the natural order: columns whose input is always zero
    damp_percent: float  # the dampening that was finally used (may exceed the configured one)
    damp_retries: int


def inverse_factor(H: torch.Tensor, damp_percent: float, act_order: bool) -> InverseFactor:
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else None
    if perm is not None:
        H = H[perm][:, perm]
    diag = torch.arange(H.shape[0], device=H.device)
    mean_diag = torch.diag(H).mean()
    damp = damp_percent
    for retry in range(MAX_DAMP_RETRIES + 1):
        Hd = H.clone()
        Hd[diag, diag] += damp * mean_diag
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                return InverseFactor(U, perm, dead, damp, retry)
        damp *= 10
    raise QgenError(f"the Hessian stays singular even with dampening {damp / 10:g}; check the calibration data "
                    f"(it must not be constant) or raise damp_percent")
