"""Where a model's full-precision weights come from: a random init, an offline asset, a local folder or the hub.

One class per kind owns everything that differs between them: the checks that run before anything loads (the
schema calls `check`), the loading (`load`) and the identity that decides the weights for the caches
(`identity`: what the weights are, not where they are stored). `model_source(cfg)` picks the kind from a model
config; nothing else branches on it.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from qgen.errors import QgenError

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def looks_like_path(ref: str) -> bool:
    """Hub ids are `org/name`; anything that starts like a file path, or exists, is a local folder."""
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(ref)


def _plain(node) -> object:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class ModelSource:
    kind: ClassVar[str]

    def __init__(self, cfg):
        self.cfg = cfg  # the model config group (a DictConfig or a plain mapping)

    def check(self, quantizes: bool) -> None:
        """Refuse, in one line, what would fail later inside the load."""

    def reference(self) -> str:
        """What transformers loads from: a folder or a hub id."""
        raise NotImplementedError

    def load(self, seed: int, dtype):
        """(model in eval mode on CPU, tokenizer, info: where the weights came from)."""
        from transformers import AutoModelForCausalLM

        ref = self.reference()
        tokenizer = self._tokenizer(ref)
        with self._load_errors(ref):
            model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, low_cpu_mem_usage=True, **self._hf_kwargs())
        return model.eval(), tokenizer, {"source": self.kind, "path": ref}

    def tokenizer(self):
        """The tokenizer alone, without the weights (what qgen.data.unigram counts tokens with)."""
        return self._tokenizer(self.reference())

    def _tokenizer(self, ref: str):
        from transformers import AutoTokenizer

        with self._load_errors(ref):
            tokenizer = AutoTokenizer.from_pretrained(ref, **self._hf_kwargs())
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _hf_kwargs(self) -> dict:
        return {"revision": self.cfg.get("revision") or None,
                "trust_remote_code": bool(self.cfg.get("trust_remote_code"))}

    @contextmanager
    def _load_errors(self, ref: str):
        """transformers' OSError (missing files, no hub access) as one line naming the model and where from."""
        try:
            yield
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QgenError(f"could not load model {self.cfg.get('pretrained')!r} from {self.where(ref)}: "
                            f"{first}") from exc

    def where(self, ref: str) -> str:
        return ref

    def identity(self, info: dict, seed: int) -> dict:
        """What decides the full-precision weights (the caches' key for everything built from them)."""
        raise NotImplementedError

    def _ident(self) -> dict:
        return {"dtype": self.cfg.get("dtype"), "source": self.kind}


class RandomInit(ModelSource):
    """A tiny Llama with seeded random weights (`model.random_init`: its config fields); needs no files."""
    kind = "random"

    def load(self, seed: int, dtype):
        from qgen.models.tiny import tiny_llama

        model, tokenizer = tiny_llama(dict(self.cfg.random_init), seed=seed, dtype=dtype)
        return model.eval(), tokenizer, {"source": self.kind, "seed": seed}

    def tokenizer(self):
        from qgen.models.tiny import byte_tokenizer

        return byte_tokenizer()

    def identity(self, info: dict, seed: int) -> dict:
        return {**self._ident(), "random_init": _plain(self.cfg.random_init), "seed": seed}


class OfflineAsset(ModelSource):
    """A model that `make assets` builds from a registry package (qgen.assets.MODEL_ASSETS)."""
    kind = "asset"

    def check(self, quantizes: bool) -> None:
        from qgen.assets import MODEL_ASSETS
        from qgen.spec import refuse

        if self.cfg["asset"] not in MODEL_ASSETS:
            raise refuse("model.asset", self.cfg["asset"], f"one of {', '.join(sorted(MODEL_ASSETS))}, or null")

    def reference(self) -> str:
        from qgen.assets import ensure_model_asset

        return str(ensure_model_asset(self.cfg.asset))

    def identity(self, info: dict, seed: int) -> dict:
        from qgen.assets import read_manifest

        files = (read_manifest(Path(info["path"])) or {}).get("files", {})
        return {**self._ident(), "asset": self.cfg.asset, "files": {k: v["sha256"] for k, v in files.items()}}


class LocalFolder(ModelSource):
    """A Hugging Face model folder on disk (`model.pretrained` is a path)."""
    kind = "local"

    def reference(self) -> str:
        return str(Path(self.cfg.pretrained).expanduser())

    def check(self, quantizes: bool) -> None:
        """A readable config.json (of an architecture qgen can quantize, when it must), weights and a tokenizer."""
        given = self.cfg["pretrained"]
        folder = Path(str(given)).expanduser()
        if not folder.is_dir():
            raise QgenError(f"model.pretrained={given!r} does not exist: give an existing local folder or a hub id "
                            f"such as HuggingFaceTB/SmolLM2-135M-Instruct")
        config = folder / "config.json"
        if not config.is_file():
            raise QgenError(f"model.pretrained={given!r} has no config.json: give a Hugging Face model folder "
                            f"(config.json, weights, tokenizer)")
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise QgenError(f"model.pretrained={given!r}: config.json is not valid JSON ({exc})") from None
        if not model_type:
            raise QgenError(f"model.pretrained={given!r}: config.json names no model_type")
        if quantizes:
            from qgen.models.arch import adapter_for

            adapter_for(model_type)
        if not any(next(folder.glob(p), None) for p in WEIGHT_FILES):
            raise QgenError(f"model.pretrained={given!r} has no weights (*.safetensors or *.bin)")
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise QgenError(f"model.pretrained={given!r} has no tokenizer ({', '.join(TOKENIZER_FILES)})")

    def identity(self, info: dict, seed: int) -> dict:
        folder = Path(info["path"])
        return {**self._ident(), "path": str(folder.resolve()),
                "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())}}


class HubModel(ModelSource):
    """A Hugging Face hub id (`org/name`, with `model.revision`); needs network access at the first load."""
    kind = "hub"

    def reference(self) -> str:
        return str(self.cfg.pretrained)

    def where(self, ref: str) -> str:
        return "the Hugging Face hub (needs network access)"

    def check(self, quantizes: bool) -> None:
        ref = self.cfg["pretrained"]
        if ref is None:
            raise QgenError("model.pretrained is null and the model has no asset or random_init: give a hub id "
                            "such as HuggingFaceTB/SmolLM2-135M-Instruct or a local folder")
        if looks_like_path(str(ref)) or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", str(ref)):
            raise QgenError(f"model.pretrained={ref!r} is neither a folder nor a hub id (org/name)")

    def identity(self, info: dict, seed: int) -> dict:
        return {**self._ident(), "pretrained": self.cfg.pretrained, "revision": self.cfg.get("revision")}


def model_source(cfg) -> ModelSource:
    """The source a model config names: random_init wins, then asset, then pretrained as a folder or hub id."""
    if cfg.get("random_init"):
        return RandomInit(cfg)
    if cfg.get("asset"):
        return OfflineAsset(cfg)
    return LocalFolder(cfg) if looks_like_path(str(cfg.get("pretrained"))) else HubModel(cfg)


def checked_tokenizer(cfg):
    """The tokenizer of the model a config names, after the checks a job that does not quantize runs (what the
    analyses' token statistics read: `qgen recommend`'s proxy, the S2 report's proxy table)."""
    source = model_source(cfg)
    source.check(quantizes=False)
    return source.tokenizer()
