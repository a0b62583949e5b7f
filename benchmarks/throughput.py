"""Forward throughput vs lm-eval loglikelihood throughput on the same model, in the same run.

    .venv/bin/python benchmarks/throughput.py [--dtype float32|bfloat16] [--items 200] [--task qgen_arc_easy]

Raw: tokens/s of `model(input_ids)` on batches of 8 x 512 tokens (use_cache=False, no grad).
lm-eval: tokens/s of `HFLM.loglikelihood` over the task's real requests (context + continuation tokens).
The ratio lm-eval / raw says how much of the model's speed the evaluation harness keeps (target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def raw_forward(model, vocab: int, batches: int, batch: int, seq: int) -> float:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batches, batch, seq), generator=g)
    with torch.no_grad():
        model(ids[0], use_cache=False)  # warm-up
        t0 = time.perf_counter()
        for b in ids:
            model(b, use_cache=False)
    return batches * batch * seq / (time.perf_counter() - t0)


def lm_eval_loglikelihood(model, tokenizer, task_name: str, items: int, batch_size: int) -> tuple[float, int]:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import get_task_dict

    from qgen.evaluate.suite import task_manager

    task = get_task_dict([task_name], task_manager())[task_name]
    task.build_all_requests(limit=items, rank=0, world_size=1)
    requests = task.instances
    tokens = sum(len(tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]) for ctx, cont in
                 (r.args for r in requests))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    lm.loglikelihood(requests[: 2 * batch_size], disable_tqdm=True)  # warm-up
    t0 = time.perf_counter()
    lm.loglikelihood(requests, disable_tqdm=True)
    return tokens / (time.perf_counter() - t0), len(requests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--task", default="qgen_arc_easy")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--raw-batches", type=int, default=4)
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from qgen.models.load import load_model

    model, tokenizer, _ = load_model(OmegaConf.create({"asset": "smollm2-135m-instruct", "dtype": args.dtype}), 0)
    raw = raw_forward(model, model.config.vocab_size, args.raw_batches, 8, 512)
    harness, n_requests = lm_eval_loglikelihood(model, tokenizer, args.task, args.items, args.batch_size)
    result = {"model": "SmolLM2-135M-Instruct", "dtype": args.dtype, "threads": torch.get_num_threads(),
              "raw_forward_tok_s": round(raw, 1), "lm_eval_loglikelihood_tok_s": round(harness, 1),
              "ratio": round(harness / raw, 3), "task": args.task, "requests": n_requests}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
