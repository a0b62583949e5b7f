"""The job index: <output_dir>/.index/<job_id>.json points at the job's latest results.json.

It is what makes a rerun of a sweep run only the jobs that are missing or failed: a job whose identity (the
hash of its resolved config without output paths) has a completed result is skipped when `resume` is on. One
small file per job id, written atomically, so concurrent jobs never corrupt a shared file.
"""

from __future__ import annotations

import json
from pathlib import Path

from qgen.record.results import atomic_write_json

SKIPPED_FILE = "skipped.json"


def index_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / ".index"


def register(output_dir: str | Path, job_id: str, results_path: Path, status: str) -> None:
    folder = index_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{job_id}.json", {"job_id": job_id, "status": status,
                                                  "results": str(Path(results_path).resolve())})


def completed_result(output_dir: str | Path, job_id: str) -> Path | None:
    """The results.json of a completed run of this job, if one exists (and still says completed)."""
    try:
        entry = json.loads((index_dir(output_dir) / f"{job_id}.json").read_text())
        results = Path(entry["results"])
        data = json.loads(results.read_text())
    except (OSError, ValueError, KeyError):
        return None
    if data.get("job_id") == job_id and data.get("status") == "completed":
        return results
    return None
