"""Turn a registered dataset's source into the uniform local format: <QGEN_HOME>/data/<name>/{calib,eval}.jsonl.

Readers are chosen by `source.format`; splitters by `split.method`. Both are small registries, so a new source
format or split rule is one function here, not a change to the datasets that already work.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qgen.assets import Archive, PACKAGES, fetch_archive, folder_is_intact, write_manifest
from qgen.data.registry import DatasetSpec
from qgen.errors import QgenError
from qgen.home import data_dir

log = logging.getLogger(__name__)

# -- readers: archive + source spec -> {source split name: rows} -------------------------------------------------
READERS: dict[str, Callable[[Archive, dict], dict[str, list[dict]]]] = {}


def reader(fmt: str):
    def register(fn):
        READERS[fmt] = fn
        return fn

    return register


def _arrow_rows(data: bytes) -> list[dict]:
    import pyarrow as pa

    return pa.ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


@reader("hf_arrow")
def read_hf_arrow(arc: Archive, source: dict) -> dict[str, list[dict]]:
    """`save_to_disk` folders: `members` maps a source split name to its folder inside the archive."""
    members = source.get("members") or {"all": source["member"]}
    return {split: _arrow_rows(arc.read(f"{folder}/data-00000-of-00001.arrow")) for split, folder in members.items()}


@reader("jsonl")
def read_jsonl(arc: Archive, source: dict) -> dict[str, list[dict]]:
    members = source.get("members") or {"all": source["member"]}
    return {
        split: [json.loads(line) for line in arc.read(member).decode("utf-8").splitlines() if line.strip()]
        for split, member in members.items()
    }


# -- splitters: source splits -> disjoint calib and eval rows ----------------------------------------------------
SPLITTERS: dict[str, Callable[[dict[str, list[dict]], dict], tuple[list[dict], list[dict]]]] = {}


def splitter(method: str):
    def register(fn):
        SPLITTERS[method] = fn
        return fn

    return register


@splitter("source")
def split_by_source(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """The source already has separate splits: `calib` and `eval` name them (a list joins several)."""
    def take(names):
        names = [names] if isinstance(names, str) else names
        return [row for n in names for row in parts[n]]

    return take(rule["calib"]), take(rule["eval"])


def _single(parts: dict[str, list[dict]]) -> list[dict]:
    if len(parts) != 1:
        raise QgenError(f"this split rule needs a single source split, got {sorted(parts)}")
    return next(iter(parts.values()))


@splitter("seeded_fraction")
def split_seeded_fraction(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """One source split, shuffled with a fixed seed: the first `calib_fraction` calibrates, the rest evaluates."""
    rows = _single(parts)
    order = np.random.default_rng(rule["seed"]).permutation(len(rows))
    k = int(round(rule["calib_fraction"] * len(rows)))
    return [rows[i] for i in sorted(order[:k])], [rows[i] for i in sorted(order[k:])]


@splitter("head_fraction")
def split_head_fraction(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """Running text kept in order: the first `calib_fraction` of rows calibrates, the tail evaluates."""
    rows = _single(parts)
    k = int(round(rule["calib_fraction"] * len(rows)))
    return rows[:k], rows[k:]


def is_prepared(spec: DatasetSpec, full_check: bool = False) -> bool:
    return folder_is_intact(spec.folder, full=full_check)


def prepare(spec: DatasetSpec, full_check: bool = False) -> Path:
    """Build the dataset's calib/eval jsonl files once; a damaged folder is rebuilt."""
    if is_prepared(spec, full_check):
        return spec.folder
    if not spec.offline:
        raise QgenError(f"dataset {spec.name!r} has no offline source; it needs hub access")
    fmt, method = spec.source["format"], spec.split["method"]
    if fmt not in READERS:
        raise QgenError(f"{spec.name}: unknown source format {fmt!r}; known: {', '.join(sorted(READERS))}")
    if method not in SPLITTERS:
        raise QgenError(f"{spec.name}: unknown split method {method!r}; known: {', '.join(sorted(SPLITTERS))}")
    with Archive(fetch_archive(spec.source["package"])) as arc:
        parts = READERS[fmt](arc, spec.source)
    calib, evaluation = SPLITTERS[method](parts, spec.split)
    if not calib or not evaluation:
        raise QgenError(f"{spec.name}: split rule {spec.split} leaves an empty part")
    data_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir()) as tmp:
        staging = Path(tmp) / spec.name
        staging.mkdir()
        for split, rows in (("calib", calib), ("eval", evaluation)):
            with open(staging / f"{split}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        write_manifest(staging, {
            "dataset": spec.name,
            "package": PACKAGES[spec.source["package"]].spec,
            "source": spec.source,
            "split": spec.split,
            "rows": {"calib": len(calib), "eval": len(evaluation)},
        })
        if spec.folder.exists():
            shutil.rmtree(spec.folder)
        os.replace(staging, spec.folder)
    log.info("prepared %s: %d calib rows, %d eval rows", spec.name, len(calib), len(evaluation))
    return spec.folder
