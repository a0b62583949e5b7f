"""Seeded orthogonal rotations of any width, applied in O(n log n) where n has a power-of-two factor, and the
online rotation of a linear's input (a forward pre-hook), for QuaRot-style rotations (qgen.quant.methods.rotate).

A rotation of width n is R = D · (H_p ⊗ C) / √p, with D a diagonal of random signs, H_p the Sylvester Hadamard
matrix of the largest power of two p dividing n, and C an orthogonal c × c core, n = p · c:
- n a power of two: C = [1], so R is a randomized Walsh–Hadamard matrix (QuaRot's);
- otherwise, when some c = m · 2^j ≤ MAX_PALEY (m the odd part of n, 2^j ≥ 4 dividing p) has c - 1 prime (then
  ≡ 3 mod 4), C is the Paley Hadamard matrix of order c, normalised: R is again a true Hadamard matrix, every
  entry ±1/√n (SmolLM2: 576 = 8 · Paley 72, 1536 = 128 · Paley 12; Qwen2.5-0.5B: 896 = 4 · Paley 224);
- otherwise C is a random orthogonal m × m matrix (Haar, from the QR of a Gaussian matrix): a Hadamard of the
  power-of-two part times a small random rotation (Llama-2's 11008 = 256 · 43), or, for odd n, a plain random
  orthogonal matrix.
`Rotation.kind` says which. x ↦ x · R costs log2(p) butterfly passes and one c × c matrix product per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

MAX_PALEY = 256  # largest Paley core built (its c × c matrix is applied densely)
CHUNK = 1 << 22  # values per chunk of rows in Rotation.apply (32 MB in float64)
_ONLINE_ATTR = "_qgen_online_rotation"


@dataclass
class Rotation:
    """R = diag(signs) · (H_pow2 ⊗ core) / √pow2, orthogonal, n = pow2 · core width."""

    signs: torch.Tensor  # [n], ±1, float64
    pow2: int
    core: torch.Tensor  # [c, c] orthogonal, float64
    kind: str  # how it was built, in words
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        return self.signs.numel()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x · R along the last dimension, in x's dtype and on x's device; rows in chunks of CHUNK values, so that
        the transform's temporaries stay small whatever x is (a vocabulary-sized embedding)."""
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = (self.signs.to(x.device, x.dtype), self.core.to(x.device, x.dtype))
        signs, core = self._cache[key]
        rows = x.reshape(-1, self.n)
        step = max(1, CHUNK // self.n)
        if rows.shape[0] <= step:
            return self._rows(rows, signs, core).reshape(x.shape)
        out = torch.empty_like(rows)
        for start in range(0, rows.shape[0], step):
            out[start : start + step] = self._rows(rows[start : start + step], signs, core)
        return out.reshape(x.shape)

    def _rows(self, rows: torch.Tensor, signs: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
        y = (rows * signs).reshape(-1, self.pow2, core.shape[0]).transpose(1, 2)  # [rows, c, p]
        y = _fwht(y) / math.sqrt(self.pow2)
        return (y.transpose(1, 2) @ core).reshape(rows.shape)

    def matrix(self) -> torch.Tensor:
        """R itself, n × n float64 (for tests)."""
        return self.apply(torch.eye(self.n, dtype=torch.float64))


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform along the last dimension (a power of two): x · H (H symmetric)."""
    n, h = x.shape[-1], 1
    while h < n:
        y = x.reshape(*x.shape[:-1], n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.cat((a + b, a - b), dim=-1).reshape(*x.shape[:-1], n)
        h *= 2
    return x


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, math.isqrt(q) + 1))


def paley(c: int) -> torch.Tensor:
    """The Paley (type I) Hadamard matrix of order c, for c - 1 a prime ≡ 3 mod 4: I + [[0, 1ᵀ], [-1, Q]] with Q
    the Jacobsthal matrix Q_ij = χ(j - i) (χ the quadratic character mod c - 1). Entries ±1, H Hᵀ = c I."""
    q = c - 1
    if not (_is_prime(q) and q % 4 == 3):
        raise ValueError(f"no Paley matrix of order {c}: {q} is not a prime ≡ 3 mod 4")
    residues = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in residues else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    s = torch.zeros(c, c, dtype=torch.float64)
    s[0, 1:], s[1:, 0] = 1.0, -1.0
    s[1:, 1:] = chi[(idx.unsqueeze(0) - idx.unsqueeze(1)) % q]
    return torch.eye(c, dtype=torch.float64) + s


def random_orthogonal(m: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal m × m matrix (QR of a Gaussian matrix, R's diagonal made positive), float64."""
    q, r = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def random_hadamard(n: int, generator: torch.Generator) -> Rotation:
    """The seeded rotation of width n described in the module docstring (draws from `generator`)."""
    if n < 1:
        raise ValueError(f"a rotation needs a positive width, not {n}")
    p = n & -n
    m = n // p
    signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    if m == 1:
        return Rotation(signs, p, torch.ones(1, 1, dtype=torch.float64), f"randomized Hadamard {n}")
    j = 2
    while (m << j) <= MAX_PALEY and (1 << j) <= p:
        c = m << j
        if _is_prime(c - 1):
            core = paley(c) / math.sqrt(c)
            return Rotation(signs, p >> j, core, f"randomized Hadamard {n} = Sylvester {p >> j} x Paley {c}")
        j += 1
    core = random_orthogonal(m, generator)
    if p == 1:
        return Rotation(signs, 1, core, f"random orthogonal {n} (no power-of-two factor)")
    return Rotation(signs, p, core, f"randomized Hadamard {p} x random orthogonal {m} (no known Hadamard of "
                                    f"order {n} built here)")


# -- online rotation of a linear's input ------------------------------------------------------------------------

def attach_online(linear: nn.Linear, rotation: Rotation) -> None:
    """Rotate the linear's input on every forward (x ↦ x · R, computed in float32 at least) before anything else
    sees it (prepended: activation quantizers and the engine's observers see the rotated input). The linear's
    weight must hold W · R for the layer to compute what it did."""
    if rotation.n != linear.in_features:
        raise ValueError(f"a rotation of width {rotation.n} cannot rotate the {linear.in_features} inputs of a linear")
    detach_online(linear)

    def hook(module, args):
        x = args[0]
        r = getattr(module, _ONLINE_ATTR)[0]
        wide = torch.promote_types(x.dtype, torch.float32)
        return (r.apply(x.to(wide)).to(x.dtype),) + tuple(args[1:])

    setattr(linear, _ONLINE_ATTR, (rotation, linear.register_forward_pre_hook(hook, prepend=True)))


def detach_online(linear: nn.Linear) -> None:
    held = getattr(linear, _ONLINE_ATTR, None)
    if held is not None:
        held[1].remove()
        delattr(linear, _ONLINE_ATTR)


def online_rotation_of(linear: nn.Module) -> Rotation | None:
    held = getattr(linear, _ONLINE_ATTR, None)
    return held[0] if held is not None else None
