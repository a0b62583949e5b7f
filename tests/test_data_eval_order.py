"""Stored order of a prepared evaluation part: a task's items are shuffled with a fixed seed, so the first N
(`eval_suite.limit`, `lm_eval --limit`) are a uniform sample even when the source is sorted by label; a corpus
(running text for perplexity) keeps its order."""

from __future__ import annotations

from conftest import write_user_dataset
from qgen.data import registry
from qgen.data.prepare import prepare


def _register(tmp_path, monkeypatch, name: str, task_type: str, rows: list[dict]) -> registry.DatasetSpec:
    regdir = write_user_dataset(tmp_path, name, rows, title="rows sorted by label", task_type=task_type,
                                calib_text="{{text}}")
    monkeypatch.setenv("QGEN_DATASETS_DIR", str(regdir))
    registry.all_datasets.cache_clear()
    return registry.get(name)


def test_task_items_are_stored_shuffled_and_corpora_in_order(tmp_home, tmp_path, monkeypatch):
    rows = [{"text": f"sentence number {i} of a long source sorted by its label", "label": i // 100}
            for i in range(200)]
    task = _register(tmp_path, monkeypatch, "sorted_task", "multiple_choice", rows)
    prepare(task)
    items = registry.load_split("sorted_task", "eval")
    assert {r["label"] for r in items[:20]} == {0, 1}  # sorted source: the first 20 would all be label 0
    again = registry.load_split("sorted_task", "eval")
    assert items == again and len(items) == 140
    assert sorted(r["text"] for r in items) == sorted(r["text"] for r in rows if r not in
                                                      registry.load_split("sorted_task", "calib"))

    corpus = _register(tmp_path, monkeypatch, "sorted_corpus", "corpus", rows)
    prepare(corpus)
    lines = registry.load_split("sorted_corpus", "eval")
    numbers = [int(r["text"].split()[2]) for r in lines]
    assert numbers == sorted(numbers)
