"""Entry point of one job (or a multirun sweep): `python -m qgen.main [group=option ...] [-m]`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from qgen.data import calib_configs
from qgen.errors import QgenError
from qgen.validate import check_overrides

calib_configs.register()  # calib=<any registered dataset> (see qgen/data/calib_configs.py)

log = logging.getLogger("qgen")


@hydra.main(config_path="../../conf", config_name="config", version_base="1.3")
def job(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from qgen.job import run_job
    from qgen.record.reader import read_results, summary_table

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_job(cfg, out_dir)
    except QgenError as exc:
        print(f"qgen: error: {exc}", file=sys.stderr)
        sys.exit(2)
    table = summary_table(read_results(out_dir))
    if not table.empty:
        print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def main() -> None:
    try:
        check_overrides(sys.argv[1:])
    except QgenError as exc:
        print(f"qgen: error: {exc}", file=sys.stderr)
        sys.exit(2)
    job()


if __name__ == "__main__":
    main()
