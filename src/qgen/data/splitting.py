"""Rows -> the calibration and evaluation parts: one splitter per `split.method`, registered by decorator
(`@splitter("seeded_fraction")`), plus the clean-ups applied around it (`dedupe_by`, the stored shuffle of an
evaluation part, `max_rows`) and `make_disjoint`, which drops evaluation rows that repeat a calibration text.

A splitter gets the rows per source split and the dataset's `split` rule and returns (calib rows, eval rows).
A new split rule is one function here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qgen.data.overlap import fingerprints
from qgen.data.readers import read_source
from qgen.data.registry import DatasetSpec
from qgen.errors import QgenError

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


EVAL_ORDER_SEED = 0


def shuffled(rows: list[dict], seed: int) -> list[dict]:
    """The rows in a fixed random order. A task's evaluation part is stored this way so that any prefix of it —
    `eval_suite.limit`, `lm_eval --limit` — is a uniform sample, not MMLU's first subject or the first label of a
    source sorted by label. Corpora (running text for perplexity) keep their order."""
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


def _single(parts: dict[str, list[dict]]) -> list[dict]:
    if len(parts) != 1:
        raise QgenError(f"this split rule needs a single source split, got {sorted(parts)}")
    return next(iter(parts.values()))


@splitter("seeded_fraction")
def split_seeded_fraction(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """One source split, shuffled with a fixed seed: the first `calib_fraction` calibrates, the rest evaluates."""
    rows = _single(parts)
    order = np.random.default_rng(rule["seed"]).permutation(len(rows))
    k = round(rule["calib_fraction"] * len(rows))
    return [rows[i] for i in sorted(order[:k])], [rows[i] for i in sorted(order[k:])]


@splitter("head_fraction")
def split_head_fraction(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """Running text kept in order: the first `calib_fraction` of rows calibrates, the tail evaluates."""
    rows = _single(parts)
    k = round(rule["calib_fraction"] * len(rows))
    return rows[:k], rows[k:]


@splitter("seeded_group_fraction")
def split_seeded_group_fraction(parts: dict[str, list[dict]], rule: dict) -> tuple[list[dict], list[dict]]:
    """Like seeded_fraction, but rows sharing `group_by` (say a passage with several questions) stay together."""
    rows = _single(parts)
    groups = list(dict.fromkeys(row[rule["group_by"]] for row in rows))
    order = np.random.default_rng(rule["seed"]).permutation(len(groups))
    calib_groups = {groups[i] for i in order[: round(rule["calib_fraction"] * len(groups))]}
    calib = [row for row in rows if row[rule["group_by"]] in calib_groups]
    return calib, [row for row in rows if row[rule["group_by"]] not in calib_groups]


def make_disjoint(calib: list[dict], evaluation: list[dict], fields: frozenset[str]) -> tuple[list[dict], int]:
    """Drop evaluation rows that show the model a text some calibration row shows (duplicates in the source),
    so that a dataset's own calibration part always passes the overlap guard against its evaluation part."""
    seen = set().union(*(fingerprints(row, fields) for row in calib))
    kept = [row for row in evaluation if not fingerprints(row, fields) & seen]
    return kept, len(evaluation) - len(kept)


def dedupe(rows: list[dict], field: str) -> list[dict]:
    seen, out = set(), []
    for row in rows:
        if row[field] not in seen:
            seen.add(row[field])
            out.append(row)
    return out


def split_rows(spec: DatasetSpec, arc) -> tuple[list[dict], list[dict]]:
    """The calibration and evaluation rows of `spec` read from its opened source, before any overlap removal."""
    parts = read_source(arc, spec.source)
    if spec.split.get("dedupe_by"):
        parts = {name: dedupe(rows, spec.split["dedupe_by"]) for name, rows in parts.items()}
    calib, evaluation = SPLITTERS[spec.split["method"]](parts, spec.split)
    if spec.task_type != "corpus":
        evaluation = shuffled(evaluation, EVAL_ORDER_SEED)
    cap = spec.split.get("max_rows") or {}  # a huge source (a C4 shard) keeps only its first rows per part
    return calib[: cap.get("calib")], evaluation[: cap.get("eval")]
