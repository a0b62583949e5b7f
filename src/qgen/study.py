"""Studies: an experiment is two independent choices, the study and the environment it runs in.

- A study (`conf/study/<name>.yaml`, `# @package _global_`) declares everything that makes it that study: its eval
  suite and groups, the sweep axes (`study.sweep`: override key -> values; a list of such mappings for several
  sweeps; `calib.dataset: groups` = every member of the suite's groups), whether FP reference jobs run first
  (`study.reference`), and the report kinds built from its results (`study.report`: s1, s2, s3, ablation).
- An environment (`conf/env/<name>.yaml`) declares where it runs: the model, item caps, the device. It also fixes
  the output folder, `<output_dir>/experiments/<study>_<env>`; the report goes to `experiments/reports/<same>/`.

`qgen study run STUDY --env ENV` (what `make study` runs) composes the pair, then runs one Hydra multirun per sweep
(`python -m qgen.main -m study=STUDY env=ENV <axes>`, the FP reference first) and the report. `qgen study jobs`
lists the jobs those sweeps expand to without running anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qgen.errors import QgenError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
REPORTS_DIR = Path("experiments") / "reports"
FROM_GROUPS = "groups"  # calib.dataset: groups -> every member of the eval suite's groups


def options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def compose(study: str, env: str, overrides: list[str] | tuple = (), conf_dir: Path = CONF_DIR,
            changes: dict[str, str] | None = None):
    """The job config of one (study, environment) pair with extra overrides, each changed sweep axis at its first
    value (`first_values`)."""
    from qgen import conf_store

    for group, name in (("study", study), ("env", env)):
        if name not in options(group, conf_dir):
            raise QgenError(f"{group}={name!r} is not a {group}; use one of {', '.join(options(group, conf_dir))}")
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    overrides = [*first_values(changes), *overrides]
    GlobalHydra.instance().clear()
    try:
        return conf_store.compose([f"study={study}", f"env={env}", *overrides], conf_dir)
    except HydraException as err:  # e.g. an --override of a key the composed quantizer does not have
        reason = str(err).strip().splitlines()[0]
        raise QgenError(f"study {study} (env {env}) does not compose with {' '.join(overrides) or 'no overrides'}: "
                        f"{reason} (an --override applies to every job of the sweep)") from None


def first_values(changes: dict[str, str] | None) -> list[str]:
    """Overrides giving each changed sweep axis its first value, so that the config checked before the sweep (and
    the --override values applied to it) is one the sweep runs: --set quantizer=rotate+gptq with --override
    quantizer.methods.rotate.seed=7 composes against rotate+gptq, not the study's default quantizer."""
    return [f"{key}={values.split(',')[0]}" for key, values in (changes or {}).items()]


def _values(key: str, values, cfg) -> list[str]:
    if key == "calib.dataset" and values == FROM_GROUPS:
        from qgen.analysis.groups import from_configs

        suite = cfg.eval_suite
        fams = from_configs({f"eval_suite={suite.name}": {"eval_suite": _plain(suite)}})
        if not fams:
            raise QgenError(f"study={cfg.study.name}: calib.dataset: groups needs eval_suite={suite.name} to record "
                            f"groups or categories")
        return list(dict.fromkeys(m for spec in fams.values() for m in spec["members"]))
    if isinstance(values, (str, int, float, bool)):
        return [_text(values)]
    return [_text(v) for v in values]


def _text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def sweeps(cfg, changes: dict[str, str] | None = None) -> list[list[str]]:
    """The Hydra multirun override lists the study runs, in order: the FP reference (quantizer=none bits=fp16 over
    the seeds) when `study.reference`, then each declared sweep. `changes` replaces an axis's values
    (key -> "a,b"), e.g. {"seed": "42"}, in every sweep that has it; one that no sweep has is added to all."""
    study = _plain(cfg.study)
    declared = study["sweep"] if isinstance(study["sweep"], list) else [study["sweep"]]
    changes = dict(changes or {})
    known = {k for axes in declared for k in axes}
    out = []
    for axes in declared:
        axes = {k: ",".join(_values(k, v, cfg)) for k, v in axes.items()}
        axes.update({k: v for k, v in changes.items() if k in axes or k not in known})
        if study["reference"] and not out:
            seeds = axes.get("seed", str(cfg.seed))
            out.append(["quantizer=none", "bits=fp16", f"seed={seeds}"])
        out.append([f"{k}={v}" for k, v in axes.items()])
    return out


