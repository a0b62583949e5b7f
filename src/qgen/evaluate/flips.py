"""Answer flips against the full-precision model for every multiple-choice task a job scored (Dutta et al. 2024,
"Accuracy is not all you need"): from the per-item `acc` of the quantized model (samples.jsonl) and of the FP
baseline (baseline_samples.jsonl), on the items both scored.

Metrics added to each such task (results.json `metrics`, the usual {value, stderr}; the rates also carry the
paired-bootstrap `ci_low`/`ci_high` of qgen.analysis.stats.flip_table):
  flip_rate (either flip), flip_c2w (FP correct, quantized wrong), flip_w2c (FP wrong, quantized correct) — shares
  of the items, stderr sqrt(r (1 - r) / n); flip_c2w_count, flip_w2c_count, flip_items — counts.
Lower is closer to FP for every rate (analysis.stats.higher_is_better).
"""

from __future__ import annotations

import math
from pathlib import Path

from qgen.analysis.stats import flip_table
from qgen.record.reader import read_samples

SCORE = "acc"
RATES = ("flip_rate", "flip_c2w", "flip_w2c")


def flip_metrics(samples, baseline, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """{task: {flip metric: {value, stderr, ...}}} for every task with binary `acc` in both frames."""
    out = {}
    if SCORE not in samples.columns or SCORE not in baseline.columns:
        return out
    for task in sorted(set(samples["task"]) & set(baseline["task"])):
        q = samples[(samples["task"] == task)].dropna(subset=[SCORE]).groupby("doc_id")[SCORE].mean()
        fp = baseline[(baseline["task"] == task)].dropna(subset=[SCORE]).groupby("doc_id")[SCORE].mean()
        common = q.index.intersection(fp.index)
        if len(common) == 0 or not (q.loc[common].isin((0, 1)).all() and fp.loc[common].isin((0, 1)).all()):
            continue
        res = flip_table(fp.loc[common].to_numpy(), q.loc[common].to_numpy(), n_boot=n_boot, seed=seed)
        row = {}
        for name, rate, ci in zip(RATES, (res.flip_rate, res.c2w_rate, res.w2c_rate),
                                  (res.flip_ci, res.c2w_ci, res.w2c_ci)):
            row[name] = {"value": rate, "stderr": math.sqrt(rate * (1 - rate) / res.n_items),
                         "ci_low": ci[0], "ci_high": ci[1]}
        row["flip_c2w_count"] = {"value": res.correct_to_wrong, "stderr": None}
        row["flip_w2c_count"] = {"value": res.wrong_to_correct, "stderr": None}
        row["flip_items"] = {"value": res.n_items, "stderr": None}
        out[task] = row
    return out


def job_flip_metrics(job_dir: Path, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Flip metrics of a job dir's samples.jsonl against its baseline_samples.jsonl (empty without a baseline)."""
    return flip_metrics(read_samples(job_dir), read_samples(job_dir, "baseline_samples.jsonl"), n_boot, seed)
