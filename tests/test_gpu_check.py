"""benchmarks/gpu_check.py in its CPU mode (--small): every stage runs through qgen's engine and lm-eval, the JSON
holds what the GPU run will report, and the device-against-CPU comparison on tiny-llama passes its tolerance."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_cpu_run_writes_every_stage(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert gpu_check.main(["--small", "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    stages = result["stages"]
    assert list(stages) == ["tiny", "gptq", "throughput", "awq"]
    assert not [n for n, st in stages.items() if "error" in st or "skipped" in st]
    assert stages["tiny"]["ok"]
    runs = stages["tiny"]["runs"]
    assert runs["cpu float32"]["max_layer_rel_diff"] == 0  # the same device and dtype: the same weights
    assert len(runs["cpu auto"]["errors"]) == 14
    for name in ("gptq", "awq"):
        st = stages[name]
        assert st["blocks"] == 2 and len(st["per_block_s"]) == 2 and st["weights_finite"]
        assert st["total_s"] >= sum(st["per_block_s"]) * 0.99
        assert st["calibration"] == "8x64"
    tp = stages["throughput"]
    assert tp["scores_finite"] and tp["lm_eval_tokens"] >= tp["raw_tokens"] > 0 and tp["lm_eval_over_raw"] > 0
    cpu = result["env"]["cpu"]
    assert isinstance(cpu["model"], str) and all(f == "avx2" or f.startswith(("avx512", "amx")) for f in cpu["flags"])
    out = capsys.readouterr().out
    assert "| gptq W4 g128 8x64" in out and "lm-eval HFLM" in out


def test_budget_skips_later_stages(gpu_check, tmp_path):
    path = tmp_path / "check.json"
    assert gpu_check.main(["--small", "--device", "cpu", "--stages", "gptq,awq", "--budget-s", "0",
                           "--json", str(path)]) == 0
    stages = json.loads(path.read_text())["stages"]
    assert all("skipped" in st for st in stages.values())
