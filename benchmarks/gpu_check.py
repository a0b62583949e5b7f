"""GPU check: qgen's engine and evaluation at a 7B shape on one accelerator, with nothing to download.

Stages, in this order, each written to the JSON as soon as it is done (a run stopped at its time limit keeps what
it finished):
  1. `tiny`: GPTQ W4 g128 on the seeded tiny-llama (the tests' model and calibration shape), quantized on the CPU in
     fp32 and on --device in fp32 and in the device's `auto` compute dtype; every per-layer error (measured on the
     CPU in fp32) must lie within the bf16 tolerances derived in tests/test_quant_dtype.py of the CPU fp32 one;
  2. `gptq`: a LLaMA-2-7B-shaped model (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000) with random
     weights built from --seed directly on --device in fp32, random calibration token ids (128 x 512), GPTQ W4 g128
     with conf/quantizer/gptq.yaml's settings through qgen's engine: seconds per block and in total, peak memory;
  3. `throughput`: the same shape in bf16: lm-eval's HFLM loglikelihood on the in-memory model against a raw
     forward over the same tokens, same batch size (tokens per second each, and their ratio);
  4. `awq`: as 2 with AWQ W4 g128 (conf/quantizer/awq.yaml).
A stage that would start after --budget-s seconds is skipped (recorded as such).

    python benchmarks/gpu_check.py                         # cuda when available; JSON to $OUT or --json
    python benchmarks/gpu_check.py --small --device cpu --json /tmp/gpu_check.json   # the CPU mode (tested)

On the lent GPU machine (benchmarks/RESULTS-gpu.md has the exact `run` call): the packages it lacks come from
.gpu-wheels (benchmarks/gpu_wheels.py download, here), installed with benchmarks/gpu_wheels.py install there.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT / "src", ROOT / "tests"):  # qgen from this checkout; tests/quant_util's per-layer errors
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

SHAPES = {
    "llama-2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                   "max_position_embeddings": 4096},
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": 1024, "max_position_embeddings": 1024},
}
# The bf16 tolerances derived in tests/test_quant_dtype.py: per layer 2 · 24 · 2⁻⁸, on the mean over layers 4 · 2⁻⁸.
LAYER_TOL, MEAN_TOL = 2 * 24 * 2.0**-8, 4 * 2.0**-8


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    keep = sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))
    return {"model": model or platform.processor(), "flags": keep, "cores": os.cpu_count()}


def environment(device) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": str(device), "cpu": cpu_info(), "threads": torch.get_num_threads()}
    try:
        import lm_eval

        env["lm_eval"] = getattr(lm_eval, "__version__", "?")
    except ImportError as e:
        env["lm_eval"] = f"missing: {e}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   bf16=torch.cuda.is_bf16_supported())
    return env


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def build_model(shape: dict, seed: int, device, dtype):
    """A Llama with random weights, initialised from the seed directly on the device (no download, no CPU copy)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


def quantizer_settings(name: str, batch_size: int | None, dtype: str):
    """(method list, engine settings) of quantizer=<name>, as a job would build them."""
    from qgen import conf_store
    from qgen.job import build_methods
    from qgen.quant.engine import EngineSettings
    from qgen.quant.methods import method_steps

    cfg = conf_store.compose([f"quantizer={name}"])
    settings = EngineSettings.from_config(cfg.engine, build_methods(cfg)[0])
    return method_steps(cfg.quantizer.methods), EngineSettings(batch_size or settings.batch_size, settings.feed,
                                                               settings.true_sequential, dtype)


def quantize(model, steps: list, bits: int, group_size: int, ids, device, settings) -> dict:
    from qgen.models.arch import adapter_for
    from qgen.quant.activations import ActFormat
    from qgen.quant.engine import quantize_model
    from qgen.quant.grid import WeightFormat
    from qgen.quant.methods import build

    act, fmt = ActFormat(), WeightFormat(bits, group_size, False)
    methods = [build(name, fmt, act, dict(hp)) for name, hp in steps]
    return quantize_model(model, adapter_for(model.config.model_type), methods, act, ids, device, settings)


