"""Save and restore a fake-quantized model's decoder blocks (weights, folded scales, static activation scales),
so that a cached quantization is reused instead of recomputed."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from qgen.errors import QgenError
from qgen.models.arch import ArchAdapter
from qgen.quant.activations import ActFormat
from qgen.quant.engine import attach_block_activation_quantizers

BLOCKS_FILE = "blocks.safetensors"
ACT_SCALES_FILE = "act_scales.safetensors"


def save_blocks(model: nn.Module, adapter: ArchAdapter, folder: Path) -> None:
    prefix = adapter.blocks + "."
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith(prefix)}
    save_file(state, str(folder / BLOCKS_FILE))
    scales = {k: v.detach().contiguous().cpu() for k, v in model.named_buffers()
              if k.startswith(prefix) and k.endswith(".act_scale")}
    if scales:
        save_file(scales, str(folder / ACT_SCALES_FILE))


def restore_blocks(model: nn.Module, adapter: ArchAdapter, act: ActFormat, folder: Path) -> None:
    state = load_file(str(folder / BLOCKS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    prefix = adapter.blocks + "."
    if unexpected or any(k.startswith(prefix) for k in missing):
        raise QgenError(f"cached quantized checkpoint {folder} does not fit this model")
    scales_path = folder / ACT_SCALES_FILE
    scales = load_file(str(scales_path)) if scales_path.exists() else {}
    if act.enabled:
        for i, block in enumerate(adapter.block_list(model)):
            own = {k[len(f"{prefix}{i}."):-len(".act_scale")]: v for k, v in scales.items()
                   if k.startswith(f"{prefix}{i}.")}
            attach_block_activation_quantizers(block, adapter, act, own)


