"""The sequential engine: the only place that walks a model's decoder blocks.

A method that transforms the whole model (rotate) does so first, once, before any input is captured or block
walked. Data-free methods (RTN) visit each subset once. With calibration data:
  1. run the model up to block 0 and keep block 0's inputs (hidden states and the keyword arguments the model
     passes its blocks: attention mask, position embeddings, ...);
  2. per block: move it to the device; per subset, per method: `start`, run the calibration batches through the
     block with a hook on the subset's first linear that hands the input to `observe` and stops the forward
     there, then `apply` — so every subset sees the inputs as changed by the subsets quantized before it
     (true-sequential). With `true_sequential` off, one pass per block observes every subset at once (each
     subset with its own copy of the method's statistics), then the subsets are applied in order: fewer forward
     passes, but later subsets are fitted to inputs computed with the block's original weights;
  3. recompute the block's outputs (with the quantized block, or the original one when `feed` is
     "full_precision") as the next block's inputs; move the block back. With feed "full_precision" and
     `true_sequential` off, the one observation pass runs the original block to its end and its outputs are
     the next block's inputs: one pass per block instead of two, the same observed inputs and outputs (the
     same computation, not stopped early), so the same weights.
Only one block's activations are alive at a time (replaced batch by batch by the block's outputs), so models
larger than the device fit.

The block forward passes run in the compute dtype (`EngineSettings.dtype`; `auto`: bfloat16 on CUDA and on CPUs
with AMX-BF16 or AVX512-BF16, else float32): the activations kept between blocks are in that dtype, and during a
pass the block's floating parameters are swapped for copies in it. Everything else stays float32: the stored
weights (the methods read and write the original tensors, so grids are fitted on fp32 weights), the observed
inputs and the block keyword arguments handed with them (cast by the hook), Hessians, solvers and search losses.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from qgen.errors import QgenError
from qgen.hardware import cpu_bf16_flags
from qgen.models.arch import ArchAdapter
from qgen.quant import activations
from qgen.quant.activations import ActFormat
from qgen.quant.cast import params_in, to_dtype
from qgen.quant.methods import QuantMethod, SubsetContext
from qgen.quant.methods.base import block_methods, check_order
from qgen.quant.rotation import online_rotation_of

log = logging.getLogger(__name__)

FEEDS = ("quantized", "full_precision")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # the compute dtype of the block forward passes
TRUE_SEQUENTIAL_COMBINATION = ("engine.true_sequential=false needs a single method: in a combination the later "
                               "method must see the inputs as the earlier one changed them; use true_sequential=true")
# Settings a method may prefer (QuantMethod.engine_defaults); the config's null means "the methods' preference".
METHOD_PREFERRED = ("batch_size", "true_sequential")


@dataclass(frozen=True)
class EngineSettings:
    """How the engine walks the blocks: the `engine` config group (conf/config.yaml; its defaults are these)."""

    batch_size: int = 4  # calibration samples per forward
    feed: str = "quantized"  # what the next block sees: outputs of the quantized or of the original block
    true_sequential: bool = True  # re-observe each subset after the previous ones were quantized
    dtype: str = "auto"  # compute dtype of the block forward passes: one of DTYPES (see compute_dtype)

    @classmethod
    def config_defaults(cls) -> dict:
        """The `engine` config node: these defaults, with null where the methods' preference decides."""
        return {f.name: None if f.name in METHOD_PREFERRED else f.default for f in fields(cls)}

    @classmethod
    def from_config(cls, engine, methods=()) -> EngineSettings:
        """The settings of an `engine` config node for these methods. A null (or absent) batch_size is the smallest
        any method prefers (AWQ keeps search tokens: 2), a null true_sequential a single method's preference
        (SmoothQuant: one pass, as its reference); otherwise the defaults above."""
        engine = engine or {}
        values = {f.name: engine.get(f.name) for f in fields(cls)}
        sizes = [m.engine_defaults["batch_size"] for m in methods if "batch_size" in m.engine_defaults]
        if values["batch_size"] is None and sizes:
            values["batch_size"] = min(sizes)
        walking = block_methods(methods)  # a whole-model transform (rotate) has no preference of its own
        if values["true_sequential"] is None and len(walking) == 1:
            values["true_sequential"] = walking[0].engine_defaults.get("true_sequential")
        return cls(**{k: v for k, v in values.items() if v is not None})


