"""Calibration × test matrices (S2: a task family's datasets from different distributions; S3: subject
categories): rows are calibration sets, columns test sets, a cell is the primary metric (mean ± std over seeds).

A cell is in-distribution (ID) when the calibration set is the test set. For every test column that has an ID row
and at least one out-of-distribution (OOD) row, the ID cell is compared with each OOD cell by a paired bootstrap
over the test items (the research's win count: how often ID calibration wins) and with the best OOD cell (the
ID − best-OOD gap; positive means ID calibration is better, for perplexity, KL and flips too). Where both cells ran
with at least 2 seeds, each comparison also gets a Welch t-test over the seeds (qgen.analysis.stats), and that one
decides the claim's verdict: the item bootstrap holds the calibration draws fixed, the seed test asks whether the
calibration *set* helps across its draws. With one seed a side the item verdict stands, and the table says so.

A family gets one matrix per kind of task and metric: the lm-eval score (acc, …) and the answer-flip rate against
FP (`flip_rate`) of its `qgen_` tasks, the perplexity of its `ppl/` tasks, and the mean KL to FP and the top-1
agreement of its `kl/` tasks. Every cell states its n_items (windows for KL, tokens for perplexity), every
comparison its minimum detectable difference and verdict (qgen.analysis.stats).

The proxy table (`proxy_cells`, `proxy_table`): does the token distance `qgen recommend` falls back on (qgen.data.
unigram) track the damage measured in the cells? Spearman's ρ between the two over the cells and within test sets,
with bootstrap CIs and n; skipped, with the reason, where the datasets are not prepared here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from qgen.analysis.s1 import item_counts, mean_count
from qgen.analysis.stats import (
    VERDICTS,
    compare_items,
    damage,
    higher_is_better,
    rank_correlation,
    result_fields,
    seed_comparison,
    seed_fields,
    seed_summary,
)
from qgen.analysis.tables import Cell, Table, ci_text, digits_for, mde_text, verdict_marks
from qgen.analysis.tidy import FP_LABEL, KL_PREFIX, PPL_PREFIX, TASK_PREFIX, Samples
from qgen.errors import QgenError
from qgen.record.reader import NO_CALIBRATION

SETTING_KEYS = ["model", "quantizer", "bits", "n_samples", "seq_len", "suite", "limit"]


@dataclass
class Matrix:
    family: str
    setting: dict  # SETTING_KEYS -> value
    in_distribution: str | None
    metric: str
    mean: pd.DataFrame  # calib × test
    std: pd.DataFrame
    n_seeds: pd.DataFrame
    fp: pd.Series  # test -> FP value
    dirs: dict  # (calib, test) -> job dirs
    sig: set  # (calib, test) cells whose ID-vs-best-OOD comparison is significant
    tasks: dict = field(default_factory=dict)  # test -> the task its column scores
    n_items: pd.DataFrame | None = None  # calib × test: items behind each cell (mean over seeds)
    per_seed: dict = field(default_factory=dict)  # (calib, test) -> Series seed -> value

    @property
    def title(self) -> str:
        s = self.setting
        return (f"{self.family}: {s['model']} {s['quantizer']} {s['bits']} "
                f"(n={s['n_samples']}, len={s['seq_len']})")

    @property
    def higher_better(self) -> bool:
        return higher_is_better(self.metric)


# Matrix metrics besides each task's primary one: answer flips against FP, top-1 agreement with FP.
EXTRA_METRICS = ("flip_rate", "top1_agree_")


def member_task(dataset: str, tasks: set[str], kind: str = "score") -> str | None:
    """The task a family member's column reads, per kind: `score` (lm-eval, or a task named by the dataset),
    `ppl` or `kl`."""
    names = {"score": (f"{TASK_PREFIX}{dataset}", dataset), "ppl": (f"{PPL_PREFIX}{dataset}",),
             "kl": (f"{KL_PREFIX}{dataset}",)}[kind]
    return next((t for t in names if t in tasks), None)


def build(df: pd.DataFrame, groups: dict[str, dict]) -> list[Matrix]:
    """One matrix per (family, kind of task, setting, metric) with at least one calibration row (a setting that read
    no calibration set has none)."""
    # flips count the items both models scored (flip_items); every other metric its task's n_items (or tokens)
    counts, flip_counts = item_counts(df), item_counts(df, ("flip_items",))
    # data-free settings (rtn, rotate+rtn: calibration 'none') have no calibration row to compare; S1 shows them
    prim = df[(df["primary"] | df["metric"].astype(str).str.startswith(EXTRA_METRICS)) & (df["quantizer"] != "none")
              & (df["calib_dataset"] != NO_CALIBRATION)]
    tasks = set(prim["task"])
    out = []
    for (family, spec), kind in ((f, k) for f in groups.items() for k in ("score", "ppl", "kl")):
        cols = {m: member_task(m, tasks, kind) for m in spec["members"]}
        cols = {m: t for m, t in cols.items() if t}
        if not cols:
            continue
        sub = prim[prim["task"].isin(cols.values())].copy()
        sub["test"] = sub["task"].map({t: m for m, t in cols.items()})
        metrics = sorted(sub["metric"].unique())
        for setting, g in sub.groupby(SETTING_KEYS, sort=True):
            for metric in metrics:
                gm = g[g["metric"] == metric]
                if gm.empty:
                    continue
                out.append(_matrix(family, dict(zip(SETTING_KEYS, setting)), spec, metric, gm,
                                   [m for m in spec["members"] if m in cols], cols,
                                   flip_counts if metric.startswith("flip_") else counts))
    return out


def _matrix(family, setting, spec, metric, g, members, cols, counts) -> Matrix:
    calibs = sorted(g["calib_dataset"].unique(), key=lambda c: (c not in members, members.index(c)
                                                                 if c in members else 0, c))
    mean = pd.DataFrame(math.nan, index=calibs, columns=members)
    std, n, items = mean.copy(), mean.copy(), mean.copy()
    dirs, per_seed = {}, {}
    count_task = {m: cols[m] for m in members}
    for (calib, test), cell in g.groupby(["calib_dataset", "test"]):
        s = seed_summary(cell["value"])
        mean.loc[calib, test], std.loc[calib, test], n.loc[calib, test] = s["mean"], s["std"], s["n_seeds"]
        dirs[(calib, test)] = tuple(sorted(cell["dir"]))
        per_seed[(calib, test)] = cell.groupby("seed")["value"].mean()
        items.loc[calib, test] = mean_count(counts, cell["dir"], count_task[test])
    fp = g.groupby("test")["fp_value"].mean().reindex(members)
    return Matrix(family, setting, spec.get("in_distribution"), metric, mean, std, n, fp, dirs, set(),
                  tasks=count_task, n_items=items, per_seed=per_seed)


def _pair(m: Matrix, test: str, a: str, b: str, samples: Samples, n_boot: int, alpha: float) -> dict:
    """Calibration a against calibration b on one test column: gap (positive = a better, also where lower is
    better), its item-bootstrap CI (ci_low/ci_high, mde, item_verdict) and, with >= 2 seeds a side, its seed-level
    Welch CI (seed_*); `verdict` and `significant` are the seed-level ones where that test ran, else the items'."""
    sign = 1 if m.higher_better else -1
    task = m.tasks[test]
    res = None
    if not task.startswith(PPL_PREFIX):  # perplexity has no per-item scores
        res = compare_items(samples(m.dirs[(a, test)]), samples(m.dirs[(b, test)]), task, m.metric, n_boot, alpha)
    gap = sign * (m.mean.loc[a, test] - m.mean.loc[b, test])
    fields = result_fields(res)
    seeds = seed_fields(seed_comparison(m.per_seed.get((a, test)), m.per_seed.get((b, test)), alpha))
    if sign < 0:  # the CIs of the gap, in the "a is better" direction
        fields["ci_low"], fields["ci_high"] = -fields["ci_high"], -fields["ci_low"]
        seeds["seed_ci_low"], seeds["seed_ci_high"] = -seeds["seed_ci_high"], -seeds["seed_ci_low"]
    fields["item_verdict"], fields["item_significant"] = fields["verdict"], fields["significant"]
    if seeds["seed_verdict"] != "not tested":
        fields["verdict"], fields["significant"] = seeds["seed_verdict"], seeds["seed_significant"]
    return {"gap": gap, "outcome": "win" if gap > 0 else "tie" if gap == 0 else "loss", **fields, **seeds}


