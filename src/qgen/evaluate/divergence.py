"""Distribution metrics: how far a model's next-token distributions are from the full-precision (FP) model's on a
dataset's held-out evaluation text (`eval_suite.divergence`).

Protocol `nonoverlap_w{W}_top{k}` (or `nonoverlap_w{W}_full`): the dataset's evaluation part is rendered, joined and
cut into non-overlapping windows of W tokens exactly as for perplexity (qgen.evaluate.perplexity), capped at
`max_windows` windows and at `max_tokens` predicted tokens (at least one window). Each window is scored on its own;
each of its W-1 positions that predicts a token of the window gives the FP distribution P and the scored model's Q.

- KL(P ‖ Q) per token. `top_k: null` (full): Σ_v p_v (log p_v − log q_v), exact; the FP reference then stores every
  log-prob (tokens × vocabulary floats). `top_k: k`: S = the k tokens P ranks highest, R = the rest of the
  vocabulary as one outcome: Σ_{v∈S} p_v (log p_v − log q_v) + p_R (log p_R − log q_R), with p_R = 1 − Σ_S p_v and
  q_R = 1 − Σ_S q_v. This is the exact KL between P and Q coarsened to those k + 1 outcomes, which by the log-sum
  inequality never exceeds the full KL: a lower bound, named `top{k}`.
- Top-1 agreement: the share of positions where Q's most likely token is P's (`top1_agree_nonoverlap_w{W}`).

The FP side (token windows, top-k log-probs, their indices, the log of the remaining mass and P's argmax) is computed
once per (model, dataset, protocol, eval dtype) and cached (`reference` cache kind, see qgen.job.Job.reference).

Metrics under the task `kl/<dataset>`: kl_mean_, kl_median_, kl_p95_, kl_p99_<protocol> over all tokens,
top1_agree_nonoverlap_w{W}, `tokens` and `n_items` (windows). The stderr of the mean KL and of the agreement is
the sd of the per-window means over sqrt(windows) (tokens of one window are not independent); the per-window means
are the per-item scores written to samples.jsonl (doc_id = window), which the paired comparisons resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf

from qgen.errors import QgenError

TASK_PREFIX = "kl/"
KEYS = ("datasets", "window", "max_windows", "max_tokens", "top_k", "batch_size")
ROWS_PER_CHUNK = 512  # logits rows processed at once (bounds the temporaries to ~ROWS x vocabulary floats)
MAX_FULL_REFERENCE_BYTES = 4e9


def protocol_name(window: int, top_k: int | None) -> str:
    return f"nonoverlap_w{window}_" + (f"top{top_k}" if top_k else "full")


def metric_names(window: int, top_k: int | None) -> dict[str, str]:
    p = protocol_name(window, top_k)
    return {"mean": f"kl_mean_{p}", "median": f"kl_median_{p}", "p95": f"kl_p95_{p}", "p99": f"kl_p99_{p}",
            "agree": f"top1_agree_nonoverlap_w{window}"}


@dataclass(frozen=True)
class DivergenceSettings:
    datasets: tuple[str, ...]
    window: int = 512
    max_windows: int | None = 16
    max_tokens: int | None = None
    top_k: int | None = 64
    batch_size: int = 4

    @classmethod
    def from_suite(cls, suite) -> DivergenceSettings | None:
        """The suite's settings, or None when it has no divergence section (null) or names no dataset; bad
        values are one-line QgenErrors naming what is allowed."""
        from qgen.schema import DIVERGENCE

        node = suite.get("divergence") if suite is not None else None
        if node is None:
            return None
        raw = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        values = DIVERGENCE.validate_at("eval_suite.divergence", raw)  # the schema's declaration of these fields
        if not values["datasets"]:
            return None
        return cls(tuple(values["datasets"]), **{k: values[k] for k in KEYS[1:]})

    @property
    def protocol(self) -> str:
        return protocol_name(self.window, self.top_k)

    @property
    def names(self) -> dict[str, str]:
        return metric_names(self.window, self.top_k)

    def identity(self) -> dict:
        """What decides a reference (batch_size does not)."""
        return {"protocol": self.protocol, "window": self.window, "max_windows": self.max_windows,
                "max_tokens": self.max_tokens, "top_k": self.top_k}


def windows(tokenizer, dataset: str, settings: DivergenceSettings) -> torch.Tensor:
    """The protocol's token windows [n, width] of the dataset's held-out evaluation part."""
    from qgen.evaluate.perplexity import held_out_texts, token_windows

    ids = token_windows(tokenizer, held_out_texts(dataset), settings.window, settings.max_windows)
    if settings.max_tokens:
        ids = ids[: max(1, settings.max_tokens // max(1, ids.shape[1] - 1))]
    return ids


# -- the math on rows of logits ([rows, vocabulary]) ---------------------------------------------------------------
def reference_rows(logits: torch.Tensor, top_k: int | None) -> dict[str, torch.Tensor]:
    """The FP side of a block of positions: P's argmax and either every log-prob (top_k None, or k >= vocabulary)
    or the top-k log-probs, their indices and the log of the remaining mass."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = {"top1": logp.argmax(dim=-1).to(torch.int32)}
    if top_k is None or top_k >= logp.shape[-1]:
        return {**out, "logp": logp}
    values, idx = logp.topk(top_k, dim=-1)
    rest = logp.scatter(-1, idx, float("-inf")).logsumexp(dim=-1)
    return {**out, "logp_top": values, "idx_top": idx.to(torch.int32), "logp_rest": rest}


