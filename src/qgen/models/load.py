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
