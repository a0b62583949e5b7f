"""Save and restore a fake-quantized model's decoder blocks (weights, folded scales, static activation scales,
the grid each weight was put on, and the rotations applied to linears' inputs at run time), so that a cached
quantization is reused — and exported — instead of recomputed. After a whole-model transform (rotate) the
parameters outside the blocks (embedding, final norm, head) are saved too, untied where the model ties them."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from qgen.errors import QgenError
from qgen.models.arch import ArchAdapter
from qgen.quant.activations import ActFormat
from qgen.quant.engine import attach_block_activation_quantizers
from qgen.quant.grid import QuantParams, WeightFormat, attach_grid, grid_of
from qgen.quant.rotation import Rotation, attach_online, online_rotation_of

BLOCKS_FILE = "blocks.safetensors"
ACT_SCALES_FILE = "act_scales.safetensors"
GRIDS_FILE = "grids.safetensors"
OUTSIDE_FILE = "outside.safetensors"
ROTATIONS_FILE = "rotations.safetensors"


def save_blocks(model: nn.Module, adapter: ArchAdapter, folder: Path, outside: bool = False) -> None:
    """outside: also the parameters outside the blocks (changed by a whole-model transform)."""
    prefix = adapter.blocks + "."
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith(prefix)}
    save_file(state, str(folder / BLOCKS_FILE))
    if outside:
        rest = {k: v.detach().contiguous().cpu() for k, v in model.named_parameters(remove_duplicate=False)
                if not k.startswith(prefix)}
        save_file(rest, str(folder / OUTSIDE_FILE))
    tensors, rotations, linears = {}, {}, {}  # each rotation once (the layers share one), and who uses which
    for name, module in model.named_modules():
        rotation = online_rotation_of(module) if name.startswith(prefix) else None
        if rotation is not None:
            key = rotations.setdefault(id(rotation), {"key": f"r{len(rotations)}", "pow2": rotation.pow2,
                                                      "kind": rotation.kind})["key"]
            tensors[f"{key}.signs"], tensors[f"{key}.core"] = rotation.signs, rotation.core.contiguous()
            linears[name] = key
    if linears:
        meta = {"rotations": {r.pop("key"): r for r in rotations.values()}, "linears": linears}
        save_file(tensors, str(folder / ROTATIONS_FILE), metadata={"rotations": json.dumps(meta)})
    scales = {k: v.detach().contiguous().cpu() for k, v in model.named_buffers()
              if k.startswith(prefix) and k.endswith(".act_scale")}
    if scales:
        save_file(scales, str(folder / ACT_SCALES_FILE))
    grids, formats = {}, {}
    for name, module in model.named_modules():
        params = grid_of(module) if name.startswith(prefix) else None
        if params is None:
            continue
        grids[f"{name}.scale"], grids[f"{name}.zero"] = params.scale.contiguous(), params.zero.contiguous()
        if params.g_idx is not None:
            grids[f"{name}.g_idx"] = params.g_idx.contiguous()
        fmt = params.fmt
        formats[name] = {"bits": fmt.bits, "group_size": fmt.group_size, "symmetric": fmt.symmetric,
                         "in_features": params.in_features}
    if grids:
        save_file(grids, str(folder / GRIDS_FILE), metadata={"formats": json.dumps(formats)})


def restore_blocks(model: nn.Module, adapter: ArchAdapter, act: ActFormat, folder: Path) -> None:
    from qgen.models.load import untie

    state = load_file(str(folder / BLOCKS_FILE))
    if (folder / OUTSIDE_FILE).exists():
        outside = load_file(str(folder / OUTSIDE_FILE))
        params = dict(model.named_parameters(remove_duplicate=False))
        if not set(outside) <= set(params):
            raise QgenError(f"cached quantized checkpoint {folder} does not fit this model")
        untie(model, sorted(outside))  # tied in the model as loaded, two tensors in the checkpoint
        state.update(outside)
    missing, unexpected = model.load_state_dict(state, strict=False)
    prefix = adapter.blocks + "."
    if unexpected or any(k.startswith(prefix) for k in missing):
        raise QgenError(f"cached quantized checkpoint {folder} does not fit this model")
    if (folder / ROTATIONS_FILE).exists():
        with safe_open(str(folder / ROTATIONS_FILE), "pt") as f:
            meta = json.loads(f.metadata()["rotations"])
            rotations = {key: Rotation(f.get_tensor(f"{key}.signs"), info["pow2"], f.get_tensor(f"{key}.core"),
                                       info["kind"]) for key, info in meta["rotations"].items()}
            for name, key in meta["linears"].items():
                attach_online(model.get_submodule(name), rotations[key])
    scales_path = folder / ACT_SCALES_FILE
    scales = load_file(str(scales_path)) if scales_path.exists() else {}
    if act.enabled:
        for i, block in enumerate(adapter.block_list(model)):
            own = {k[len(f"{prefix}{i}."):-len(".act_scale")]: v for k, v in scales.items()
                   if k.startswith(f"{prefix}{i}.")}
            attach_block_activation_quantizers(block, adapter, act, own)
    grids_path = folder / GRIDS_FILE
    if grids_path.exists():
        with safe_open(str(grids_path), "pt") as f:
            formats = json.loads(f.metadata()["formats"])
            keys = set(f.keys())
            for name, fmt in formats.items():
                g_idx = f.get_tensor(f"{name}.g_idx") if f"{name}.g_idx" in keys else None
                params = QuantParams(f.get_tensor(f"{name}.scale"), f.get_tensor(f"{name}.zero"),
                                     WeightFormat(fmt["bits"], fmt["group_size"], fmt["symmetric"]),
                                     fmt["in_features"], g_idx)
                attach_grid(model.get_submodule(name), params)
