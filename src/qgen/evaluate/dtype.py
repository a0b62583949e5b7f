"""The dtype the models are scored in (`runtime.eval_dtype`); quantizing always runs in the model's own dtype.

- `float32`, `bfloat16`, `float16`: score in that dtype.
- `auto`: bfloat16 on CUDA devices that support it; on CPUs bfloat16 only where `AUTO_BF16_ON_CPU` is set and the
  CPU has native bf16 matrix instructions (the /proc/cpuinfo flags `amx_bf16` or `avx512_bf16`); everywhere else the
  model's dtype (`model.dtype`). `AUTO_BF16_ON_CPU` is off: measured on an AVX512-BF16 CPU
  (benchmarks/RESULTS-eval-dtype.md), bf16 scoring kept the answer of 97.5 % of 200 items (below the 99 % a default
  needs), although it was 1.77x faster and moved no accuracy by more than its stderr.

Scoring in another dtype casts the model's floating-point parameters for the duration of the scoring and restores
the original tensors afterwards (`parameters_as`), so the FP weights the quantizer sees and the quantized weights an
export writes are never rounded. Buffers (rotary frequencies, static activation scales) keep their dtype, as they do
when transformers loads a model in bf16.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from qgen.errors import QgenError
from qgen.hardware import cpu_flags, cpu_has_fast_bf16  # noqa: F401 (cpu_flags: part of this module's API)

EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")
# Whether `auto` picks bf16 on a CPU with BF16_CPU_FLAGS (decided from benchmarks/eval_dtype.py; see the docstring).
AUTO_BF16_ON_CPU = False


def check_eval_dtype(value) -> None:
    if value not in EVAL_DTYPES:
        raise QgenError(f"runtime.eval_dtype={value!r} is not allowed: use one of {', '.join(EVAL_DTYPES)}")


def resolve_eval_dtype(name: str | None, device: torch.device | str, model_dtype: str,
                       flags: set[str] | None = None) -> str:
    """The dtype name (float32, bfloat16 or float16) that `runtime.eval_dtype=name` scores in on this device."""
    name = name or "auto"
    check_eval_dtype(name)
    if name != "auto":
        return name
    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    if kind == "cpu" and AUTO_BF16_ON_CPU and cpu_has_fast_bf16(flags):
        return "bfloat16"
    return str(model_dtype)


def job_eval_dtype(cfg) -> str:
    """The eval dtype a job config resolves to on this machine (before any model is loaded)."""
    from qgen.models.load import resolve_device

    runtime = cfg.get("runtime") or {}
    return resolve_eval_dtype(runtime.get("eval_dtype", "auto"), resolve_device(runtime.get("device")),
                              cfg.model.dtype)


@contextmanager
def parameters_as(model: torch.nn.Module, dtype: torch.dtype):
    """Cast the model's floating-point parameters to `dtype` inside the block; the original tensors come back
    afterwards, bit for bit (they are kept, not cast back)."""
    saved = []
    try:
        for p in model.parameters():  # each shared (tied) parameter once
            if p.is_floating_point() and p.dtype != dtype:
                saved.append((p, p.data))
                p.data = p.data.to(dtype)
        yield model
    finally:
        for p, data in saved:
            p.data = data