def _scored(m: Matrix, calib: str, test: str) -> bool:
    return calib in m.mean.index and not math.isnan(m.mean.loc[calib, test])


def comparisons(m: Matrix, samples: Samples, n_boot: int, alpha: float) -> pd.DataFrame:
    """Every ID-vs-OOD claim of a matrix: one row per (test column, OOD calibration), gap positive = ID better
    (`_pair`), and whether that OOD set is the best one on the test set."""
    rows = []
    sign = 1 if m.higher_better else -1
    for test in m.mean.columns:
        if not _scored(m, test, test):
            continue
        oods = [c for c in m.mean.index if c != test and _scored(m, c, test)]
        if not oods:
            continue
        best = max(oods, key=lambda c: sign * m.mean.loc[c, test])
        for calib in oods:
            fields = _pair(m, test, test, calib, samples, n_boot, alpha)
            rows.append({**m.setting, "family": m.family, "metric": m.metric, "test": test, "id_calib": test,
                         "ood_calib": calib, "best_ood": calib == best, "id_value": m.mean.loc[test, test],
                         "ood_value": m.mean.loc[calib, test], **fields})
            if calib == best and fields["significant"]:
                m.sig.add((test, test))
    return pd.DataFrame(rows)


def against(m: Matrix, reference: str, samples: Samples, n_boot: int, alpha: float) -> pd.DataFrame:
    """Every other calibration row of a matrix against one reference calibration set (e.g. a generic corpus, to ask
    whether self-generated text or a domain's own text beats it), per test column: gap positive = that row better."""
    rows = []
    for test in m.mean.columns:
        if not _scored(m, reference, test):
            continue
        for calib in (c for c in m.mean.index if c != reference and _scored(m, c, test)):
            rows.append({**m.setting, "family": m.family, "metric": m.metric, "test": test, "calib": calib,
                         "in_distribution": calib == test, "reference": reference,
                         "value": m.mean.loc[calib, test], "reference_value": m.mean.loc[reference, test],
                         **_pair(m, test, calib, reference, samples, n_boot, alpha)})
    return pd.DataFrame(rows)


