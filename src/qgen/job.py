"""One job, in the order the data flows: model -> calibration -> (FP baseline) -> quantize -> evaluate -> record.

Every expensive stage goes through a content-addressed cache (qgen.cache): the calibration windows, the
quantized blocks and each evaluation, keyed by what decides them — so data-free quantizers (none, RTN) quantize
once whatever `calib` says, the FP baseline is scored once per (model, suite, seed) and shared by every job, and
adding evaluation tasks later does not quantize again. With `resume` on, a job whose completed result is
already in the output dir's index is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from qgen.data.overlap import check_job_overlap
from qgen.errors import QgenError
from qgen.record import index
from qgen.record.results import JobRecord, atomic_write_json, job_id
from qgen.schema import check_device, check_loaded
from qgen.validate import check_job

log = logging.getLogger("qgen")

STAGES = ("load_model", "calibration", "reference", "baseline_eval", "quantize", "evaluate")


def build_methods(cfg: DictConfig):
    from qgen.quant.activations import ActFormat
    from qgen.quant.grid import WeightFormat
    from qgen.quant.methods import build, method_steps

    weight = WeightFormat(cfg.bits.weight_bits, cfg.bits.group_size, cfg.bits.symmetric)
    act = ActFormat(cfg.bits.act_bits, cfg.bits.act_granularity)
    methods = [build(name, weight, act, settings) for name, settings in method_steps(cfg.quantizer.methods)]
    return methods, weight, act


def _plain(node) -> object:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def model_identity(cfg: DictConfig, info: dict) -> dict:
    """What decides the full-precision weights (not where they are stored): the model source's identity."""
    from qgen.models.source import model_source

    return model_source(cfg.model).identity(info, cfg.seed)


def tokenizer_identity(tokenizer) -> str:
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepared_sha256(names, part: str) -> dict:
    """{dataset: sha256 of its prepared `part` ("calib" or "eval") file}, from the datasets' manifests."""
    from qgen.assets import read_manifest
    from qgen.data import registry

    return {n: ((read_manifest(registry.get(n).folder) or {}).get("files", {}).get(f"{part}.jsonl") or {})
            .get("sha256") for n in names}


def _fail_injection(stage: str, cfg: DictConfig) -> None:
    """For testing resume and failure isolation: QGEN_FAIL_AT=<stage>[:<key>=<value>] makes matching jobs raise."""
    spec = os.environ.get("QGEN_FAIL_AT")
    if not spec:
        return
    want, _, cond = spec.partition(":")
    if want != stage:
        return
    if cond:
        key, _, value = cond.partition("=")
        if str(OmegaConf.select(cfg, key)) != value:
            return
    raise RuntimeError(f"injected failure at stage {stage} (QGEN_FAIL_AT={spec})")


def skip_if_done(cfg: DictConfig, out_dir: Path) -> Path | None:
    if not cfg.get("resume", True):
        return None
    previous = index.completed_result(cfg.paths.output_dir, job_id(cfg))
    if previous is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / index.SKIPPED_FILE, {"job_id": job_id(cfg), "results": str(previous)})
    log.info("skipping job %s: already completed in %s (resume=false to run it again)", job_id(cfg),
             previous.parent)
    return previous