def stage_tiny(device) -> dict:
    """GPTQ W4 g128 on tiny-llama: CPU fp32 against the device in fp32 and in its auto dtype (errors on the CPU)."""
    import torch

    from qgen.quant.engine import EngineSettings, compute_dtype
    from quant_util import calib_ids, layer_errors, tiny_llama

    fp = tiny_llama(seed=0)
    ids = calib_ids(fp.config.vocab_size, n=16, seq=64)
    cpu = torch.device("cpu")
    runs = {}
    reference = "cpu float32 (reference)"
    for label, dev, dtype in ((reference, cpu, "float32"), (f"{device.type} float32", device, "float32"),
                              (f"{device.type} auto", device, "auto")):
        model = copy.deepcopy(fp).to(dev)
        report = quantize(model, [("gptq", {})], 4, 128, ids, dev, EngineSettings(batch_size=8, dtype=dtype))
        with torch.no_grad():
            runs[label] = {"dtype": report["engine"]["dtype"], "errors": layer_errors(fp, model.to(cpu), ids)}
    ref = runs[reference]["errors"]
    out = {"tolerance": {"layer": LAYER_TOL, "mean": MEAN_TOL}, "auto_dtype": str(compute_dtype("auto", device)),
           "runs": {}}
    for label, run in runs.items():
        errs = run["errors"]
        rel = {p: errs[p] / ref[p] - 1 for p in ref}
        mean_rel = sum(errs.values()) / sum(ref.values()) - 1
        out["runs"][label] = {"dtype": run["dtype"], "mean_error": sum(errs.values()) / len(errs),
                              "max_layer_rel_diff": max(abs(v) for v in rel.values()), "mean_rel_diff": mean_rel,
                              "within_tolerance": all(abs(v) <= LAYER_TOL for v in rel.values())
                              and abs(mean_rel) <= MEAN_TOL, "errors": errs}
    out["ok"] = all(r["within_tolerance"] for r in out["runs"].values())
    return out


def stage_quantize(method: str, shape: dict, n_samples: int, seq_len: int, seed: int, device,
                   batch_size: int | None, dtype: str) -> dict:
    import torch

    steps, settings = quantizer_settings(method, batch_size, dtype)
    reset_peak(device)
    t0 = time.perf_counter()
    model = build_model(shape, seed, device, torch.float32)
    sync(device)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape["vocab_size"], (n_samples, seq_len), generator=g)
    t0 = time.perf_counter()
    report = quantize(model, steps, 4, 128, ids, device, settings)
    sync(device)
    total = time.perf_counter() - t0
    per_block = [b["seconds"] for b in report["blocks"]]
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    del model
    return {"method": method, "settings": {"steps": steps, "batch_size": settings.batch_size,
                                           "feed": settings.feed, "true_sequential": settings.true_sequential,
                                           "dtype_setting": dtype},
            "compute_dtype": report["engine"]["dtype"], "calibration": f"{n_samples}x{seq_len}",
            "build_s": round(build_s, 2), "total_s": round(total, 2), "blocks": len(per_block),
            "block_s": {"min": min(per_block), "median": round(statistics.median(per_block), 3),
                        "max": max(per_block)},
            "per_block_s": per_block, "peak_memory_gib": peak_memory_gib(device), "weights_finite": finite}


