"""Calibration sets: n_samples x seq_len token windows drawn reproducibly from registered datasets.

Rows of a dataset's calibration part are rendered to text (`calib_text`: for a task, the prompt without the
answer; for a corpus, the text itself), shuffled with the seed, joined with blank lines and cut into consecutive
non-overlapping windows. A source too small for the request is cycled in a fresh shuffled order, and the number
of passes ("epochs") is recorded. A mixture of sources takes a share of the windows from each.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from qgen.data import registry
from qgen.data.prepare import ensure_datasets
from qgen.errors import QgenError

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor  # [n_samples, seq_len], int64
    info: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return self.input_ids.shape[0]


def dataset_names(value) -> list:
    """`calib.dataset` as a list of names: one name, or the datasets of a mixture."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


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


def windows_from_dataset(name: str, tokenizer, n_windows: int, seq_len: int, seed: int) -> tuple[torch.Tensor, dict]:
    spec = registry.get(name)
    rows = registry.load_split(name, "calib")
    texts = [registry.render(spec.calib_text, row) for row in rows]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise QgenError(f"dataset {name!r} has no calibration text")
    need = n_windows * seq_len
    rng = np.random.default_rng(seed)
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    epochs, docs_used = 0, 0
    while len(stream) < need:
        epochs += 1
        for i in rng.permutation(len(texts)):
            stream.extend(tokenizer(texts[i], add_special_tokens=False)["input_ids"])
            stream.extend(sep)
            docs_used += 1
            if len(stream) >= need:
                break
    ids = torch.tensor(stream[:need], dtype=torch.long).view(n_windows, seq_len)
    info = {"dataset": name, "windows": n_windows, "rows_available": len(texts), "rows_used": docs_used,
            "epochs": epochs}
    if epochs > 1:
        log.warning("calibration source %s holds fewer than %d tokens; cycled it %d times", name, need, epochs)
    return ids, info


def build_calibration(cfg, tokenizer) -> CalibrationSet:
    """cfg: dataset (a name or a list), weights (optional), n_samples, seq_len, seed."""
    datasets = dataset_names(cfg.dataset)
    if not datasets:
        raise QgenError("calib.dataset is empty; name at least one registered dataset")
    ensure_datasets(datasets)
    n_samples, seq_len, seed = int(cfg.n_samples), int(cfg.seq_len), int(cfg.seed)
    shares = source_shares(datasets, cfg.get("weights"), n_samples)
    parts, sources = [], []
    for k, (name, share) in enumerate(zip(datasets, shares)):
        if share == 0:
            continue
        ids, info = windows_from_dataset(name, tokenizer, share, seq_len, seed + 1000 * k)
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