def matrix_table(m: Matrix, name: str) -> Table:
    rows = []
    for calib in m.mean.index:
        row = {"Calibration": calib}
        for test in m.mean.columns:
            marks = set()
            if calib == test:
                marks.add("id")
                if (calib, test) in m.sig:
                    marks.add("sig")
            row[_col(test, m)] = Cell(m.mean.loc[calib, test], m.std.loc[calib, test], marks=frozenset(marks),
                                      digits=digits_for(m.metric), n=_items(m, calib, test))
        rows.append(row)
    if m.fp.notna().any():  # KL and top-1 agreement are measured against FP already: no FP row of their own
        rows.append({"Calibration": f"{FP_LABEL} (reference)",
                     **{_col(t, m): Cell(m.fp[t], digits=digits_for(m.metric)) for t in m.mean.columns}})
    data = (m.mean.stack().rename("mean").to_frame().join(m.std.stack().rename("std"))
            .join(m.n_seeds.stack().rename("n_seeds")).reset_index(names=["calib", "test"]))
    data["n_items"] = [_items(m, c, t) for c, t in zip(data["calib"], data["test"])]
    data["in_distribution_cell"] = data["calib"] == data["test"]
    data["significant_vs_best_ood"] = [(c, t) in m.sig for c, t in zip(data["calib"], data["test"])]
    for k, v in m.setting.items():
        data[k] = v
    data["family"], data["metric"] = m.family, m.metric
    notes = [(f"Metric: {m.metric} ({'higher' if m.higher_better else 'lower'} is better); rows: calibration set, "
              "columns: test set."),
             ("**Bold**: in-distribution cell (calibration set = test set); *: it differs significantly from the "
              "best out-of-distribution calibration on that test set (95% CI: Welch t over seeds where both cells "
              "have ≥ 2 seeds, else paired bootstrap over items). "
              f"[n=…]: {_unit(m)} behind the cell (mean over seeds).")]
    if m.in_distribution:
        notes.append(f"The family's in-distribution member: {m.in_distribution} (marked ID in the header).")
    return Table(name, f"Calibration × test — {m.title}", pd.DataFrame(rows).fillna("–"), data, notes)


def _items(m: Matrix, calib: str, test: str) -> float:
    return math.nan if m.n_items is None else m.n_items.loc[calib, test]


def _unit(m: Matrix) -> str:
    kinds = {t.split("/")[0] for t in m.tasks.values() if "/" in t}
    return "tokens" if kinds == {"ppl"} else "windows of held-out text" if kinds == {"kl"} else (
        "items both models scored" if m.metric.startswith("flip_") else "items")


def _col(test: str, m: Matrix) -> str:
    return f"{test} (ID)" if test == m.in_distribution else test