class Job:
    """The stages of one job; each is cached where the result is reusable."""

    def __init__(self, cfg: DictConfig, out_dir: Path):
        from qgen.cache import Cache
        from qgen.evaluate.divergence import DivergenceSettings
        from qgen.evaluate.dtype import resolve_eval_dtype
        from qgen.models.load import resolve_device

        self.cfg = cfg
        self.out_dir = out_dir
        self.methods, self.weight, self.act = build_methods(cfg)
        self.needs_calibration = any(m.needs_calibration for m in self.methods)
        self.device = resolve_device(cfg.runtime.device)
        self.use_cache = bool(cfg.get("cache", True))
        self.caches = {kind: Cache(kind) for kind in ("calibration", "quantized", "eval", "reference")}
        # the dtype both models are scored in (quantizing stays in the model's dtype); KL references per dataset
        self.eval_dtype = resolve_eval_dtype(cfg.runtime.get("eval_dtype"), self.device, cfg.model.dtype)
        self.divergence = DivergenceSettings.from_suite(cfg.eval_suite)
        self.references: dict[str, tuple[dict, str]] = {}
        self.record = JobRecord(out_dir, cfg)
        self.record.data["cache"] = {}

    def cached(self, kind: str, stage: str, identity: dict, build, restore):
        """Return restore(hit) on a cache hit, else build(staging folder) stored under the identity's key."""
        from qgen.cache import make_key

        key = make_key(kind, identity)
        cache = self.caches[kind]
        hit = cache.get(key) if self.use_cache else None
        if hit is not None:
            self.record.data["cache"][stage] = {"kind": kind, "key": key, "status": "hit"}
            return restore(hit), key
        status = "rebuilt" if cache.damaged else "miss"
        result = {}

        def write(folder: Path):
            result["value"], meta = build(folder)
            return meta

        if self.use_cache:
            cache.put(key, write)
        else:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                write(Path(tmp))
        self.record.data["cache"][stage] = {"kind": kind, "key": key, "status": status if self.use_cache else "off"}
        return result["value"], key

    @contextmanager
    def stage(self, name: str):
        with self.record.stage(name):
            _fail_injection(name, self.cfg)
            yield

    # -- stages ---------------------------------------------------------------------------------------------
    def load_model(self):
        from qgen.models.arch import adapter_for
        from qgen.models.load import load_model

        log.info("[1/5 load_model] %s", self.cfg.model.name)
        model, tokenizer, info = load_model(self.cfg.model, seed=self.cfg.seed)
        self.adapter = adapter_for(model.config.model_type) if self.methods else None
        # lengths, group size, finite weights, chat template: before any other work
        check_loaded(self.cfg, model, self.adapter, tokenizer)
        for method in self.methods:
            method.check_model(model, self.adapter)
        if self.needs_calibration:
            from qgen.quant.engine import check_uniform_attention

            check_uniform_attention(model, int(self.cfg.calib.seq_len))
        self.model, self.tokenizer = model, tokenizer
        self.model_id = model_identity(self.cfg, info)
        self.record.data["model_info"] = {**info, "model_type": model.config.model_type, "device": str(self.device),
                                          "parameters": sum(p.numel() for p in model.parameters()),
                                          "eval_dtype": self.eval_dtype}
        if self.cfg.get("export"):  # the layer widths are known now: refuse an unexportable layout before quantizing
            from qgen.quant.export import check_export_widths

            check_export_widths(model, self.adapter, int(self.cfg.bits.group_size))

    def calibration_identity(self) -> dict:
        """What decides the calibration windows: the tokenizer, the calib settings in use, the prepared data; with
        calib.chat_template on, the template; with a `self` source, the model it samples (in full precision: the
        job calibrates before it quantizes) and the kind of device it samples on."""
        import hashlib

        from qgen.data.calibration import dataset_names, registered_names
        from qgen.data.calibration import identity as calib_identity
        from qgen.data.registry import SELF

        cfg = self.cfg.calib
        identity = {"tokenizer": tokenizer_identity(self.tokenizer), "calib": calib_identity(cfg),
                    "data": prepared_sha256(registered_names(cfg.dataset), "calib")}
        if cfg.get("chat_template"):
            identity["chat_template"] = hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest()[:16]
        if SELF in dataset_names(cfg.dataset):
            identity["self"] = {"model": self.model_id, "device": self.device.type}
        return identity

    def calibration(self):
        from qgen.data.calibration import CalibrationSet, build_calibration

        cfg = self.cfg.calib
        log.info("[2/5 calibration] %s: %d x %d tokens", cfg.name, cfg.n_samples, cfg.seq_len)
        identity = self.calibration_identity()

        def build(folder):
            calib = build_calibration(cfg, self.tokenizer, self.model, self.device)
            torch.save(calib.input_ids, folder / "input_ids.pt")
            return calib, calib.info

        def restore(hit):
            return CalibrationSet(torch.load(hit.folder / "input_ids.pt"), hit.meta)

        calib, key = self.cached("calibration", "calibration", identity, build, restore)
        self.record.data["calibration"] = calib.info
        return calib, key

    def eval_data(self) -> dict:
        """sha256 of the evaluation part of every registered dataset the suite reads (recorded in results.json),
        so that re-prepared data is never scored from an earlier cache entry. Hashed once per job (the baseline
        and the quantized model are scored on the same files)."""
        from qgen.data.overlap import suite_datasets

        if "eval_data" not in self.record.data:
            self.record.data["eval_data"] = prepared_sha256(suite_datasets(self.cfg.eval_suite), "eval")
        return self.record.data["eval_data"]

    def scoring_dtype(self):
        """The model's parameters in the eval dtype while it is scored (restored afterwards, bit for bit)."""
        from qgen.evaluate.dtype import parameters_as
        from qgen.models.load import resolve_dtype

        return parameters_as(self.model, resolve_dtype(self.eval_dtype))

    def reference(self) -> dict[str, tuple[dict, str]]:
        """The FP model's side of the divergence metrics, per dataset: cached per (model, tokenizer, dataset eval
        part, protocol, eval dtype), so every job of the same model reuses it whatever it quantizes."""
        from qgen.evaluate import divergence

        settings = self.divergence
        log.info("[reference] FP distributions on %s (%s)", ", ".join(settings.datasets), settings.protocol)
        data = self.eval_data()  # the suite's datasets, these included: hashed once per job
        out = {}
        for dataset in settings.datasets:
            identity = {"model": self.model_id, "tokenizer": tokenizer_identity(self.tokenizer), "dataset": dataset,
                        "data": data[dataset], **settings.identity(), "eval_dtype": self.eval_dtype}

            def build(folder, dataset=dataset):
                ids = divergence.windows(self.tokenizer, dataset, settings)
                with self.scoring_dtype():
                    ref = divergence.fp_reference(self.model.to(self.device), ids, settings, self.device)
                torch.save(ref, folder / "reference.pt")
                return ref, {"dataset": dataset, "windows": int(ids.shape[0]), "protocol": settings.protocol}

            def restore(hit):
                return torch.load(hit.folder / "reference.pt")

            out[dataset] = self.cached("reference", f"reference/{dataset}", identity, build, restore)
        return out

    def evaluate(self, weights_key: dict, samples_name: str) -> dict:
        """Score the model as it is now, in the eval dtype; the cache key is the identity of its weights, the eval
        dtype and the FP references the divergence metrics are measured against."""
        from qgen.evaluate.suite import evaluate

        identity = {"weights": weights_key, "suite": _plain(self.cfg.eval_suite), "seed": self.cfg.seed,
                    "lm_eval": self.record.data["env"]["packages"].get("lm_eval"), "data": self.eval_data(),
                    "eval_dtype": self.eval_dtype, "references": {d: key for d, (_, key) in self.references.items()}}

        def build(folder):
            with self.scoring_dtype():
                metrics = evaluate(self.model, self.tokenizer, self.cfg.eval_suite, self.device, self.cfg.seed,
                                   folder / "samples.jsonl", {d: ref for d, (ref, _) in self.references.items()})
            (folder / "metrics.json").write_text(json.dumps(metrics))
            if (folder / "samples.jsonl").exists():
                shutil.copyfile(folder / "samples.jsonl", self.out_dir / samples_name)
            return metrics, {}

        def restore(hit):
            if (hit.folder / "samples.jsonl").exists():
                shutil.copyfile(hit.folder / "samples.jsonl", self.out_dir / samples_name)
            return json.loads((hit.folder / "metrics.json").read_text())

        stage = "baseline_eval" if samples_name.startswith("baseline") else "evaluate"
        metrics, _ = self.cached("eval", stage, identity, build, restore)
        return metrics

    def add_flips(self) -> None:
        """Answer flips against the in-job FP baseline for every multiple-choice task (qgen.evaluate.flips)."""
        from qgen.evaluate.flips import job_flip_metrics

        flips = job_flip_metrics(self.out_dir, int(self.cfg.eval_suite.get("bootstrap_iters", 1000)), self.cfg.seed)
        for task, values in flips.items():
            self.record.data["metrics"].setdefault(task, {}).update(values)

    def quantize(self, calib_key: str | None) -> dict:
        from qgen.quant.checkpoint import restore_blocks, save_blocks
        from qgen.quant.engine import EngineSettings, compute_dtype, quantize_model

        q = self.cfg.quantizer
        log.info("[4/5 quantize] %s %s", q.name, self.cfg.bits.name)
        identity = {"model": self.model_id, "quantizer": _plain(q), "bits": _plain(self.cfg.bits),
                    # data-free methods do not depend on the calibration set or the seed: one entry serves all
                    "calibration": calib_key, "seed": self.cfg.seed if self.needs_calibration else None}
        settings = EngineSettings.from_config(self.cfg.engine, self.methods)
        passes = compute_dtype(settings.dtype, self.device)
        if self.needs_calibration:  # how the blocks were walked (as resolved: `auto` differs by machine)
            identity["engine"] = {"batch_size": settings.batch_size, "feed": settings.feed,
                                  "true_sequential": settings.true_sequential, "compute_dtype": str(passes)}

        def build(folder):
            ids = self.calib.input_ids if self.calib is not None else None
            report = quantize_model(self.model, self.adapter, self.methods, self.act, ids, self.device, settings)
            save_blocks(self.model, self.adapter, folder, outside="transforms" in report)
            (folder / "quant_report.json").write_text(json.dumps(report))
            return report, {}

        def restore(hit):
            restore_blocks(self.model, self.adapter, self.act, hit.folder)
            return json.loads((hit.folder / "quant_report.json").read_text())

        report, key = self.cached("quantized", "quantize", identity, build, restore)
        self.record.data["quant_report"] = report
        return {"quantized": key}

    def export(self, out: Path) -> Path:
        from qgen.quant.export import export_compressed_tensors

        log.info("[export] %s -> %s", self.cfg.export, out)
        export_compressed_tensors(self.model, out, self.tokenizer)
        self.record.data["export"] = {"format": self.cfg.export, "path": str(out)}
        return out

    def run(self) -> dict:
        with self.stage("load_model"):
            self.load_model()
        self.calib, calib_key = None, None
        if self.needs_calibration:
            with self.stage("calibration"):
                self.calib, calib_key = self.calibration()
        else:
            self.record.data["calibration"] = {"used": False,
                                               "reason": f"quantizer {self.cfg.quantizer.name} is data-free"}
        if self.divergence is not None:  # from the FP model, before anything is quantized
            with self.stage("reference"):
                self.references = self.reference()
        fp_key = {"fp": self.model_id}
        if self.cfg.baseline and self.methods:
            with self.stage("baseline_eval"):
                log.info("[3/5 baseline_eval] full-precision model on %s", self.cfg.eval_suite.name)
                self.record.data["baseline"] = {"metrics": self.evaluate(fp_key, "baseline_samples.jsonl")}
        weights_key = fp_key
        if self.methods:
            with self.stage("quantize"):
                weights_key = self.quantize(calib_key)
        with self.stage("evaluate"):
            log.info("[5/5 evaluate] %s", self.cfg.eval_suite.name)
            self.record.data["metrics"] = self.evaluate(weights_key, "samples.jsonl")
            self.add_flips()
        if self.cfg.get("export"):  # after the evaluation is recorded: a failed export cannot cost it
            with self.stage("export"):
                self.export(self.out_dir / "export")
        return self.record.data