def jobs(cfg, changes: dict[str, str] | None = None) -> list[list[str]]:
    """The jobs the study's multiruns expand to, as Hydra's sweeper expands them."""
    from qgen.validate import sweep_overrides

    return [job for sweep in sweeps(cfg, changes) for job in sweep_overrides(["-m", *sweep])]


def folder(cfg) -> Path:
    """Where the study's jobs write (the environment declares it: experiments/<study>_<env>)."""
    return Path(str(cfg.paths.output_dir))


def report_command(cfg, python: str = sys.executable) -> list[str]:
    out = REPORTS_DIR / folder(cfg).name
    against = [str(c) for c in cfg.study.get("against") or []]
    return [python, "-m", "qgen.cli", "report", str(folder(cfg)), "--out", str(out),
            "--scenario", *[str(k) for k in cfg.study.report], *(["--against", *against] if against else [])]


def commands(study: str, env: str, changes: dict[str, str] | None = None, extra: list[str] | tuple = (),
             python: str = sys.executable, cfg=None) -> list[list[str]]:
    """Every command `qgen study run` runs, in order: one multirun per sweep, then the report. cfg: the pair's
    config where the caller composed it already (compose(study, env, extra, changes=changes))."""
    if cfg is None:
        cfg = compose(study, env, extra, changes=changes)
    from qgen.validate import check_job

    check_job(cfg)  # a bad study, environment or extra override fails here, before any job starts
    head = [python, "-m", "qgen.main", "-m", f"study={study}", f"env={env}", *extra]
    return [[*head, *sweep] for sweep in sweeps(cfg, changes)] + [report_command(cfg, python)]


def datasets(cfg, changes: dict[str, str] | None = None) -> list[str]:
    """Every registered dataset the study's jobs read: the suite's, and each calibration set its sweeps name
    (`self`, text the model samples, is not a dataset and needs no preparing)."""
    from qgen.data.overlap import suite_datasets
    from qgen.data.registry import SELF

    calib = cfg.calib.dataset
    names = [calib] if isinstance(calib, str) else [str(d) for d in calib]
    for sweep in sweeps(cfg, changes):
        names += [d for item in sweep if item.startswith("calib.dataset=") for d in item.split("=", 1)[1].split(",")]
    return [d for d in dict.fromkeys([*names, *suite_datasets(cfg.eval_suite)]) if d != SELF]


def parse_changes(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise QgenError(f"--set {item!r} is not allowed: use KEY=VALUE[,VALUE...], e.g. --set seed=42,567")
        out[key] = value
    return out


def add_arguments(p) -> None:
    p.add_argument("action", choices=["run", "jobs", "list"], help="run the study, list its jobs, or list studies")
    p.add_argument("study", nargs="?", help="a study of conf/study")
    p.add_argument("--env", default="offline", help="an environment of conf/env (default: offline)")
    p.add_argument("--set", action="append", metavar="KEY=V1,V2",
                   help="replace one sweep axis's values, e.g. --set seed=42 --set quantizer=gptq (repeatable)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override for every job, e.g. --override eval_suite.limit=10 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")


def run(args) -> None:
    if args.action == "list":
        print("studies:      " + ", ".join(options("study")))
        print("environments: " + ", ".join(options("env")))
        return
    if not args.study:
        raise QgenError(f"qgen study {args.action} needs a study: one of {', '.join(options('study'))}")
    changes = parse_changes(args.set)
    cfg = compose(args.study, args.env, args.override, changes=changes)
    if args.action == "jobs":
        for job in jobs(cfg, changes):
            print(" ".join(job))
        return
    todo = commands(args.study, args.env, changes, args.override, cfg=cfg)
    if not args.dry_run:  # a dataset that cannot be had stops the study here, not each of its jobs
        from qgen.data.prepare import ensure_datasets

        ensure_datasets(datasets(cfg, changes))
    for cmd in todo:
        print("+ " + " ".join(cmd), flush=True)
        if not args.dry_run:
            done = subprocess.run(cmd)
            if done.returncode:
                raise QgenError(f"study {args.study} (env {args.env}) stopped: {' '.join(cmd[2:4])} exited with "
                                f"{done.returncode}; completed jobs are kept and skipped when it is rerun")
