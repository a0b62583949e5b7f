"""S1: each quantized configuration against the full-precision model, per task and per task family — absolute
and relative change, mean ± std over seeds, and a paired bootstrap (quantized vs FP items) behind every change.

FP per-item scores come from quantizer=none jobs of the same model, suite and limit; without such jobs, from
the FP baselines scored inside the quantized jobs themselves (their baseline_samples.jsonl). Every cell states
its n_items, and every comparison its minimum detectable difference and verdict (qgen.analysis.stats): the
`s1_power` table lists them per configuration and task.
"""

from __future__ import annotations

import math

import pandas as pd

from qgen.analysis.stats import compare_items, higher_is_better, result_fields, seed_summary
from qgen.analysis.tables import Cell, Table, ci_text, digits_for, mde_text, verdict_marks
from qgen.analysis.tidy import FP_LABEL, Samples, task_group_members, task_order

ROW_KEYS = ["model", "label", "quantizer", "bits", "calib", "n_samples", "seq_len", "suite", "limit"]
FP_KEYS = ["model", "suite", "limit"]


def _short(task: str) -> str:
    return task.replace("qgen_", "", 1)


# The count behind a task's value: its items (lm-eval items, KL windows), else its tokens (perplexity).
COUNT_METRICS = ("n_items", "tokens")


def item_counts(df: pd.DataFrame, metrics: tuple[str, ...] = COUNT_METRICS) -> dict[tuple[str, str], float]:
    """{(job dir, task): items behind the job's value of the task} from the first of `metrics` it has."""
    out = {}
    for metric in reversed(metrics):  # the first wins where a task has several
        rows = df[df["metric"] == metric]
        out.update({(d, t): v for d, t, v in zip(rows["dir"], rows["task"], rows["value"])})
    return out


def mean_count(counts: dict, dirs, task: str) -> float:
    values = [counts[(d, task)] for d in dirs if counts.get((d, task)) is not None]
    return float(sum(values) / len(values)) if values else math.nan


def per_config(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, task) of the primary metric: seed statistics of value, FP and change, and the
    items behind it (`n_items`, mean over seeds)."""
    counts = item_counts(df)
    prim = df[df["primary"]].copy()
    prim["delta"] = prim["value"] - prim["fp_value"]
    rows = []
    for key, g in prim.groupby([*ROW_KEYS, "family", "task", "metric"], sort=True):
        v, fp, d = seed_summary(g["value"]), seed_summary(g["fp_value"]), seed_summary(g["delta"])
        rel = 100 * d["mean"] / fp["mean"] if fp["mean"] not in (0, None) and not math.isnan(fp["mean"]) else math.nan
        rows.append({**dict(zip([*ROW_KEYS, "family", "task", "metric"], key)), "mean": v["mean"], "std": v["std"],
                     "n_seeds": v["n_seeds"], "fp_mean": fp["mean"], "delta_mean": d["mean"], "delta_std": d["std"],
                     "rel_change_pct": rel, "seeds": ",".join(str(s) for s in sorted(g["seed"].unique())),
                     "items": mean_count(counts, g["dir"], key[-2]), "dirs": tuple(sorted(g["dir"]))})
    return pd.DataFrame(rows)


def add_significance(stats: pd.DataFrame, df: pd.DataFrame, samples: Samples, n_boot: int, alpha: float
                     ) -> pd.DataFrame:
    """Paired bootstrap of each quantized configuration against the FP jobs' items on the same task."""
    fp_dirs = (df[df["quantizer"] == "none"].groupby(FP_KEYS)["dir"].agg(lambda s: tuple(sorted(set(s)))))
    out = []
    for _, r in stats.iterrows():
        res = None
        key = tuple(r[k] for k in FP_KEYS)
        if r["quantizer"] != "none" and not r["task"].startswith("ppl/"):
            fp = samples(fp_dirs.loc[key]) if key in fp_dirs.index else samples.baseline(r["dirs"])
            if (fp["task"] == r["task"]).any():
                res = compare_items(samples(r["dirs"]), fp, r["task"], r["metric"], n_boot, alpha)
        out.append(result_fields(res))
    return pd.concat([stats.reset_index(drop=True), pd.DataFrame(out)], axis=1)


def _row_head(r) -> dict:
    return {"Model": r["model"], "Method": r["quantizer"] if r["quantizer"] != "none" else FP_LABEL,
            "Bits": r["bits"], "Calibration": r["calib"] if r["quantizer"] != "none" else "–",
            "Seeds": r["n_seeds"]}