def export_job(job_dir: Path, out: Path | None = None, fmt: str = "compressed-tensors") -> Path:
    """Export a finished job's quantized model (`qgen export`): its recorded config is loaded and quantized
    again — a cache hit when the job ran with the cache on — then written to out (default: JOB_DIR/export)."""
    import tempfile

    from qgen.quant.export import check_export_config
    from qgen.record.results import RESULTS_FILE

    results_path = Path(job_dir) / RESULTS_FILE
    if not results_path.is_file():
        raise QgenError(f"{job_dir} holds no {RESULTS_FILE}: give the output folder of one qgen job")
    results = json.loads(results_path.read_text())
    if results.get("status") != "completed":
        raise QgenError(f"{results_path} has status {results.get('status')!r}; only completed jobs are exported")
    cfg = OmegaConf.create(results["config"])
    cfg.export = fmt
    check_export_config(cfg)
    os.environ["QGEN_HOME"] = str(cfg.paths.qgen_home)
    if cfg.runtime.get("threads"):
        torch.set_num_threads(int(cfg.runtime.threads))
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:  # the export's own record; the job's results stay untouched
        job = Job(cfg, Path(tmp))
        job.load_model()
        job.calib, calib_key = job.calibration() if job.needs_calibration else (None, None)
        job.quantize(calib_key)
        return job.export(Path(out) if out else Path(job_dir) / "export")


