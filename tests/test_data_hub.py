"""Hub-only datasets: their loaders on fixtures in the real formats, and the one-line error without the hub."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import hub_formats
from qgen.data import registry
from qgen.data.overlap import check_disjoint
from qgen.data.prepare import prepare
from qgen.errors import QgenError

REPO = Path(__file__).resolve().parents[1]


def _prepare_all(names, folder):
    for name in names:
        prepare(registry.get(name), local_dir=folder)
        calib, evaluation = registry.load_split(name, "calib"), registry.load_split(name, "eval")
        assert calib and evaluation, name
        spec = registry.get(name)
        assert any(registry.render(spec.calib_text, row).strip() for row in calib[:10])  # wiki has blank lines
        assert check_disjoint([name], [name])["overlap"] == 0
    return calib, evaluation


def test_c4_json_gz_shards(tmp_home, tmp_path):
    calib, evaluation = _prepare_all(["c4"], hub_formats.write_c4(tmp_path / "c4"))
    assert len(calib) == 30 and len(evaluation) == 10 and "train" in calib[0]["text"]


def test_wikitext2_parquet(tmp_home, tmp_path):
    _calib, evaluation = _prepare_all(["wiki"], hub_formats.write_wiki(tmp_path / "wiki"))
    assert any(r["text"].startswith(" = Article test") for r in evaluation)


def test_ptb_text_files(tmp_home, tmp_path):
    calib, _evaluation = _prepare_all(["ptb"], hub_formats.write_ptb(tmp_path / "ptb"))
    assert calib[0]["text"].startswith("the company said <unk>")


def test_boss_16_datasets_from_a_boss_directory(tmp_home, tmp_path):
    root = hub_formats.write_boss(tmp_path / "BOSS")
    names = [m for fam in ("boss_sa", "boss_td", "boss_nli", "boss_qa") for m in registry.families()[fam]["members"]]
    assert len(names) == 16
    _prepare_all(names, root)
    sa = registry.load_split("boss_sa_dynasent", "calib")
    assert len(sa) == 8 and {r["Label"] for r in sa} == {"0", "1", "2"}  # the unlabeled row was skipped
    qa = registry.load_split("boss_qa_newsqa", "eval")  # stored shuffled: find the item by its question
    by_question = {r["question"]: r["answers"] for r in qa}
    assert len(qa) == 4 and by_question["When did bridge 0 open?"] == ["1900"]


def test_ceval_and_cmmlu_category_datasets(tmp_home, tmp_path):
    fams = registry.families()
    for fam, writer in (("ceval", hub_formats.write_ceval), ("cmmlu", hub_formats.write_cmmlu)):
        subjects = [s for m in fams[fam]["members"] for s in registry.get(m).source["subjects"]]
        assert len(subjects) == len(set(subjects)) == {"ceval": 52, "cmmlu": 67}[fam]
        root = writer(tmp_path / fam, subjects)
        _prepare_all(fams[fam]["members"], root)
    rows = registry.load_split("cmmlu_stem", "eval")
    assert rows[0]["Answer"] in "ABCD" and "" not in rows[0]  # the unnamed index column is dropped


def test_missing_local_file_is_one_line(tmp_home, tmp_path):
    (tmp_path / "ptb").mkdir()
    with pytest.raises(QgenError, match="ptb.train.txt") as err:
        prepare(registry.get("ptb"), local_dir=tmp_path / "ptb")
    assert "\n" not in str(err.value)


def test_pile_val_zstandard_without_the_package_is_one_line(tmp_home, tmp_path):
    (tmp_path / "pile").mkdir()
    (tmp_path / "pile" / "val.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
    try:
        import zstandard  # noqa: F401
        pytest.skip("zstandard is installed; the message is for machines without it")
    except ImportError:
        pass
    with pytest.raises(QgenError, match="zstandard"):
        prepare(registry.get("pile-val"), local_dir=tmp_path / "pile")


def test_calib_c4_without_hub_fails_with_one_line(tmp_home, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "QGEN_HOME": str(tmp_home), "HF_HUB_OFFLINE": "1",
           "QGEN_OUTPUT_DIR": str(tmp_path / "out")}
    proc = subprocess.run([sys.executable, "-m", "qgen.main", "model=tiny-llama", "calib=c4"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qgen: error: dataset 'c4' is not prepared and needs Hugging Face hub access")
    assert "qgen prepare c4 --from DIR" in lines[0] and "Traceback" not in proc.stderr


def test_hub_task_configs_index_and_build_requests_on_fixture_data(tmp_home, tmp_path):
    from lm_eval.tasks import get_task_dict

    from qgen.evaluate.suite import task_manager

    tm = task_manager()
    hub = [s for s in registry.all_datasets().values() if not s.offline]
    assert {s.lm_eval_task for s in hub} <= set(tm.all_tasks)
    assert {"qgen_boss_sa", "qgen_ceval", "qgen_cmmlu", "qgen_mmlu", "qgen_multiemo"} <= set(tm.all_subtasks) | set(
        tm.all_groups)
    _prepare_all(["c4"], hub_formats.write_c4(tmp_path / "c4"))
    _prepare_all(registry.families()["boss_qa"]["members"], hub_formats.write_boss(tmp_path / "BOSS"))
    for task in ("qgen_c4", "qgen_boss_qa_squad"):
        t = get_task_dict([task], tm)[task]
        t.build_all_requests(limit=1, rank=0, world_size=1)
        assert t.instances, task