def tables(df: pd.DataFrame, samples: Samples, n_boot: int = 2000, alpha: float = 0.05) -> tuple[list[Table],
                                                                                                   pd.DataFrame]:
    stats = add_significance(per_config(df), df, samples, n_boot, alpha)
    tasks = sorted(stats["task"].unique(), key=task_order)
    values, deltas = [], []
    # The FP rows: quantizer=none jobs where present, else the baselines recorded inside quantized jobs.
    fp_source = stats[stats["quantizer"] == "none"]
    for model, g in stats.groupby("model"):
        fp_rows = g.groupby("task").agg(fp=("fp_mean", "mean")).dropna()
        if fp_source[fp_source["model"] == model].empty and not fp_rows.empty:
            values.append({"Model": model, "Method": f"{FP_LABEL} (baselines)", "Bits": "fp16", "Calibration": "–",
                           "Seeds": "", **{_short(t): Cell(fp_rows.loc[t, "fp"]) for t in tasks if t in fp_rows.index}})
    for _, g in stats.groupby(ROW_KEYS, sort=False):
        r = g.iloc[0]
        by_task = g.set_index("task")
        values.append({**_row_head(r), **{_short(t): Cell(by_task.loc[t, "mean"], by_task.loc[t, "std"],
                                                          digits=digits_for(by_task.loc[t, "metric"]),
                                                          n=by_task.loc[t, "items"])
                                          for t in tasks if t in by_task.index}})
        if r["quantizer"] == "none":
            continue
        deltas.append({**_row_head(r), **{
            _short(t): Cell(by_task.loc[t, "delta_mean"], by_task.loc[t, "delta_std"], by_task.loc[t, "rel_change_pct"],
                            verdict_marks(by_task.loc[t, "verdict"]), signed=True, n=by_task.loc[t, "items"],
                            digits=digits_for(by_task.loc[t, "metric"]))
            for t in tasks if t in by_task.index}})
    metric_note = ", ".join(sorted({f"{_short(t)}: {m}" for t, m in zip(stats["task"], stats["metric"])}))
    out = [Table("s1_values", "S1: scores per task (quantized and full precision)",
                 _order(pd.DataFrame(values)), stats.drop(columns="dirs"),
                 [f"Metrics — {metric_note}.", "Cells: mean ± std over seeds, [n=…] items (KL: windows; "
                                                "perplexity: tokens)."])]
    # KL and top-1 agreement are already measured against FP: a sweep of only those has no change to tabulate
    if deltas and stats.loc[stats["quantizer"] != "none", "delta_mean"].notna().any():
        out.append(Table("s1_change", "S1: change against full precision per task",
                         _order(pd.DataFrame(deltas)), stats[stats["quantizer"] != "none"].drop(columns="dirs"),
                         [("Cells: quantized − FP, mean ± std over seeds, (relative change). For perplexity "
                           "lower is better; for accuracy higher."),
                          "*: the paired bootstrap over items (quantized vs FP jobs, 95% CI) excludes 0; ≈: no "
                          "difference as large as the MDE (see s1_power); neither: too few items to tell."]))
        out.append(family_table(stats))
        out.append(power_table(stats))
    methods = method_claims(stats, samples, n_boot, alpha)
    if methods is not None:
        out.append(methods)
    return out, stats


def power_table(stats: pd.DataFrame) -> Table:
    """Every quantized-vs-FP comparison with its items, CI, minimum detectable difference and verdict."""
    q = stats[(stats["quantizer"] != "none") & stats["tested"]]
    rows = [{**_row_head(r), "Task": _short(r["task"]), "Metric": r["metric"], "n items": r["n_items"],
             "Δ vs FP": Cell(r["delta_mean"], digits=4, signed=True, marks=verdict_marks(r["verdict"])),
             "95% CI": ci_text(r["ci_low"], r["ci_high"]), "MDE (80% power)": mde_text(r["mde"]),
             "verdict": r["verdict"]} for _, r in q.iterrows()]
    data = q.drop(columns="dirs")
    return Table("s1_power", "S1: what each comparison with full precision can detect",
                 _order(pd.DataFrame(rows, columns=["Model", "Method", "Bits", "Calibration", "Seeds", "Task",
                                                    "Metric", "n items", "Δ vs FP", "95% CI", "MDE (80% power)",
                                                    "verdict"])), data,
                 ["Paired over the items both scored (quantized vs FP). MDE: the smallest true difference the paired "
                  "test detects with 80% power at two-sided α = 0.05 (binary items: max(2.80·sqrt(discordant share / "
                  "n), 2.80²/n); other scores: 2.80·sd of the differences / sqrt(n)).",
                  "verdict — different: the 95% CI excludes 0; no difference: the CI excludes every difference as "
                  "large as the MDE; too few items: neither, a difference of the detectable size is not ruled out."])


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.fillna("–")


