"""Dataset loader and scorer for qgen's lm-eval task YAMLs (`custom_dataset: !function qgen_data.load`).

Reads the prepared local copy (<QGEN_HOME>/data/<name>/{calib,eval}.jsonl) and never prepares it: a qgen job
or suite prepares its datasets before lm-eval loads them, and the tasks also run with plain
`lm_eval --include_path <this folder>` once the data is prepared (`make assets`, or `qgen prepare NAME`).
"""

from __future__ import annotations

import re
import string
from collections import Counter


def load(dataset: str, **_metadata):
    from datasets import Dataset, DatasetDict

    from qgen.data.registry import SPLITS, load_split

    return DatasetDict({split: Dataset.from_list(load_split(dataset, split)) for split in SPLITS})


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref:
        return float(pred == ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_scores(doc: dict, results: list[str]) -> dict:
    """Exact match and token F1 of the generated answer (its first non-empty line) against the best-matching
    reference answer."""
    prediction = next((line.strip() for line in results[0].splitlines() if line.strip()), "")
    answers = doc["answers"] or [""]
    return {"exact_match": max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers),
            "f1": max(token_f1(prediction, a) for a in answers)}
