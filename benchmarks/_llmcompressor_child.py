"""Child of benchmarks/gptq_vs_llmcompressor.py, run with llm-compressor's own venv (it pins transformers <= 5.17).

Reads the model folder and the calibration token ids the parent wrote, runs llm-compressor's method (oneshot) with
the scheme and modifier settings the parent gives (its METHODS entry, as JSON):

- gptq: GPTQModifier with the scheme;
- awq: AWQModifier (its mappings inferred from the model) then QuantizationModifier with the scheme;
- smoothquant: SmoothQuantModifier (mappings inferred) then QuantizationModifier with the scheme (W8A8: weights
  per channel, dynamic per-token input activations).

lm_head is left alone in all. It writes every floating tensor of the decoder blocks (`model.layers.*`: the linears'
weights and the norms' weights, which AWQ and SmoothQuant rescale) for the parent to score. GPTQ leaves its
quantized weights in the model as fake-quantized floats; QuantizationModifier keeps the float weights and their
scales and zero points (applied at run time), so for awq and smoothquant the weights are fake-quantized here with
compressed-tensors' own forward_quantize. Without an accelerator, AWQ's pinning of its cache is made a no-op
(cpu_only_patches: torch's CPU build cannot pin memory). Activations are not quantized here: the parent attaches qgen's
activation quantizer to both tools' models. Prints one RESULT line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gptq_vs_llmcompressor import _rss_mb, touch  # the parent's helpers (standard library only at import)


def recipe(method: str, settings: dict) -> list:
    """llm-compressor's modifiers for the method: its own modifier with settings["modifier"], quantizing every Linear
    but lm_head with the scheme settings["weights"] / settings["input_activations"]."""
    group = {"targets": ["Linear"], "weights": settings["weights"]}
    if settings.get("input_activations"):
        group["input_activations"] = settings["input_activations"]
    quant = {"config_groups": {"group_0": group}, "ignore": ["lm_head"]}
    if method == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        return [GPTQModifier(**quant, **settings["modifier"])]
    from llmcompressor.modifiers.quantization import QuantizationModifier

    if method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(**settings["modifier"]), QuantizationModifier(**quant)]
    if method == "smoothquant":
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        return [SmoothQuantModifier(**settings["modifier"]), QuantizationModifier(**quant)]
    raise SystemExit(f"unknown method {method!r}")


def block_state(model, fake_quantize: bool) -> tuple[dict, int]:
    """Every floating tensor of the decoder blocks (not the quantization parameters llm-compressor registers on
    them), the linears' weights fake-quantized with their own scales and zero points if fake_quantize; and how many
    weights that changed."""
    import torch
    from compressed_tensors.quantization import forward_quantize

    out, changed = {}, 0
    for name, module in model.named_modules():
        if not name.startswith("model.layers."):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if pname not in ("weight", "bias") or not p.is_floating_point():
                continue
            value = p.detach()
            scheme = getattr(module, "quantization_scheme", None)
            if fake_quantize and pname == "weight" and scheme is not None and scheme.weights is not None:
                with torch.no_grad():
                    q = forward_quantize(module, value, "weight", scheme.weights)
                changed += int((q != value).any())
                value = q
            out[f"{name}.{pname}"] = value.contiguous().cpu()
    return out, changed


def cpu_only_patches() -> list[str]:
    """What this child changes in llm-compressor to run without an accelerator (none of it changes results).

    llm-compressor 0.14's AWQModifier pins its cached block arguments (IntermediatesCache.pin_memory, "so that
    subsequent onloads can use non-blocking H2D transfers") on every CPU tensor, and torch's CPU-only build
    refuses: `RuntimeError: Cannot access accelerator device when none is available.` Without an accelerator
    there is no transfer to speed up, so pinning is made a no-op."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        return []
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    return ["IntermediatesCache.pin_memory: no-op (no accelerator to transfer to)"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help="a .pt file of calibration token ids [n, seq]")
    ap.add_argument("--out", required=True, help="where to write the decoder blocks' floating tensors")
    ap.add_argument("--method", default="gptq", choices=["gptq", "awq", "smoothquant"])
    ap.add_argument("--settings", required=True, help="JSON: weights, input_activations, modifier")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32", help="the dtype the model is loaded (and its blocks run) in")
    args = ap.parse_args()
    settings = json.loads(args.settings)

    rss_start = _rss_mb("VmRSS")
    import torch
    from datasets import Dataset
    from llmcompressor import __version__ as llmc_version
    from llmcompressor import oneshot
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    ids = torch.load(args.calib)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    rss_runtime = _rss_mb("VmRSS")  # after imports: the runtime, before the model
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    patches = cpu_only_patches()
    modifiers = recipe(args.method, settings)
    touch(model)  # every weight resident before the peak is reset, as in the parent's run
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak: from here on, quantization only
    rss_before = _rss_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    oneshot(model=model, dataset=data, recipe=modifiers, num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], batch_size=args.batch_size, shuffle_calibration_samples=False)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_mb("VmHWM")
    state, changed = block_state(model, fake_quantize=args.method != "gptq")
    save_file(state, args.out)
    print("RESULT " + json.dumps({
        "tool": f"llm-compressor {llmc_version}", "method": args.method,
        "quantize_s": round(seconds, 1), "quantize_cpu_s": round(cpu_s, 1),
        "dtype": args.dtype,
        "rss_runtime_mb": round(rss_runtime, 1), "rss_start_mb": round(rss_start, 1),
        "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(peak, 1), "threads": torch.get_num_threads(),
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
        "saved_tensors": len(state), "fake_quantized_here": changed, "llmc_patches": patches,
        "settings": {**settings, "recipe": [type(m).__name__ for m in modifiers], "batch_size": args.batch_size}}),
        flush=True)


if __name__ == "__main__":
    main()