def without_group_members(stats: pd.DataFrame) -> pd.DataFrame:
    """Drop the members of a group whose aggregate the same configuration also reports (the MMLU categories next to
    qgen_mmlu): a family mean counts each of the suite's tasks once."""
    group_of = {member: group for group, members in task_group_members().items() for member in members}
    tasks_of = stats.groupby("dirs")["task"].agg(set)  # a configuration's jobs -> its tasks
    return stats[[group_of.get(t) not in tasks_of[d] for t, d in zip(stats["task"], stats["dirs"])]]


def family_table(stats: pd.DataFrame) -> Table:
    """Mean change per task family over its tasks (a group's members counted once, through the group): absolute, in
    the metric's units, and relative to the family's mean FP score."""
    q = without_group_members(stats[stats["quantizer"] != "none"])
    fam = (q.groupby([*ROW_KEYS, "family"]).agg(delta=("delta_mean", "mean"), fp=("fp_mean", "mean"),
                                                 tasks=("task", "nunique"), n_seeds=("n_seeds", "max"),
                                                 significant=("significant", "sum")).reset_index())
    fam["rel"] = [100 * d / fp if fp else math.nan for d, fp in zip(fam["delta"], fam["fp"])]
    rows = []
    for _, g in fam.groupby(ROW_KEYS, sort=False):
        r = g.iloc[0]
        rows.append({**_row_head(r), **{
            f"{f} ({int(t)} task{'s' if t > 1 else ''})": Cell(d, rel=rl, signed=True)
            for f, d, rl, t in zip(g["family"], g["delta"], g["rel"], g["tasks"])}})
    return Table("s1_families", "S1: mean change against full precision per task family", _order(pd.DataFrame(rows)),
                 fam, ["Cells: mean over the family's tasks of (quantized − FP), and that mean relative to the "
                       "family's mean FP score. A group's members (e.g. MMLU's categories) count once, through the "
                       "group's aggregate.",
                       "Column headers give the number of tasks; higher_is_better: accuracy yes, perplexity no."])


def direction_note(metric: str) -> str:
    return "higher is better" if higher_is_better(metric) else "lower is better"


def method_claims(stats: pd.DataFrame, samples: Samples, n_boot: int, alpha: float) -> Table | None:
    """Every "method A beats method B" claim: quantizers compared pairwise at the same bits, calibration and task,
    with the paired bootstrap over the task's items; None when no two quantizers share a setting."""
    q = stats[stats["quantizer"] != "none"]
    keys = ["model", "bits", "calib", "n_samples", "seq_len", "suite", "limit", "task", "metric"]
    rows, data = [], []
    for key, g in q.groupby(keys, sort=True):
        g = g.sort_values("quantizer")
        recs = list(g.itertuples())
        for i, a in enumerate(recs):
            for b in recs[i + 1:]:
                res = None
                if not a.task.startswith("ppl/"):
                    res = compare_items(samples(a.dirs), samples(b.dirs), a.task, a.metric, n_boot, alpha)
                diff = a.mean - b.mean
                better = a.quantizer if (diff > 0) == higher_is_better(a.metric) and diff != 0 else (
                    b.quantizer if diff != 0 else "tie")
                fields = result_fields(res)
                data.append({**dict(zip(keys, key)), "a": a.quantizer, "b": b.quantizer, "mean_a": a.mean,
                             "mean_b": b.mean, "diff": diff, "better": better, **fields})
                rows.append({"Model": a.model, "Bits": a.bits, "Calibration": a.calib, "Task": _short(a.task),
                             "A": a.quantizer, "B": b.quantizer,
                             "A − B": Cell(diff, digits=4, signed=True, marks=verdict_marks(fields["verdict"]),
                                           n=fields["n_items"]),
                             "95% CI": ci_text(fields["ci_low"], fields["ci_high"]),
                             "MDE": mde_text(fields["mde"]), "verdict": fields["verdict"], "better": better})
    if not rows:
        return None
    return Table("s1_methods", "S1: quantization methods compared pairwise", pd.DataFrame(rows), pd.DataFrame(data),
                 [("A − B in the task's metric (mean over seeds), [n=…] items compared; *: the paired bootstrap 95% CI "
                   "over items excludes 0; ≈ / verdict 'no difference': the CI excludes every difference as large as "
                   "the MDE (80% power, two-sided α = 0.05); 'too few items': neither. 'better' follows the metric's "
                   "direction (lower perplexity, KL and flip rate are better).")])
