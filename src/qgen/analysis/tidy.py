"""The analysis frame: `record.reader.tidy_results` plus what the analyses group and label by.

Adds to each (job, task, metric) row: `dataset` (the registry dataset a task scores), `family` (its S2/S3 group
if one lists it, else the registry's `family` or task type; `perplexity` and `divergence` for those tasks),
`config` (a label of everything but the seed) and `primary` (whether this metric is the one the tables report for
the task: acc-like scores, the perplexity, the mean KL to FP).

Tasks: `qgen_<dataset>` (lm-eval; their answer flips against FP are metrics `flip_*` of the same task),
`ppl/<dataset>` (perplexity) and `kl/<dataset>` (KL to FP and top-1 agreement, qgen.evaluate.divergence).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from qgen.errors import QgenError
from qgen.record.reader import CONFIG_KEYS, read_configs, read_samples, tidy_results

PPL_PREFIX = "ppl/"
KL_PREFIX = "kl/"
TASK_PREFIX = "qgen_"


def task_dataset(task: str) -> str:
    for prefix in (PPL_PREFIX, KL_PREFIX, TASK_PREFIX):
        if task.startswith(prefix):
            return task[len(prefix):]
    return task


def task_order(task: str) -> tuple:
    """Tables and figures list lm-eval tasks first, then perplexities, then divergences."""
    return (task.startswith(PPL_PREFIX) + 2 * task.startswith(KL_PREFIX), task)


@cache
def _registry_family(dataset: str) -> str | None:
    from qgen.data import registry

    try:
        spec = registry.get(dataset)
    except QgenError:
        return None
    return spec.extra.get("family") or spec.task_type


def task_family(task: str, groups: dict | None = None) -> str:
    if task.startswith(PPL_PREFIX):
        return "perplexity"
    if task.startswith(KL_PREFIX):
        return "divergence"
    dataset = task_dataset(task)
    for family, spec in (groups or {}).items():
        if dataset in spec["members"]:
            return family
    return _registry_family(dataset) or "other"


@cache
def task_group_members() -> dict[str, tuple[str, ...]]:
    """{group task: its member tasks} for the registry's families (qgen_mmlu -> its four categories), the same
    declaration qgen.data.lm_eval_tasks writes the lm-eval group files from; lm-eval reports a group's aggregate
    alongside its members' scores."""
    from qgen.data.registry import all_datasets, families

    specs = all_datasets()
    return {info["group"]: tuple(specs[m].lm_eval_task for m in info["members"]) for info in families().values()}


# The unquantized model in tables and figures: "FP", whatever dtype it ran in (fp32 on CPU, fp16/bf16 on GPUs).
FP_LABEL = "FP"


def config_label(row) -> str:
    if row["quantizer"] == "none":
        return FP_LABEL
    return f"{row['quantizer']} {row['bits']}"


# The metric a table reports for a task: the requested one where the task has it, else the first of these.
SCORE_ORDER = ("acc", "f1", "exact_match", "acc_norm")


def primary_metrics(metrics_by_task: dict[str, set], score: str) -> dict[str, str | None]:
    out = {}
    for task, metrics in metrics_by_task.items():
        if task.startswith(PPL_PREFIX):
            out[task] = next((m for m in sorted(metrics) if m.startswith("ppl_")), None)
        elif task.startswith(KL_PREFIX):
            out[task] = next((m for m in sorted(metrics) if m.startswith("kl_mean_")), None)
        else:
            out[task] = next((m for m in (score, *SCORE_ORDER) if m in metrics), None)
    return out


def load(roots: list[str | Path], groups: dict | None = None, score: str = "acc",
         suite: str | None = None) -> pd.DataFrame:
    """Every completed job under the roots (optionally only those of eval suite `suite`) as the analysis frame."""
    df = tidy_results(*roots)
    if df.empty:
        raise QgenError(f"no completed results.json under {', '.join(map(str, roots))}")
    if suite is not None:
        df = df[df["suite"] == suite]
        if df.empty:
            raise QgenError(f"no completed job with eval_suite {suite!r} under {', '.join(map(str, roots))}")
    df = df.copy()
    df["dataset"] = df["task"].map(task_dataset)
    df["family"] = df["task"].map(lambda t: task_family(t, groups))
    df["label"] = df.apply(config_label, axis=1)
    primary = primary_metrics(df.groupby("task")["metric"].agg(set).to_dict(), score)
    df["primary"] = [primary[t] == m for t, m in zip(df["task"], df["metric"])]
    df["config"] = df[CONFIG_KEYS].astype(str).agg("|".join, axis=1)
    return df


def with_flips(samples: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """A job's per-item scores plus per-item flip indicators against its in-job FP baseline (where both have a
    binary acc): flip_rate (acc differs), flip_c2w (FP right, this wrong), flip_w2c (FP wrong, this right) — the
    item-level scores behind the flip metrics, so flip rates get paired comparisons like any other score."""
    if samples.empty or "acc" not in samples.columns or "acc" not in baseline.columns:
        return samples
    fp = baseline.dropna(subset=["acc"]).groupby(["task", "doc_id"])["acc"].mean().rename("_fp_acc")
    out = samples.join(fp, on=["task", "doc_id"])
    ok = out["acc"].isin((0, 1)) & out["_fp_acc"].isin((0, 1))
    out["flip_rate"] = (out["acc"] != out["_fp_acc"]).astype(float).where(ok)
    out["flip_c2w"] = ((out["_fp_acc"] == 1) & (out["acc"] == 0)).astype(float).where(ok)
    out["flip_w2c"] = ((out["_fp_acc"] == 0) & (out["acc"] == 1)).astype(float).where(ok)
    return out.drop(columns="_fp_acc")


class Samples:
    """Per-item scores of the jobs behind a configuration (every seed), read once per job dir, with per-item flips
    against each job's own FP baseline (`with_flips`); `baseline(dirs)` gives the same jobs' in-job FP baselines
    (baseline_samples.jsonl)."""

    def __init__(self):
        self._cache: dict[tuple[str, str], pd.DataFrame] = {}

    def __call__(self, dirs, name: str = "samples.jsonl") -> pd.DataFrame:
        frames = []
        for d in sorted(set(dirs)):
            if (d, name) not in self._cache:
                own = read_samples(d, name)
                if name == "samples.jsonl":
                    own = with_flips(own, read_samples(d, "baseline_samples.jsonl"))
                self._cache[(d, name)] = own
            frames.append(self._cache[(d, name)])
        frames = [f for f in frames if not f.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["task", "doc_id"])

    def baseline(self, dirs) -> pd.DataFrame:
        return self(dirs, "baseline_samples.jsonl")


def configs_of(roots: list[str | Path]) -> dict[str, dict]:
    return read_configs(*roots)
