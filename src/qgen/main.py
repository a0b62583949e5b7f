"""Entry point of one job (or a multirun sweep): `python -m qgen.main [group=option ...] [-m]`.

A single run stops on bad input with one line and exit code 2. In a multirun, a job that fails is recorded
(results.json with status failed, the stage it reached, the error; traceback.txt) and the sweep goes on; it ends
with a summary, and the exit code is non-zero when any job failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from qgen import conf_store
from qgen.errors import QgenError
from qgen.validate import preflight

conf_store.register()  # method settings, engine settings, calib=<any registered dataset> (qgen/conf_store.py)

log = logging.getLogger("qgen")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path="../../conf", config_name="config", version_base="1.3")
def job(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from qgen.job import run_job
    from qgen.record.reader import read_results, summary_table

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run_job(cfg, out_dir)
    except QgenError as exc:
        if _is_multirun():
            log.error("job failed: %s", exc)
            return
        print(f"qgen: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # recorded in results.json and traceback.txt by run_job
        if _is_multirun():
            log.error("job failed: %s: %s (see %s)", type(exc).__name__, exc, out_dir / "traceback.txt")
            return
        raise
    source = Path(result["results"]) if result.get("status") == "skipped" else out_dir
    table = summary_table(read_results(source))
    if not table.empty:
        print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def main() -> None:
    try:
        preflight(sys.argv[1:])
    except QgenError as exc:
        print(f"qgen: error: {exc}", file=sys.stderr)
        sys.exit(2)
    job()
    from qgen import callbacks

    if callbacks.LAST_SWEEP and callbacks.LAST_SWEEP["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
