"""Scenario reports under a report dir: `<dir>/<scenario>.md` (tables inline, figures embedded), each table also
as `tables/<name>.md|.tex` and `csv/<name>.csv`, figures under `figures/`. What `qgen report` and the Makefile's
`tables`, `figures` and `report-s1|s2|s3` targets run.

Each report kind is one entry of `KINDS`: its title, the eval suites whose jobs it reads (`s1_*` / `s2_*` / `s3_*`,
or `--suite`), what it reads where no suite matches (S1 every job, S2 the jobs whose suite records `groups`; S2/S3
all jobs given `--groups`), and the function that builds its section. A new kind is one entry there.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qgen.analysis import ablation, figures, matrix, s1
from qgen.analysis import groups as groups_mod
from qgen.analysis.command import SCENARIOS
from qgen.analysis.tables import LEGEND, Table
from qgen.analysis.tidy import (
    FP_LABEL,
    KL_PREFIX,
    SCORE_ORDER,
    Samples,
    configs_of,
    load,
    task_family,
    task_order,
)
from qgen.errors import QgenError
from qgen.record.reader import read_timings

log = logging.getLogger(__name__)

@dataclass
class Options:
    roots: list[str]
    out_dir: Path = Path("report")
    scenarios: tuple[str, ...] = ("s1", "s2", "s3")
    groups: dict | None = None  # explicit S2/S3 mapping (overrides what the jobs record)
    suite: str | None = None  # glob over eval suite names; default per scenario
    score: str = "acc"
    n_boot: int = 2000
    alpha: float = 0.05
    tables: bool = True
    figures: bool = True
    against: tuple[str, ...] = ()  # S2/S3: also compare every calibration set with each of these (e.g. xsum)


@dataclass
class Section:
    scenario: str
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, path)
    notes: list[str] = field(default_factory=list)
    jobs: int = 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_").lower()


def _all_jobs(df, configs, pattern):
    return df, f"all jobs (no {pattern} suite found)"


def _jobs_with_groups(df, configs, pattern):  # before an s2_* suite exists: any suite that records groups
    with_groups = {d for d, c in configs.items() if ((c.get("eval_suite") or {}).get("groups"))}
    return df[df["dir"].isin(with_groups)], f"jobs whose suite records groups (no {pattern} suite found)"


def _subjects_of_tasks(chosen) -> dict:  # S3 without recorded categories: every scored dataset is one subject
    members = sorted(chosen.loc[~chosen["task"].str.startswith("ppl/"), "dataset"].unique())
    return {"subjects": {"in_distribution": None, "members": members}}


def select(df: pd.DataFrame, configs: dict, scenario: str, opts: Options) -> tuple[pd.DataFrame, dict, str]:
    """The jobs a scenario reads, its task families, and a one-line description of the choice."""
    kind = KINDS[scenario]
    pattern = opts.suite or kind.suites
    chosen = df[df["suite"].map(lambda s: fnmatch.fnmatch(str(s), pattern))]
    how = f"eval suites matching {pattern!r}"
    if chosen.empty and opts.suite is None:
        if opts.groups and kind.families:
            chosen, how = df, "all jobs (explicit groups)"
        elif kind.fallback:
            chosen, how = kind.fallback(df, configs, pattern)
    if chosen.empty:
        raise QgenError(f"{scenario}: no completed job selected ({how}); run the scenario's sweep or pass --suite")
    if opts.groups:
        fams = opts.groups
    else:
        fams = groups_mod.from_configs({d: c for d, c in configs.items() if d in set(chosen["dir"])})
        if not fams and kind.default_families:
            fams = kind.default_families(chosen)
    if fams:
        chosen = chosen.copy()
        chosen["family"] = chosen["task"].map(lambda t: task_family(t, fams))
    return chosen, fams, f"{chosen['dir'].nunique()} jobs: {how}"


def run_s1(df, opts: Options, samples: Samples, section: Section) -> None:
    tables, stats = s1.tables(df, samples, opts.n_boot, opts.alpha)
    section.tables += tables
    if not opts.figures:
        return
    for model, g in stats.groupby("model"):
        q = s1.without_group_members(g[g["quantizer"] != "none"])  # one axis per suite task (MMLU, not its parts)
        q = q[~q["task"].str.startswith(KL_PREFIX)]  # a KL has no "% of FP" (FP's own KL is 0)
        if q.empty:
            continue
        tasks = sorted(q["task"].unique(), key=task_order)
        q = q.assign(rel=[100 * (fp / v if m.startswith("ppl") else v / fp)
                          if not (math.isnan(fp) or math.isnan(v)) and (v if m.startswith("ppl") else fp)
                          else math.nan for v, fp, m in zip(q["mean"], q["fp_mean"], q["metric"])])
        # one polygon per method/bits and calibration set; averaged over calibration sets when that is too many
        per_calib = q["calib"].nunique() > 1 and q.groupby(["label", "calib"]).ngroups <= 8
        keys = ["label", "calib"] if per_calib else ["label"]
        series = {" / ".join(map(str, k if isinstance(k, tuple) else (k,))):
                  [c.groupby("task")["rel"].mean().get(t, math.nan) for t in tasks]
                  for k, c in q.groupby(keys, sort=True)}
        note = "" if per_calib or q["calib"].nunique() == 1 else ", mean over calibration sets"
        path = opts.out_dir / "figures" / f"s1_radar_{_slug(model)}.png"
        figures.radar([t.replace("qgen_", "") for t in tasks], series, path,
                      f"S1: {model}, score relative to FP (100 = unquantized; perplexity inverted){note}",
                      "% of FP (higher is better)", reference=100.0,
                      legend_title="method bits / calibration" if per_calib else "method bits")
        section.figures.append((f"{model}: each configuration's score as % of FP (unquantized) per task", path))


def run_matrix(df, fams, opts: Options, samples: Samples, section: Section, prefix: str) -> None:
    if not fams:
        raise QgenError(f"{prefix}: no task groups — the jobs' suites record no eval_suite.groups; pass --groups "
                        f"'{{family: {{in_distribution: dataset, members: [datasets]}}}}'")
    mats = matrix.build(df, fams)
    if not mats:
        members = ", ".join(m for s in fams.values() for m in s["members"])
        raise QgenError(f"{prefix}: none of the groups' members ({members}) was evaluated by a quantized job")
    claims = []
    for m in mats:
        c = matrix.comparisons(m, samples, opts.n_boot, opts.alpha)
        if not c.empty:
            claims.append(c)
    for m in mats:
        name = f"{prefix}_{_slug(m.family)}_{_slug(m.setting['model'])}_{_slug(m.setting['quantizer'])}_" \
               f"{_slug(m.setting['bits'])}_n{m.setting['n_samples']}_l{m.setting['seq_len']}_{_slug(m.metric)}"
        section.tables.append(matrix.matrix_table(m, name))
    if claims:
        all_claims = pd.concat(claims, ignore_index=True)
        section.tables.insert(0, matrix.win_table(all_claims, f"{prefix}_wins",
                                                  f"{prefix.upper()}: how often in-distribution calibration wins"))
        section.tables.append(matrix.claims_table(all_claims, f"{prefix}_claims",
                                                  f"{prefix.upper()}: every ID-vs-OOD comparison"))
    else:
        section.notes.append("No test set was calibrated on both in-distribution and out-of-distribution data, so "
                             "there is no win count.")
    for reference in opts.against:
        found = [c for c in (matrix.against(m, reference, samples, opts.n_boot, opts.alpha) for m in mats)
                 if not c.empty]
        if not found:
            calibs = sorted({c for m in mats for c in m.mean.index})
            raise QgenError(f"--against {reference}: no matrix has a {reference!r} calibration row; its rows: "
                            f"{', '.join(calibs)}")
        section.tables.append(matrix.against_table(pd.concat(found, ignore_index=True),
                                                   f"{prefix}_against_{_slug(reference)}",
                                                   f"{prefix.upper()}: every calibration set against {reference}"))
    try:
        section.tables.append(matrix.proxy_table(matrix.proxy_cells(mats, opts.alpha), f"{prefix}_proxy",
                                                 f"{prefix.upper()}: does the token-distance proxy track the "
                                                 f"measured damage?", opts.n_boot, opts.alpha))
    except QgenError as exc:
        section.notes.append(f"No token-distance proxy table: {exc}.")
    if not opts.figures:
        return
    by_family: dict = {}
    for m in mats:
        by_family.setdefault((m.family, m.setting["model"], m.metric), []).append(m)
    for (family, model, metric), ms in by_family.items():
        stem = f"{prefix}_{_slug(family)}_{_slug(model)}_{_slug(metric)}"
        path = figures.heatmaps(ms, opts.out_dir / "figures" / f"{stem}_heatmap.png",
                                f"{prefix.upper()} {family}: {model}, {metric}")
        section.figures.append((f"{family} ({model}, {metric}): calibration × test heatmaps", path))
        for m in ms:
            series = {c: [m.mean.loc[c, t] for t in m.mean.columns] for c in m.mean.index}
            series_fp = [m.fp[t] for t in m.mean.columns]
            s = m.setting
            kind = "radar" if len(m.mean.columns) >= 3 else "bars"  # a radar needs three axes
            rpath = opts.out_dir / "figures" / (f"{stem}_{_slug(s['quantizer'])}_{_slug(s['bits'])}_n{s['n_samples']}"
                                                f"_l{s['seq_len']}_{kind}.png")
            series[FP_LABEL] = series_fp
            figures.radar(list(m.mean.columns), series, rpath, f"{prefix.upper()} {m.title}",
                          f"{metric} per test set", legend_title=f"calibration set ({FP_LABEL}: unquantized)")
            section.figures.append((f"{m.title}: scores per test set, one series per calibration set", rpath))


def run_ablation(df, opts: Options, section: Section) -> None:
    found = False
    for knob in ("n_samples", "seq_len"):
        for setting, rows in ablation.curves(df, knob):
            found = True
            stem = f"ablation_{knob}_{_slug(setting['model'])}_{_slug(setting['quantizer'])}_" \
                   f"{_slug(setting['bits'])}_{_slug(setting['calib_dataset'])}"
            section.tables.append(ablation.table(setting, rows, knob, stem))
            if opts.figures:
                path = ablation.figure(setting, rows, knob, opts.out_dir / "figures" / f"{stem}.png")
                caption = f"{knob}: {setting['quantizer']} {setting['bits']}, calibration {setting['calib_dataset']}"
                section.figures.append((caption, path))
    if not found:
        raise QgenError("ablation: no configuration was run with two or more calib.n_samples or calib.seq_len values")


def build(opts: Options) -> list[Path]:
    for s in opts.scenarios:
        if s not in SCENARIOS:
            raise QgenError(f"unknown scenario {s!r}; available: {', '.join(SCENARIOS)}")
    df = load(opts.roots, score=opts.score)
    # a score no job has is a typo where accuracy-type tasks were scored; a KL-only sweep has none to choose from
    if opts.score not in set(df["metric"]) and set(df["metric"]) & set(SCORE_ORDER):
        known = ", ".join(sorted(set(df["metric"])))
        raise QgenError(f"score {opts.score!r} is not a metric of any job; metrics: {known}")
    configs = configs_of(opts.roots)
    samples = Samples()
    written = []
    skipped = []
    for scenario in opts.scenarios:
        t0 = time.perf_counter()
        try:
            section = scenario_section(df, configs, scenario, opts, samples)
        except QgenError as exc:
            if len(opts.scenarios) == 1:
                raise
            skipped.append((scenario, str(exc)))
            log.warning("report %s skipped: %s", scenario, exc)
            continue
        written += write(section, opts)
        log.info("report %s: %d tables, %d figures (%.1f s)", scenario, len(section.tables), len(section.figures),
                 time.perf_counter() - t0)
    if len(skipped) == len(opts.scenarios):
        raise QgenError("; ".join(f"{s}: {e}" for s, e in skipped))
    written.append(write_index(opts, skipped))
    return written


def run_families(df, fams, opts: Options, samples: Samples, section: Section) -> None:
    """S2/S3: the calibration x test matrices of each task family."""
    if fams:
        section.notes.append("Groups: " + "; ".join(
            f"{f}: ID {s['in_distribution'] or '—'}, members {', '.join(s['members'])}" for f, s in fams.items()))
    run_matrix(df, fams, opts, samples, section, section.scenario)


@dataclass(frozen=True)
class ReportKind:
    """What one report kind (`qgen report --scenario`, a study's `study.report`) reads and builds."""
    title: str
    suites: str  # glob over the eval suite names of the jobs it reads
    build: Callable  # (jobs, families, opts, samples, section) -> None: fills the section
    fallback: Callable | None = None  # (df, configs, pattern) -> (jobs, how) when no suite matches
    families: bool = False  # it compares task families: given --groups and no matching suite, it reads every job
    default_families: Callable | None = None  # (jobs) -> families when the jobs record none


KINDS = {
    "s1": ReportKind("S1 — quantized vs full precision across tasks", "s1_*",
                     lambda df, fams, opts, samples, section: run_s1(df, opts, samples, section), _all_jobs),
    "s2": ReportKind("S2 — cross-dataset distribution shift: calibration × test", "s2_*", run_families,
                     _jobs_with_groups, families=True),
    "s3": ReportKind("S3 — cross-subject: calibration × test category", "s3_*", run_families,
                     default_families=_subjects_of_tasks, families=True),
    "ablation": ReportKind("Ablations — calibration size and sequence length", "*",
                           lambda df, fams, opts, samples, section: run_ablation(df, opts, section)),
}
assert tuple(KINDS) == SCENARIOS  # the CLI's and the schema's choices


def scenario_section(df, configs, scenario: str, opts: Options, samples: Samples) -> Section:
    section = Section(scenario)
    chosen, fams, how = select(df, configs, scenario, opts)
    section.notes.append(f"Input: {how}.")
    section.jobs = chosen["dir"].nunique()
    KINDS[scenario].build(chosen, fams, opts, samples, section)
    return section


def compute_summary(roots) -> list[str]:
    """What the results cost: jobs, seconds per stage summed over jobs, and the wall-clock span they cover."""
    t = read_timings(*roots)
    t = t[t["status"] == "completed"]
    if t.empty:
        return []
    per_stage = t.groupby("stage")["seconds"].sum().sort_values(ascending=False)
    stamps = pd.to_datetime(pd.concat([t["started_at"], t["finished_at"]]), format="%Y-%m-%dT%H:%M:%S%z",
                            errors="coerce").dropna()
    span = ""
    if len(stamps):
        wall = (stamps.max() - stamps.min()).total_seconds()
        span = f"; wall clock from the first start to the last finish: {wall / 60:.1f} min"
    head = f"{t['dir'].nunique()} completed jobs; {per_stage.sum() / 60:.1f} min of recorded stage time{span}."
    return ["## Compute", "", head, "", "| stage | total s | mean s per job |", "|---|---|---|",
            *[f"| {stage} | {sec:.1f} | {t[t['stage'] == stage]['seconds'].mean():.1f} |"
              for stage, sec in per_stage.items()], ""]


def write_index(opts: Options, skipped: list[tuple[str, str]]) -> Path:
    """README.md of the report dir: the scenario pages present (this run's or earlier ones) and what was skipped."""
    out = Path(opts.out_dir)
    sources = ", ".join(map(str, opts.roots))
    lines = ["# qgen report", "", f"Rebuilt with `make tables figures` (or `qgen report`) from {sources}.", ""]
    if (out / "RUN.md").exists():  # hand-written: the exact commands behind the results
        lines += ["What was run, and how: [RUN.md](RUN.md).", ""]
    for scenario in SCENARIOS:
        if (out / f"{scenario}.md").exists():
            lines.append(f"- [{KINDS[scenario].title}]({scenario}.md)")
    for scenario, reason in skipped:
        lines.append(f"- {scenario}: not built — {reason}")
    lines += ["", *compute_summary(opts.roots)]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write(section: Section, opts: Options) -> list[Path]:
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if opts.tables:
        for t in section.tables:
            written += list(t.write(out).values())
    built = (f"Built by `qgen report` from {', '.join(map(str, opts.roots))} at "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; primary metric for accuracy tasks: "
             f"`{opts.score}` (tasks without it: f1, exact_match or acc_norm); bootstrap: {opts.n_boot} resamples, "
             f"{100 * (1 - opts.alpha):.0f}% CI.")
    notes = [x for n in section.notes for x in (n, "")]
    lines = [f"# {KINDS[section.scenario].title}", "", *notes, built, "", LEGEND, ""]
    for t in section.tables:
        lines += [t.markdown(), f"[CSV](csv/{t.name}.csv) · [LaTeX](tables/{t.name}.tex)", ""]
    figs = section.figures if opts.figures else [
        (p.stem.replace("_", " "), p) for p in sorted((out / "figures").glob(f"{section.scenario}_*.png"))]
    if figs:
        lines.append("## Figures\n")
        for caption, path in figs:
            rel = Path(path).relative_to(out)
            lines += [f"![{caption}]({rel.as_posix()})", f"*{caption}*", ""]
            written.append(Path(path))
    page = out / f"{section.scenario}.md"
    page.write_text("\n".join(lines))
    written.append(page)
    return written

