"""The registry itself: entries are complete, generated lm-eval tasks are in sync, suites name real tasks."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from qgen import conf_store
from qgen.data import registry
from qgen.data.calib_configs import CONF_DIR
from qgen.data.lm_eval_tasks import TASKS_DIR, stale_files, task_config
from qgen.data.readers import READERS, source_members
from qgen.data.splitting import SPLITTERS
from qgen.errors import QgenError


def test_at_least_40_offline_datasets_across_the_scenarios():
    specs = registry.all_datasets().values()
    offline = [s for s in specs if s.offline]
    assert len(offline) >= 40
    tags = {t for s in offline for t in s.scenarios}
    assert {"s1_broad", "s2_qa", "s2_sentiment", "s2_nli", "s2_toxicity", "s3_subjects", "crosslingual"} <= tags
    assert len({s.language for s in offline}) >= 10  # multiemo's languages, Chinese, Hinglish
    for name in ("c4", "wiki", "ptb", "pile-val", "ceval_stem", "cmmlu_humanities", "boss_sa_amazon"):
        assert not registry.get(name).offline


def test_every_entry_names_a_known_reader_splitter_and_members():
    for spec in registry.all_datasets().values():
        assert spec.source["format"] in READERS, spec.name
        assert spec.split["method"] in SPLITTERS, spec.name
        assert spec.task_type in ("corpus", "multiple_choice", "generation"), spec.name
        members = source_members(spec.source)
        assert members and all(items for items in members.values()), spec.name
        if spec.split["method"] in ("seeded_fraction", "seeded_group_fraction"):
            assert isinstance(spec.split["seed"], int), spec.name  # single-split sources are split with a seed


def test_mmlu_categories_cover_the_57_subjects_once():
    subjects = [s for name in registry.families()["mmlu"]["members"]
                for s in registry.get(name).source["subjects"]]
    assert len(subjects) == len(set(subjects)) == 57


def test_generated_task_files_are_in_sync_with_the_registry():
    assert stale_files() == []
    for spec in registry.all_datasets().values():
        cfg = yaml.safe_load((TASKS_DIR / f"{spec.lm_eval_task}.yaml").read_text().replace("!function", ""))
        assert cfg["dataset_kwargs"]["dataset"] == spec.name
        # the prompt the model reads at test time is the calibration text (corpora: the rolling document)
        assert cfg.get("doc_to_text", cfg.get("doc_to_target")) == spec.calib_text
        assert task_config(spec)["task"] == f"qgen_{spec.name}"


def test_suites_name_tasks_that_exist():
    known = {p.stem for p in TASKS_DIR.glob("qgen_*.yaml")}
    for path in (CONF_DIR / "eval_suite").glob("*.yaml"):
        # composed, so that a suite extending another through its defaults list is checked as a job sees it
        suite = OmegaConf.to_container(conf_store.compose([f"eval_suite={path.stem}"], CONF_DIR).eval_suite)
        for task in suite["tasks"]:
            assert task in known, (path.name, task)
        for entry in suite.get("perplexity") or []:
            assert registry.get(entry["dataset"]).task_type == "corpus", (path.name, entry)
        in_suite = {d for t in suite["tasks"] for d in registry.datasets_of_task(t)}
        in_suite |= {e["dataset"] for e in suite.get("perplexity") or []}  # ppl/<dataset> columns
        in_suite |= set((suite.get("divergence") or {}).get("datasets") or [])  # kl/<dataset> columns
        for group in (suite.get("groups") or {}).values():
            assert {group["in_distribution"], *group["shifted"]} <= in_suite, (path.name, group)


def test_suite_all_covers_every_offline_dataset():
    suite = yaml.safe_load((CONF_DIR / "eval_suite" / "all.yaml").read_text())
    covered = {d for t in suite["tasks"] for d in registry.datasets_of_task(t)}
    covered |= {e["dataset"] for e in suite["perplexity"]}
    assert covered == {s.name for s in registry.all_datasets().values() if s.offline}


def test_qa_scores_follow_squad_normalization():
    import importlib.util

    spec = importlib.util.spec_from_file_location("qgen_data", TASKS_DIR / "qgen_data.py")
    qgen_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qgen_data)
    doc = {"answers": ["the Denver Broncos", "Broncos"]}
    assert qgen_data.qa_scores(doc, [" Denver Broncos.\n"]) == {"exact_match": 1.0, "f1": 1.0}
    partial = qgen_data.qa_scores(doc, ["the Broncos of Denver"])
    assert partial["exact_match"] == 0.0 and abs(partial["f1"] - 0.8) < 1e-9  # vs "denver broncos": p 2/3, r 1
    assert qgen_data.qa_scores(doc, ["Carolina"]) == {"exact_match": 0.0, "f1": 0.0}
    assert qgen_data.qa_scores(doc, ["\n Broncos\nmore text"])["exact_match"] == 1.0  # first non-empty line


def test_a_user_dataset_is_an_lm_eval_task_with_no_regeneration_command(tmp_home, tmp_path, monkeypatch):
    """One yaml under QGEN_DATASETS_DIR: lm-eval lists and builds `qgen_<name>`, the schema accepts it, its task
    file is generated under QGEN_HOME (rewritten when the entry changes, removed with it) and the package's
    tasks folder is never written."""
    import hashlib

    from lm_eval.tasks import get_task_dict

    from conftest import write_user_dataset
    from qgen import schema
    from qgen.data.lm_eval_tasks import task_dirs, user_task_dir
    from qgen.data.prepare import ensure_prepared
    from qgen.evaluate.suite import task_manager

    def package_listing():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(TASKS_DIR.iterdir()) if p.is_file()}

    before = package_listing()
    rows = [{"question": f"Is {i} an even number, when you count from zero upwards?", "choices": ["yes", "no"],
             "label": i % 2} for i in range(20)]
    regdir = write_user_dataset(tmp_path, "mydataset", rows, calib_text="Question: {{question}}\nAnswer:",
                                lm_eval={"doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}"})
    monkeypatch.setenv("QGEN_DATASETS_DIR", str(regdir))
    registry.all_datasets.cache_clear()
    registry.families.cache_clear()

    monkeypatch.setattr(schema, "_lm_eval_tasks", frozenset)  # the name must be known from qgen's task files
    schema._qgen_tasks.cache_clear()  # read once per process: another test may have read it without this dataset
    suite = {"name": "mine", "tasks": ["qgen_mydataset"], "perplexity": [], "divergence": None}
    schema._suite_scores_something("eval_suite", suite, None)
    generated = user_task_dir() / "qgen_mydataset.yaml"
    assert task_dirs() == [TASKS_DIR, user_task_dir()] and generated.is_file()
    assert user_task_dir().parent == tmp_home

    tm = task_manager()
    assert "qgen_mydataset" in tm.all_tasks
    ensure_prepared(registry.get("mydataset"))
    task = get_task_dict(["qgen_mydataset"], tm)["qgen_mydataset"]
    assert len(task.eval_docs) == len(registry.load_split("mydataset", "eval")) == 14
    assert task.doc_to_text(task.eval_docs[0]).startswith("Question: Is ")

    entry = regdir / "mydataset.yaml"  # the user edits the entry: the task file follows
    entry.write_text(entry.read_text().replace("Question:", "Q:"))
    registry.all_datasets.cache_clear()
    task_dirs()
    assert "Q: {{question}}" in generated.read_text()

    entry.unlink()  # and removes it: the generated file goes too
    registry.all_datasets.cache_clear()
    registry.families.cache_clear()
    assert task_dirs() == [TASKS_DIR] and not generated.exists()
    schema._qgen_tasks.cache_clear()
    with pytest.raises(QgenError, match="qgen_mydataset"):
        schema._suite_scores_something("eval_suite", suite, None)
    assert package_listing() == before


def test_oe_eval_requests_reader_keeps_each_doc_once_parses_and_filters():
    import gzip
    import json

    docs = [{"id": "a", "source": "cnn", "query": "Title: T\nBackground: P one.\nQuestion: Q1?\nAnswer:"},
            {"id": "b", "source": "wiki", "query": "Title: T\nBackground: P\ntwo.\nQuestion: Q2?\nAnswer:"}]
    requests = [{"doc": docs[0], "request": {"continuation": " x"}},  # a doc with two requests is one row
                {"doc": docs[0], "request": {"continuation": " y"}}, {"doc": docs[1], "request": {}}]
    data = gzip.compress("\n".join(json.dumps(r) for r in requests).encode())
    parse = {"query": "Title: .*?\\nBackground: (?P<context>.*)\\nQuestion: (?P<question>.*?)\\nAnswer:"}
    rows = READERS["oe_eval_requests"](data, {"parse": parse})
    assert [(r["id"], r["context"], r["question"]) for r in rows] == [("a", "P one.", "Q1?"), ("b", "P\ntwo.", "Q2?")]
    assert [r["id"] for r in READERS["oe_eval_requests"](data, {"where": {"source": "wiki"}})] == ["b"]
    with pytest.raises(QgenError, match="does not match"):
        READERS["oe_eval_requests"](data, {"parse": {"query": "Passage: (?P<context>.*)"}})


def test_a_family_holds_every_obtainable_dataset_tagged_with_its_scenario():
    """A suite group that names its scenario tag lists every dataset the registry tags so (but those of a withdrawn
    archive), and nothing without that tag: a dataset tagged for a study cannot be missing from it."""
    from qgen.analysis.groups import validate
    from qgen.assets import PACKAGES

    def obtainable(spec):
        return "package" not in spec.source or not PACKAGES[spec.source["package"]].withdrawn

    checked = 0
    for path in sorted((CONF_DIR / "eval_suite").glob("*.yaml")):
        for family, group in (yaml.safe_load(path.read_text()).get("groups") or {}).items():
            if "scenario" not in group:
                continue
            members = set(validate({family: group}, path.name)[family]["members"])
            tagged = {s.name for s in registry.all_datasets().values() if group["scenario"] in s.scenarios}
            assert {n for n in tagged if obtainable(registry.get(n))} <= members, (path.name, family)
            assert members <= tagged, (path.name, family)
            checked += 1
    assert checked >= 3
