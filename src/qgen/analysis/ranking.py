"""Calibration sets ranked by the damage measured on one target dataset: what `qgen recommend` prints where finished
sweeps cover the target (qgen.analysis.recommend; the fallback, a token-distance proxy, is qgen.data.unigram).

Damage on the target, per job (lower is better; stats.damage): the mean KL(FP ‖ quantized) per token on the
target's held-out text (task `kl/<target>`, metric `kl_mean_<protocol>`) where the jobs measured it, else the
accuracy drop FP − quantized on the lm-eval task `qgen_<target>` (metric acc, else f1, exact_match, acc_norm:
tidy.SCORE_ORDER), FP being the job's own baseline or the FP job of the same model, suite, limit and seed
(record.reader.tidy_results). `damage="kl"` or `"acc"` asks for one of the two.

Settings. Finished (completed) quantized jobs are grouped by everything but the calibration set and the seed
(matrix.SETTING_KEYS: model, quantizer, bits, calib.n_samples, calib.seq_len, eval suite, item limit), and each
setting is ranked on its own: damages of different quantizers, bit widths or item sets are never pooled. The
model/quantizer/bits filters keep the matching jobs; every setting left is ranked, the one with the most
calibration sets (then jobs) first.

Per calibration set: its damage averaged over its seeds (jobs); its (1 − α) CI, the t-interval over the seeds
(stats.seed_interval: with 2 seeds, t has 1 degree of freedom and the interval is wide, as it should be) with ≥ 2
seeds, else the percentile bootstrap over the target's items (KL windows, lm-eval questions) of the per-item damage
(stats.paired_bootstrap against 0); the items (and, for KL, tokens) and seeds behind it. The seed interval says what
another calibration draw would do; the item interval holds the one draw fixed.

Against the best set (the lowest mean damage; ties by name): the difference in damage with its CI and verdict,
decided as the S2 claims are (qgen.analysis.matrix): the Welch t-test over seeds where both sets ran with ≥ 2 seeds
(stats.seed_comparison), else the paired bootstrap over the items both scored, each item's damage averaged over the
set's seeds (stats.paired_bootstrap; the difference shown is then the mean over those items). Verdicts:
`different` (CI excludes 0: distinguishable from the best), `no difference` (CI inside ± the minimum detectable
difference), `too few items` / `too few seeds`; `not tested` without per-item scores (no samples.jsonl) and fewer
than 2 seeds a side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from qgen.analysis.matrix import SETTING_KEYS
from qgen.analysis.s1 import item_counts, mean_count
from qgen.analysis.stats import (
    damage,
    item_scores,
    paired_bootstrap,
    seed_comparison,
    seed_interval,
)
from qgen.analysis.tidy import KL_PREFIX, TASK_PREFIX, Samples, primary_metrics
from qgen.errors import QgenError
from qgen.record.reader import tidy_results

DAMAGES = ("auto", "kl", "acc")
FILTERS = ("model", "quantizer", "bits")
DAMAGE_TEXT = {"kl": "mean KL(FP ‖ quantized) per token on the held-out text",
               "acc": "accuracy drop, FP − quantized"}


@dataclass
class Ranking:
    """One setting's calibration sets, best first (module docstring)."""
    setting: dict  # SETTING_KEYS -> value
    task: str
    metric: str
    rows: list[dict] = field(default_factory=list)  # per calibration set, best first


@dataclass
class Measured:
    target: str
    kind: str  # kl or acc
    jobs: int
    rankings: list[Ranking]


def covering_jobs(jobs: pd.DataFrame, target: str) -> pd.DataFrame:
    """The completed quantized jobs' rows of the target's KL and lm-eval tasks (empty when no job scored it)."""
    tasks = (f"{KL_PREFIX}{target}", f"{TASK_PREFIX}{target}")
    return jobs[jobs["task"].isin(tasks) & (jobs["quantizer"] != "none")].copy()


def apply_filters(df: pd.DataFrame, target: str, filters: dict) -> pd.DataFrame:
    """Jobs matching every given filter; a filter that matches none of the jobs covering the target is one line
    naming the values there are."""
    for key in FILTERS:
        want = filters.get(key)
        if want is None:
            continue
        kept = df[df[key].astype(str) == str(want)]
        if kept.empty:
            there = ", ".join(sorted(df[key].astype(str).unique()))
            raise QgenError(f"--{key} {want} matches no finished job that scored {target} (after the other filters); "
                            f"there are: {there}")
        df = kept
    return df


def damage_kind(df: pd.DataFrame, target: str, wanted: str) -> str:
    has = {"kl": (df["task"] == f"{KL_PREFIX}{target}").any(), "acc": (df["task"] == f"{TASK_PREFIX}{target}").any()}
    if wanted == "auto":
        return "kl" if has["kl"] else "acc"
    if not has[wanted]:
        other = "kl" if wanted == "acc" else "acc"
        raise QgenError(f"--damage {wanted}: no finished job measured {'KL to FP' if wanted == 'kl' else 'accuracy'} "
                        f"on {target}; use --damage {other} or auto")
    return wanted


