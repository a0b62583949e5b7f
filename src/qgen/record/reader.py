"""Read results.json files under any output dirs (single runs and multiruns) into one tidy pandas table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from qgen.record.index import SKIPPED_FILE
from qgen.record.results import RESULTS_FILE

COLUMNS = ["job_id", "status", "model", "quantizer", "bits", "calib", "seed", "variant", "task", "metric", "value",
           "stderr", "dir", "calib_dataset", "n_samples", "seq_len", "suite", "limit", "sweep"]
# What makes two jobs the same configuration apart from the seed (the unit the seed statistics average over).
CONFIG_KEYS = ["model", "quantizer", "bits", "calib", "calib_dataset", "n_samples", "seq_len", "suite", "limit"]
TIDY_COLUMNS = [*COLUMNS[:7], *COLUMNS[13:], "task", "metric", "value", "stderr", "fp_value", "fp_stderr",
                "fp_source", "dir"]


def find_results(*roots: str | Path) -> list[Path]:
    found = []
    for root in roots:
        root = Path(root)
        found += [root] if root.is_file() else sorted(root.rglob(RESULTS_FILE))
    return found


NO_CALIBRATION = "none"  # the calibration label of a data-free job (rtn, rotate+rtn): it read no calibration set


def _calib_label(calib: dict) -> str | None:
    """The calibration source(s) a job used: the dataset name, or names joined by '+' for a mixture."""
    dataset = calib.get("dataset", calib.get("name"))
    return "+".join(dataset) if isinstance(dataset, list) else dataset


def sweep_of(job_dir: Path) -> str | None:
    """The Hydra sweep dir a job belongs to (the folder holding multirun.yaml), or None for a single run."""
    for parent in (job_dir, *job_dir.parents[:2]):
        if (parent / "multirun.yaml").exists():
            return str(parent)
    return None


def _rows(path: Path, data: dict) -> list[dict]:
    cfg = data.get("config") or {}
    calib, suite = cfg.get("calib") or {}, cfg.get("eval_suite") or {}
    # a data-free quantizer records that it used no calibration; the config's calib group was composed all the same
    used = (data.get("calibration") or {}).get("used", True)
    calib_label = _calib_label(calib) if used else NO_CALIBRATION
    base = {
        "job_id": data.get("job_id"),
        "status": data.get("status"),
        "model": cfg.get("model", {}).get("name"),
        "quantizer": cfg.get("quantizer", {}).get("name"),
        "bits": cfg.get("bits", {}).get("name"),
        "calib": calib_label,
        "seed": data.get("seed"),
        "dir": str(path.parent),
        "calib_dataset": calib_label,
        "n_samples": calib.get("n_samples"),
        "seq_len": calib.get("seq_len"),
        "suite": suite.get("name"),
        "limit": suite.get("limit"),
        "sweep": sweep_of(path.parent),
    }
    rows = []
    # a quantizer=none job *is* a full-precision model, whatever its `bits` says
    own = "fp" if base["quantizer"] == "none" else "quantized"
    variants = [(own, data.get("metrics") or {})]
    if data.get("baseline"):
        variants.append(("fp", data["baseline"].get("metrics") or {}))
    for variant, metrics in variants:
        for task, values in metrics.items():
            for metric, entry in values.items():
                rows.append({**base, "variant": variant, "task": task, "metric": metric,
                             "value": entry.get("value"), "stderr": entry.get("stderr")})
    return rows


STATUS_RANK = {"completed": 3, "failed": 2, "running": 1}


def latest_per_job(*roots: str | Path) -> dict[str, tuple[Path, dict]]:
    """Each job once: a job run several times (reruns, resumed sweeps) keeps its best and latest record —
    completed over failed over running, then the most recently finished. A skipped job's `skipped.json`
    points at the completed result it reused."""
    best: dict[str, tuple[Path, dict]] = {}
    paths = find_results(*roots)
    for root in roots:
        root = Path(root)
        if root.is_dir():
            for pointer in sorted(root.rglob(SKIPPED_FILE)):
                try:
                    paths.append(Path(json.loads(pointer.read_text())["results"]))
                except (OSError, ValueError, KeyError):
                    continue
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        key = data.get("job_id") or str(path)
        rank = (STATUS_RANK.get(data.get("status"), 0), data.get("finished_at") or data.get("started_at") or "")
        if key not in best or rank > best[key][2]:
            best[key] = (path, data, rank)
    return {k: (p, d) for k, (p, d, _) in best.items()}


def read_results(*roots: str | Path) -> pd.DataFrame:
    """One row per (job, variant, task, metric); variant is 'quantized' (the job's model) or 'fp' (its
    full-precision baseline, or the model of a quantizer=none job). Every job appears once."""
    rows = []
    for path, data in latest_per_job(*roots).values():
        rows += _rows(path, data)
    return pd.DataFrame(rows, columns=COLUMNS)


def read_configs(*roots: str | Path) -> dict[str, dict]:
    """{job dir: resolved config} for every results.json under the roots (what the analyses read suite groups from)."""
    configs = {}
    for path in find_results(*roots):
        try:
            configs[str(path.parent)] = json.loads(path.read_text()).get("config") or {}
        except (OSError, ValueError):
            continue
    return configs


def read_timings(*roots: str | Path) -> pd.DataFrame:
    """One row per (job, stage): seconds spent, with the job's status and start/finish stamps."""
    rows = []
    for path in find_results(*roots):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for stage, seconds in (data.get("timings") or {}).items():
            rows.append({"dir": str(path.parent), "status": data.get("status"), "stage": stage, "seconds": seconds,
                         "started_at": data.get("started_at"), "finished_at": data.get("finished_at")})
    return pd.DataFrame(rows, columns=["dir", "status", "stage", "seconds", "started_at", "finished_at"])


