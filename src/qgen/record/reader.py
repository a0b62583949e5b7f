"""Read results.json files under any output dirs (single runs and multiruns) into one tidy pandas table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from qgen.record.index import SKIPPED_FILE
from qgen.record.results import RESULTS_FILE

COLUMNS = ["job_id", "status", "model", "quantizer", "bits", "calib", "seed", "variant", "task", "metric", "value",
           "stderr", "dir"]


def find_results(*roots: str | Path) -> list[Path]:
    found = []
    for root in roots:
        root = Path(root)
        found += [root] if root.is_file() else sorted(root.rglob(RESULTS_FILE))
    return found


def _calib_label(calib: dict) -> str | None:
    """The calibration source(s) a job used: the dataset name, or names joined by '+' for a mixture."""
    dataset = calib.get("dataset", calib.get("name"))
    return "+".join(dataset) if isinstance(dataset, list) else dataset


def _rows(path: Path, data: dict) -> list[dict]:
    cfg = data.get("config", {})
    base = {
        "job_id": data.get("job_id"),
        "status": data.get("status"),
        "model": cfg.get("model", {}).get("name"),
        "quantizer": cfg.get("quantizer", {}).get("name"),
        "bits": cfg.get("bits", {}).get("name"),
        "calib": _calib_label(cfg.get("calib", {})),
        "seed": data.get("seed"),
        "dir": str(path.parent),
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


def summary_table(df: pd.DataFrame, metrics: tuple[str, ...] = ("acc", "acc_norm")) -> pd.DataFrame:
    """Wide table: one row per job (and FP baseline), one column per task/metric (acc and perplexities)."""
    keep = df[df["metric"].isin(metrics) | df["metric"].str.startswith("ppl_")].copy()
    if keep.empty:
        return keep
    keep["column"] = keep["task"].str.replace("qgen_", "", regex=False) + " " + keep["metric"]
    keep.loc[keep["variant"] == "fp", ["quantizer", "bits"]] = ["fp (none)", "-"]
    index = ["model", "quantizer", "bits", "calib", "seed"]
    wide = keep.pivot_table(index=index, columns="column", values="value", aggfunc="mean")
    return wide.reset_index()
