"""The Python packages benchmarks/gpu_check.py needs on a GPU machine that has torch and no network, as wheels.

Here (with the package registry):   .venv/bin/python benchmarks/gpu_wheels.py download      # -> .gpu-wheels/
There (standard library only):      python3 benchmarks/gpu_wheels.py install --target /tmp/site

`download` fetches, with `pip download --no-deps`, the versions installed in this checkout's venv (so the GPU
machine runs what the tests ran here), for --python-version (3.12, the GPU image's) and manylinux x86-64:
  - ALWAYS: what the GPU image lacks (hydra-core, omegaconf, antlr4-python3-runtime, lm-eval);
  - FALLBACK: transformers and what it and lm-eval's model code import (numpy, tokenizers, huggingface-hub, ...),
    installed there only when that distribution is missing (the GPU image has its own: its torch was built
    against its numpy), or always with `install --all`.
antlr4-python3-runtime 4.9 exists on the registry as a source archive only; it is pure Python, so `download`
builds its wheel here (`pip wheel`). The folder's total size is printed and checked against --max-mib (the
machine's working tree is limited to 64 MiB including the repository).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / ".gpu-wheels"
ALWAYS = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "lm_eval"]
FALLBACK = ["transformers", "huggingface_hub", "tokenizers", "safetensors", "numpy", "pyyaml", "regex", "tqdm",
            "packaging", "accelerate", "psutil", "requests", "charset_normalizer", "idna", "urllib3", "certifi",
            "httpx2", "httpcore2", "h11", "anyio", "truststore", "typing_extensions", "filelock", "fsspec",
            "jinja2", "markupsafe", "click", "typer", "more_itertools"]
SOURCE_ONLY = {"antlr4-python3-runtime"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_dist(path: Path) -> str:
    """The canonical distribution name of a wheel file (the part of its name before the version)."""
    return canonical(path.name.split("-")[0])


def download(dest: Path, python_version: str, max_mib: float) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    have = {wheel_dist(p) for p in dest.glob("*.whl")}
    for name in ALWAYS + FALLBACK:
        if canonical(name) in have:
            continue
        spec = f"{name}=={md.version(name)}"
        if name in SOURCE_ONLY:
            cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), spec]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", python_version, "--implementation", "cp", "-d", str(dest), spec]
            cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
        print(" ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    dists = [wheel_dist(p) for p in wheels]
    doubles = sorted({d for d in dists if dists.count(d) > 1})
    total = sum(p.stat().st_size for p in wheels) / 2**20
    for p in wheels:
        print(f"{p.stat().st_size / 2**20:7.2f} MiB  {p.name}")
    print(f"{len(wheels)} wheels, {total:.1f} MiB in {dest}")
    if doubles:
        print(f"two versions of {', '.join(doubles)}: remove one (pip stops on doubles)", file=sys.stderr)
        return 1
    if total > max_mib:
        print(f"{total:.1f} MiB is over the {max_mib} MiB limit", file=sys.stderr)
        return 1
    return 0


def install(src: Path, target: Path, everything: bool) -> int:
    """pip-install (no index, no dependencies) the ALWAYS wheels and the FALLBACK ones whose distribution this
    Python lacks, into target (put it on PYTHONPATH)."""
    always = {canonical(n) for n in ALWAYS}
    chosen, kept = [], []
    for wheel in sorted(src.glob("*.whl")):
        dist = wheel_dist(wheel)
        try:
            present = md.version(dist)
        except md.PackageNotFoundError:
            present = None
        if everything or dist in always or present is None:
            chosen.append(wheel)
        else:
            kept.append(f"{dist} {present}")
    print(f"installing {len(chosen)} wheels into {target}; this Python's own: {', '.join(kept) or 'none'}",
          flush=True)
    if not chosen:
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(target), *map(str, chosen)]
    return subprocess.run(cmd).returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch the wheels (here, with the registry)")
    d.add_argument("--dest", type=Path, default=DEST)
    d.add_argument("--python-version", default="3.12", help="the GPU machine's Python (its image: 3.12)")
    d.add_argument("--max-mib", type=float, default=50.0)
    i = sub.add_parser("install", help="install them (there, offline)")
    i.add_argument("--wheels", type=Path, default=DEST)
    i.add_argument("--target", type=Path, required=True)
    i.add_argument("--all", action="store_true", help="also the FALLBACK wheels whose package is already there")
    args = ap.parse_args()
    if args.command == "download":
        return download(args.dest, args.python_version, args.max_mib)
    return install(args.wheels, args.target, args.all)


if __name__ == "__main__":
    sys.exit(main())
