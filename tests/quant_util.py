"""Shared helpers of the quantizer tests: a seeded tiny model, quantization by method list, per-layer errors."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from qgen.models.arch import adapter_for
from qgen.quant.activations import ActFormat
from qgen.quant.engine import EngineSettings, quantize_model
from qgen.quant.fold import input_scale, output_scale
from qgen.quant.grid import WeightFormat
from qgen.quant.methods import build

CONF = Path(__file__).resolve().parents[1] / "conf"
# Slack for comparing errors a method minimised with errors recomputed here: the inputs are recomputed in another
# batch arrangement and summed in another order, which moves them by float32 rounding (~1e-6 relative, on any CPU
# kernel or thread count); 1e-3 leaves three orders of magnitude for that and nothing for a real loss.
RECOMPUTE_SLACK = 1e-3


def tiny_llama(seed: int = 0):
    from qgen.models.tiny import tiny_llama as make

    cfg = OmegaConf.load(CONF / "model" / "tiny-llama.yaml")
    model, _ = make(dict(cfg.random_init), seed=seed, dtype=torch.float32)
    return model.eval()


def calib_ids(vocab: int, n: int = 16, seq: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq), generator=g)


def quantized(model, steps: list, bits: int, group_size: int = -1, symmetric: bool = False,
              act: ActFormat | None = None, ids=None, batch_size: int = 8, adapter=None, **engine):
    """A quantized deep copy of model; steps: [(method name, {settings})]; adapter: the model type's unless given;
    engine: more EngineSettings fields (block passes in float32 unless `dtype` is given, so results do not depend on
    the CPU's bf16 support)."""
    engine.setdefault("dtype", "float32")
    model = copy.deepcopy(model)
    fmt = WeightFormat(bits, group_size, symmetric)
    act = act or ActFormat()
    methods = [build(name, fmt, act, dict(hp)) for name, hp in steps]
    report = quantize_model(model, adapter or adapter_for(model.config.model_type), methods, act, ids,
                            torch.device("cpu"), EngineSettings(batch_size=batch_size, **engine))
    return model, report


@torch.no_grad()
def linear_io(fp_model, q_model, ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor, nn.Linear]]:
    """Run q_model on ids; per quantized linear: (the input x it sees, its output ŷ, both in the original
    coordinates — scales folded by AWQ/SmoothQuant undone — and the original linear of fp_model)."""
    adapter = adapter_for(q_model.config.model_type)
    paths = [f"{adapter.blocks}.{i}.{p}" for i in range(len(adapter.block_list(q_model)))
             for p in adapter.linear_names()]
    seen, handles = {}, []
    for path in paths:
        lin = q_model.get_submodule(path)

        def pre(module, args, path=path):
            seen[path] = [args[0].detach().clone()]

        def post(module, args, out, path=path):
            seen[path].append(out.detach().clone())

        handles.append(lin.register_forward_pre_hook(pre, prepend=True))
        handles.append(lin.register_forward_hook(post))
    try:
        q_model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for path in paths:
        (x, y), lin = seen[path], q_model.get_submodule(path)
        s_in, s_out = input_scale(lin), output_scale(lin)
        out[path] = (x * s_in if s_in is not None else x, y * s_out if s_out is not None else y,
                     fp_model.get_submodule(path))
    return out


def layer_errors(fp_model, q_model, ids: torch.Tensor) -> dict[str, float]:
    """Relative output error of every quantized linear on the input it sees in the quantized model, measured in
    the original coordinates: ||ŷ - W x||² / ||W x||²."""
    errors = {}
    for path, (x, y, ref_lin) in linear_io(fp_model, q_model, ids).items():
        ref = F.linear(x, ref_lin.weight, ref_lin.bias)
        errors[path] = float(((y - ref) ** 2).sum() / (ref**2).sum())
    return errors


@torch.no_grad()
def inspected_errors(fp_model, q_model, ids: torch.Tensor,
                     rtn_format: WeightFormat) -> dict[tuple, tuple[float, float]]:
    """Per (block, subset) with scales searched (foldable, behind an op): the mean squared error of the output of the
    module the adapter names for the subset (`Subset.inspect`; else its linear) when the subset's linears — and only
    they — hold the quantized weights, in the original coordinates; and the same with round-to-nearest weights Q(W)
    instead. Both on the input x (with the keyword arguments) the module gets in the quantized model: the objective of
    AWQ's scale search, which tries α = 0, RTN exactly. Keys: (block index, subset name)."""
    from qgen.quant.grid import quantize_weight

    adapter = adapter_for(q_model.config.model_type)
    subsets = [s for s in adapter.subsets_for(q_model) if s.foldable and s.prev_op is not None]
    seen, handles = {}, []
    for i, block in enumerate(adapter.block_list(q_model)):
        for subset in subsets:
            path = subset.inspect.module if subset.inspect else subset.linears[0]

            def grab(module, args, kwargs, key=(i, subset.name)):
                x = args[0] if args else kwargs["hidden_states"]
                seen[key] = (x.detach().clone(), {k: v for k, v in kwargs.items() if k != "hidden_states"})

            handles.append(block.get_submodule(path).register_forward_pre_hook(grab, with_kwargs=True, prepend=True))
    try:
        q_model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()

    def run(module, x, kwargs):
        out = module(x, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    out = {}
    for i, (fp_block, q_block) in enumerate(zip(adapter.block_list(fp_model), adapter.block_list(q_model))):
        for subset in subsets:
            path = subset.inspect.module if subset.inspect else subset.linears[0]
            x, kwargs = seen[(i, subset.name)]
            x = x * input_scale(q_block.get_submodule(subset.linears[0]))  # back to the original coordinates
            ref = run(fp_block.get_submodule(path), x, kwargs)
            errors = []
            for weights in ("quantized", "rtn"):
                block = copy.deepcopy(fp_block)
                for p in subset.linears:
                    lin, q_lin = block.get_submodule(p), q_block.get_submodule(p)
                    if weights == "rtn":
                        lin.weight.data = quantize_weight(lin.weight.data, rtn_format)[0]
                    else:  # Ŵ in the original coordinates: input columns and output rows scaled back
                        s_out = output_scale(q_lin)
                        w = q_lin.weight.data / input_scale(q_lin)
                        lin.weight.data = w * s_out.unsqueeze(1) if s_out is not None else w
                errors.append(float((run(block.get_submodule(path), x, kwargs) - ref).square().mean()))
            out[(i, subset.name)] = tuple(errors)
    return out
