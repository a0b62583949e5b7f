"""Calibration sets: n_samples x seq_len token windows drawn reproducibly from registered datasets and from the
model itself.

Rows of a dataset's calibration part are rendered to text (`calib_text`: for a task, the prompt without the
answer; for a corpus, the text itself; with `chat_template` on, that text as a user turn of the tokenizer's chat
template), shuffled with the seed, joined with blank lines and cut into consecutive non-overlapping windows. A
source too small for the request is cycled in a fresh shuffled order, and the number of passes ("epochs") is
recorded. With `min_tokens`, documents shorter than that many tokens are dropped (and counted) instead, and a
source whose remaining documents cannot fill its windows is refused rather than cycled. The source `self` is text
sampled from the model being quantized (qgen.data.self_calib). A mixture of sources takes a share of the windows
from each.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import OmegaConf

from qgen.data import registry
from qgen.data.prepare import ensure_datasets
from qgen.data.self_calib import SELF, windows_from_model
from qgen.errors import QgenError
from qgen.spec import REQUIRED

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor  # [n_samples, seq_len], int64
    info: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return self.input_ids.shape[0]


def dataset_names(value) -> list:
    """`calib.dataset` as a list of names: one name, or the sources of a mixture."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def registered_names(value) -> list:
    """The registered datasets among calib.dataset's sources (`self` is the model, not a dataset)."""
    return [name for name in dataset_names(value) if name != SELF]


def settings(cfg) -> dict:
    """The calib config as plain values, the fields the schema declares with a default (min_tokens, chat_template,
    self) checked and filled in — so that a config written before they existed reads as they were off."""
    from qgen.schema import CALIB

    values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    for key, spec in CALIB.fields.items():
        if spec.default is not REQUIRED:
            values[key] = spec.check(f"calib.{key}", values.get(key, spec.default))
    return values


def identity(cfg) -> dict:
    """The calib settings that decide the windows, as job ids and the calibration cache see them. The fields the
    schema declares with a default are left out at that default (off: min_tokens null, chat_template false), and
    the sampling settings whenever no source is `self`: a job that uses none of them keeps the id and the cache
    entries it had before they existed."""
    from qgen.schema import CALIB

    values = settings(cfg)
    if SELF not in dataset_names(values["dataset"]):
        values.pop("self")
    return {k: v for k, v in values.items() if k == "self" or k not in CALIB.fields or v != CALIB.fields[k].default}


def require_chat_template(tokenizer, model: str = "the model") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise QgenError(f"calib.chat_template=true needs a tokenizer with a chat template, and {model}'s has none: "
                        f"set calib.chat_template=false")


def as_user_turn(tokenizer, text: str) -> str:
    """The text as the one user turn of a conversation in the tokenizer's chat template (no generation prompt;
    a template that adds a default system turn, as SmolLM2's does, keeps it)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=False)


def source_shares(datasets: list[str], weights: list[float] | None, n_samples: int) -> list[int]:
    """How many of the n_samples windows each source gives (largest remainder, sums to n_samples)."""
    if weights is None:
        weights = [1.0] * len(datasets)
    if len(weights) != len(datasets) or any(w <= 0 for w in weights):
        raise QgenError(f"calib.weights must be {len(datasets)} positive numbers, one per dataset; got {weights}")
    raw = np.asarray(weights, dtype=float) / sum(weights) * n_samples
    shares = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - shares))[: n_samples - shares.sum()]:
        shares[i] += 1
    return shares.tolist()


def windows_from_dataset(name: str, tokenizer, n_windows: int, seq_len: int, seed: int, min_tokens: int | None = None,
                         chat_template: bool = False) -> tuple[torch.Tensor, dict]:
    texts = [t for t in registry.render_split(name, "calib") if t.strip()]
    if not texts:
        raise QgenError(f"dataset {name!r} has no calibration text")
    if chat_template:
        texts = [as_user_turn(tokenizer, t) for t in texts]
    need = n_windows * seq_len
    rng = np.random.default_rng(seed)
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    docs: list[list[int] | None] = [None] * len(texts)  # token ids, encoded when first needed
    dropped = 0
    if min_tokens is not None:
        docs = tokenizer(texts, add_special_tokens=False)["input_ids"]
        keep = [i for i, d in enumerate(docs) if len(d) >= min_tokens]
        dropped = len(texts) - len(keep)
        held = sum(len(docs[i]) + len(sep) for i in keep)
        if held < need:
            raise QgenError(f"calib.min_tokens={min_tokens} leaves {len(keep)} of {len(texts)} documents of {name!r} "
                            f"({held} tokens), fewer than the {need} its {n_windows} windows of {seq_len} tokens need: "
                            f"lower calib.min_tokens, calib.n_samples or calib.seq_len")
        texts, docs = [texts[i] for i in keep], [docs[i] for i in keep]
        log.info("calibration source %s: dropped %d documents shorter than %d tokens", name, dropped, min_tokens)
    stream: list[int] = []
    epochs, docs_used = 0, 0
    while len(stream) < need:
        epochs += 1
        for i in rng.permutation(len(texts)):
            if docs[i] is None:
                docs[i] = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
            stream.extend(docs[i])
            stream.extend(sep)
            docs_used += 1
            if len(stream) >= need:
                break
    ids = torch.tensor(stream[:need], dtype=torch.long).view(n_windows, seq_len)
    info = {"dataset": name, "windows": n_windows, "rows_available": len(texts) + dropped, "rows_used": docs_used,
            "epochs": epochs, "dropped_short_documents": dropped}
    if epochs > 1:
        log.warning("calibration source %s holds fewer than %d tokens; cycled it %d times", name, need, epochs)
    return ids, info


def build_calibration(cfg, tokenizer, model=None, device="cpu") -> CalibrationSet:
    """cfg: dataset (a name, self, or a list of them), weights (optional), n_samples, seq_len, seed, min_tokens,
    chat_template, self (sampling settings). `self` samples from `model` on `device` (the full-precision model:
    the job calibrates before it quantizes)."""
    values = settings(cfg)
    datasets = dataset_names(values["dataset"])
    if not datasets:
        raise QgenError("calib.dataset is empty; name at least one registered dataset")
    if values["chat_template"]:
        require_chat_template(tokenizer)
    if SELF in datasets and model is None:
        raise QgenError("calib.dataset includes self, text sampled from the model being quantized, but no model was "
                        "given to sample from")
    ensure_datasets(registered_names(datasets))
    n_samples, seq_len, seed = int(values["n_samples"]), int(values["seq_len"]), int(values["seed"])
    shares = source_shares(datasets, values.get("weights"), n_samples)
    parts, sources = [], []
    for k, (name, share) in enumerate(zip(datasets, shares)):
        if share == 0:
            continue
        if name == SELF:
            ids, info = windows_from_model(model, tokenizer, share, seq_len, seed + 1000 * k, values["self"], device)
        else:
            ids, info = windows_from_dataset(name, tokenizer, share, seq_len, seed + 1000 * k, values["min_tokens"],
                                             values["chat_template"])
        parts.append(ids)
        sources.append(info)
    input_ids = torch.cat(parts)
    if len(parts) > 1:  # interleave the sources so that batches mix them
        input_ids = input_ids[torch.from_numpy(np.random.default_rng(seed).permutation(n_samples))]
    digest = hashlib.sha256(input_ids.numpy().tobytes()).hexdigest()
    return CalibrationSet(input_ids, {
        "datasets": datasets, "n_samples": n_samples, "seq_len": seq_len, "seed": seed, "sources": sources,
        "tokens_sha256": digest,
    })
