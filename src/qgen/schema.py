"""The config schema: every field of every config group, with its type and allowed values, declared once here
(a quantization method's settings once in its class, `QuantMethod.settings`), and the rules that need more than
one field or look at the world (files, devices, the dataset registry, lm-eval's tasks).

The checks, each as early as what it needs allows:
- `check_job(cfg)` — the composed config alone, before anything loads: types and ranges of every field, unknown
  keys, the rules below, lm-eval task names. `qgen.validate.preflight` runs it for every job of a command line.
- `check_device(name)` — by the job itself, on the machine it runs on, before the model loads.
- `check_loaded(cfg, model, adapter, tokenizer)` — right after the model loads, before calibration or quantizing:
  sequence lengths against the model's positions, the group size against its layer widths, non-finite weights, a
  chat template where calib.chat_template asks for one.
Every refusal is one line naming the field, the value and what is allowed (QgenError, exit code 2).
The README's config table is generated from this declaration (`python -m qgen.schema --markdown`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from functools import cache
from pathlib import Path

from qgen.analysis.command import SCENARIOS as REPORT_KINDS
from qgen.errors import QgenError
from qgen.evaluate.dtype import EVAL_DTYPES
from qgen.quant.engine import DTYPES as ENGINE_DTYPES
from qgen.quant.engine import FEEDS
from qgen.quant.methods import METHODS
from qgen.quant.methods.base import block_methods, check_order
from qgen.spec import REQUIRED, Anything, Bool, Choice, Either, Float, Int, ListOf, Section, Str, refuse

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


# -- rules: each receives (path of its section, the section's checked values, the whole checked config) ----------

def _methods(root: dict) -> dict:
    return root.get("quantizer", {}).get("methods") or {}


def _bits_fit_quantizer(path, bits, root) -> None:
    if bits["weight_bits"] == 16 and _methods(root):
        raise QgenError(f"bits.weight_bits=16 is not allowed with quantizer={root['quantizer']['name']}: use an "
                        f"integer from 2 to 8 (16 only with quantizer=none)")


def _method_settings(path, job, root) -> None:
    """Each method's settings against its class's declaration; then the methods as built (format rules), their
    order (a whole-model transform first) and the engine's rule for combinations."""
    from qgen.quant.activations import ActFormat
    from qgen.quant.engine import check_combination
    from qgen.quant.grid import WeightFormat

    bits, methods = root["bits"], root["quantizer"]["methods"]
    weight = WeightFormat(bits["weight_bits"], bits["group_size"], bits["symmetric"])
    act = ActFormat(bits["act_bits"], bits["act_granularity"])
    for name, settings in methods.items():
        if name not in METHODS:
            raise QgenError(f"quantizer.methods.{name} is not a quantization method; use "
                            f"{', '.join(sorted(METHODS))}")
        if not isinstance(settings, dict):
            raise refuse(f"quantizer.methods.{name}", settings, f"a mapping of {name}'s settings")
        METHODS[name](weight, act, **METHODS[name].check_settings(settings, f"quantizer.methods.{name}"))
    classes = [METHODS[name] for name in methods]
    check_order(classes)
    engine = root["engine"]
    if engine["true_sequential"] is not None:
        check_combination(engine["true_sequential"], len(block_methods(classes)))


def _registered(path: str, name: str) -> None:
    from qgen.data import registry

    try:
        registry.get(name)
    except QgenError as exc:
        raise QgenError(f"{path}={name!r}: {exc}") from None


def _calib_datasets(path, calib, root) -> None:
    from qgen.data.registry import SELF

    names = [calib["dataset"]] if isinstance(calib["dataset"], str) else calib["dataset"]
    for i, name in enumerate(names):
        if name != SELF:  # text sampled from the model itself (qgen/data/self_calib.py)
            _registered(f"calib.dataset{'' if isinstance(calib['dataset'], str) else f'.{i}'}", name)
    weights = calib.get("weights")
    if weights is not None and len(weights) != len(names):
        raise QgenError(f"calib.weights has {len(weights)} entries for {len(names)} datasets: give one weight per "
                        f"dataset of calib.dataset, or null for equal shares")
    if all(name == SELF for name in names):  # the two options shape a dataset's documents: self has none
        for key in ("min_tokens", "chat_template"):
            off = CALIB.fields[key].default
            if calib[key] != off:
                raise QgenError(f"calib.{key}={_as_written(calib[key])} has no effect with calib.dataset="
                                f"{calib['dataset']}: it applies to registered datasets' documents; set "
                                f"calib.{key}={_as_written(off)}")


