"""benchmarks/gptq_vs_llmcompressor.py without llm-compressor's venv: each method's settings are the same in both
tools where both have them, and the table renders rows of every method (and the older rows without one)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # as when run as a script: its sibling modules import
    try:
        yield importlib.import_module("gptq_vs_llmcompressor")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("method", ["gptq", "awq", "smoothquant"])
def test_both_tools_get_the_same_formats(bench, method):
    from qgen.quant.methods import build

    ours, theirs = bench.METHODS[method]["qgen"], bench.METHODS[method]["llmc"]
    weight, act = bench._formats(method)
    w = theirs["weights"]
    assert (w["num_bits"], w["symmetric"]) == (weight.bits, weight.symmetric)
    assert w.get("group_size", -1) == weight.group_size
    assert w["strategy"] == ("channel" if weight.group_size == -1 else "group")
    # every linear of SmolLM2 (576 and 1536 columns) splits into whole groups: llm-compressor allows no other
    assert weight.group_size == -1 or (576 % weight.group_size == 0 and 1536 % weight.group_size == 0)
    a = theirs["input_activations"]
    if act.enabled:
        assert (a["num_bits"], a["strategy"], a["dynamic"], a["symmetric"]) == (act.bits, "token", True, True)
        assert act.granularity == "per_token"
    else:
        assert a is None
    build(ours["method"], weight, act, ours["settings"])  # qgen takes the settings as declared


def test_matched_settings_are_qgen_class_defaults(bench):
    from qgen.quant.methods.awq import AWQ
    from qgen.quant.methods.smoothquant import SmoothQuant

    sq = bench.METHODS["smoothquant"]
    assert sq["qgen"]["settings"]["alpha"] == SmoothQuant.settings["alpha"].default
    assert sq["llmc"]["modifier"]["smoothing_strength"] == SmoothQuant.settings["alpha"].default
    assert bench.METHODS["awq"]["qgen"]["settings"] == {}
    assert bench.METHODS["awq"]["llmc"]["modifier"]["n_grid"] == AWQ.settings["n_grid"].default


def test_block_tensors_are_the_blocks_floating_tensors(bench):
    state = {"model.layers.0.input_layernorm.weight": torch.ones(2),
             "model.layers.0.mlp.up_proj.weight": torch.ones(2, 2),
             "model.layers.0.mlp.up_proj.weight_zero_point": torch.zeros(2, dtype=torch.int8),
             "model.norm.weight": torch.ones(2), "lm_head.weight": torch.ones(2, 2)}
    assert bench.block_tensors(state) == {"model.layers.0.input_layernorm.weight", "model.layers.0.mlp.up_proj.weight"}


def test_table_has_a_method_column(bench):
    base = {"dtype": "bfloat16", "calib": "2x512 xsum", "threads": 1, "quantize_s": 1.0, "peak_rss_mb": 1100.0,
            "rss_before_mb": 1000.0, "fp32_model_mb": 500.0, "ppl": 30.0, "ppl_wikitext": 20.0, "ppl_tokens": 1022,
            "ppl_dataset": "xsum"}
    rows = [{**base, "tool": "qgen 0.1.0 (awq, true-sequential, batch 8)", "method": "awq", "quantize_cpu_s": 0.9},
            {**base, "tool": "llm-compressor 0.14.0.1"},  # a row written before --method: GPTQ's
            {"tool": "fp", "ppl": 26.5, "ppl_wikitext": 19.9, "method": None}]
    lines = bench.table(rows).splitlines()
    assert lines[0].startswith("| method | tool |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert lines[2].startswith("| awq | qgen") and "| 0.9 |" in lines[2]
    assert lines[3].startswith("| gptq | llm-compressor") and "| - |" in lines[3]
    assert lines[4].startswith("| - | FP (unquantized)")
