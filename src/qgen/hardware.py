"""What this machine's CPU can do fast, read once from /proc/cpuinfo: the engine's and the scoring's `auto` dtypes
both ask here (bf16 only pays where the CPU has native bf16 dot products)."""

from __future__ import annotations

from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 dot products


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_flags(path: str | Path = "/proc/cpuinfo") -> list[str]:
    """Which of BF16_CPU_FLAGS the CPU reports."""
    flags = cpu_flags(path)
    return [f for f in BF16_CPU_FLAGS if f in flags]


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_CPU_FLAGS)
