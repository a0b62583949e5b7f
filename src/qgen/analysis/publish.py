"""Publish a built report to W&B: every CSV table as a `wandb.Table` (so it can be sorted and plotted in the
UI), every figure as an image, and the whole report dir as a versioned `report` artifact. Offline unless
WANDB_MODE says otherwise (then `wandb sync` uploads it)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from qgen.errors import QgenError


def publish(report_dir: str | Path, project: str = "qgen", entity: str | None = None, name: str = "qgen-report"
            ) -> str:
    import wandb

    report_dir = Path(report_dir)
    csvs = sorted((report_dir / "csv").glob("*.csv"))
    if not csvs:
        raise QgenError(f"{report_dir}/csv has no tables; run `qgen report` first")
    mode = os.environ.get("WANDB_MODE") or "offline"
    run = wandb.init(project=project, entity=entity, job_type="report", name=name, mode=mode,
                     dir=os.environ.get("WANDB_DIR") or str(report_dir), settings=wandb.Settings(silent=True))
    try:
        logged = {}
        for path in csvs:
            frame = pd.read_csv(path)
            logged[f"table/{path.stem}"] = wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))
        for path in sorted((report_dir / "figures").glob("*.png")):
            logged[f"figure/{path.stem}"] = wandb.Image(str(path))
        run.log(logged)
        artifact = wandb.Artifact(name, type="report", description=f"qgen report built from {report_dir}")
        for sub in ("tables", "csv", "figures"):
            if (report_dir / sub).is_dir():
                artifact.add_dir(str(report_dir / sub), name=sub)
        for page in report_dir.glob("*.md"):
            artifact.add_file(str(page))
        run.log_artifact(artifact)
        run_dir = str(Path(run.dir).parent)
    finally:
        run.finish()
    return run_dir
