"""Before/after of the engine's pass fusion, side by side in one process: feed=full_precision with
true_sequential off, observed in a pass of its own and then run again for the outputs (before,
`engine.FUSE_FULL_PRECISION_PASS = False`) against one pass that observes and keeps the outputs (after, the
default). SmolLM2-135M, GPTQ W4 g128 with conf/quantizer/gptq.yaml's settings, calibration windows from XSum's
calibration part; the two ways alternate (before, after, before, after, ...) so that a change of machine load
hits both; every run checks its quantized weights against the first run's (bit-identical expected).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/passes.py --n-samples 32 --repeats 2 --dtype auto

Prints one JSON line per run and a summary (median seconds per way, their ratio).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import cpu_info, quantize, quantizer_settings  # noqa: E402


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from qgen.data.calibration import build_calibration
    from qgen.models.load import load_model
    from qgen.quant import engine
    from qgen.quant.engine import EngineSettings

    torch.set_num_threads(args.threads)
    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2-135m.yaml")
    calib_cfg = OmegaConf.load(ROOT / "conf" / "calib" / "xsum.yaml")
    calib_cfg.n_samples, calib_cfg.seq_len, calib_cfg.seed = args.n_samples, args.seq_len, 42
    _, tokenizer, _ = load_model(model_cfg, seed=42)
    ids = build_calibration(calib_cfg, tokenizer).input_ids
    steps, base = quantizer_settings("gptq", None, args.dtype)
    settings = EngineSettings(base.batch_size, "full_precision", False, args.dtype)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, flags {' '.join(cpu['flags'])}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    rows, reference = [], None
    for r in range(args.repeats):
        for fuse in (False, True):
            engine.FUSE_FULL_PRECISION_PASS = fuse
            model, _, _ = load_model(model_cfg, seed=42)
            t0 = time.perf_counter()
            report = quantize(model, steps, 4, 128, ids, torch.device("cpu"), settings)
            seconds = time.perf_counter() - t0
            digest = weights_digest(model)
            reference = reference or digest
            rows.append({"way": "one pass (after)" if fuse else "two passes (before)", "repeat": r,
                         "seconds": round(seconds, 1), "passes": report["engine"]["passes"],
                         "dtype": report["engine"]["dtype"], "calib": f"{args.n_samples}x{args.seq_len}",
                         "weights_sha256": digest[:16], "same_weights": digest == reference,
                         "threads": torch.get_num_threads(), "cpu": cpu["model"], "flags": cpu["flags"]})
            print(json.dumps(rows[-1]), flush=True)
    engine.FUSE_FULL_PRECISION_PASS = True
    before = statistics.median(r["seconds"] for r in rows if r["way"].startswith("two"))
    after = statistics.median(r["seconds"] for r in rows if r["way"].startswith("one"))
    print(f"median before {before:.1f} s, after {after:.1f} s: before / after = {before / after:.2f}; "
          f"weights identical in every run: {all(r['same_weights'] for r in rows)}")


if __name__ == "__main__":
    main()