def compute_dtype(name: str, device: torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> torch.dtype:
    """The dtype of the block forward passes for an `EngineSettings.dtype` value on this device. `auto`: bfloat16
    on a CUDA device that supports it and on a CPU with AMX-BF16 or AVX512-BF16 (where bf16 matmuls are several
    times faster than fp32), float32 everywhere else (an AVX2 CPU emulates bf16, slower than fp32)."""
    if name not in DTYPES:
        raise QgenError(f"engine.dtype={name!r} is not allowed; use one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_bf16_flags(cpuinfo):
        return torch.bfloat16
    return torch.float32


def check_combination(true_sequential: bool, n_methods: int) -> None:
    """One observation pass per block (true_sequential off) serves a single method only (the schema checks the
    config with this too, before anything loads). n_methods: those that walk the blocks (not rotate)."""
    if not true_sequential and n_methods > 1:
        raise QgenError(TRUE_SEQUENTIAL_COMBINATION)


class _StopForward(Exception):
    pass


def _block_output(out):
    return out[0] if isinstance(out, tuple) else out


def _same_or(value, previous):
    """previous when it holds the same tensors as value (so both batches share them), else value."""
    if isinstance(value, torch.Tensor) and isinstance(previous, torch.Tensor):
        same = value.shape == previous.shape and value.dtype == previous.dtype and torch.equal(value, previous)
        return previous if same else value
    if isinstance(value, tuple) and isinstance(previous, tuple) and len(value) == len(previous):
        shared = tuple(_same_or(v, p) for v, p in zip(value, previous))
        return previous if all(a is b for a, b in zip(shared, previous)) else value
    return value


def check_uniform_attention(model: nn.Module, seq_len: int) -> None:
    """The engine captures the keyword arguments the model hands block 0 (attention mask included) and runs every
    block with them. A model whose layers mix attention kinds (Qwen2 with `use_sliding_window`: full attention in
    the first `max_window_layers`, a sliding window after) hands its sliding layers another mask; the two masks
    agree while a calibration window fits in the sliding window, so only longer windows are refused."""
    cfg = getattr(model, "config", None)
    kinds = set(getattr(cfg, "layer_types", None) or ())
    window = getattr(cfg, "sliding_window", None)
    if len(kinds) > 1 and window and seq_len > window:
        raise QgenError(f"calib.seq_len={seq_len} is not allowed for this model: its layers mix attention kinds "
                        f"({', '.join(sorted(kinds))}) and a window of {seq_len} tokens exceeds its sliding window "
                        f"of {window}, where the engine's one captured attention mask would be wrong for some "
                        f"layers; use calib.seq_len <= {window}")


def capture_block_inputs(model: nn.Module, adapter: ArchAdapter, input_ids: torch.Tensor, batch_size: int,
                         device: torch.device, dtype: torch.dtype | None = None) -> list[tuple[torch.Tensor, dict]]:
    """Run the model up to block 0 for every calibration batch; returns [(hidden_states, block kwargs)], their
    floating tensors in `dtype` (the compute dtype; None: as the model made them)."""
    blocks = adapter.block_list(model)
    captured: list[tuple[torch.Tensor, dict]] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: to_dtype(v, dtype) for k, v in kwargs.items()
                  if k not in ("past_key_values", "past_key_value", "use_cache")}
        if captured:  # equal-length batches get equal position tables and masks: keep one copy, not one per batch
            kwargs = {k: _same_or(v, captured[-1][1].get(k)) for k, v in kwargs.items()}
        captured.append((to_dtype(hidden.detach(), dtype), kwargs))
        raise _StopForward

    # Everything outside the blocks (embeddings, rotary tables, final norm, head) is small: put it on the device.
    block_ids = {id(m) for m in blocks.modules()}
    outside = [m for m in model.modules() if id(m) not in block_ids and not list(m.children())]
    for m in outside:
        m.to(device)
    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            try:
                model(input_ids[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _run_block(block: nn.Module, batches: list[tuple[torch.Tensor, dict]]) -> list[torch.Tensor]:
    return [_block_output(block(hidden, **kwargs)) for hidden, kwargs in batches]


# Whether feed=full_precision with true_sequential off observes during the full-precision output pass (one pass
# per block) rather than in a pass of its own; off only to measure the two-pass way (benchmarks/passes.py, tests).
FUSE_FULL_PRECISION_PASS = True


def _observe(block: nn.Module, observers: list[tuple[nn.Linear, QuantMethod, SubsetContext]], batches,
             outputs: bool = False) -> list[torch.Tensor] | None:
    """Run the calibration batches through the block, handing each listed linear's input to its (method, context)
    observers; the forward stops at the input of the last one listed, or with `outputs` runs to the end and the
    block's outputs are returned."""
    last = None if outputs else observers[-1][0]
    by_linear: dict[nn.Module, list] = {}
    for linear, method, ctx in observers:
        by_linear.setdefault(linear, []).append((method, ctx))

    block_kwargs = {}  # the current batch's keyword arguments, handed to the observers with its input

    def hook(module, args):
        x = args[0].float()
        for method, ctx in by_linear[module]:
            method.observe_batch(ctx, x, block_kwargs)
        if module is last:
            raise _StopForward

    handles = [linear.register_forward_pre_hook(hook) for linear in by_linear]
    kept = []
    try:
        for hidden, kwargs in batches:
            block_kwargs = {k: to_dtype(v, torch.float32) for k, v in kwargs.items()}
            try:
                out = block(hidden, **kwargs)
            except _StopForward:
                continue
            kept.append(_block_output(out))
    finally:
        for h in handles:
            h.remove()
    return kept if outputs else None


def attach_block_activation_quantizers(block: nn.Module, adapter: ArchAdapter, act: ActFormat,
                                       static_scales: dict[str, torch.Tensor] | None = None) -> None:
    """Quantize the inputs of the block's linears; a method may already have attached its own (static)."""
    for p in adapter.linear_names():
        linear = block.get_submodule(p)
        scale = (static_scales or {}).get(p)
        if scale is not None or not activations.is_attached(linear):
            activations.attach(linear, act, static_scale=scale)


def limit_heap_growth(threshold: int = 1 << 20) -> bool:
    """glibc raises its mmap threshold after large blocks are freed, after which freed activation buffers stay in
    the heap and the resident set ratchets up block by block (measured on 10 SmolLM2 blocks at 8 x 512: +306 MB
    peak over the resident model by default, +125 MB with a fixed 1 MiB threshold). Fixing the threshold makes
    buffers of 1 MiB and more go back to the OS when freed (process-wide; it stays set). Returns whether it
    applied (glibc only)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _unrotated_folds(subsets, block: nn.Module) -> tuple:
    """The subsets, marked unfoldable where a linear's input is rotated at run time (rotate's online Hadamard at
    down_proj): a scale folded into prev_op would meet the input before the rotation, the weights after it."""
    return tuple(replace(s, foldable=False) if any(online_rotation_of(block.get_submodule(p)) for p in s.linears)
                 else s for s in subsets)


@torch.no_grad()
def quantize_model(model: nn.Module, adapter: ArchAdapter, methods: list[QuantMethod], act: ActFormat,
                   input_ids: torch.Tensor | None, device: torch.device,
                   settings: EngineSettings = EngineSettings()) -> dict:
    """Quantize the model's decoder blocks in place; returns {"layers": {path: report}, "blocks": [...],
    "engine": {"dtype": the compute dtype of the block passes, ...}}."""
    dtype = compute_dtype(settings.dtype, device)
    needs_data = any(m.needs_calibration for m in methods)
    check_order(methods)
    check_combination(settings.true_sequential, len(block_methods(methods)))
    limit_heap_growth()
    if needs_data and input_ids is None:
        raise QgenError("this quantizer needs calibration data, but no calibration set was built")
    # whole-model transforms first (rotate): the calibration inputs are captured from the transformed model
    transforms = {m.name: m.transform_model(model, adapter, device) for m in methods if m.transforms_model}
    blocks = adapter.block_list(model)
    subsets = _unrotated_folds(adapter.subsets_for(model), blocks[0])
    model_device = next(model.parameters()).device
    batches = capture_block_inputs(model, adapter, input_ids, settings.batch_size, device, dtype) if needs_data \
        else None
    report: dict = {"layers": {}, "blocks": [],
                    "engine": {"dtype": str(dtype).removeprefix("torch."), "dtype_setting": settings.dtype,
                               "passes": 0}}  # passes over the calibration batches, partial ones included
    if transforms:
        report["transforms"] = transforms
    fuse = needs_data and settings.feed == "full_precision" and not settings.true_sequential \
        and FUSE_FULL_PRECISION_PASS
    prefix = adapter.blocks
    for i, block in enumerate(tqdm(blocks, desc="quantize", unit="block")):
        t0 = time.perf_counter()
        block.to(device)
        fp_outputs = None
        if needs_data and settings.feed == "full_precision" and not fuse:
            with params_in(block, dtype):
                fp_outputs = _run_block(block, batches)
            report["engine"]["passes"] += 1
        steps = []  # (method, context) in the order they are applied
        for subset in subsets:
            linears = {f"{prefix}.{i}.{p}": block.get_submodule(p) for p in subset.linears}
            prev = block.get_submodule(subset.prev_op) if subset.prev_op else None
            for k, method in enumerate(methods):
                ctx = SubsetContext(block, i, subset, prev, linears, final=k == len(methods) - 1, device=device)
                steps.append((method, ctx))
        if needs_data and not settings.true_sequential:  # every subset observed in one pass, each its own copy
            steps = [(copy.copy(m) if m.needs_calibration else m, ctx) for m, ctx in steps]
            observers = []
            for method, ctx in steps:
                if method.needs_calibration:
                    method.start(ctx)
                    observers.append((next(iter(ctx.linears.values())), method, ctx))
            with params_in(block, dtype):
                outputs = _observe(block, observers, batches, outputs=fuse)
            report["engine"]["passes"] += 1
            fp_outputs = outputs if fuse else fp_outputs
        for method, ctx in steps:
            if method.needs_calibration and settings.true_sequential:
                method.start(ctx)
                with params_in(block, dtype):
                    _observe(block, [(next(iter(ctx.linears.values())), method, ctx)], batches)
                report["engine"]["passes"] += 1
            layer_reports = method.apply(ctx) or {}
            for path, rep in layer_reports.items():
                report["layers"].setdefault(path, {})[method.name] = rep
        if act.enabled:
            attach_block_activation_quantizers(block, adapter, act)
        if needs_data and fp_outputs is not None:
            batches = [(out, kw) for out, (_, kw) in zip(fp_outputs, batches)]
        elif needs_data:  # batch by batch, in place: one block's activations alive at a time, never two copies
            with params_in(block, dtype):
                for j, (hidden, kwargs) in enumerate(batches):
                    batches[j] = (_block_output(block(hidden, **kwargs)), kwargs)
            report["engine"]["passes"] += 1
            del hidden
        block.to(model_device)
        report["blocks"].append({"index": i, "seconds": round(time.perf_counter() - t0, 3)})
    return report
