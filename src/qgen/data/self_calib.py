"""`calib.dataset: self`: calibration windows sampled from the model being quantized ("self-calibration",
Williams, Chrysostomou & Aletras, NAACL 2025), usable wherever a dataset name is, mixtures included.

Each window is one sequence the full-precision model samples, seq_len tokens long with its start: the tokenizer's
BOS token (its EOS token, the document separator, where it has no BOS) or one of the starting texts in
`calib.self.start` (encoded as the tokenizer encodes a document; the texts are used in turn, in an order shuffled
with the seed). Every next token is drawn with the temperature and top-p of `calib.self`. Sampling does not stop at
an end-of-sequence token: the model goes on to its next document, as windows cut from a dataset run across
documents; how many were sampled is recorded. Windows are sampled `batch_size` at a time, a batch's rows sharing
their start (so nothing is padded), from a torch.Generator seeded with the calibration seed on the device the
model runs on: the same model, settings and seed give the same windows on the same kind of device.

The job samples in its calibration stage, right after the model loads and before anything is quantized, and
caches the windows under the model's identity, the settings and the seed (qgen.job.Job.calibration).
"""

from __future__ import annotations

import inspect
import logging

import numpy as np
import torch

from qgen.data.registry import SELF  # the name that stands for the model's own text in calib.dataset
from qgen.errors import QgenError

log = logging.getLogger(__name__)


def start_tokens(tokenizer, start, n_windows: int, seq_len: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """The token ids each of the n windows starts from."""
    if start == "bos":
        token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if token is None:
            raise QgenError("calib.self.start=bos: the tokenizer has neither a BOS nor an EOS token; give "
                            "calib.self.start a list of starting texts")
        return [(token,)] * n_windows
    encoded = [tuple(tokenizer(text)["input_ids"]) for text in start]
    for i, (text, ids) in enumerate(zip(start, encoded)):
        if not ids or len(ids) >= seq_len:
            raise QgenError(f"calib.self.start.{i}={text!r} is {len(ids)} tokens: a starting text must be at least "
                            f"one token and shorter than calib.seq_len={seq_len}")
    rounds = -(-n_windows // len(start))
    order = np.concatenate([rng.permutation(len(start)) for _ in range(rounds)])[:n_windows]
    return [encoded[i] for i in order]


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """probs [batch, vocab] restricted to the smallest set of most likely tokens that holds top_p of the mass."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens; the top one always stays
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


@torch.inference_mode()
def sample(model, prefix: torch.Tensor, n_new: int, temperature: float, top_p: float, vocab: int,
           generator: torch.Generator) -> torch.Tensor:
    """prefix [batch, start length] followed by n_new sampled tokens, one forward of the new token per step over
    the model's key/value cache; token ids of `vocab` and above (rows a model pads its embedding with, beyond the
    tokenizer's vocabulary) are never drawn."""
    key = cache_argument(model)
    out = model(input_ids=prefix, use_cache=True)
    pieces = [prefix]
    for step in range(n_new):
        logits = out.logits[:, -1, :].float() / temperature
        logits[:, vocab:] = -torch.inf
        token = torch.multinomial(nucleus(torch.softmax(logits, dim=-1), top_p), 1, generator=generator)
        pieces.append(token)
        if step + 1 < n_new:
            out = model(input_ids=token, use_cache=True, **{key: getattr(out, key)})
    return torch.cat(pieces, dim=1)


def cache_argument(model) -> str:
    """What the model's forward calls its key/value cache (argument and output): `cache` from transformers 5,
    `past_key_values` before it and in remote modelling code."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def windows_from_model(model, tokenizer, n_windows: int, seq_len: int, seed: int, settings: dict,
                       device) -> tuple[torch.Tensor, dict]:
    """n_windows x seq_len token ids sampled from the model (on `device`; it is moved back where it was after)."""
    starts = start_tokens(tokenizer, settings["start"], n_windows, seq_len, np.random.default_rng(seed))
    device = torch.device(device)
    home = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    batch_size = int(settings["batch_size"])
    windows: list[torch.Tensor | None] = [None] * n_windows
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ids in enumerate(starts):
        groups.setdefault(ids, []).append(i)
    was_training = model.training
    model.eval().to(device)
    try:
        done = 0
        for ids, members in groups.items():
            for b in range(0, len(members), batch_size):
                rows = members[b:b + batch_size]
                prefix = torch.tensor([ids] * len(rows), dtype=torch.long, device=device)
                out = sample(model, prefix, seq_len - len(ids), float(settings["temperature"]),
                             float(settings["top_p"]), len(tokenizer), generator).cpu()
                for row, i in zip(out, rows):
                    windows[i] = row
                done += len(rows)
                log.info("calibration source self: sampled %d of %d windows of %d tokens", done, n_windows, seq_len)
    finally:
        model.to(home).train(was_training)
    input_ids = torch.stack(windows)
    eos = tokenizer.eos_token_id
    info = {"dataset": SELF, "windows": n_windows, "temperature": float(settings["temperature"]),
            "top_p": float(settings["top_p"]), "start": settings["start"], "batch_size": batch_size,
            "device": device.type,
            "eos_sampled": 0 if eos is None else sum(int((w[len(s):] == eos).sum()) for w, s in zip(windows, starts))}
    return input_ids, info
