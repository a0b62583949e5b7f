"""Ablations: the primary metric against calibration size (`n_samples`) and sequence length (`seq_len`), for test
sets that are in-distribution (calibration set = test set) and out-of-distribution, mean ± std over seeds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from qgen.analysis.stats import seed_summary
from qgen.analysis.tables import Cell, Table
from qgen.analysis.tidy import FP_LABEL

FIXED = {"n_samples": ["model", "quantizer", "bits", "calib_dataset", "seq_len", "suite", "limit"],
         "seq_len": ["model", "quantizer", "bits", "calib_dataset", "n_samples", "suite", "limit"]}


def curves(df: pd.DataFrame, knob: str) -> list[tuple[dict, pd.DataFrame]]:
    """(fixed setting, rows knob × task with mean/std/n_seeds) for every setting where `knob` takes ≥ 2 values."""
    prim = df[df["primary"] & (df["quantizer"] != "none")]
    out = []
    for key, g in prim.groupby(FIXED[knob], sort=True):
        if g[knob].nunique() < 2:
            continue
        rows = []
        for (value, task, metric), cell in g.groupby([knob, "task", "metric"], sort=True):
            s = seed_summary(cell["value"])
            rows.append({knob: int(value), "task": task, "metric": metric, **s,
                         "in_distribution": cell["dataset"].iloc[0] == key[3],
                         "fp": cell["fp_value"].mean()})  # the unquantized model's score: the reference line
        out.append((dict(zip(FIXED[knob], key)), pd.DataFrame(rows)))
    return out


def _task_label(task: str, in_distribution: bool) -> str:
    return task.replace("qgen_", "") + (" (ID)" if in_distribution else "")


def table(setting: dict, rows: pd.DataFrame, knob: str, name: str) -> Table:
    wide = []
    rows = rows.assign(_ppl=rows["task"].str.startswith("ppl/")).sort_values([knob, "_ppl", "task"])
    for value, g in rows.drop(columns="_ppl").groupby(knob, sort=True):
        wide.append({knob: value, **{
            _task_label(r.task, r.in_distribution):
                Cell(r.mean, r.std, marks=frozenset({"id"}) if r.in_distribution else frozenset())
            for r in g.itertuples()}})
    fp = rows.groupby(["task", "in_distribution"], sort=False)["fp"].mean()
    if fp.notna().any():
        wide.append({knob: FP_LABEL, **{_task_label(t, ind): Cell(v) for (t, ind), v in fp.items() if pd.notna(v)}})
    title = (f"Ablation over {knob}: {setting['model']} {setting['quantizer']} {setting['bits']}, "
             f"calibration {setting['calib_dataset']}")
    data = rows.assign(**{k: v for k, v in setting.items()})
    return Table(name, title, pd.DataFrame(wide).fillna("–"), data,
                 [f"**Bold**/(ID): test set = calibration set. Cells: mean ± std over seeds. {FP_LABEL}: the "
                  "unquantized model on the same items (dotted lines in the figure)."])


def figure(setting: dict, rows: pd.DataFrame, knob: str, path: Path) -> Path:
    metrics = sorted(rows["metric"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for task, g in rows[rows["metric"] == metric].groupby("task"):
            g = g.sort_values(knob)
            ind = bool(g["in_distribution"].iloc[0])
            line = ax.errorbar(g[knob], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3,
                               linestyle="-" if ind else "--", label=_task_label(task, ind))
            if g["fp"].notna().any():
                ax.axhline(g["fp"].mean(), color=line[0].get_color(), linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ticks = sorted(rows[knob].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(knob)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{setting['model']} {setting['quantizer']} {setting['bits']}: calibration on "
                 f"{setting['calib_dataset']} (solid: ID test set, dashed: OOD, dotted: {FP_LABEL})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
