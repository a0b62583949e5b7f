"""Load a causal LM and its tokenizer from a model config; dtypes and devices by name."""

from __future__ import annotations

import logging

import torch

from qgen.errors import QgenError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise QgenError(f"model.dtype {name!r} is not supported; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def load_model(cfg, seed: int):
    """Returns (model in eval mode on CPU, tokenizer, where the weights came from); the source of the weights
    (random init, offline asset, local folder, hub) is qgen.models.source's."""
    from qgen.models.source import model_source

    return model_source(cfg).load(seed, resolve_dtype(cfg.dtype))


def untie(model, names: list[str]) -> list[str]:
    """Give each named parameter a tensor of its own where the model shares one among them (tied input and output
    embeddings), and set the config so that transformers does not tie them again; returns the names given a copy."""
    from torch import nn

    params = dict(model.named_parameters(remove_duplicate=False))
    seen, copied = set(), []
    for name in names:
        param = params[name]
        if id(param) in seen:
            owner, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(owner), attr, nn.Parameter(param.detach().clone(),
                                                                   requires_grad=param.requires_grad))
            copied.append(name)
        seen.add(id(param))
    if copied:  # lm-eval calls model.tie_weights(), which ties what the config (or this mapping) says
        model.config.tie_word_embeddings = False
        mapping = getattr(model, "all_tied_weights_keys", None)
        if isinstance(mapping, dict):
            for target, source in list(mapping.items()):
                if target in names or source in names:
                    del mapping[target]
    return copied
