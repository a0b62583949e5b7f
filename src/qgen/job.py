"""One job, in the order the data flows: model -> calibration -> (FP baseline) -> quantize -> evaluate -> record."""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig

from qgen.errors import QgenError
from qgen.record.results import JobRecord
from qgen.validate import check_job

log = logging.getLogger("qgen")


def build_methods(cfg: DictConfig):
    from qgen.quant.activations import ActFormat
    from qgen.quant.grid import WeightFormat
    from qgen.quant.methods import build

    weight = WeightFormat(cfg.bits.weight_bits, cfg.bits.group_size, cfg.bits.symmetric)
    act = ActFormat(cfg.bits.act_bits, cfg.bits.act_granularity)
    methods = [build(step.name, weight, act, {k: v for k, v in step.items() if k != "name"})
               for step in cfg.quantizer.methods]
    return methods, weight, act


def run_job(cfg: DictConfig, out_dir: Path) -> dict:
    check_job(cfg)
    methods, _, act = build_methods(cfg)  # unknown method settings fail here, before the model loads
    os.environ["QGEN_HOME"] = str(cfg.paths.qgen_home)
    if cfg.runtime.get("threads"):
        torch.set_num_threads(int(cfg.runtime.threads))
    torch.manual_seed(cfg.seed)

    from qgen.data.calibration import build_calibration
    from qgen.evaluate.suite import evaluate
    from qgen.models.arch import adapter_for
    from qgen.models.load import load_model, resolve_device
    from qgen.quant.engine import EngineSettings, quantize_model

    out_dir.mkdir(parents=True, exist_ok=True)
    record = JobRecord(out_dir, cfg)
    device = resolve_device(cfg.runtime.device)
    samples = out_dir / "samples.jsonl"
    try:
        with record.stage("load_model"):
            log.info("[1/5 load_model] %s", cfg.model.name)
            model, tokenizer, info = load_model(cfg.model, seed=cfg.seed)
            adapter = adapter_for(model.config.model_type) if methods else None
            record.data["model_info"] = {**info, "model_type": model.config.model_type,
                                         "parameters": sum(p.numel() for p in model.parameters()),
                                         "device": str(device)}
        calib = None
        if any(m.needs_calibration for m in methods):
            with record.stage("calibration"):
                log.info("[2/5 calibration] %s: %d x %d tokens", cfg.calib.name, cfg.calib.n_samples,
                         cfg.calib.seq_len)
                calib = build_calibration(cfg.calib, tokenizer)
                record.data["calibration"] = calib.info
        else:
            record.data["calibration"] = {"used": False, "reason": f"quantizer {cfg.quantizer.name} is data-free"}
        if cfg.baseline and methods:
            with record.stage("baseline_eval"):
                log.info("[3/5 baseline_eval] full-precision model on %s", cfg.eval_suite.name)
                record.data["baseline"] = {"metrics": evaluate(model, tokenizer, cfg.eval_suite, device, cfg.seed)}
        if methods:
            with record.stage("quantize"):
                log.info("[4/5 quantize] %s %s", cfg.quantizer.name, cfg.bits.name)
                settings = EngineSettings(int(cfg.quantizer.batch_size), str(cfg.quantizer.feed))
                record.data["quant_report"] = quantize_model(
                    model, adapter, methods, act, None if calib is None else calib.input_ids, device, settings)
        with record.stage("evaluate"):
            log.info("[5/5 evaluate] %s", cfg.eval_suite.name)
            record.data["metrics"] = evaluate(model, tokenizer, cfg.eval_suite, device, cfg.seed, samples)
    except QgenError:
        record.finish("failed", error=traceback.format_exc(limit=1).strip().splitlines()[-1])
        raise
    except BaseException as exc:
        (out_dir / "traceback.txt").write_text(traceback.format_exc())
        record.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    record.finish("completed")
    log.info("results: %s", record.path)
    from qgen.record.wandb_logger import log_job
    log_job(cfg, out_dir, record.data)  # logger=wandb: one run per job; a W&B failure is only a warning
    return record.data