def _random_texts(n: int, chars: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz     "
    return ["".join(rng.choice(letters) for _ in range(chars)) for _ in range(n)]


def stage_throughput(shape: dict, seed: int, device, n_requests: int, context_chars: int, batch_size: int) -> dict:
    """lm-eval HFLM loglikelihood on the in-memory bf16 model against a raw forward of the same token ids."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from qgen.models.tiny import byte_tokenizer

    tokenizer = byte_tokenizer()  # one token per byte: ids < 259 fit any vocabulary, no download
    model = build_model(shape, seed, device, torch.bfloat16)
    contexts, conts = _random_texts(n_requests, context_chars, seed), _random_texts(n_requests, 16, seed + 1)
    requests = [Instance("loglikelihood", {}, (c, " " + k), i) for i, (c, k) in enumerate(zip(contexts, conts))]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    lm.loglikelihood(requests[:batch_size], disable_tqdm=True)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    scores = lm.loglikelihood(requests, disable_tqdm=True)
    sync(device)
    lm_s = time.perf_counter() - t0
    ids = [tokenizer(c + " " + k, add_special_tokens=False)["input_ids"] for c, k in zip(contexts, conts)]
    tokens = sum(len(x) for x in ids)
    width = min(len(x) for x in ids)
    batch = torch.tensor([x[:width] for x in ids], device=device)
    with torch.no_grad():
        model(batch[:batch_size], use_cache=False)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for s in range(0, n_requests, batch_size):
            model(batch[s : s + batch_size], use_cache=False).logits.float().log_softmax(-1)
        sync(device)
    raw_s = time.perf_counter() - t0
    raw_tokens = batch.numel()
    del model, lm
    return {"requests": n_requests, "batch_size": batch_size, "lm_eval_tokens": tokens,
            "lm_eval_s": round(lm_s, 3), "lm_eval_tokens_per_s": round(tokens / lm_s, 1),
            "raw_tokens": raw_tokens, "raw_forward_s": round(raw_s, 3),
            "raw_tokens_per_s": round(raw_tokens / raw_s, 1),
            "lm_eval_over_raw": round((tokens / lm_s) / (raw_tokens / raw_s), 3),
            "scores_finite": all(abs(s) < float("inf") for s, _ in scores)}


def table(result: dict) -> str:
    lines = [f"device: {result['env'].get('gpu', result['env']['device'])}   cpu: {result['env']['cpu']['model']} "
             f"{' '.join(result['env']['cpu']['flags'])}   torch {result['env']['torch']}",
             "| stage | result |", "|---|---|"]
    for name, st in result["stages"].items():
        if "skipped" in st or "error" in st:
            lines.append(f"| {name} | {st.get('skipped') or st.get('error')} |")
        elif name == "tiny":
            for label, run in st["runs"].items():
                lines.append(f"| tiny {label} ({run['dtype']}) | mean layer error {run['mean_error']:.5f}, max "
                             f"layer diff vs cpu fp32 {100 * run['max_layer_rel_diff']:.2f} % (tol "
                             f"{100 * LAYER_TOL:.2f}), mean {100 * run['mean_rel_diff']:+.2f} % (tol "
                             f"{100 * MEAN_TOL:.2f}): {'ok' if run['within_tolerance'] else 'OUT OF TOLERANCE'} |")
        elif name in ("gptq", "awq"):
            b = st["block_s"]
            lines.append(f"| {name} W4 g128 {st['calibration']} ({st['compute_dtype']} passes, batch "
                         f"{st['settings']['batch_size']}) | total {st['total_s']} s over {st['blocks']} blocks; per "
                         f"block min {b['min']} / median {b['median']} / max {b['max']} s; peak "
                         f"{st['peak_memory_gib']} GiB; build {st['build_s']} s |")
        elif name == "throughput":
            lines.append(f"| bf16 loglikelihood, batch {st['batch_size']} | lm-eval HFLM {st['lm_eval_tokens_per_s']} "
                         f"tok/s vs raw forward {st['raw_tokens_per_s']} tok/s: {st['lm_eval_over_raw']} x |")
    lines.append(f"total {result['seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--small", action="store_true", help="a small model and calibration set (the CPU mode)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON (default: $OUT/gpu_check.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-samples", type=int, default=None, help="calibration windows (128; --small: 8)")
    ap.add_argument("--seq-len", type=int, default=None, help="calibration window length (512; --small: 64)")
    ap.add_argument("--batch-size", type=int, default=None, help="engine batch size (default: each quantizer's conf)")
    ap.add_argument("--dtype", default="auto", help="engine compute dtype for the 7B-shaped stages")
    ap.add_argument("--stages", default="tiny,gptq,throughput,awq")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip stages that would start after this")
    args = ap.parse_args(argv)

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = SHAPES["small" if args.small else "llama-2-7b"]
    n_samples = args.n_samples or (8 if args.small else 128)
    seq_len = args.seq_len or (64 if args.small else 512)
    out = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if out is None:
        ap.error("no JSON path: give --json or set OUT")
    t_start = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "shape": shape, "small": args.small,
              "env": environment(device), "stages": {}}

    def write():
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")

    stages = {
        "tiny": lambda: stage_tiny(device),
        "gptq": lambda: stage_quantize("gptq", shape, n_samples, seq_len, args.seed, device, args.batch_size,
                                       args.dtype),
        "throughput": lambda: stage_throughput(shape, args.seed, device, 16 if args.small else 512,
                                               48 if args.small else 480, 8 if args.small else 32),
        "awq": lambda: stage_quantize("awq", shape, n_samples, seq_len, args.seed, device, args.batch_size,
                                      args.dtype),
    }
    write()
    for name in args.stages.split(","):
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            result["stages"][name] = {"skipped": f"not started: {elapsed:.0f} s elapsed > budget {args.budget_s} s"}
        else:
            t0 = time.perf_counter()
            try:
                result["stages"][name] = stages[name]()
            except Exception as e:  # record and go on: one broken stage must not lose the others' figures
                import traceback

                result["stages"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            result["stages"][name]["stage_s"] = round(time.perf_counter() - t0, 1)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        write()
        print(f"[{name}] done at {time.perf_counter() - t_start:.0f} s", flush=True)
    print(table(result), flush=True)
    print(f"wrote {out}", flush=True)
    failed = [n for n, st in result["stages"].items() if "error" in st or st.get("ok") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
