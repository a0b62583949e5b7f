"""Check a composed job config before anything expensive happens; each problem is one line naming what is
allowed. Also checks config-group choices on the command line before Hydra composes (Hydra's own message for an
unknown option is a multi-line traceback)."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from qgen.errors import QgenError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "calib", "quantizer", "bits", "eval_suite", "logger", "paths", "launcher")
ACT_BITS = (4, 6, 8, 16)
# Fields a launcher cannot submit without (by the launcher class's name).
REQUIRED_LAUNCHER_FIELDS = {"SlurmLauncher": ("partition", "timeout_min")}


def group_options(group: str) -> list[str]:
    options = {p.stem for p in (CONF_DIR / group).glob("*.yaml")}
    if group == "calib":  # every registered dataset is a calib option too (qgen/data/calib_configs.py)
        from qgen.data.calib_configs import dataset_options

        options |= set(dataset_options(CONF_DIR))
    return sorted(options)


def hydra_launchers() -> list[str]:
    """Launchers Hydra can use here: its own basic one and those of installed plugins."""
    import importlib.util

    found = ["basic"]
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher"):
        found += ["submitit_local", "submitit_slurm"]
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher"):
        found += ["ray", "ray_aws"]
    return found


def check_overrides(argv: list[str]) -> None:
    """`group=a,b` on the command line: every option must be a file in conf/<group>/ (or, for
    hydra/launcher, a launcher that is installed)."""
    for arg in argv:
        m = re.fullmatch(r"([+~]*)([a-z_/]+)=(.*)", arg)
        if not m or m.group(1).startswith("~"):
            continue
        group, value = m.group(2), m.group(3)
        if group == "hydra/launcher":
            if value not in hydra_launchers():
                hint = " (the Ray launcher needs: pip install 'qgen[ray]')" if value.startswith("ray") else ""
                raise QgenError(f"unknown hydra/launcher option {value!r}; available: "
                                f"{', '.join(hydra_launchers())}{hint}")
            continue
        if group == "launcher" and value == "ray" and "ray" not in hydra_launchers():
            raise QgenError("launcher=ray needs the Ray launcher plugin: pip install 'qgen[ray]'")
        if group not in GROUPS:
            continue
        value = re.sub(r"^(choice|glob)\((.*)\)$", r"\2", value)
        if value.startswith(("range(", "interval(")) or "*" in value:
            continue
        options = group_options(group)
        for choice in (v.strip().strip("'\"") for v in value.split(",")):
            if choice and choice not in options:
                raise QgenError(f"unknown {group} option {choice!r}; available: {', '.join(options)}")
        if "," in value and not {"-m", "--multirun"} & set(argv):
            hint = f"; for a calibration mixture use calib.dataset=[{value}]" if group == "calib" else ""
            raise QgenError(f"{arg} names several options: add -m (--multirun) to run one job per option{hint}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_job(cfg: DictConfig) -> None:
    from qgen.models.load import DTYPES, looks_like_path, model_source
    from qgen.quant.methods import METHODS

    bits, quant, model = cfg.bits, cfg.quantizer, cfg.model
    is_fp = quant.name == "none" or not quant.methods
    w, a, g = bits.weight_bits, bits.act_bits, bits.group_size
    if not _is_int(w) or not (2 <= w <= 8 or (w == 16 and is_fp)):
        raise QgenError(f"bits.weight_bits={w!r} is not allowed: use an integer from 2 to 8 (16 only with "
                        f"quantizer=none)")
    if not _is_int(a) or a not in ACT_BITS:
        raise QgenError(f"bits.act_bits={a!r} is not allowed: use one of {', '.join(map(str, ACT_BITS))}")
    if not _is_int(g) or not (g == -1 or g > 0):
        raise QgenError(f"bits.group_size={g!r} is not allowed: use a positive integer, or -1 for per channel")
    if bits.act_granularity not in ("per_token", "per_tensor"):
        raise QgenError(f"bits.act_granularity={bits.act_granularity!r} is not allowed: use per_token or per_tensor")
    for step in quant.methods:
        if step.name not in METHODS:
            raise QgenError(f"quantizer method {step.name!r} is unknown; available: {', '.join(sorted(METHODS))}")
    check_engine_settings(quant)
    if model.dtype not in DTYPES:
        raise QgenError(f"model.dtype={model.dtype!r} is not allowed; use one of {', '.join(DTYPES)}")
    if model_source(model) == "local":
        path = Path(str(model.pretrained)).expanduser()
        if not path.is_dir():
            raise QgenError(f"model.pretrained={model.pretrained!r} does not exist: give an existing local folder "
                            f"or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")
    if model_source(model) == "hub" and looks_like_path(str(model.pretrained)):
        raise QgenError(f"model.pretrained={model.pretrained!r} is neither a folder nor a hub id")
    for key in ("n_samples", "seq_len"):
        if not _is_int(cfg.calib[key]) or cfg.calib[key] <= 0:
            raise QgenError(f"calib.{key}={cfg.calib[key]!r} is not allowed: use a positive integer")
    limit = cfg.eval_suite.get("limit")
    if limit is not None and not (isinstance(limit, (int, float)) and limit > 0):
        raise QgenError(f"eval_suite.limit={limit!r} is not allowed: use a positive number or null")
    from qgen.quant.export import check_export_config

    check_export_config(cfg)
    check_datasets(cfg)


def check_engine_settings(quant: DictConfig) -> None:
    from qgen.quant.engine import FEEDS, TRUE_SEQUENTIAL_COMBINATION, EngineSettings

    size = quant.get("batch_size", EngineSettings.batch_size)
    if not _is_int(size) or size < 1:
        raise QgenError(f"quantizer.batch_size={size!r} is not allowed: use a positive integer")
    if quant.get("feed", EngineSettings.feed) not in FEEDS:
        raise QgenError(f"quantizer.feed={quant.feed!r} is not allowed: use one of {', '.join(FEEDS)}")
    sequential = quant.get("true_sequential", EngineSettings.true_sequential)
    if not isinstance(sequential, bool):
        raise QgenError(f"quantizer.true_sequential={sequential!r} is not allowed: use true or false")
    if not sequential and len(quant.methods or []) > 1:
        raise QgenError(TRUE_SEQUENTIAL_COMBINATION)


def check_datasets(cfg: DictConfig) -> None:
    from qgen.data import registry
    from qgen.data.calibration import dataset_names

    names = dataset_names(cfg.calib.dataset)
    if not names:
        raise QgenError("calib.dataset is empty; name at least one registered dataset")
    for name in names:
        registry.get(name)
    for entry in cfg.eval_suite.get("perplexity") or []:
        registry.get(entry.dataset)


def sweep_overrides(argv: list[str]) -> list[list[str]]:
    """The override list of every job the command line asks for (one list for a single run)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in argv if not a.startswith("-")]
    if not any(a in ("-m", "--multirun") for a in argv):
        return [args]
    parsed = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def preflight(argv: list[str], conf_dir: Path = CONF_DIR) -> int:
    """Validate every job of the command line, and the launcher, before anything is loaded or submitted.
    Returns the number of jobs checked."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(argv)
    if any(a.startswith("--") and a not in ("--multirun",) for a in argv):
        return 0  # --cfg, --info, --help, ...: Hydra handles those itself
    jobs = sweep_overrides(argv)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for overrides in jobs:
            try:
                cfg = compose("config", overrides=overrides, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException) as exc:
                raise QgenError(str(exc).strip().splitlines()[0]) from None
            launcher = cfg.hydra.launcher
            kind = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
            missing = sorted(k for k in launcher if OmegaConf.is_missing(launcher, k)
                             or (k in REQUIRED_LAUNCHER_FIELDS.get(kind, ()) and launcher[k] in (None, "")))
            if missing:
                choice = cfg.hydra.runtime.choices.get("launcher", "?")
                raise QgenError(f"launcher={choice} needs " + ", ".join(f"hydra.launcher.{k}" for k in missing)
                                + f" (e.g. hydra.launcher.{missing[0]}=<value>)")
            check_job(cfg)
    return len(jobs)
