"""W&B logging of a finished job (`logger=wandb`), and a reader for the offline runs it leaves.

One job = one run: `config` is the resolved job config plus job_id; the summary (and one history step) holds
every metric as `<task>/<metric>` for the quantized model, `fp/<task>/<metric>` for its FP baseline and
`delta/<task>/<metric>` for the change, stage timings as `time/<stage>`, `memory/peak_rss_mb` and the scalar
parts of the quant report as `quant/<key>`; a `tasks` table has one row per (task, metric). Runs are grouped by
the Hydra sweep dir (a multirun is one group), `job_type` is the quantizer (`fp` for quantizer=none) and tags
name the config-group choices, so dashboards pivot by calibration, quantizer and bits.

Offline by default; WANDB_MODE in the environment wins. Anything W&B raises becomes a warning: the job's
results.json is already written and the job still succeeds.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

RESERVED = ("name", "project", "entity", "mode", "dir", "group", "tags")


def _scalars(prefix: str, values: dict) -> dict:
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"{prefix}{key}"] = value
    return out


def metrics_payload(data: dict) -> dict:
    """Flat {key: number} of everything a job measured (see the module docstring for the key scheme)."""
    out = {}
    fp_metrics = (data.get("baseline") or {}).get("metrics") or {}
    for task, values in (data.get("metrics") or {}).items():
        for metric, entry in values.items():
            value = (entry or {}).get("value")
            if value is None:
                continue
            out[f"{task}/{metric}"] = value
            fp = ((fp_metrics.get(task) or {}).get(metric) or {}).get("value")
            if fp is not None and metric not in ("n_items", "tokens"):
                out[f"delta/{task}/{metric}"] = value - fp
    for task, values in fp_metrics.items():
        for metric, entry in values.items():
            if (entry or {}).get("value") is not None:
                out[f"fp/{task}/{metric}"] = entry["value"]
    out.update(_scalars("time/", data.get("timings")))
    out.update(_scalars("memory/", data.get("memory")))
    out.update(_scalars("quant/", data.get("quant_report") if isinstance(data.get("quant_report"), dict) else {}))
    return out


def task_rows(data: dict) -> list[list]:
    fp_metrics = (data.get("baseline") or {}).get("metrics") or {}
    rows = []
    for task, values in sorted((data.get("metrics") or {}).items()):
        for metric, entry in sorted(values.items()):
            fp = ((fp_metrics.get(task) or {}).get(metric) or {}).get("value")
            rows.append([task, metric, entry.get("value"), entry.get("stderr"), fp])
    return rows


def run_identity(cfg: dict, out_dir: Path, settings: dict) -> dict:
    """group, job_type, tags and name of a job's run."""
    from qgen.record.reader import sweep_of

    sweep = sweep_of(Path(out_dir))
    quantizer = (cfg.get("quantizer") or {}).get("name")
    calib = cfg.get("calib") or {}
    tags = [f"model:{(cfg.get('model') or {}).get('name')}", f"quantizer:{quantizer}",
            f"bits:{(cfg.get('bits') or {}).get('name')}", f"calib:{calib.get('name')}",
            f"suite:{(cfg.get('eval_suite') or {}).get('name')}", f"seed:{cfg.get('seed')}",
            *[str(t) for t in settings.get("tags") or []]]
    group = settings.get("group") or (Path(sweep).name if sweep else "single-runs")
    if sweep and not settings.get("group"):
        group = f"{Path(sweep).parent.name}/{Path(sweep).name}"  # <date>/<time> of the Hydra sweep dir
    return {"group": group, "job_type": "fp" if quantizer == "none" else str(quantizer),
            "tags": [t[:64] for t in tags], "name": Path(out_dir).name}


def log_job(cfg, out_dir: Path, data: dict) -> str | None:
    """Log a finished job to W&B when the config's logger is wandb; returns the run dir, None if not logged."""
    settings = cfg.get("logger") or {}
    if settings.get("name") != "wandb":
        return None
    try:
        return _log(settings, Path(out_dir), data)
    except Exception as exc:  # noqa: BLE001 — a W&B failure must never fail the job
        msg = f"W&B logging failed, results.json is unaffected: {type(exc).__name__}: {exc}"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return None


def _log(settings, out_dir: Path, data: dict) -> str:
    import wandb

    cfg = data.get("config") or {}
    mode = os.environ.get("WANDB_MODE") or settings.get("mode") or "offline"
    root = settings.get("dir") or os.environ.get("WANDB_DIR") or str(out_dir)
    Path(root).mkdir(parents=True, exist_ok=True)
    ident = run_identity(cfg, out_dir, settings)
    run = wandb.init(project=settings.get("project") or "qgen", entity=settings.get("entity") or None, mode=mode,
                     dir=root, config={**cfg, "job_id": data.get("job_id")}, reinit="finish_previous",
                     settings=wandb.Settings(silent=True, console="off"), **ident)
    try:
        payload = metrics_payload(data)
        table = wandb.Table(columns=["task", "metric", "value", "stderr", "fp_value"], data=task_rows(data))
        run.log({**payload, "tasks": table})
        run.summary.update({**payload, "status": data.get("status"), "job_id": data.get("job_id")})
        run_dir = str(Path(run.dir).parent)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    log.info("W&B run (%s): %s", mode, run_dir)
    return run_dir


# --- reading an offline run back (.wandb files are a LevelDB-style log of protobuf records) ---

_BLOCK = 32768
_HEADER = 7


def _records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        del crc  # a masked CRC-32C; the length framing is enough to read a complete file
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_offline_run(run_dir: str | Path, wait_s: float = 30.0) -> dict:
    """{run: {group, job_type, tags, display_name, project}, config: {...}, summary: {...}, history: [...],
    complete} of an offline run dir (`wandb/offline-run-*`). W&B's writer may still be flushing the file after
    `run.finish()` returns: wait up to `wait_s` seconds for the run's exit record (complete=False if it never
    came)."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _read_run_file(Path(run_dir))
        if out["complete"] or time.monotonic() > deadline:
            return out
        time.sleep(0.25)


def _read_run_file(run_dir: Path) -> dict:
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb in {run_dir}")
    out: dict = {"run": {}, "config": {}, "summary": {}, "history": [], "complete": False}

    def items(updates):
        return {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in updates}

    for blob in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(blob)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"group": r.run_group, "job_type": r.job_type, "tags": list(r.tags),
                          "display_name": r.display_name, "project": r.project}
            out["config"].update(items(r.config.update))
        elif kind == "config":
            out["config"].update(items(rec.config.update))
        elif kind == "history":
            out["history"].append(items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(items(rec.summary.update))
        elif kind == "exit":
            out["complete"] = True
    out["config"] = {k: (v.get("value") if isinstance(v, dict) and set(v) <= {"value", "desc"} else v)
                     for k, v in out["config"].items()}
    return out


