"""Content-addressed caches under QGEN_HOME/cache/<kind>/<key>/.

An entry is a folder of files plus `entry.json` (what it is, sizes and sha256 of every file, when it was made
and last used). Entries are built in a staging folder and renamed into place, so concurrent jobs never see half
an entry; two jobs building the same key both succeed and one rename wins. Reading an entry re-checks its files;
a damaged entry is deleted and reported as a miss, so the caller rebuilds it. The total size is capped
(`QGEN_CACHE_MAX_GB`, default 50): least recently used entries go first.

Kinds: `calibration` (token windows), `quantized` (quantized block weights + report), `eval` (a model's scores on
an eval suite, keyed by the identity of its weights: the FP model, or a quantized checkpoint, and the eval dtype),
`reference` (the FP model's next-token distributions on one dataset's held-out text, for the divergence metrics:
keyed by model, tokenizer, dataset, protocol and eval dtype), `tokens` (a prepared dataset part's token counts per
document, for the calibration-set proxy of qgen.data.unigram: keyed by tokenizer, dataset, part, the part file's
sha256 and calib_text).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qgen.assets import sha256_file
from qgen.home import cache_dir

log = logging.getLogger(__name__)

ENTRY = "entry.json"
KINDS = ("calibration", "quantized", "eval", "reference", "tokens")
# Bump when what a cached artifact means changes (quantization math, calibration windows, eval protocol).
CODE_VERSION = {"calibration": 1, "quantized": 2, "eval": 1, "reference": 1, "tokens": 1}  # quantized 2: grids saved


def make_key(kind: str, identity: dict) -> str:
    blob = json.dumps({"kind": kind, "code_version": CODE_VERSION[kind], **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class Hit:
    folder: Path
    meta: dict


def _max_bytes() -> int:
    return int(float(os.environ.get("QGEN_CACHE_MAX_GB", "50")) * 1e9)


class Cache:
    def __init__(self, kind: str, root: Path | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind {kind!r}")
        self.kind = kind
        self.root = (root or cache_dir()) / kind
        self.damaged = False

    def folder(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Hit | None:
        """The entry, or None; `self.damaged` tells whether a damaged entry was just dropped."""
        self.damaged = False
        folder = self.folder(key)
        try:
            entry = json.loads((folder / ENTRY).read_text())
        except (OSError, ValueError):
            if folder.exists():
                self._drop(folder, "its entry.json is missing or unreadable")
            return None
        for rel, info in entry["files"].items():
            p = folder / rel
            if not p.is_file() or p.stat().st_size != info["size"] or sha256_file(p) != info["sha256"]:
                self._drop(folder, f"{rel} is damaged")
                return None
        entry["last_used"] = time.time()
        _write_json(folder / ENTRY, entry)
        return Hit(folder, entry.get("meta", {}))

    def put(self, key: str, write: Callable[[Path], dict | None]) -> Hit:
        """`write(folder)` fills a staging folder and may return metadata; the entry appears atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            meta = write(staging) or {}
            files = {str(p.relative_to(staging)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                     for p in sorted(staging.rglob("*")) if p.is_file()}
            now = time.time()
            _write_json(staging / ENTRY, {"kind": self.kind, "key": key, "meta": meta, "files": files,
                                          "created": now, "last_used": now})
            target = self.folder(key)
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(staging, target)
            except OSError:  # another job renamed the same key into place first: theirs is as good
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        evict(keep=target)
        return Hit(target, meta)

    def _drop(self, folder: Path, why: str) -> None:
        self.damaged = True
        log.warning("cache entry %s/%s is damaged (%s); rebuilding it", self.kind, folder.name, why)
        shutil.rmtree(folder, ignore_errors=True)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def entries(root: Path | None = None) -> list[dict]:
    """Every complete entry: kind, key, size in bytes, created, last used, meta."""
    out = []
    base = root or cache_dir()
    for kind in KINDS:
        for folder in sorted((base / kind).glob("*")):
            try:
                entry = json.loads((folder / ENTRY).read_text())
            except (OSError, ValueError):
                continue
            size = sum(info["size"] for info in entry["files"].values())
            out.append({"kind": kind, "key": folder.name, "bytes": size, "created": entry["created"],
                        "last_used": entry["last_used"], "meta": entry.get("meta", {}), "folder": str(folder)})
    return out


def evict(keep: Path | None = None, max_bytes: int | None = None) -> list[str]:
    """Delete least recently used entries until the cache fits its cap; returns the removed folders."""
    limit = _max_bytes() if max_bytes is None else max_bytes
    all_entries = sorted(entries(), key=lambda e: e["last_used"])
    total = sum(e["bytes"] for e in all_entries)
    removed = []
    for e in all_entries:
        if total <= limit:
            break
        if keep is not None and Path(e["folder"]) == keep:
            continue
        shutil.rmtree(e["folder"], ignore_errors=True)
        total -= e["bytes"]
        removed.append(e["folder"])
    return removed


def clear(kind: str | None = None) -> int:
    n = 0
    for e in entries():
        if kind is None or e["kind"] == kind:
            shutil.rmtree(e["folder"], ignore_errors=True)
            n += 1
    return n
