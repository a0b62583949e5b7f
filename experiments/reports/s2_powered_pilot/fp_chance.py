"""Which multiple-choice tasks is the FP model above chance on? For each qgen_ task of an FP job (quantizer=none):
its accuracy over the scored items (samples.jsonl), the Wilson 95 % CI, and two chance levels — uniform (1/choices)
and the majority label's share among the same items (the first n items of the prepared eval part, the order lm-eval
reads them in with `limit`) — with an exact binomial p-value against each. A task qualifies when the CI excludes
both.

    .venv/bin/python experiments/reports/s2_powered_offline/fp_chance.py <fp job dir> [--out csv]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
from scipy import stats as st

def _eval_rows(dataset: str, n: int) -> list[dict]:
    home = Path(os.environ.get("QGEN_HOME", Path.home() / ".cache" / "qgen"))
    path = home / "data" / dataset / "eval.jsonl"
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    s = pd.read_json(Path(a.job) / "samples.jsonl", lines=True)
    rows = []
    for task, g in s[s["task"].str.startswith("qgen_")].groupby("task"):
        ds = task.removeprefix("qgen_")
        items = _eval_rows(ds, int(g["doc_id"].max()) + 1)
        labels = [items[i]["label"] for i in g["doc_id"]]
        n_choices = len(items[0]["choices"]) if "choices" in items[0] else len(set(r["label"] for r in items))
        k, n = int(g["acc"].sum()), len(g)
        lo, hi = wilson(k, n)
        uniform, majority = 1 / n_choices, Counter(labels).most_common(1)[0][1] / n
        rows.append({"task": task, "n_items": n, "acc": k / n, "ci_low": lo, "ci_high": hi, "choices": n_choices,
                     "uniform_chance": uniform, "majority_share": majority,
                     "p_vs_uniform": st.binomtest(k, n, uniform, alternative="greater").pvalue,
                     "p_vs_majority": st.binomtest(k, n, majority, alternative="greater").pvalue,
                     "above_chance": bool(lo > max(uniform, majority))})
    out = pd.DataFrame(rows)
    if a.out:
        out.to_csv(a.out, index=False)
    print(out.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
