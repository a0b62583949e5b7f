"""The overlap guard: a job must not calibrate on examples it is evaluated on.

An example's fingerprints are the sha1 hashes of its substantial texts: every string of at least `MIN_CHARS`
characters in the fields its dataset's `calib_text` shows the model (passage, question, sentence, document;
nested lists included), after collapsing whitespace and case. Metadata the model never sees (ids, URLs) and
short strings (labels, one-word answers, choice letters), which repeat legitimately, are ignored. Calibration
and evaluation overlap when any fingerprint is shared, which also catches a corpus built from the passages of a
QA set that is then evaluated.
"""

from __future__ import annotations

import hashlib
import re

from qgen.errors import QgenError

MIN_CHARS = 40
_SPACE = re.compile(r"\s+")


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def fingerprints(row: dict, fields: frozenset[str] | None = None) -> set[str]:
    """Hashes of the row's substantial texts, within `fields` when given (else the whole row)."""
    out = set()
    for text in _strings(row if fields is None else {k: v for k, v in row.items() if k in fields}):
        norm = _SPACE.sub(" ", text).strip().lower()
        if len(norm) >= MIN_CHARS:
            out.add(hashlib.sha1(norm.encode("utf-8")).hexdigest())
    return out


def split_fingerprints(name: str, split: str) -> set[str]:
    from qgen.data.registry import get, load_split, template_fields

    fields = template_fields(get(name).calib_text)
    return set().union(*(fingerprints(row, fields) for row in load_split(name, split)))


def check_disjoint(calib_datasets: list[str], eval_datasets: list[str]) -> dict:
    """Raise QgenError when a calibration part shares an example with an evaluation part; else a summary. This
    is the first stage of a job that reads data, so it prepares every dataset it compares (calibration first)."""
    from qgen.data.prepare import ensure_datasets  # prepare imports this module (fingerprints)

    ensure_datasets([*calib_datasets, *eval_datasets])
    calib = {name: split_fingerprints(name, "calib") for name in dict.fromkeys(calib_datasets)}
    checked = 0
    for ev in dict.fromkeys(eval_datasets):
        ev_prints = split_fingerprints(ev, "eval")
        checked += len(ev_prints)
        for name, prints in calib.items():
            if shared := prints & ev_prints:
                raise QgenError(f"calibration data {name!r} overlaps evaluation data {ev!r} in {len(shared)} "
                                f"text(s); calibrate on another dataset or drop {ev!r} from the suite")
    return {"calib": list(calib), "eval": list(dict.fromkeys(eval_datasets)),
            "calib_texts": sum(map(len, calib.values())), "eval_texts": checked, "overlap": 0}


def suite_datasets(suite) -> list[str]:
    """The registered datasets an eval suite reads: its qgen lm-eval tasks and groups, its perplexity corpora and
    its divergence datasets (lm-eval built-in tasks read no local data and are skipped)."""
    from qgen.data.registry import datasets_of_task

    names = [d for task in suite.get("tasks") or [] for d in datasets_of_task(str(task))]
    names += [str(entry.dataset) for entry in suite.get("perplexity") or []]
    names += [str(d) for d in (suite.get("divergence") or {}).get("datasets") or []]
    return list(dict.fromkeys(names))


def check_job_overlap(cfg) -> dict:
    """The call a job makes before quantizing: cfg.calib.dataset (name or list) vs cfg.eval_suite. Text sampled
    from the model (`self`) is not compared: it is no dataset's example."""
    from qgen.data.calibration import registered_names

    return check_disjoint([str(d) for d in registered_names(cfg.calib.dataset)], suite_datasets(cfg.eval_suite))
