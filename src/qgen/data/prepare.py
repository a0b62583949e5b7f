"""Preparation: turn a registered dataset's source into the uniform local format,
<QGEN_HOME>/data/<name>/{calib,eval}.jsonl, with a manifest recording the recipe it was built from.

This module only orchestrates: it opens the source (a package archive, a user's file, or a hub repository or
local copy laid out like it), reads its rows (qgen.data.readers, by `source.format`), splits them
(qgen.data.splitting, by `split.method`), drops evaluation rows that repeat a calibration text (of the same
dataset or of a family sibling), and writes the two parts atomically. Hub access is qgen.data.hub.

Reading prepared data (`registry.load_split`) never prepares: the stage that reads a dataset first — the overlap
guard of a job, building a calibration set, evaluating a suite, `qgen assets fetch`, `qgen prepare` — calls
`ensure_prepared`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from qgen.assets import (
    PACKAGES,
    ArchiveUnavailable,
    FolderArchive,
    folder_is_intact,
    open_package,
    read_manifest,
    sha256_file,
    write_manifest,
)
from qgen.data.hub import download_from_hub, hub_reachable, needs_local_copy
from qgen.data.readers import READERS, source_members
from qgen.data.registry import DatasetSpec, all_datasets, get, template_fields
from qgen.data.splitting import SPLITTERS, make_disjoint, split_rows
from qgen.errors import QgenError
from qgen.home import data_dir

log = logging.getLogger(__name__)


def package_members(package: str) -> set[str]:
    """Every archive member that the registered datasets of `package` read (one extraction pass serves all)."""
    return {member for spec in all_datasets().values() if spec.source.get("package") == package
            for items in source_members(spec.source).values() for member, _ in items}


PREP_VERSION = 4  # bump when preparation changes what it writes (3: evaluation parts shuffled; 4: family-disjoint)


def recipe(spec: DatasetSpec) -> dict:
    """What a prepared folder was built from; a folder whose manifest records another recipe is rebuilt."""
    package = PACKAGES[spec.source["package"]].spec if "package" in spec.source else None
    out = {"prep_version": PREP_VERSION, "source": spec.source, "split": spec.split, "package": package,
           "calib_text": spec.calib_text}
    if "path" in spec.source:  # a user's file: rebuilt when its content changes
        path = Path(spec.source["path"]).expanduser()
        out["file_sha256"] = sha256_file(path) if path.is_file() else None
    return out


def is_prepared(spec: DatasetSpec, full_check: bool = False) -> bool:
    manifest = read_manifest(spec.folder)
    if manifest is None:
        return False
    if {k: manifest.get(k) for k in recipe(spec)} != json.loads(json.dumps(recipe(spec))):
        return False
    return folder_is_intact(spec.folder, full=full_check)


def ensure_prepared(spec: DatasetSpec) -> Path:
    """Prepared already, or prepare it: from the package archive, else from the hub when it is reachable;
    otherwise one line saying what is needed."""
    if is_prepared(spec):
        return spec.folder
    if spec.offline:
        return prepare(spec)
    if spec.source.get("hub") and hub_reachable():
        return prepare(spec, local_dir=download_from_hub(spec))
    raise QgenError(needs_local_copy(spec))


def ensure_datasets(names) -> None:
    """ensure_prepared for each named dataset, in order (a name given twice is checked once). Datasets whose
    archive the registry no longer serves are all named in one line, not found one run at a time."""
    refused: dict[str, list[str]] = {}  # why -> datasets
    for name in dict.fromkeys(names):
        try:
            ensure_prepared(get(name))
        except ArchiveUnavailable as exc:
            refused.setdefault(str(exc), []).append(name)
    if refused:
        raise ArchiveUnavailable("; ".join(f"unavailable here: {', '.join(lost)} — {why}"
                                           for why, lost in refused.items()))


def package_siblings(spec: DatasetSpec) -> list[DatasetSpec]:
    """The other members of spec's family read from the same package (MMLU's categories, say). A family is
    calibrated on one member and tested on the others (S3), so an evaluation item that is also a sibling's
    calibration item (MMLU repeats a few questions across subjects) is dropped as well."""
    if not spec.family or "package" not in spec.source:
        return []
    return [s for s in all_datasets().values()
            if s.family == spec.family and s.name != spec.name and s.source.get("package") == spec.source["package"]]


def prepare(spec: DatasetSpec, full_check: bool = False, local_dir: Path | None = None) -> Path:
    """Build the dataset's calib/eval jsonl files once; a damaged folder is rebuilt. A dataset without an
    offline source is read from `local_dir`, laid out like its source (hub repository or BOSS directory)."""
    if local_dir is None and is_prepared(spec, full_check):
        return spec.folder
    if not spec.offline and local_dir is None:
        raise QgenError(needs_local_copy(spec))
    fmt, method = spec.source["format"], spec.split["method"]
    if fmt not in READERS:
        raise QgenError(f"{spec.name}: unknown source format {fmt!r}; known: {', '.join(sorted(READERS))}")
    if method not in SPLITTERS:
        raise QgenError(f"{spec.name}: unknown split method {method!r}; known: {', '.join(sorted(SPLITTERS))}")
    if local_dir is None and "path" in spec.source:
        path = Path(spec.source["path"]).expanduser()
        if not path.is_file():
            raise QgenError(f"{spec.name}: source.path {spec.source['path']!r} is not a file")
        local_dir = path.parent
    if local_dir is not None:
        if not Path(local_dir).is_dir():
            raise QgenError(f"{local_dir} is not a directory (expected {spec.source.get('layout', 'the files')})")
        arc = FolderArchive(Path(local_dir))
    else:
        arc = open_package(spec.source["package"], package_members(spec.source["package"]), full_check)
    # a user's file is read from its folder; its recorded recipe holds the file's sha256
    with arc:
        calib, evaluation = split_rows(spec, arc)
        siblings = [split_rows(sib, arc)[0] for sib in package_siblings(spec)] if local_dir is None else []
    fields = template_fields(spec.calib_text)
    evaluation, dropped = make_disjoint(calib, evaluation, fields)
    evaluation, dropped_family = make_disjoint([row for rows in siblings for row in rows], evaluation, fields)
    if not calib or not evaluation:
        raise QgenError(f"{spec.name}: split rule {spec.split} leaves an empty part")
    data_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir()) as tmp:
        staging = Path(tmp) / spec.name
        staging.mkdir()
        for split, rows in (("calib", calib), ("eval", evaluation)):
            with open(staging / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_manifest(staging, {
            "dataset": spec.name,
            **recipe(spec),
            "rows": {"calib": len(calib), "eval": len(evaluation)},
            "eval_rows_dropped_as_duplicates_of_calib": dropped,
            "eval_rows_dropped_as_duplicates_of_family_calib": dropped_family,
        })
        if spec.folder.exists():
            shutil.rmtree(spec.folder)
        os.replace(staging, spec.folder)
    log.info("prepared %s: %d calib rows, %d eval rows", spec.name, len(calib), len(evaluation))
    return spec.folder
