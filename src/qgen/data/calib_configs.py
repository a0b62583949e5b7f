"""`calib=<any registered dataset>` without one near-identical conf/calib/<name>.yaml per dataset.

Hydra composes config-group options from its search path, which always includes the ConfigStore
(`structured://`). Before Hydra starts, `register()` stores one `calib/<name>` option per registered dataset
that has no file in conf/calib/: a copy of the default calibration config (the `calib:` choice in
conf/config.yaml, i.e. n_samples, seq_len, seed, …) with `name` and `dataset` set to that dataset. So
`calib=squad`, `-m calib=c4,wiki`, `calib=mmlu_stem calib.n_samples=64` all work, `--info` and tab completion
list them, and a hand-written conf/calib/<name>.yaml (a mixture, say) still wins because files are found first.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def default_calib_file(conf_dir: Path = CONF_DIR) -> Path:
    defaults = yaml.safe_load((conf_dir / "config.yaml").read_text())["defaults"]
    choice = next(d["calib"] for d in defaults if isinstance(d, dict) and "calib" in d)
    return conf_dir / "calib" / f"{choice}.yaml"


def dataset_options(conf_dir: Path = CONF_DIR) -> list[str]:
    """Registered datasets that become calib options (those without their own conf/calib file)."""
    from qgen.data.registry import all_datasets

    files = {p.stem for p in (conf_dir / "calib").glob("*.yaml")}
    return [name for name in all_datasets() if name not in files]


def register(conf_dir: Path = CONF_DIR) -> int:
    from hydra.core.config_store import ConfigStore

    template = yaml.safe_load(default_calib_file(conf_dir).read_text())
    store = ConfigStore.instance()
    names = dataset_options(conf_dir)
    for name in names:
        store.store(group="calib", name=name, node={**template, "name": name, "dataset": name, "weights": None},
                    provider="qgen")
    return len(names)