def win_table(claims: pd.DataFrame, name: str, title: str) -> Table:
    """The research's count: how often ID calibration beats OOD calibration, per setting and over everything."""
    if claims.empty:
        raise QgenError("no test set has both an in-distribution and an out-of-distribution calibration row; "
                        "calibrate on at least one member of a group and on one other set")
    keys = ["metric", "model", "quantizer", "bits", "n_samples", "seq_len"]
    rows, data = [], []
    parts = []
    for metric, per_metric in claims.groupby("metric", sort=True):  # a count never mixes metrics
        parts += [(dict(zip(keys, k)), g) for k, g in per_metric.groupby(keys, sort=True)]
        parts.append(({"metric": metric, "model": "all", "quantizer": "all", "bits": "all", "n_samples": "",
                       "seq_len": ""}, per_metric))
    for head, g in parts:
        best = g[g["best_ood"]]
        stats = {"pairs": len(g), "id_wins": int((g["outcome"] == "win").sum()),
                 "ties": int((g["outcome"] == "tie").sum()),
                 "significant_wins": int((g["significant"] & (g["outcome"] == "win")).sum()),
                 "significant_losses": int((g["significant"] & (g["outcome"] == "loss")).sum()),
                 "tests": len(best), "id_best": int((best["gap"] > 0).sum()),
                 "id_best_significant": int((best["significant"] & (best["gap"] > 0)).sum()),
                 **{f"verdict_{v.replace(' ', '_')}": int((g["verdict"] == v).sum()) for v in VERDICTS},
                 "median_mde": float(g["mde"].median()) if g["mde"].notna().any() else math.nan,
                 "mean_gap_to_best_ood": float(best["gap"].mean())}
        data.append({**head, **stats})
        rows.append({"Metric": head["metric"], "Model": head["model"], "Method": head["quantizer"],
                     "Bits": head["bits"],
                     "n / len": f"{head['n_samples']} / {head['seq_len']}" if head["n_samples"] != "" else "all",
                     "ID wins (pairs)": f"{stats['id_wins']}/{stats['pairs']}",
                     "ties": stats["ties"],
                     "significant wins / losses": f"{stats['significant_wins']} / {stats['significant_losses']}",
                     "ID best (test sets)": f"{stats['id_best']}/{stats['tests']}",
                     "…significantly": stats["id_best_significant"],
                     "no difference / too few items / seeds": f"{stats['verdict_no_difference']} / "
                                                              f"{stats['verdict_too_few_items']} / "
                                                              f"{stats['verdict_too_few_seeds']}",
                     "median MDE": mde_text(stats["median_mde"]),
                     "gap to best OOD": Cell(stats["mean_gap_to_best_ood"], digits=4, signed=True)})
    notes = [("Pairs: (test set, OOD calibration set) compared with the ID calibration on that test set. Gap: "
              "ID − best OOD score per test set, averaged (positive: ID calibration is better; perplexity sign "
              "flipped)."),
             ("Significant: the 95% CI of the difference excludes 0 — the Welch t-interval over seeds where both "
              "cells ran with ≥ 2 seeds (does the calibration set help across its draws?), else the paired "
              "bootstrap over test items (tasks with per-item scores only; perplexity has none). No difference: "
              "not significant, and the CI excludes every difference as large as the test's minimum detectable "
              "difference (MDE, 80% power, two-sided α = 0.05); too few items / too few seeds: neither — a "
              "difference of the detectable size is not ruled out. Median MDE: the item-level one.")]
    return Table(name, title, pd.DataFrame(rows), pd.DataFrame(data), notes)


def _pair_cells(r, gap: str) -> dict:
    """The columns of one `_pair` comparison in a table: the gap, its item and seed CIs, MDEs and verdicts."""
    return {gap: Cell(r.gap, digits=4, signed=True, marks=verdict_marks(r.verdict), n=r.n_items),
            "95% CI (items)": ci_text(r.ci_low, r.ci_high),
            "p": "–" if math.isnan(r.p_value) else f"{r.p_value:.3f}", "MDE (items)": mde_text(r.mde),
            "item verdict": r.item_verdict,
            "seeds": "–" if math.isnan(r.seeds_a) else f"{r.seeds_a:.0f} / {r.seeds_b:.0f}",
            "95% CI (seeds)": ci_text(r.seed_ci_low, r.seed_ci_high), "MDE (seeds)": mde_text(r.seed_mde),
            "seeds to detect the gap": _seeds_text(r.seeds_for_gap), "verdict": r.verdict}


