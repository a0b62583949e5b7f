"""Child of benchmarks/gptq_vs_llmcompressor.py, run with llm-compressor's own venv (it pins transformers <= 5.17).

Reads the model folder and the calibration token ids the parent wrote, runs llm-compressor's GPTQ (oneshot) with
the settings given on the command line, and writes the weights of the quantized linears (as the fake-quantized
floats llm-compressor leaves in the model) for the parent to score. Prints one RESULT line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gptq_vs_llmcompressor import _rss_mb, touch  # the parent's helpers (standard library only at import)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help="a .pt file of calibration token ids [n, seq]")
    ap.add_argument("--out", required=True, help="where to write the quantized linears' weights")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument("--actorder", default="static")
    ap.add_argument("--dampening", type=float, default=0.01)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32", help="the dtype the model is loaded (and its blocks run) in")
    args = ap.parse_args()

    rss_start = _rss_mb("VmRSS")
    import torch
    from datasets import Dataset
    from llmcompressor import __version__ as llmc_version
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    ids = torch.load(args.calib)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    rss_runtime = _rss_mb("VmRSS")  # after imports: the runtime, before the model
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    weights = {"num_bits": args.bits, "type": "int", "symmetric": args.symmetric, "strategy": "group",
               "group_size": args.group_size, "actorder": args.actorder}
    recipe = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}}, ignore=["lm_head"],
                          dampening_frac=args.dampening, block_size=args.block_size)
    touch(model)  # every weight resident before the peak is reset, as in the parent's run
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak: from here on, quantization only
    rss_before = _rss_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], batch_size=args.batch_size, shuffle_calibration_samples=False)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_mb("VmHWM")
    blocks = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
              if k.startswith("model.layers.") and k.endswith("proj.weight")}
    save_file(blocks, args.out)
    print("RESULT " + json.dumps({
        "tool": f"llm-compressor {llmc_version}", "quantize_s": round(seconds, 1), "quantize_cpu_s": round(cpu_s, 1),
        "dtype": args.dtype,
        "rss_runtime_mb": round(rss_runtime, 1), "rss_start_mb": round(rss_start, 1),
        "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(peak, 1), "threads": torch.get_num_threads(),
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
        "settings": {**weights, "dampening_frac": args.dampening, "block_size": args.block_size,
                     "batch_size": args.batch_size}}), flush=True)


if __name__ == "__main__":
    main()
