"""The overlap guard: a user's own JSONL dataset made of evaluation items of PIQA must be refused as
calibration data for a suite that evaluates PIQA, in one line, before any model is loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import write_user_dataset
from qgen.data import registry
from qgen.data.overlap import check_disjoint, check_job_overlap, fingerprints, suite_datasets
from qgen.errors import QgenError


def _user_dataset(tmp_path, rows, name="my_qa"):
    return write_user_dataset(tmp_path, name, rows, title="my own questions",
                              split={"method": "seeded_fraction", "calib_fraction": 0.5, "seed": 1},
                              calib_text="Question: {{goal}}\nAnswer:",
                              lm_eval={"doc_to_choice": "{{[sol1, sol2]}}", "doc_to_target": "{{label}}"})


def test_fingerprints_ignore_short_strings_and_unseen_fields():
    row = {"question": "What is the boiling point of water at sea level, in Celsius?", "answer": "100", "id": "x" * 60}
    assert len(fingerprints(row)) == 2  # the question and the long id; "100" is too short
    assert len(fingerprints(row, frozenset({"question"}))) == 1
    assert fingerprints({"q": "  What is the BOILING point of water at sea level, in Celsius? "}) == \
        fingerprints({"q": "What is the boiling point of water at sea level, in celsius?"})


@pytest.mark.asset
def test_guard_fires_when_calibration_holds_evaluation_items(tmp_path, monkeypatch):
    if not (registry.get("piqa").folder / "eval.jsonl").is_file():
        pytest.skip("piqa is not prepared; run `make assets`")
    stolen = registry.load_split("piqa", "eval")[:40]  # evaluation items of PIQA
    regdir = _user_dataset(tmp_path, stolen)
    monkeypatch.setenv("QGEN_DATASETS_DIR", str(regdir))
    registry.all_datasets.cache_clear()
    try:
        mine = registry.get("my_qa")
        assert mine.offline
        with pytest.raises(QgenError, match=r"'my_qa' overlaps evaluation data 'piqa'") as err:
            check_disjoint(["my_qa"], ["arc_easy", "piqa"])
        assert "\n" not in str(err.value)
        # the same through a job config: the smoke suite evaluates PIQA
        cfg = OmegaConf.create({"calib": {"dataset": ["xsum", "my_qa"]},
                                "eval_suite": OmegaConf.load("conf/eval_suite/smoke.yaml")})
        assert "piqa" in suite_datasets(cfg.eval_suite)
        with pytest.raises(QgenError, match="overlaps"):
            check_job_overlap(cfg)
        # and the default calibration source passes against the same suite
        cfg.calib.dataset = "xsum"
        assert check_job_overlap(cfg)["overlap"] == 0
        # the user's file was prepared into QGEN_HOME with its recipe recorded
        manifest = json.loads((mine.folder / "qgen-asset.json").read_text())
        assert manifest["split"]["seed"] == 1 and manifest["file_sha256"]
    finally:
        import shutil

        shutil.rmtree(registry.get("my_qa").folder, ignore_errors=True)
        registry.all_datasets.cache_clear()


@pytest.mark.asset
def test_job_refuses_overlap_in_one_line_before_loading_a_model(tmp_path):
    if not (registry.get("piqa").folder / "eval.jsonl").is_file():
        pytest.skip("piqa is not prepared; run `make assets`")
    regdir = _user_dataset(tmp_path, registry.load_split("piqa", "eval")[:40], name="my_leaky")
    env = {**__import__("os").environ, "QGEN_DATASETS_DIR": str(regdir), "QGEN_OUTPUT_DIR": str(tmp_path / "out")}
    try:
        proc = subprocess.run([sys.executable, "-m", "qgen.main", "model=tiny-llama", "calib=my_leaky",
                               "eval_suite=smoke"], capture_output=True, text=True, env=env, timeout=120, check=False)
        assert proc.returncode == 2
        err = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("qgen: error: calibration data 'my_leaky' overlaps"), proc.stderr
    finally:
        import shutil

        registry.all_datasets.cache_clear()
        shutil.rmtree(registry.data_dir() / "my_leaky", ignore_errors=True)