def claims_table(claims: pd.DataFrame, name: str, title: str) -> Table:
    rows = [{"Setting": f"{r.model} {r.quantizer} {r.bits} n={r.n_samples} len={r.seq_len}",
             "Family": r.family, "Metric": r.metric, "Test": r.test, "ID calib": r.id_calib, "OOD calib": r.ood_calib,
             **_pair_cells(r, "Gap (ID − OOD)")} for r in claims.itertuples()]
    return Table(name, title, pd.DataFrame(rows), claims,
                 ["Every ID-vs-OOD claim (gap sign: positive = ID better, also where lower is better). Items: the "
                  "paired-bootstrap 95% CI over test items, the calibration draws held fixed; [n=…]: items paired. "
                  "Seeds: the Welch 95% t-interval over the seeds (ID seeds / OOD seeds, each seed a calibration "
                  "draw scored on the same items), where both sides have ≥ 2; seeds to detect the gap: seeds per "
                  "calibration set that would detect the observed gap at 80% power from the observed spreads. "
                  "verdict: the seed-level one where that test ran, else the item-level one; *: CI excludes 0; "
                  "≈ / 'no difference': the CI excludes every difference as large as the MDE (80% power, two-sided "
                  "α = 0.05); 'too few items' / 'too few seeds': neither."])


def against_table(claims: pd.DataFrame, name: str, title: str) -> Table:
    rows = [{"Setting": f"{r.model} {r.quantizer} {r.bits} n={r.n_samples} len={r.seq_len}",
             "Metric": r.metric, "Test": r.test, "Calibration": f"{r.calib} (ID)" if r.in_distribution else r.calib,
             "Reference": r.reference, "Value": Cell(r.value, digits=4), "Reference value": Cell(r.reference_value,
                                                                                              digits=4),
             **_pair_cells(r, "Gap (calib − reference)")} for r in claims.itertuples()]
    return Table(name, title, pd.DataFrame(rows), claims,
                 ["Every calibration set against the reference set on each test set (gap sign: positive = the "
                  "calibration set does better than the reference, also where lower is better). CIs, MDEs and "
                  "verdicts as in the ID-vs-OOD table: the seed-level Welch interval decides where both sides have "
                  "≥ 2 seeds, else the paired item bootstrap."])


def _seeds_text(k: float) -> str:
    return "–" if math.isnan(k) else "> 1000" if math.isinf(k) else f"{k:.0f}"


def proxy_cells(mats: list[Matrix], alpha: float = 0.05) -> pd.DataFrame:
    """Every cell of the matrices with a measured damage (stats.damage of the cell's mean against its column's FP
    value) beside the proxy distance from its test set's evaluation text to its calibration set's calibration text
    under the setting model's tokenizer (qgen.data.unigram: the bias-corrected JS divergence of unigram token
    distributions, the distance `qgen recommend` ranks by). `why` says why a cell has no distance: a calibration
    mixture or `self`, or a dataset not registered or not prepared here (the report never prepares data). A model
    whose tokenizer cannot be loaded is one QgenError."""
    from qgen.data import unigram

    tokenizers, parts, found, rows = {}, {}, {}, []

    def counts(m: Matrix, dataset: str, part: str):
        model = m.setting["model"]
        if model not in tokenizers:
            tokenizers[model] = _tokenizer_of(m)
        if (model, dataset, part) not in parts:
            parts[(model, dataset, part)] = unigram.part_counts(tokenizers[model], dataset, part)
        return parts[(model, dataset, part)]

    for m in mats:
        for calib in m.mean.index:
            for test in m.mean.columns:
                harm = damage(m.metric, m.mean.loc[calib, test], m.fp[test])
                if math.isnan(harm):
                    continue
                why, dist = _not_prepared(calib) or _not_prepared(test), math.nan
                if not why:
                    key = (m.setting["model"], calib, test)
                    if key not in found:
                        found[key] = unigram.estimate(counts(m, test, "eval"), counts(m, calib, "calib"),
                                                      alpha=alpha).distance
                    dist = found[key]
                rows.append({**m.setting, "family": m.family, "metric": m.metric, "calib": calib, "test": test,
                             "damage": harm, "distance": dist, "why": why})
    return pd.DataFrame(rows)


def _not_prepared(dataset: str) -> str:
    from qgen.data import registry
    from qgen.data.prepare import is_prepared

    try:
        spec = registry.get(dataset)
    except QgenError:
        return f"{dataset} is not a registered dataset"
    return "" if is_prepared(spec) else f"{dataset} is not prepared here"


