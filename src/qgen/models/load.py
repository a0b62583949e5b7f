"""Load a causal LM and its tokenizer from a model config (hub id, local folder, offline asset or random init)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


def looks_like_path(ref: str) -> bool:
    """Hub ids are `org/name`; anything that starts like a file path, or exists, is a local folder."""
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(ref)


def model_source(cfg) -> str:
    """Where the weights come from: 'random', 'asset', 'local' or 'hub' (validated before anything loads)."""
    if cfg.get("random_init"):
        return "random"
    if cfg.get("asset"):
        return "asset"
    return "local" if looks_like_path(str(cfg.get("pretrained"))) else "hub"


def load_model(cfg, seed: int):
    """Returns (model in eval mode on CPU, tokenizer, where the weights came from)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(cfg.dtype)
    source = model_source(cfg)
    if source == "random":
        from qgen.models.tiny import tiny_llama

        model, tokenizer = tiny_llama(dict(cfg.random_init), seed=seed, dtype=dtype)
        return model.eval(), tokenizer, {"source": "random", "seed": seed}
    if source == "asset":
        from qgen.assets import ensure_model_asset

        ref = str(ensure_model_asset(cfg.asset))
    else:
        ref = str(Path(cfg.pretrained).expanduser()) if source == "local" else str(cfg.pretrained)
    kwargs = {"revision": cfg.get("revision") or None, "trust_remote_code": bool(cfg.get("trust_remote_code"))}
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, low_cpu_mem_usage=True, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "the Hugging Face hub (needs network access)" if source == "hub" else ref
        raise QgenError(f"could not load model {cfg.pretrained!r} from {where}: {first}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer, {"source": source, "path": ref}


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