def _suite_scores_something(path, suite, root) -> None:
    divergence = suite.get("divergence") or {}
    if not suite["tasks"] and not suite["perplexity"] and not divergence.get("datasets"):
        raise QgenError(f"eval_suite={suite['name']} has nothing to score: give eval_suite.tasks, "
                        f"eval_suite.perplexity or eval_suite.divergence.datasets")
    for i, entry in enumerate(suite["perplexity"]):
        _registered(f"eval_suite.perplexity.{i}.dataset", entry["dataset"])
    for i, name in enumerate(divergence.get("datasets") or []):
        _registered(f"eval_suite.divergence.datasets.{i}", name)
    for i, task in enumerate(suite["tasks"]):
        if task not in known_tasks():
            raise refuse(f"eval_suite.tasks.{i}", task, "a qgen task (qgen_<dataset>, see `qgen datasets`) or an "
                                                        "lm-eval task name")


@cache
def _qgen_tasks() -> frozenset[str]:
    """Task and group names of the task YAMLs qgen generates, shipped and the user's datasets' (read from the
    files, no lm-eval import)."""
    from qgen.data.lm_eval_tasks import task_dirs

    names = set()
    for f in (f for folder in task_dirs() for f in folder.glob("*.yaml")):
        for line in f.read_text().splitlines():
            m = re.match(r"^(task|group):\s*([A-Za-z0-9_.\-]+)\s*$", line)
            if m:
                names.add(m.group(2))
    return frozenset(names)


class _KnownTasks:
    """qgen's own tasks from its YAMLs; any other name is looked up in lm-eval's index (built once, slow)."""

    def __contains__(self, name: str) -> bool:
        return name in _qgen_tasks() or name in _lm_eval_tasks()


@cache
def _lm_eval_tasks() -> frozenset[str]:
    from qgen.evaluate.suite import task_manager

    return frozenset(task_manager().all_tasks)


def known_tasks() -> _KnownTasks:
    return _KnownTasks()


