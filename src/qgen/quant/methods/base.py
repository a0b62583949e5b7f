"""The contract between the engine and a quantization method.

The engine hands a method one subset at a time — linears that share an input, plus the op producing that input
(see qgen.models.arch). A method that needs calibration data gets `start`, then `observe` once per calibration
batch with the subset's input activations (or `observe_batch`, with the batch's sequences and the keyword arguments
the block got, for a method that runs a module of the block itself: AWQ), then `apply`; a data-free method gets
only `apply`. `apply` changes weights in place (and may fold scales into `ctx.prev_op`) and returns a small report
per linear.

In a combination such as awq+gptq, every method but the last only transforms (scales, clips); `ctx.final` tells
a method whether it must also put the weights on the grid. A method that `transforms_model` (a rotation) works on
the whole model once, in `transform_model`, before the engine walks any block; it quantizes nothing, so it is
listed first and followed by a method that does (rotate+rtn, rotate+gptq).

A method declares its settings once, in `settings` (qgen.spec: type, allowed values, default); the constructor
checks what it is given against them, fills the defaults and sets each as an attribute. The config schema
(qgen.schema) checks `quantizer.methods` against the same declaration before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from qgen.errors import QgenError
from qgen.models.arch import ArchAdapter, Subset
from qgen.quant.activations import ActFormat
from qgen.quant.grid import WeightFormat
from qgen.spec import Section, Spec


@dataclass
class SubsetContext:
    block: nn.Module
    block_index: int
    subset: Subset
    prev_op: nn.Module | None
    linears: dict[str, nn.Linear]  # full module path in the model -> module
    final: bool  # the last method in the list: weights must end on the grid
    device: torch.device
    notes: dict = field(default_factory=dict)  # shared by the methods of one subset (e.g. scales applied)


class QuantMethod:
    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False
    # Its final weights lie on one plain grid (integers, scale, zero), which is what low-bit formats store.
    on_grid: ClassVar[bool] = True
    settings: ClassVar[dict[str, Spec]] = {}  # name -> spec with its default: the one declaration of each setting
    # what the method prefers of the engine where the `engine` config leaves it null (qgen.quant.engine)
    engine_defaults: ClassVar[dict] = {}
    # transform_model runs once on the whole model before any block is quantized; apply is then never final
    transforms_model: ClassVar[bool] = False

    def __init__(self, weight: WeightFormat, act: ActFormat, **hparams):
        for key, value in self.check_settings(hparams, self.name).items():
            setattr(self, key, value)
        self.weight = weight
        self.act = act
        self.check_formats(weight, act)

    @classmethod
    def check_settings(cls, hparams: dict, path: str) -> dict:
        """The settings with defaults filled; one line naming `path.<setting>` for an unknown or bad one."""
        return Section(fields=cls.settings).check(path, dict(hparams))

    def check_formats(self, weight: WeightFormat, act: ActFormat) -> None:
        """Refuse settings that do not fit the bit formats (e.g. a static activation scale needs per-tensor)."""

    @classmethod
    def export_refusal(cls, settings: dict, final: bool) -> str | None:
        """Why a low-bit checkpoint cannot hold what this method (the last of the list when `final`) leaves with
        these settings; None: it can."""
        if final and not cls.on_grid:
            return "they are not on one plain grid"
        return None

    def check_model(self, model: nn.Module, adapter: ArchAdapter) -> None:
        """Refuse a model this method cannot handle (one line), right after it loads, before any other work."""

    def transform_model(self, model: nn.Module, adapter: ArchAdapter, device: torch.device) -> dict:
        """The whole-model transform of a method that `transforms_model`, in place; returns its report."""
        raise NotImplementedError

    def start(self, ctx: SubsetContext) -> None:
        """Reset the statistics for a new subset (methods that need calibration)."""

    def observe_batch(self, ctx: SubsetContext, x: torch.Tensor, block_kwargs: dict) -> None:
        """One calibration batch as the block saw it: the subset's input, [batch, seq, in_features] float32 on
        ctx.device, and the keyword arguments the block was called with (attention mask, position embeddings, ...;
        floating tensors in float32). What the engine calls; by default the tokens go to `observe`."""
        self.observe(ctx, x.reshape(-1, x.shape[-1]))

    def observe(self, ctx: SubsetContext, x: torch.Tensor) -> None:
        """One calibration batch of the subset's input, [tokens, in_features] float32 on ctx.device."""

    def apply(self, ctx: SubsetContext) -> dict[str, dict]:
        raise NotImplementedError


METHODS: dict[str, type[QuantMethod]] = {}


def register(cls: type[QuantMethod]) -> type[QuantMethod]:
    METHODS[cls.name] = cls
    return cls


def method_steps(methods) -> list[tuple[str, dict]]:
    """[(method name, its settings)] of a quantizer config's `methods`: a mapping name -> settings, in order (what
    conf/quantizer/*.yaml compose to), or the list of {name, settings...} that results.json files written before
    2026-12 hold."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(methods):
        methods = OmegaConf.to_container(methods, resolve=True)
    if isinstance(methods, dict):
        return [(name, dict(settings or {})) for name, settings in methods.items()]
    return [(step["name"], {k: v for k, v in step.items() if k != "name"}) for step in methods or []]


def check_order(methods) -> None:
    """Methods that transform the whole model come first and are followed by one that quantizes (the config
    schema checks this too, before anything loads). methods: classes or instances, in the config's order."""
    kinds = [m.transforms_model for m in methods]
    if any(kinds) and (kinds[-1] or kinds != sorted(kinds, reverse=True)):
        name = next(m.name for m in methods if m.transforms_model)
        raise QgenError(f"{name} transforms the whole model before any block is quantized: list it first and follow "
                        f"it with a method that quantizes (e.g. {name}+rtn, {name}+gptq)")


def block_methods(methods) -> list:
    """The methods that work block by block (all but the whole-model transforms)."""
    return [m for m in methods if not m.transforms_model]


def build(name: str, weight: WeightFormat, act: ActFormat, hparams: dict) -> QuantMethod:
    if name not in METHODS:
        raise QgenError(f"unknown quantization method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](weight, act, **hparams)
