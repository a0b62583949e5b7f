"""Score a model on an eval suite: lm-eval tasks through `simple_evaluate(HFLM(<in-memory model>))`, then the
suite's perplexity corpora, then its divergence datasets (KL to the FP model, qgen.evaluate.divergence). Returns
{task: {metric: {"value", "stderr"}}} and writes per-item scores.

lm-eval finds qgen's tasks in the shipped folder `tasks/` and, for the user's own datasets ($QGEN_DATASETS_DIR),
in `<QGEN_HOME>/tasks/`, generated when the TaskManager is built (qgen.data.lm_eval_tasks.task_dirs)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from qgen.data.lm_eval_tasks import task_dirs
from qgen.data.overlap import suite_datasets
from qgen.data.prepare import ensure_datasets
from qgen.evaluate.divergence import run_divergence
from qgen.evaluate.perplexity import held_out_texts, perplexity, protocol_name

log = logging.getLogger(__name__)


def task_manager():
    """lm-eval's task index over its own tasks, qgen's shipped tasks and the user's datasets' tasks."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(d) for d in task_dirs()])


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_lm_eval(model, tokenizer, suite, device: torch.device, seed: int, samples_path: Path | None) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tasks = list(suite.tasks)
    if not tasks:
        return {}
    # log-softmax in fp32 whatever the model's dtype: a bf16 log-softmax (lm-eval's default for a bf16 model) rounds
    # each token's log-prob to ~3 significant digits before the choices' sums are compared
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(suite.batch_size), device=str(device),
              max_length=suite.get("max_length"), softmax_dtype=torch.float32)
    out = simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=suite.get("num_fewshot"), limit=suite.get("limit"),
        task_manager=task_manager(), log_samples=samples_path is not None,
        bootstrap_iters=int(suite.get("bootstrap_iters", 1000)), random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    metrics: dict = {}
    for task, values in out["results"].items():
        row = {}
        for key, value in values.items():
            if "," not in key or key.split(",")[0].endswith("_stderr"):
                continue
            name, _filter = key.split(",", 1)
            stderr = values.get(f"{name}_stderr,{_filter}")
            row[name] = {"value": _clean(value), "stderr": _clean(stderr if isinstance(stderr, float) else None)}
        row["n_items"] = {"value": out.get("n-samples", {}).get(task, {}).get("effective"), "stderr": None}
        metrics[task] = row
    if samples_path is not None:
        with open(samples_path, "a") as f:
            for task, items in out.get("samples", {}).items():
                for item in items:
                    scores = {k: item[k] for k in ("acc", "acc_norm", "exact_match", "f1") if k in item}
                    f.write(json.dumps({"task": task, "doc_id": item["doc_id"], **scores}) + "\n")
    return metrics


def run_perplexity(model, tokenizer, suite, device: torch.device) -> dict:
    metrics = {}
    for entry in suite.get("perplexity") or []:
        texts = held_out_texts(entry.dataset)
        result = perplexity(model, tokenizer, texts, int(entry.window), device,
                            batch_size=int(suite.get("ppl_batch_size", 4)), max_windows=entry.get("max_windows"))
        metrics[f"ppl/{entry.dataset}"] = {
            protocol_name(int(entry.window)): {"value": result["value"], "stderr": None},
            "tokens": {"value": result["tokens"], "stderr": None},
        }
    return metrics


def evaluate(model, tokenizer, suite, device: torch.device, seed: int, samples_path: Path | None = None,
             references: dict | None = None) -> dict:
    """lm-eval tasks, perplexity, and (with `references`, the FP side per dataset) the divergence metrics. The
    suite's datasets are prepared first when they are not yet (a job has done so in its overlap guard)."""
    ensure_datasets(suite_datasets(suite))
    model.to(device)
    metrics = run_lm_eval(model, tokenizer, suite, device, seed, samples_path)
    metrics.update(run_perplexity(model, tokenizer, suite, device))
    divergence, items = run_divergence(model, suite, references or {}, device)
    metrics.update(divergence)
    if samples_path is not None and items:
        with open(samples_path, "a") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)
    return metrics