def _tokenizer_of(m: Matrix):
    """The tokenizer of the model a matrix's jobs ran (their recorded model config)."""
    from omegaconf import OmegaConf

    from qgen.models.source import checked_tokenizer
    from qgen.record.reader import read_configs

    job_dir = next(d for dirs in m.dirs.values() for d in dirs)
    model = (next(iter(read_configs(job_dir).values()), None) or {}).get("model") or {}
    return checked_tokenizer(OmegaConf.create(model))


def proxy_table(cells: pd.DataFrame, name: str, title: str, n_boot: int, alpha: float) -> Table:
    """Is the proxy distance correlated with the measured damage? Per setting and metric, Spearman's ρ between
    distance and damage over the cells (stats.rank_correlation, bootstrap over cells), and within test sets (ranks
    taken inside each test column, bootstrap over test sets: does the distance order the calibration sets of one
    target, as the recommender uses it?). A QgenError, the report's note, when no cell has a distance."""
    if cells.empty:
        raise QgenError("no calibration × test cell has a measured damage")
    have = cells[cells["distance"].notna()]
    if have.empty:
        raise QgenError(f"no cell has a proxy distance ({'; '.join(sorted(set(cells['why'])))})")
    level = f"{100 * (1 - alpha):.0f}%"
    rows, data = [], []
    for key, g in cells.groupby([*SETTING_KEYS, "metric"], sort=True):
        ok = g[g["distance"].notna()]
        setting = dict(zip([*SETTING_KEYS, "metric"], key))
        for scope, groups, unit in (("all cells", None, "cells"), ("within test sets", "test", "test sets")):
            try:
                r = rank_correlation(ok["distance"], ok["damage"], None if groups is None else ok[groups],
                                     n_boot, alpha)
            except QgenError:
                continue  # fewer than 2 cells, or no test set with 2 calibration rows
            data.append({**setting, "scope": scope, "n": r.n, "unit": unit, "rho": r.rho, "ci_low": r.ci_low,
                         "ci_high": r.ci_high, "n_boot_defined": r.n_boot, "p_value": r.p_value,
                         "p_exact": r.exact, "cells": len(ok), "cells_without_distance": len(g) - len(ok)})
            rows.append({"Setting": f"{setting['model']} {setting['quantizer']} {setting['bits']} "
                                    f"n={setting['n_samples']} len={setting['seq_len']}",
                         "Metric (damage)": setting["metric"], "Scope": scope, "n": f"{r.n} {unit}",
                         "Spearman ρ": "–" if math.isnan(r.rho) else f"{r.rho:+.3f}",
                         f"{level} CI": ci_text(r.ci_low, r.ci_high),
                         "p (permutations)": "–" if math.isnan(r.p_value) else
                         f"{r.p_value:.3f}{'' if r.exact else ' (MC)'}",
                         "cells without a distance": len(g) - len(ok)})
    if not rows:
        raise QgenError("no setting has 2 cells with a proxy distance")
    skipped = sorted(set(cells.loc[cells["distance"].isna(), "why"]))
    notes = [("Proxy: the bias-corrected Jensen–Shannon divergence (nats) between the unigram token distributions of "
              "the test set's evaluation text and the calibration set's calibration text, under the model's "
              "tokenizer (qgen.data.unigram; what `qgen recommend` ranks by where no sweep measured a target). "
              "Damage: the cell's departure from FP in the harmful direction — the KL or flip rate itself, 1 − the "
              "top-1 agreement, FP − score for accuracy, perplexity − FP. ρ > 0: calibration text farther from the "
              "test text goes with more damage."),
             (f"All cells: Spearman's ρ over the cells, {level} percentile bootstrap over cells ({n_boot} "
              "resamples; cells sharing a test or calibration set are not independent, so this CI is optimistic). "
              "Within test sets: ranks taken inside each test column and centred, ρ pooled over the columns, "
              "bootstrap over test sets — the recommender's question (does the distance order the calibration "
              "sets of one target?). With few cells or test sets the bootstrap CI understates the uncertainty "
              "(test sets that all agree give [1, 1]); p: two-sided, from permuting the damages over the cells "
              "(within each test set for the second scope), exact over every permutation where there are at most "
              "10,000, else Monte Carlo (MC) with as many permutations as bootstrap resamples.")]
    if skipped:
        notes.append("Cells without a distance: " + "; ".join(skipped) + ".")
    return Table(name, title, pd.DataFrame(rows), pd.DataFrame(data), notes)
