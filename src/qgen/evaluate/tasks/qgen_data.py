"""Dataset loader for qgen's lm-eval task YAMLs (`custom_dataset: !function qgen_data.load`).

Reads the prepared local copy (<QGEN_HOME>/data/<name>/{calib,eval}.jsonl), so the tasks also run with plain
`lm_eval --include_path <this folder>` once `make assets` has run.
"""

from __future__ import annotations


def load(dataset: str, **_metadata):
    from datasets import Dataset, DatasetDict

    from qgen.data.registry import SPLITS, load_split

    return DatasetDict({split: Dataset.from_list(load_split(dataset, split)) for split in SPLITS})
