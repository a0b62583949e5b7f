"""Statistics behind every claim in the report: mean ± std across seeds, and a paired bootstrap over evaluation
items for "configuration A beats configuration B".

The bootstrap resamples *items* (the same items scored under both configurations): with per-item scores a_i, b_i
(each averaged over the seeds a configuration was run with), d_i = a_i - b_i, it draws `n_boot` resamples of the
items with replacement and takes the percentile interval of the resampled mean differences. A difference is
significant when that interval excludes 0. The p-value is the two-sided bootstrap p: twice the share of resampled
means on the far side of 0 (capped at 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from qgen.errors import QgenError


@dataclass(frozen=True)
class PairedResult:
    n_items: int
    mean_a: float
    mean_b: float
    diff: float  # mean(a - b); positive: A scored higher
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(a, b, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> PairedResult:
    """Paired bootstrap of mean(a - b) over items; a[i] and b[i] must score the same item."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise QgenError(f"paired bootstrap needs two equal-length 1-D score arrays, got shapes {a.shape} and {b.shape}")
    if len(a) == 0:
        raise QgenError("paired bootstrap needs at least one item scored under both configurations")
    if not 0 < alpha < 1:
        raise QgenError(f"alpha={alpha!r} is not allowed: use a number between 0 and 1")
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(int(n_boot), len(d)))
    means = d[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    observed = float(d.mean())
    if observed == 0 and np.all(means == 0):
        p = 1.0
    else:
        p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return PairedResult(n_items=len(d), mean_a=float(a.mean()), mean_b=float(b.mean()), diff=observed,
                        ci_low=float(low), ci_high=float(high), p_value=p,
                        significant=bool(low > 0 or high < 0))


def item_scores(samples: pd.DataFrame, task: str, metric: str) -> pd.Series:
    """Per-item score of one task, averaged over the seeds (samples of several jobs concatenated)."""
    rows = samples[samples["task"] == task]
    if metric not in rows.columns:
        return pd.Series(dtype=float)
    rows = rows.dropna(subset=[metric])
    return rows.groupby("doc_id")[metric].mean().astype(float)


def compare_items(samples_a: pd.DataFrame, samples_b: pd.DataFrame, task: str, metric: str,
                  n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> PairedResult | None:
    """Paired bootstrap of A vs B on the items of `task` both scored; None when they share no item."""
    a, b = item_scores(samples_a, task, metric), item_scores(samples_b, task, metric)
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return None
    return paired_bootstrap(a.loc[common].to_numpy(), b.loc[common].to_numpy(), n_boot, alpha, seed)


def seed_summary(values: pd.Series) -> dict:
    """mean, std (ddof=1; NaN for a single seed) and number of seeds of one configuration's values."""
    v = values.dropna().astype(float)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "n_seeds": len(v)}


def higher_is_better(metric: str) -> bool:
    return not str(metric).startswith("ppl")
