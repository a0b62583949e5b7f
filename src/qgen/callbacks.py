"""Hydra callbacks: the end-of-sweep summary of succeeded, failed and skipped jobs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qgen.record.index import SKIPPED_FILE
from qgen.record.results import RESULTS_FILE

log = logging.getLogger("qgen")

# Set at the end of a multirun for the entry point's exit code.
LAST_SWEEP: dict | None = None


def sweep_summary(sweep_dir: Path) -> dict:
    summary = {"dir": str(sweep_dir), "completed": [], "failed": [], "skipped": [], "running": []}
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if sweep_dir.is_dir() else []:
        if (job_dir / RESULTS_FILE).exists():
            try:
                status = json.loads((job_dir / RESULTS_FILE).read_text()).get("status", "running")
            except ValueError:
                status = "running"
            summary.setdefault(status, []).append(job_dir.name)
        elif (job_dir / SKIPPED_FILE).exists():
            summary["skipped"].append(job_dir.name)
    return summary


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global LAST_SWEEP
        LAST_SWEEP = sweep_summary(Path(config.hydra.sweep.dir))
        s = LAST_SWEEP
        log.info("sweep finished: %d succeeded, %d failed, %d skipped — %s", len(s["completed"]), len(s["failed"]),
                 len(s["skipped"]), s["dir"])
        for name in s["failed"]:
            try:
                error = json.loads((Path(s["dir"]) / name / RESULTS_FILE).read_text()).get("error", "")
            except (OSError, ValueError):
                error = ""
            log.error("failed: %s: %s", name, error)
