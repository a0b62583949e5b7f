"""Before anything expensive happens: the command line's config-group choices (before Hydra composes: Hydra's own
message for an unknown option is a multi-line traceback), then every job it asks for against the schema
(qgen.schema), each problem one line naming what is allowed — and, in a sweep, the job."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from qgen.errors import QgenError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "calib", "quantizer", "bits", "eval_suite", "logger", "paths", "launcher", "study", "env")


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


_CHECKED: set[str] = set()  # job configs already checked in this process (preflight, then the job itself)


def check_job(cfg: DictConfig) -> None:
    """The schema's check of one composed job (qgen.schema), done once per distinct config in a process."""
    import hashlib
    import json

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from qgen.schema import check_job as check

    try:
        values = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except OmegaConfBaseException as exc:
        raise QgenError(str(exc).strip().splitlines()[0]) from None
    key = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
    if key in _CHECKED:
        return
    check(values)
    _CHECKED.add(key)


def compose_error(message: str) -> str:
    """Hydra's multi-line composition error as one line that says what is allowed."""
    from qgen.schema import JOB

    m = re.match(r"Could not override '([\w.]+)'", message)
    if m:
        *parents, key = m.group(1).split(".")
        section = JOB
        for part in parents:
            inner = section.fields.get(part) if not part.isdigit() else getattr(section, "item", None)
            section = getattr(inner, "item", inner)
            if section is None or not getattr(section, "fields", None):
                break
        if section is not None and getattr(section, "fields", None) and key not in section.fields:
            where = ".".join(parents) or "the config"
            return f"{m.group(1)} is not a setting of {where}; settings: {', '.join(section.fields)}"
        return f"{m.group(1)} is not in this config; to add it use +{m.group(1)}=<value>"
    if message.startswith("LexerNoViableAltException"):
        bad = message.splitlines()[0].split(": ", 1)[-1]
        return f"could not parse the override {bad!r}: quote a value with spaces or symbols, e.g. key='a b'"
    return message.strip().splitlines()[0]


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
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from qgen import conf_store
    from qgen.schema import check_launcher

    conf_store.register()
    check_overrides(argv)
    if any(a.startswith("--") and a not in ("--multirun",) for a in argv):
        return 0  # --cfg, --info, --help, ...: Hydra handles those itself
    jobs = sweep_overrides(argv)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for n, overrides in enumerate(jobs):
            try:
                cfg = compose("config", overrides=overrides, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException) as exc:
                raise QgenError(compose_error(str(exc))) from None
            HydraConfig.instance().set_config(cfg)  # as for a job: ${hydra:...} resolves
            choice = cfg.hydra.runtime.choices.get("launcher", "?")
            try:
                check_launcher(cfg.hydra, choice)
                check_job(cfg)
            except QgenError as exc:
                if len(jobs) > 1:  # say which job of the sweep
                    raise QgenError(f"job {n} of {len(jobs)} ({' '.join(overrides) or 'defaults'}): {exc}") from None
                raise
    return len(jobs)
