"""The dataset registry: one YAML file per dataset in `qgen/data/datasets/`.

Each entry says what the dataset is (task type, language, scenario tags), where it comes from (a member of a
registry-package archive, a local file, or a hub repository / local copy laid out like it), how its rows split
into two disjoint parts — one for calibration, one for evaluation — and how an example renders as calibration
text (what the model sees at test time, without the answer). Adding a dataset is adding one YAML file here (or,
for a user's own data, in a folder named by $QGEN_DATASETS_DIR); see docs/datasets.md.

A family of alike datasets (MMLU categories, multiemo languages, BBQ categories) is one file with `base:` (the
shared fields), `variants:` ({name: fields merged over base}) and `lm_eval_group:` (the lm-eval group that runs
them all); variant names start with the file name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml

from qgen.errors import QgenError
from qgen.home import data_dir

REGISTRY_DIR = Path(__file__).parent / "datasets"
SPLITS = ("calib", "eval")
SELF = "self"  # reserved: calib.dataset=self is text sampled from the model (qgen/data/self_calib.py)
USER_DIRS_ENV = "QGEN_DATASETS_DIR"  # extra registry folders (os.pathsep-separated) for the user's own datasets


def registry_files() -> list[Path]:
    dirs = [REGISTRY_DIR] + [Path(d).expanduser() for d in os.environ.get(USER_DIRS_ENV, "").split(os.pathsep) if d]
    return [p for d in dirs for p in sorted(d.glob("*.yaml"))]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    task_type: str  # corpus | multiple_choice | generation
    language: str
    scenarios: tuple[str, ...]
    source: dict[str, Any]  # format + member(s) of a package archive, a local `path`, or a hub repo / local copy
    split: dict[str, Any]  # how rows become the calib and eval parts, recorded with the data
    calib_text: str  # Jinja template: one example -> the text used for calibration
    lm_eval_task: str | None = None
    lm_eval: dict[str, Any] = field(default_factory=dict)  # template + the task fields; see data/lm_eval_tasks.py
    license: str = ""
    family: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    origin: Path | None = field(default=None, compare=False)  # the registry file it was read from

    @property
    def shipped(self) -> bool:
        """Registered in the package (its task file is committed), not in a $QGEN_DATASETS_DIR folder."""
        return self.origin is not None and self.origin.parent == REGISTRY_DIR

    @property
    def folder(self) -> Path:
        return data_dir() / self.name

    @property
    def offline(self) -> bool:
        """Preparable here without the hub: a member of a pinned package archive, or a local file (`path`)."""
        return "package" in self.source or "path" in self.source


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _spec(raw: dict, where: Path) -> DatasetSpec:
    known = set(DatasetSpec.__dataclass_fields__) - {"extra", "origin"}
    missing = {"name", "title", "task_type", "language", "source", "split", "calib_text"} - set(raw)
    if missing:
        raise QgenError(f"{where}: dataset {raw.get('name', '?')!r} lacks {', '.join(sorted(missing))}")
    fields = {k: v for k, v in raw.items() if k in known}
    fields["scenarios"] = tuple(fields.get("scenarios", ()))
    fields.setdefault("lm_eval_task", f"qgen_{raw['name']}")
    return DatasetSpec(**fields, extra={k: v for k, v in raw.items() if k not in known}, origin=where)


def _read_entry(path: Path) -> dict:
    """One registry file as a mapping; a file that is not valid YAML or not a mapping is one line naming it."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise QgenError(f"{path} could not be read as YAML{at}: fix the file or remove it from "
                        f"{USER_DIRS_ENV}") from None
    if not isinstance(raw, dict):
        raise QgenError(f"{path}: a dataset entry must be a YAML mapping")
    return raw


@cache
def all_datasets() -> dict[str, DatasetSpec]:
    specs = {}
    for path in registry_files():
        raw = _read_entry(path)
        if "variants" in raw:
            found = [_spec(_merge(raw.get("base", {}), {**fields, "name": name, "family": path.stem}), path)
                     for name, fields in raw["variants"].items()]
            if bad := [s.name for s in found if not s.name.startswith(path.stem)]:
                raise QgenError(f"{path}: variant {bad[0]!r} must start with the file name {path.stem!r}")
        else:
            found = [_spec(raw, path)]
            if found[0].name != path.stem:
                raise QgenError(f"{path}: name {found[0].name!r} must match the file name {path.stem!r}")
        for spec in found:
            if spec.name == SELF:
                raise QgenError(f"{path}: the dataset name {SELF!r} is reserved for calibration text sampled from "
                                f"the model (calib.dataset=self); rename the dataset")
            if spec.name in specs:
                raise QgenError(f"{path}: dataset {spec.name!r} is registered twice")
            specs[spec.name] = spec
    return specs


@cache
def families() -> dict[str, dict]:
    """{family: {"group": lm-eval group name, "members": [dataset names]}}."""
    out = {}
    for path in registry_files():
        raw = _read_entry(path)
        if "variants" in raw:
            out[path.stem] = {"group": raw.get("lm_eval_group", f"qgen_{path.stem}"), "members": list(raw["variants"])}
    return out


def datasets_of_task(task: str) -> list[str]:
    """The registered datasets behind an lm-eval task or group name ([] for lm-eval's built-in tasks)."""
    for spec in all_datasets().values():
        if spec.lm_eval_task == task:
            return [spec.name]
    for fam in families().values():
        if fam["group"] == task:
            return list(fam["members"])
    return []


def get(name: str) -> DatasetSpec:
    specs = all_datasets()
    if name not in specs:
        raise QgenError(f"unknown dataset {name!r}; registered: {', '.join(sorted(specs))}")
    return specs[name]


def load_split(name: str, split: str) -> list[dict]:
    """Rows of a prepared dataset's calib or eval part. A pure read: it never prepares (the stage that first
    reads a dataset calls qgen.data.prepare.ensure_prepared; by hand: `qgen prepare NAME`)."""
    if split not in SPLITS:
        raise QgenError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    path = get(name).folder / f"{split}.jsonl"
    if not path.is_file():
        raise QgenError(f"dataset {name!r} is not prepared in {path.parent}: run `qgen prepare {name}` "
                        f"(or `qgen assets fetch` for every offline dataset)")
    with open(path) as f:
        return [json.loads(line) for line in f]


def render(template: str, row: dict) -> str:
    return _jinja(template).render(**row)


def render_split(name: str, split: str) -> list[str]:
    """A prepared part's rows rendered as the model sees them (the dataset's `calib_text`), one text per row: the
    calibration part as calibration windows are cut from it, the evaluation part as perplexity and the
    divergence metrics read it."""
    spec = get(name)
    return [render(spec.calib_text, row) for row in load_split(name, split)]


@lru_cache(maxsize=256)
def template_fields(template: str) -> frozenset[str]:
    """The row fields a template reads (what the model sees of an example)."""
    import jinja2
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(jinja2.Environment().parse(template)))


@lru_cache(maxsize=256)
def _jinja(template: str):
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(template)
