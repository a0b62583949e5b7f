"""Token-level perplexity over non-overlapping windows (the GPTQ protocol).

The evaluation texts are joined with blank lines, tokenized once and cut into consecutive windows of
`window` tokens (a shorter tail is dropped unless it is the only window). Each window is scored on its own, with
no context carried over; perplexity = exp(total NLL / number of predicted tokens). The metric is named after its
protocol, e.g. `ppl_nonoverlap_w2048`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def protocol_name(window: int) -> str:
    return f"ppl_nonoverlap_w{window}"


def held_out_texts(dataset: str) -> list[str]:
    """A registered dataset's evaluation part rendered as the model sees its text (the dataset's calib_text)."""
    from qgen.data import registry

    return registry.render_split(dataset, "eval")


def token_windows(tokenizer, texts: list[str], window: int, max_windows: int | None = None) -> torch.Tensor:
    """The protocol's windows, [n, width]: the texts joined by blank lines, tokenized once, cut into consecutive
    non-overlapping windows (a shorter tail dropped unless it is the only window), the first `max_windows` kept."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens of text")
    n = max(1, len(ids) // window)
    if max_windows:
        n = min(n, max_windows)
    width = min(window, len(ids))
    return ids[: n * width].view(n, width)


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], window: int, device: torch.device, batch_size: int = 4,
               max_windows: int | None = None) -> dict:
    windows = token_windows(tokenizer, texts, window, max_windows)
    n, width = windows.shape
    nll, count = 0.0, 0
    for start in tqdm(range(0, n, batch_size), desc=f"perplexity w{window}", unit="batch", leave=False):
        batch = windows[start : start + batch_size].to(device)
        logits = model(batch, use_cache=False).logits[:, :-1].float()
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                               reduction="sum").item()
        count += batch[:, 1:].numel()
    return {"value": math.exp(nll / count), "tokens": count, "windows": n, "window": width}