def check_device(name: str) -> None:
    """runtime.device exists on the machine the job runs on (a SLURM or Ray job is checked there, not where it is
    submitted): checked by the job before the model loads."""
    import torch

    if name == "auto" or name == "cpu":
        return
    kind, _, index = name.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise QgenError(f"runtime.device={name} is not allowed: this machine has no CUDA device; use auto or cpu")
        if index and int(index) >= count:
            raise QgenError(f"runtime.device={name} is not allowed: this machine has {count} CUDA device(s); use "
                            f"cuda:0 to cuda:{count - 1}, auto or cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise QgenError(f"runtime.device={name} is not allowed: MPS is not available here; use auto or cpu")


def _writable_folder(key: str, value: str) -> None:
    """The folder exists and is writable, or can be created (its nearest existing ancestor is a writable folder)."""
    folder = Path(value).expanduser()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise QgenError(f"{key}={value!r} is not allowed: {probe} is a file, not a folder; give a folder qgen can "
                        f"write to")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise QgenError(f"{key}={value!r} is not allowed: {probe} is not writable; give a folder qgen can write to")


def _paths_writable(path, paths, root) -> None:
    _writable_folder("paths.output_dir", paths["output_dir"])
    _writable_folder("paths.qgen_home", paths["qgen_home"])


def _model_source(path, model, root) -> None:
    from qgen.models.source import model_source

    model_source(model).check(quantizes=bool(_methods(root)))


def _export_fits(path, root, _root) -> None:
    from omegaconf import OmegaConf

    from qgen.quant.export import check_export_config

    check_export_config(OmegaConf.create(root))


# -- the declaration ----------------------------------------------------------------------------------------------

NAME = Str(doc="the option's label in output folders and reports")
TORCH_DTYPES = ("float32", "bfloat16", "float16")

MODEL = Section(fields={
    "name": NAME,
    "pretrained": Str(nullable=True, doc="hub id (org/name) or local folder"),
    "asset": Str(nullable=True, doc="offline asset built by `make assets` (wins over pretrained)"),
    "revision": Str(nullable=True, doc="hub revision"),
    "dtype": Choice(values=TORCH_DTYPES, doc="dtype the model is loaded and quantized in"),
    "trust_remote_code": Bool(doc="run the hub repo's modelling code (Baichuan2)"),
    "random_init": Section(nullable=True, optional=True, doc="seeded random Llama of this shape (tests)", fields={
        "hidden_size": Int(1), "intermediate_size": Int(1), "num_hidden_layers": Int(1),
        "num_attention_heads": Int(1), "num_key_value_heads": Int(1), "max_position_embeddings": Int(2),
        "tie_word_embeddings": Bool()}),
}, rules=(_model_source,))


def _with_defaults(section: Section) -> Section:
    """The section, absent from a config, as its fields' defaults."""
    return dataclasses.replace(section, default=section.defaults())


SOURCE = "a calibration source"
SELF_SAMPLING = Section(doc="how calib.dataset=self samples text from the model (qgen/data/self_calib.py)", fields={
    "temperature": Float(0, lo_open=True, default=1.0, doc="sampling temperature"),
    "top_p": Float(0, 1, lo_open=True, default=1.0, doc="nucleus sampling: the smallest set of tokens holding this "
                                                         "probability (1: off)"),
    "start": Either(options=(Choice(values=("bos",)), ListOf(item=Str(text="a text"), min_len=1)), default="bos",
                    doc="what each window starts from: bos (the tokenizer's BOS token; EOS where it has none) or a "
                        "list of starting texts, used in turn in a seeded order"),
    "batch_size": Int(1, default=16, doc="windows sampled together (it orders the random draws, so it is part of "
                                         "the windows' identity)"),
})

CALIB = Section(fields={
    "name": NAME,
    "dataset": Either(options=(Str(text=SOURCE), ListOf(item=Str(text=SOURCE), min_len=1)),
                      doc="a registered dataset, or self (text sampled from the model being quantized); a list of "
                          "them for a mixture"),
    "weights": ListOf(item=Float(0, lo_open=True), nullable=True, doc="mixture shares (null: equal)"),
    "n_samples": Int(1, 1_000_000, doc="calibration windows"),
    "seq_len": Int(1, doc="tokens per window (at most the model's positions)"),
    "seed": Int(0, SEED_MAX, doc="window sampling seed"),
    # Declared with their defaults here only: conf/calib/xsum.yaml takes them from the `calib_settings` node
    # that qgen.conf_store builds from these declarations.
    "min_tokens": Int(1, nullable=True, default=None, doc="drop a dataset's documents shorter than this many "
                                                          "tokens (counted, not padded or cycled; null: keep all)"),
    "chat_template": Bool(default=False, doc="render each dataset row as a user turn of the tokenizer's chat "
                                             "template"),
    "self": _with_defaults(SELF_SAMPLING),
}, rules=(_calib_datasets,))

QUANTIZER = Section(fields={
    "name": NAME,
    "methods": Section(open=True, doc="method name -> its settings, applied in order (each method's settings and "
                                      "defaults are declared in its class; see below)"),
})

ENGINE = Section(fields={
    "batch_size": Int(1, nullable=True, doc="calibration samples per forward (null: the methods' preference, AWQ "
                                            "2, else 4)"),
    "feed": Choice(values=FEEDS, doc="what the next block sees: the quantized or the original block's outputs"),
    "true_sequential": Bool(nullable=True, doc="re-observe each subset after the previous ones were quantized "
                                               "(false: one pass per block, single method; null: the method's "
                                               "preference, SmoothQuant false, else true)"),
    "dtype": Choice(values=ENGINE_DTYPES, doc="compute dtype of the block passes (auto: bf16 on CUDA and on "
                                              "AMX/AVX512-BF16 CPUs, else fp32)"),
})

BITS = Section(fields={
    "name": NAME,
    "weight_bits": Int(2, 8, also=(16,), text="an integer from 2 to 8 (16 only with quantizer=none)"),
    "act_bits": Choice(values=(4, 6, 8, 16), doc="16: activations not quantized"),
    "group_size": Int(1, also=(-1,), text="a positive integer, or -1 for per channel",
                      doc="columns per group (the last may be shorter)"),
    "symmetric": Bool(),
    "act_granularity": Choice(values=("per_token", "per_tensor")),
}, rules=(_bits_fit_quantizer,))

PERPLEXITY = Section(fields={
    "dataset": Str(text="a registered dataset"),
    "window": Int(2, doc="tokens per non-overlapping window"),
    "max_windows": Int(1, nullable=True, default=None),
})

DIVERGENCE = Section(optional=True, nullable=True, doc="KL(FP || model) and top-1 agreement on held-out text", fields={
    "datasets": ListOf(item=Str(text="a registered dataset"), default=[], doc="empty: off"),
    "window": Int(2, default=512, doc="tokens per non-overlapping window"),
    "max_windows": Int(1, nullable=True, default=16),
    "max_tokens": Int(1, nullable=True, default=None),
    "top_k": Int(1, nullable=True, default=64, doc="FP log-probs kept per token (null: all)"),
    "batch_size": Int(1, default=4),
})

EVAL_SUITE = Section(fields={
    "name": NAME,
    "tasks": ListOf(item=Str(text="a task name"), doc="lm-eval tasks: qgen_<dataset> or lm-eval's own"),
    "limit": Either(options=(Int(1), Float(0, 1, lo_open=True, hi_open=True)), nullable=True,
                    doc="items per task (a fraction below 1)"),
    "num_fewshot": Int(0, nullable=True),
    "batch_size": Int(1, doc="lm-eval batch size"),
    "bootstrap_iters": Int(0, doc="lm-eval's stderr bootstrap"),
    "max_length": Int(1, nullable=True),
    "perplexity": ListOf(item=PERPLEXITY, doc="corpora scored by perplexity"),
    "ppl_batch_size": Int(1),
    "divergence": DIVERGENCE,
    "groups": Anything(optional=True, doc="scenario groups of the S2/S3 reports (qgen.analysis.groups)"),
    "categories": ListOf(item=Str(), optional=True, doc="S3 categories"),
}, rules=(_suite_scores_something,))

LOGGER = Section(fields={
    "name": Choice(values=("none", "wandb")),
    "project": Str(optional=True), "entity": Str(nullable=True, optional=True),
    "mode": Choice(values=("offline", "online", "disabled"), optional=True),
    "dir": Str(nullable=True, optional=True), "group": Str(nullable=True, optional=True),
    "tags": ListOf(item=Str(), optional=True),
})

PATHS = Section(fields={"output_dir": Str(doc="runs and sweeps"), "qgen_home": Str(doc="assets, models, caches")},
                rules=(_paths_writable,))

RUNTIME = Section(fields={
    "device": Str(pattern=r"auto|cpu|mps|cuda(:\d+)?", text="auto, cpu, cuda, cuda:N or mps"),
    "threads": Int(1, nullable=True, doc="torch CPU threads (null: torch's default)"),
    "eval_dtype": Choice(values=EVAL_DTYPES, optional=True, doc="dtype the models are scored in (auto: bf16 on CUDA, "
                                                                "else model.dtype)"),
})

def _study_sweep(path, study, root) -> None:
    sweep, path = study["sweep"], f"{path}.sweep"
    for i, axes in enumerate(sweep if isinstance(sweep, list) else [sweep]):
        where = f"{path}.{i}" if isinstance(sweep, list) else path
        if not axes:
            raise QgenError(f"{where} is empty: give override keys with their values, e.g. seed: [42, 567]")
        for key, values in axes.items():
            if key == "calib.dataset" and values == "groups":
                continue
            if not isinstance(values, list) or not values or not all(isinstance(v, (str, int, float, bool))
                                                                     for v in values):
                raise refuse(f"{where}.{key}", values, "a non-empty list of values (calib.dataset also: groups, "
                                                       "every member of the suite's groups)")


def _env_needs_study(path, env, root) -> None:
    if env is not None and not root.get("study"):
        raise QgenError(f"env={env['name']} needs a study: add study=<name> (see `qgen study list`)")


SWEEP_AXES = Section(open=True, doc="override key -> values")
STUDY = Section(optional=True, nullable=True, doc="a study (conf/study): what `qgen study run` runs", fields={
    "name": NAME,
    "report": ListOf(item=Choice(values=REPORT_KINDS), min_len=1, doc="report kinds built from its results"),
    "reference": Bool(doc="FP jobs (quantizer=none bits=fp16), one per seed, before the sweep"),
    "against": ListOf(item=NAME, optional=True, default=[],
                      doc="S2/S3 reports also compare every calibration set with each of these (report --against)"),
    "sweep": Either(options=(SWEEP_AXES, ListOf(item=SWEEP_AXES, min_len=1)),
                    doc="axes: override key -> list of values (calib.dataset: groups), or a list of such sweeps"),
}, rules=(_study_sweep,))
ENV = Section(optional=True, nullable=True, doc="the environment a study runs in (conf/env)",
              fields={"name": NAME}, rules=(_env_needs_study,))

JOB = Section(fields={
    "model": MODEL, "calib": CALIB, "quantizer": QUANTIZER, "engine": ENGINE, "bits": BITS, "eval_suite": EVAL_SUITE,
    "logger": LOGGER, "paths": PATHS, "runtime": RUNTIME, "study": STUDY, "env": ENV,
    "task_name": Str(),
    "seed": Int(0, SEED_MAX),
    "baseline": Bool(doc="also score the full-precision model"),
    "resume": Bool(doc="skip jobs already completed"),
    "cache": Bool(doc="reuse cached calibration sets, quantized blocks and evaluations"),
    "export": Choice(values=("compressed-tensors",), nullable=True, doc="also write a low-bit checkpoint"),
}, rules=(_method_settings, _export_fits))

# The launcher presets write into Hydra's own nodes; the fields qgen's presets set are checked, Hydra's others pass.
LAUNCHER = Section(open=True, fields={  # Hydra's own defaults may be null
    "cpus_per_task": Int(1, nullable=True, optional=True), "gpus_per_node": Int(0, nullable=True, optional=True),
    "tasks_per_node": Int(1, nullable=True, optional=True), "nodes": Int(1, nullable=True, optional=True),
    "mem_gb": Int(1, nullable=True, optional=True), "timeout_min": Int(1, nullable=True, optional=True),
    "array_parallelism": Int(1, nullable=True, optional=True),
    "max_num_timeout": Int(0, nullable=True, optional=True), "partition": Str(nullable=True, optional=True),
})
SWEEPER = Section(open=True, fields={"max_batch_size": Int(1, nullable=True, optional=True)})
REQUIRED_LAUNCHER_FIELDS = {"SlurmLauncher": ("partition", "timeout_min")}


def check_job(values: dict) -> dict:
    """Check a composed job config (plain values, resolved; a `hydra` node is ignored); returns the checked values
    with the defaults the schema declares filled in."""
    return JOB.validate({k: v for k, v in values.items() if k != "hydra"})


def check_launcher(hydra_cfg, choice: str) -> None:
    from omegaconf import OmegaConf

    launcher = hydra_cfg.launcher
    kind = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
    missing = sorted(k for k in launcher if OmegaConf.is_missing(launcher, k)
                     or (k in REQUIRED_LAUNCHER_FIELDS.get(kind, ()) and launcher[k] in (None, "")))
    if missing:
        raise QgenError(f"launcher={choice} needs " + ", ".join(f"hydra.launcher.{k}" for k in missing)
                        + f" (e.g. hydra.launcher.{missing[0]}=<value>)")
    LAUNCHER.check("hydra.launcher", OmegaConf.to_container(launcher, resolve=True))
    SWEEPER.check("hydra.sweeper", OmegaConf.to_container(hydra_cfg.sweeper, resolve=True))


# -- after the model loads --------------------------------------------------------------------------------------

def max_positions(model) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "model_max_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_loaded(cfg, model, adapter, tokenizer=None) -> None:
    """What needs the loaded model: sequence lengths, group size against layer widths, finite weights, and (for a
    job that calibrates with calib.chat_template on) a tokenizer with a chat template."""
    import torch

    name = cfg.model.name
    if tokenizer is not None and cfg.quantizer.methods and cfg.calib.get("chat_template"):
        from qgen.data.calibration import require_chat_template

        require_chat_template(tokenizer, name)
    positions = max_positions(model)
    if positions is not None:
        lengths = [("calib.seq_len", cfg.calib.seq_len)] if cfg.quantizer.methods else []
        lengths += [(f"eval_suite.perplexity.{i}.window", e.window) for i, e in enumerate(cfg.eval_suite.perplexity)]
        divergence = cfg.eval_suite.get("divergence") or {}
        if divergence.get("datasets"):
            lengths.append(("eval_suite.divergence.window", divergence.window))
        if cfg.eval_suite.get("max_length"):
            lengths.append(("eval_suite.max_length", cfg.eval_suite.max_length))
        for key, value in lengths:
            if value > positions:
                raise QgenError(f"{key}={value} is not allowed: {name} has {positions} positions; use at most "
                                f"{positions}")
    if adapter is not None and cfg.bits.group_size != -1:
        widths = sorted({adapter.block_list(model)[0].get_submodule(p).in_features for p in adapter.linear_names()})
        if cfg.bits.group_size > widths[-1]:
            raise QgenError(f"bits.group_size={cfg.bits.group_size} is larger than every layer's input width in "
                            f"{name} ({', '.join(map(str, widths))}): use at most {widths[-1]}, or -1 for per "
                            f"channel")
    for pname, param in model.named_parameters():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            raise QgenError(f"model {name} has non-finite weights (NaN or Inf) in {pname}: the checkpoint is damaged")


# -- the README's table -------------------------------------------------------------------------------------------

README_MARKERS = ("<!-- config-table: generated by `python -m qgen.schema README.md` -->", "<!-- /config-table -->")


def _as_written(value) -> str:
    """A default as a config file writes it: null, true, false, 1.0, bos."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """Every field of every group with its allowed values, as the README shows it."""
    rows = ["| field | allowed | meaning |", "|---|---|---|"]

    def walk(prefix: str, section: Section) -> None:
        for key, spec in section.fields.items():
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(spec, Section) and spec.fields and not spec.open:
                walk(path, spec)
                continue
            if isinstance(spec, ListOf) and isinstance(spec.item, Section) and not spec.item.open:
                walk(f"{path}[]", spec.item)
                continue
            default = "" if spec.default is REQUIRED or isinstance(spec, Section) else \
                f" (default {_as_written(spec.default)})"
            rows.append(f"| `{path}` | {spec.allowed()}{default} | {spec.doc} |")

    walk("", JOB)
    for name, method in sorted(METHODS.items()):
        for key, spec in method.settings.items():
            rows.append(f"| `quantizer.methods.{name}.{key}` | {spec.allowed()} "
                        f"(default {_as_written(spec.default)}) | {spec.doc} |")
    return "\n".join(rows)


def readme_with_table(text: str) -> str:
    start, end = README_MARKERS
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{markdown_table()}\n{end}{rest.split(end, 1)[1]}"


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:  # rewrite the table inside that file's markers
        readme = Path(sys.argv[1])
        readme.write_text(readme_with_table(readme.read_text()))
    else:
        print(markdown_table())