def rank_measured(roots, target: str, filters: dict, wanted: str = "auto", n_boot: int = 2000,
                  alpha: float = 0.05) -> Measured | None:
    """Every setting's ranking on the target, or None when no finished job scored the target at all."""
    if wanted not in DAMAGES:
        raise QgenError(f"--damage {wanted} is not allowed: use one of {', '.join(DAMAGES)}")
    jobs = tidy_results(*roots)
    df = covering_jobs(jobs, target)
    if df.empty:
        return None
    df = apply_filters(df, target, filters)
    kind = damage_kind(df, target, wanted)
    task = f"{KL_PREFIX}{target}" if kind == "kl" else f"{TASK_PREFIX}{target}"
    counts = {"items": item_counts(df), "tokens": item_counts(df, ("tokens",))}  # before rows are kept by metric
    df = df[df["task"] == task]
    samples = Samples()
    rankings = []
    for key, g in df.groupby(SETTING_KEYS, sort=True, dropna=False):
        metric = primary_metrics({task: set(g["metric"])}, "acc")[task]
        rows = g[g["metric"] == metric]
        if metric is None or rows.empty:
            continue
        fp_dirs = _fp_dirs(jobs, dict(zip(SETTING_KEYS, key)), task) if kind == "acc" else ()
        ranking = Ranking(dict(zip(SETTING_KEYS, key)), task, metric)
        ranking.rows = _rank(rows, task, metric, counts, samples, fp_dirs, n_boot, alpha)
        rankings.append(ranking)
    if not rankings:
        raise QgenError(f"no finished job has a {'kl_mean_' if kind == 'kl' else 'accuracy'} metric on {task}")
    rankings.sort(key=lambda r: (-len(r.rows), -sum(x["seeds"] for x in r.rows)))
    return Measured(target, kind, int(df["dir"].nunique()), rankings)


def _fp_dirs(jobs: pd.DataFrame, setting: dict, task: str) -> tuple:
    """FP jobs (quantizer=none) of the setting's model, suite and limit: where per-item FP scores come from when
    the quantized jobs carry no in-job baseline."""
    fp = jobs[(jobs["quantizer"] == "none") & (jobs["task"] == task)]
    for k in ("model", "suite", "limit"):
        fp = fp[fp[k].astype(str) == str(setting[k])]
    return tuple(sorted(set(fp["dir"])))


def _item_damage(dirs, task: str, metric: str, samples: Samples, fp_dirs) -> pd.Series:
    """Per-item damage of a calibration set's jobs (averaged over seeds), indexed by doc_id; empty without
    per-item scores."""
    scores, fp = item_scores(samples(dirs), task, metric), None
    if not task.startswith(KL_PREFIX):  # an accuracy drop needs FP's score of each item
        fp = item_scores(samples.baseline(dirs), task, metric)
        if fp.empty and fp_dirs:
            fp = item_scores(samples(fp_dirs), task, metric)
        common = scores.index.intersection(fp.index)
        scores, fp = scores.loc[common], fp.loc[common]
    return damage(metric, scores, fp)


def _rank(rows: pd.DataFrame, task: str, metric: str, counts: dict, samples: Samples, fp_dirs, n_boot: int,
          alpha: float) -> list[dict]:
    rows = rows.assign(damage=damage(metric, rows["value"], rows["fp_value"]))
    sets = []
    for calib, g in rows.groupby("calib_dataset"):
        per_seed = g.dropna(subset=["damage"]).groupby("seed")["damage"].mean()
        if per_seed.empty:
            continue  # no FP value to measure an accuracy drop against
        dirs = tuple(sorted(set(g["dir"])))
        items = _item_damage(dirs, task, metric, samples, fp_dirs)
        if len(per_seed) >= 2:
            (low, high), basis = seed_interval(per_seed, alpha), "seeds"
        elif len(items):
            res = paired_bootstrap(items.to_numpy(), [0.0] * len(items), n_boot, alpha)
            low, high, basis = res.ci_low, res.ci_high, "items"
        else:
            low, high, basis = math.nan, math.nan, "none"
        sets.append({"calib": calib, "damage": float(per_seed.mean()), "ci_low": low, "ci_high": high,
                     "ci_basis": basis, "seeds": len(per_seed), "items": mean_count(counts["items"], dirs, task),
                     "tokens": mean_count(counts["tokens"], dirs, task), "_per_seed": per_seed, "_items": items})
    sets.sort(key=lambda r: (r["damage"], r["calib"]))
    return [{"rank": i, **{k: v for k, v in r.items() if not k.startswith("_")}, **_versus(r, sets[0], n_boot, alpha)}
            for i, r in enumerate(sets, 1)]


def _versus(r: dict, best: dict, n_boot: int, alpha: float) -> dict:
    """The set's damage minus the best set's, with its CI and verdict (module docstring)."""
    if r is best:
        return {"gap": 0.0, "gap_ci_low": math.nan, "gap_ci_high": math.nan, "gap_basis": "", "verdict": "best"}
    seeds = seed_comparison(r["_per_seed"], best["_per_seed"], alpha)
    if seeds is not None:
        return {"gap": seeds.diff, "gap_ci_low": seeds.ci_low, "gap_ci_high": seeds.ci_high, "gap_basis": "seeds",
                "verdict": seeds.verdict}
    common = r["_items"].index.intersection(best["_items"].index)
    if len(common):
        res = paired_bootstrap(r["_items"].loc[common].to_numpy(), best["_items"].loc[common].to_numpy(), n_boot,
                               alpha)
        return {"gap": res.diff, "gap_ci_low": res.ci_low, "gap_ci_high": res.ci_high, "gap_basis": "items",
                "verdict": res.verdict}
    return {"gap": r["damage"] - best["damage"], "gap_ci_low": math.nan, "gap_ci_high": math.nan, "gap_basis": "none",
            "verdict": "not tested"}