def run_job(cfg: DictConfig, out_dir: Path) -> dict:
    """Run one job; raises QgenError for bad input (before anything loads) and re-raises any failure after
    recording it (status, stage reached, error, traceback.txt)."""
    check_job(cfg)
    check_device(cfg.runtime.device)  # on the machine the job runs on, before anything loads
    os.environ["QGEN_HOME"] = str(cfg.paths.qgen_home)
    previous = skip_if_done(cfg, out_dir)
    if previous is not None:
        return {"status": "skipped", "job_id": job_id(cfg), "results": str(previous)}
    check_job_overlap(cfg)  # calibration data must be there and share no example with the eval suite
    if cfg.runtime.get("threads"):
        torch.set_num_threads(int(cfg.runtime.threads))
    torch.manual_seed(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = Job(cfg, out_dir)
    try:
        job.run()
    except BaseException as exc:
        (out_dir / "traceback.txt").write_text(traceback.format_exc())
        message = str(exc) if isinstance(exc, QgenError) else f"{type(exc).__name__}: {exc}"
        job.record.finish("failed", error=message)
        index.register(cfg.paths.output_dir, job.record.data["job_id"], job.record.path, "failed")
        raise
    job.record.finish("completed")
    index.register(cfg.paths.output_dir, job.record.data["job_id"], job.record.path, "completed")
    log.info("results: %s", job.record.path)
    from qgen.record.wandb_logger import log_job
    log_job(cfg, out_dir, job.record.data)  # logger=wandb: one run per job; a W&B failure is only a warning
    return job.record.data