def kl_rows(ref: dict[str, torch.Tensor], logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: KL(P ‖ Q) (float64, exact or on the top-k coarsening, see the module docstring) and whether
    Q's argmax is P's."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    agree = logq.argmax(dim=-1) == ref["top1"].long()
    if "logp" in ref:
        logp = ref["logp"].double()
        p = logp.exp()
        kl = torch.where(p > 0, p * (logp - logq.double()), torch.zeros_like(p)).sum(dim=-1)
    else:
        idx = ref["idx_top"].long()
        logp_s, logp_r = ref["logp_top"].double(), ref["logp_rest"].double()
        logq_s = logq.gather(-1, idx).double()
        logq_r = logq.scatter(-1, idx, float("-inf")).logsumexp(dim=-1).double()
        p_r = logp_r.exp()
        rest = torch.where(p_r > 0, p_r * (logp_r - logq_r), torch.zeros_like(p_r))
        kl = (logp_s.exp() * (logp_s - logq_s)).sum(dim=-1) + rest
    return kl.clamp_min(0.0), agree  # >= 0 in exact arithmetic; clamp only rounding below 0


def _logit_chunks(model, ids: torch.Tensor, batch_size: int, device: torch.device):
    """(first row, logits rows) over every predicting position of every window, ROWS_PER_CHUNK rows at a time;
    row r is window r // (width-1), position r % (width-1)."""
    n, width = ids.shape
    for start in range(0, n, batch_size):
        batch = ids[start : start + batch_size].to(device)
        logits = model(batch, use_cache=False).logits[:, :-1]
        rows = logits.reshape(-1, logits.shape[-1])
        offset = start * (width - 1)
        for c in range(0, rows.shape[0], ROWS_PER_CHUNK):
            yield offset + c, rows[c : c + ROWS_PER_CHUNK]


@torch.no_grad()
def fp_reference(model, ids: torch.Tensor, settings: DivergenceSettings, device: torch.device) -> dict:
    """The FP side over the windows `ids` (kept in the reference, so a model is always scored on the same
    tokens), on the CPU."""
    vocab = int(model.config.vocab_size)
    rows = ids.shape[0] * (ids.shape[1] - 1)
    if (settings.top_k is None or settings.top_k >= vocab) and rows * vocab * 4 > MAX_FULL_REFERENCE_BYTES:
        raise QgenError(f"eval_suite.divergence.top_k=null stores every log-prob ({rows} tokens x {vocab} = "
                        f"{rows * vocab * 4 / 1e9:.1f} GB): use a top_k such as 64, or fewer max_windows/max_tokens")
    parts: dict[str, list] = {}
    for _, chunk in _logit_chunks(model.eval(), ids, settings.batch_size, device):
        for key, value in reference_rows(chunk, settings.top_k).items():
            parts.setdefault(key, []).append(value.cpu())
    return {"ids": ids.clone(), **{k: torch.cat(v) for k, v in parts.items()}}


@torch.no_grad()
def score(model, ref: dict, device: torch.device, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL(P ‖ Q) and top-1 agreement, [windows, width-1] each, of `model` (Q) against the reference (P)."""
    ids = ref["ids"]
    kls, agrees = [], []
    for first, chunk in _logit_chunks(model.eval(), ids, batch_size, device):
        part = {k: v[first : first + chunk.shape[0]].to(device) for k, v in ref.items() if k != "ids"}
        kl, agree = kl_rows(part, chunk)
        kls.append(kl.cpu())
        agrees.append(agree.cpu())
    shape = (ids.shape[0], ids.shape[1] - 1)
    return torch.cat(kls).view(shape), torch.cat(agrees).view(shape)


def summarize(kl: torch.Tensor, agree: torch.Tensor, settings: DivergenceSettings) -> tuple[dict, list[dict]]:
    """({metric: {value, stderr}}, per-window scores) from per-token KL and agreement of shape [windows, tokens]."""
    names = settings.names
    flat = kl.reshape(-1).double().numpy()
    per_window_kl = kl.double().mean(dim=1).numpy()
    per_window_agree = agree.double().mean(dim=1).numpy()
    n = len(per_window_kl)

    def stderr(x):
        return float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else None

    median, p95, p99 = np.quantile(flat, [0.5, 0.95, 0.99])
    metrics = {names["mean"]: {"value": float(flat.mean()), "stderr": stderr(per_window_kl)},
               names["median"]: {"value": float(median), "stderr": None},
               names["p95"]: {"value": float(p95), "stderr": None},
               names["p99"]: {"value": float(p99), "stderr": None},
               names["agree"]: {"value": float(agree.double().mean()), "stderr": stderr(per_window_agree)},
               "tokens": {"value": int(flat.size), "stderr": None},
               "n_items": {"value": n, "stderr": None}}
    items = [{"doc_id": i, names["mean"]: float(k), names["agree"]: float(a)}
             for i, (k, a) in enumerate(zip(per_window_kl, per_window_agree))]
    return metrics, items


def run_divergence(model, suite, references: dict[str, dict], device: torch.device) -> tuple[dict, list[dict]]:
    """{kl/<dataset>: metrics} and the per-window sample rows for every dataset of the suite's divergence section."""
    settings = DivergenceSettings.from_suite(suite)
    metrics, samples = {}, []
    for dataset in settings.datasets if settings else ():
        if dataset not in references:
            raise QgenError(f"no FP reference for divergence dataset {dataset!r}: the job computes references "
                            f"before it scores")
        task = f"{TASK_PREFIX}{dataset}"
        kl, agree = score(model, references[dataset], device, settings.batch_size)
        metrics[task], items = summarize(kl, agree, settings)
        samples += [{"task": task, **item} for item in items]
    return metrics, samples
