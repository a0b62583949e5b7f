"""Seed-level view of the S2 powered pilot: for every test column that has an in-distribution (ID) calibration row,
the ID - OOD gap per seed (same seed on both sides: seed s picks both calibration sets' windows), its mean, sd over
seeds and a t-interval over seeds (df = seeds - 1), next to the seed-to-seed sd of the cells themselves; and the
number of seeds a seed-level test would need to detect the observed gap (and a fixed share of the FP-relative KL)
at 80 % power, two-sided alpha = 0.05.

    .venv/bin/python experiments/reports/s2_powered_offline/seed_level.py outputs/experiments/s2_powered_offline \
        --out experiments/reports/s2_powered_offline/csv/seed_level.csv

Positive gap = ID calibration better (for KL and flips: lower). Reads results.json only (qgen.analysis.tidy.load).
"""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd
from scipy import stats as st

from qgen.analysis.stats import higher_is_better
from qgen.analysis.tidy import load

METRICS = ("kl_mean_", "top1_agree_", "acc", "flip_rate")


def wanted(metric: str) -> bool:
    return metric == "acc" or metric == "flip_rate" or metric.startswith(("kl_mean_", "top1_agree_"))


def seeds_needed(sd: float, delta: float, cap: int = 1000) -> float:
    """Smallest number of seeds k >= 3 for which a paired t-test over seeds (df = k - 1) has 80 % power at
    two-sided alpha = 0.05 to detect `delta` when the per-seed gaps have sd `sd` (t-quantile approximation)."""
    if not (sd > 0 and delta > 0):
        return math.nan
    for k in range(3, cap + 1):
        if (st.t.ppf(0.975, k - 1) + st.t.ppf(0.8, k - 1)) * sd / math.sqrt(k) <= delta:
            return float(k)
    return math.inf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    df = load(a.dirs)
    df = df[(df["quantizer"] != "none") & df["metric"].map(wanted)]
    rows = []
    for (quant, bits, n, task, metric), g in df.groupby(["quantizer", "bits", "n_samples", "task", "metric"]):
        test = task.split("/", 1)[1] if "/" in task else task.removeprefix("qgen_")
        cells = g.pivot_table(index="seed", columns="calib_dataset", values="value", aggfunc="mean")
        if test not in cells.columns:
            continue
        sign = 1 if higher_is_better(metric) else -1
        fp = float(g["fp_value"].mean())
        for ood in [c for c in cells.columns if c != test]:
            pair = cells[[test, ood]].dropna()
            gaps = sign * (pair[test] - pair[ood])
            k = len(gaps)
            mean = float(gaps.mean()) if k else math.nan
            sd = float(gaps.std(ddof=1)) if k > 1 else math.nan
            half = st.t.ppf(0.975, k - 1) * sd / math.sqrt(k) if k > 1 else math.nan
            rows.append({"quantizer": quant, "bits": bits, "n_samples": n, "task": task, "metric": metric,
                         "id_calib": test, "ood_calib": ood, "seeds": k,
                         "id_mean": float(pair[test].mean()), "ood_mean": float(pair[ood].mean()),
                         "id_seed_sd": float(pair[test].std(ddof=1)) if k > 1 else math.nan,
                         "ood_seed_sd": float(pair[ood].std(ddof=1)) if k > 1 else math.nan,
                         "gap_mean": mean, "gap_seed_sd": sd, "ci_low": mean - half, "ci_high": mean + half,
                         "seed_level_significant": bool(k > 1 and (mean - half > 0 or mean + half < 0)),
                         "gap_per_seed": ";".join(f"{s}:{v:.5g}" for s, v in gaps.items()),
                         "fp_value": fp,
                         "seeds_for_observed_gap": seeds_needed(sd, abs(mean)),
                         "seeds_for_10pct_of_id": seeds_needed(sd, 0.1 * abs(float(pair[test].mean())))})
    out = pd.DataFrame(rows)
    if a.out:
        out.to_csv(a.out, index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(out.drop(columns=["gap_per_seed"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