def read_samples(job_dir: str | Path, name: str = "samples.jsonl") -> pd.DataFrame:
    """Per-item scores of a job's evaluated model (samples.jsonl; baseline_samples.jsonl for its in-job FP
    baseline): columns task, doc_id and one per score."""
    path = Path(job_dir) / name
    if not path.exists():
        return pd.DataFrame(columns=["task", "doc_id"])
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def _fp_lookup(df: pd.DataFrame) -> pd.DataFrame:
    """FP values from quantizer=none jobs, keyed by what must match for them to be a baseline of another job."""
    fp = df[df["quantizer"] == "none"]
    keys = ["model", "suite", "limit", "seed", "task", "metric"]
    return (fp.groupby(keys, dropna=False)
              .agg(fp_value=("value", "mean"), fp_stderr=("stderr", "mean")).reset_index())


def tidy_results(*roots: str | Path, completed_only: bool = True) -> pd.DataFrame:
    """A row per (job, task, metric) of the job's own model, beside the matching full-precision value.

    The FP value is the job's own baseline (the FP model scored in the same job) when it has one; a
    quantizer=none job is its own baseline; otherwise a quantizer=none job with the same model, suite, limit and
    seed (fp_source says which). Jobs with quantizer=none are labelled bits 'fp16'; a null limit reads 'all'.
    A job found twice (the same job_id under two dirs) counts once (`latest_per_job`).
    """
    df = read_results(*roots)
    if completed_only:
        df = df[df["status"] == "completed"]
    if df.empty:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    df = df.copy()
    df.loc[df["quantizer"] == "none", "bits"] = "fp16"
    df["limit"] = df["limit"].astype(object).where(df["limit"].notna(), "all")  # null: every item
    is_fp_job = df["quantizer"] == "none"  # its own metrics are the FP model's (variant 'fp')
    own = df[(df["variant"] == "quantized") | is_fp_job].drop(columns="variant")
    base = (df[(df["variant"] == "fp") & ~is_fp_job][["dir", "task", "metric", "value", "stderr"]]
            .rename(columns={"value": "fp_value", "stderr": "fp_stderr"}))
    out = own.merge(base, on=["dir", "task", "metric"], how="left")
    out["fp_source"] = out["fp_value"].notna().map({True: "own", False: None})
    is_fp = out["quantizer"] == "none"
    out.loc[is_fp, "fp_value"] = out.loc[is_fp, "value"]
    out.loc[is_fp, "fp_stderr"] = out.loc[is_fp, "stderr"]
    out.loc[is_fp, "fp_source"] = "self"
    missing = out["fp_value"].isna()
    if missing.any():
        keys = ["model", "suite", "limit", "seed", "task", "metric"]
        filled = out[missing].drop(columns=["fp_value", "fp_stderr"]).merge(_fp_lookup(df), on=keys, how="left")
        filled["fp_source"] = filled["fp_value"].notna().map({True: "fp_job", False: None})
        out = pd.concat([out[~missing], filled], ignore_index=True)
    return out[TIDY_COLUMNS].reset_index(drop=True)


# Metrics the summary table shows besides `metrics`: perplexities, KL to FP and top-1 agreement (their names carry
# the protocol) and the rate of answers flipped against FP.
SUMMARY_PREFIXES = ("ppl_", "kl_mean_", "top1_agree_", "flip_rate")


def summary_table(df: pd.DataFrame, metrics: tuple[str, ...] = ("acc", "acc_norm")) -> pd.DataFrame:
    """Wide table: one row per quantized job and one per (model, seed) for the FP model (its in-job baselines and
    quantizer=none jobs averaged), one column per task/metric (acc, perplexities, mean KL to FP, top-1 agreement,
    flip rate)."""
    keep = df[df["metric"].isin(metrics) | df["metric"].str.startswith(SUMMARY_PREFIXES)].copy()
    if keep.empty:
        return keep
    keep["column"] = keep["task"].str.replace("qgen_", "", regex=False) + " " + keep["metric"]
    # the FP model read no calibration set: every job's in-job baseline of the same model and seed is one row, not
    # one per calibration set the quantized models used
    keep.loc[keep["variant"] == "fp", ["quantizer", "bits", "calib"]] = ["fp (none)", "-", NO_CALIBRATION]
    index = ["model", "quantizer", "bits", "calib", "seed"]
    wide = keep.pivot_table(index=index, columns="column", values="value", aggfunc="mean")
    return wide.reset_index()
