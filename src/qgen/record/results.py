"""results.json: everything a job did, enough to reproduce it and to build every table downstream.

Schema: {schema, job_id, status, stage, config, seed, model_info, calibration, metrics, baseline, quant_report,
timings, memory, env, error}. `job_id` hashes the resolved config without output paths, so the same job in
another directory has the same id. Every write goes to a temporary file first and is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SCHEMA = 1
RESULTS_FILE = "results.json"
PACKAGES = ("qgen", "torch", "transformers", "lm_eval", "datasets", "hydra-core", "omegaconf", "numpy", "wandb")


# Where and how a job runs, not what it computes: left out of its identity.
EXECUTION_KEYS = ("paths", "hydra", "resume", "cache", "runtime", "logger", "export")


def identity_config(cfg: DictConfig) -> dict:
    """The resolved config minus where and how it runs: what decides the job's results.

    Three exceptions keep earlier job ids where nothing changed: the dtype the models are scored in
    (`runtime.eval_dtype`, resolved on this machine) joins the identity as `eval_dtype` only when it is not the
    model's own dtype, a switched-off divergence section (`eval_suite.divergence: null`, or no datasets) is
    left out, and so are calibration options at their off value (qgen.data.calibration.identity)."""
    from qgen.data.calibration import identity as calib_identity
    from qgen.evaluate.dtype import job_eval_dtype

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in EXECUTION_KEYS:
        resolved.pop(key, None)
    if isinstance(resolved.get("calib"), dict) and "dataset" in resolved["calib"]:
        resolved["calib"] = calib_identity(resolved["calib"])
    suite = resolved.get("eval_suite")
    if isinstance(suite, dict) and "divergence" in suite and not (
            isinstance(suite["divergence"], dict) and suite["divergence"].get("datasets")):
        suite.pop("divergence")
    if "model" in cfg and cfg.model.get("dtype"):
        eval_dtype = job_eval_dtype(cfg)
        if eval_dtype != cfg.model.dtype:
            resolved["eval_dtype"] = eval_dtype
    return resolved


def job_id(cfg: DictConfig) -> str:
    blob = json.dumps(identity_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def git_revision() -> dict:
    root = Path(__file__).resolve().parents[3]

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    rev = git("rev-parse", "HEAD")
    return {"commit": rev or None, "dirty": bool(git("status", "--porcelain")) if rev else None}


def environment() -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "git": git_revision(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class JobRecord:
    """The job's results.json, rewritten after each stage so a crash leaves what was done."""

    def __init__(self, out_dir: Path, cfg: DictConfig):
        self.path = Path(out_dir) / RESULTS_FILE
        self.data = {
            "schema": SCHEMA,
            "job_id": job_id(cfg),
            "status": "running",
            "stage": None,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "seed": cfg.seed,
            "metrics": {},
            "baseline": None,
            "timings": {},
            "env": environment(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.save()

    def save(self) -> None:
        self.data["memory"] = {"peak_rss_mb": round(peak_rss_mb(), 1)}
        atomic_write_json(self.path, self.data)

    @contextmanager
    def stage(self, name: str):
        self.data["stage"] = name
        self.save()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.data["timings"][name] = round(time.perf_counter() - t0, 3)
            self.save()

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        self.data["status"] = status
        if error:
            self.data["error"] = error
        self.data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
