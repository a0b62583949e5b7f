"""Per-layer relative output error ||ŷ - W x||² / ||W x||² of each method on the seeded tiny Llama (W3 g128 and
W8A8 with injected activation outliers), on the tests' fixed calibration batch: the numbers behind
tests/test_quant_methods.py, printed as a markdown table (mean / max over the 14 quantized layers).

    .venv/bin/python benchmarks/reconstruction.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from qgen.quant.activations import ActFormat
from quant_util import calib_ids, layer_errors, quantized, tiny_llama
from test_quant_methods import _with_activation_outliers


def main() -> None:
    model = tiny_llama(0)
    ids = calib_ids(model.config.vocab_size, n=16, seq=64)
    awq = ("awq", {})
    rows = [("W3 g128", name, model, steps, {"bits": 3, "group_size": 128}) for name, steps in (
        ("rtn", [("rtn", {})]), ("gptq", [("gptq", {})]), ("gptq desc_act", [("gptq", {"desc_act": True})]),
        ("awq", [awq]), ("awq+gptq", [awq, ("gptq", {})]), ("spqr (damp 0.01)", [("spqr", {"damp_percent": 0.01})]),
        ("spqr (defaults)", [("spqr", {})]))]
    outliers = _with_activation_outliers()
    w8a8 = {"bits": 8, "symmetric": True, "act": ActFormat(8, "per_token")}
    rows += [("W8A8, outliers x40", name, outliers, steps, w8a8) for name, steps in (
        ("rtn", [("rtn", {})]), ("smoothquant", [("smoothquant", {})]),
        ("smoothquant+gptq", [("smoothquant", {}), ("gptq", {})]))]
    print("| setting | method | mean layer error | max layer error |\n|---|---|---|---|")
    for setting, name, base, steps, fmt in rows:
        err = list(layer_errors(base, quantized(base, steps, ids=ids, **fmt)[0], ids).values())
        print(f"| {setting} | {name} | {sum(err) / len(err):.5f} | {max(err):.5f} |", flush=True)


if __name__ == "__main__":
    main()
