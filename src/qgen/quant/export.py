"""Save a weight-only quantized model as a real low-bit checkpoint: compressed-tensors "pack-quantized".

The format (read by transformers' compressed-tensors integration and by vLLM) stores each quantized linear as
`weight_packed` (signed integers packed densely into int32), `weight_scale` [out, groups], `weight_zero_point`
(asymmetric only, packed) and `weight_shape`; config.json carries a `quantization_config` describing the scheme.
Our grid keeps unsigned integers q ∈ [0, 2^b - 1] with zero z; the format's signed ones are q - 2^(b-1) with zero
point z - 2^(b-1), which dequantize to the same scale·(q - z).

Only what the format can hold is written: every quantized linear on a grid recorded by RTN, GPTQ or AWQ, with one
bit width, group size and symmetry for all; groups of consecutive columns that divide the width (no short last
group, no act-order permutation without static groups). Anything else is refused before a file is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from qgen.errors import QgenError
from qgen.quant.grid import QuantParams, grid_of

EXPORT_FORMATS = ("compressed-tensors",)


def _quantized_linears(model: nn.Module) -> dict[str, tuple[nn.Linear, QuantParams]]:
    return {name: (m, grid_of(m)) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and grid_of(m) is not None}


def check_exportable(model: nn.Module) -> tuple[dict, QuantParams]:
    """The quantized linears and their common format, or a QgenError saying why the format cannot hold them."""
    layers = _quantized_linears(model)
    if not layers:
        raise QgenError("nothing to export: no linear carries a quantization grid (run RTN, GPTQ or AWQ first)")
    fmts = {p.fmt for _, p in layers.values()}
    if len(fmts) > 1:
        raise QgenError(f"export needs one weight format for all layers; found {sorted(map(str, fmts))}")
    fmt = next(iter(fmts))
    for name, (linear, params) in layers.items():
        check_width(name, linear.in_features, fmt.group_size)
        if params.g_idx is not None:
            raise QgenError(f"compressed-tensors export of {name} would need its act-order column permutation; "
                            f"quantize with gptq desc_act=true static_groups=true, or desc_act=false")
        if activation_quantized(linear):
            raise QgenError(f"{name} has quantized activations (W8A8); this export writes weight-only checkpoints")
    return layers, next(iter(layers.values()))[1]


def check_width(name: str, width: int, group_size: int) -> None:
    if 0 < group_size < width and width % group_size:
        raise QgenError(f"compressed-tensors cannot hold {name}: its width {width} is not a multiple of group "
                        f"size {group_size} (short last group); use a group size dividing every width "
                        f"(e.g. 64 for SmolLM2) or per-channel (-1)")


def check_export_config(cfg) -> None:
    """Refuse, before anything loads, a job whose quantized model the export format cannot hold."""
    from qgen.quant.methods import METHODS, method_steps

    fmt = cfg.get("export")
    if fmt is None:
        return
    if fmt not in EXPORT_FORMATS:
        raise QgenError(f"export={fmt!r} is not allowed: use null or one of {', '.join(EXPORT_FORMATS)}")
    steps = method_steps(cfg.quantizer.methods)
    if not steps:
        raise QgenError(f"export={fmt} needs quantized weights, but quantizer={cfg.quantizer.name} quantizes nothing")
    if cfg.bits.act_bits < 16:
        raise QgenError(f"export={fmt} writes weight-only checkpoints, but bits={cfg.bits.name} also quantizes "
                        f"activations (act_bits {cfg.bits.act_bits}); use an a16 bits option")
    for i, (name, settings) in enumerate(steps):
        reason = METHODS[name].export_refusal(settings, final=i == len(steps) - 1) if name in METHODS else None
        if reason:
            exportable = ", ".join(sorted(n for n, m in METHODS.items() if m.on_grid))
            raise QgenError(f"export={fmt} cannot hold {name} weights: {reason} (weight-only {exportable} export)")


def check_export_widths(model: nn.Module, adapter, group_size: int) -> None:
    """Every linear the quantizer will touch must split into whole groups (checked before quantizing)."""
    for i, block in enumerate(adapter.block_list(model)):
        for path in adapter.linear_names():
            check_width(f"{adapter.blocks}.{i}.{path}", block.get_submodule(path).in_features, group_size)


def activation_quantized(linear: nn.Linear) -> bool:
    from qgen.quant.activations import is_attached

    return is_attached(linear)


def export_compressed_tensors(model: nn.Module, out_dir: str | Path, tokenizer=None) -> Path:
    """Write model (config, safetensors, tokenizer) to out_dir in compressed-tensors pack-quantized format."""
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
        from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
        from safetensors.torch import save_file
    except ImportError as exc:
        raise QgenError("export needs the compressed-tensors package: pip install 'qgen[export]'") from exc
    layers, first = check_exportable(model)
    fmt = first.fmt
    grouped = 0 < fmt.group_size < max(lin.in_features for lin, _ in layers.values())
    half = 2 ** (fmt.bits - 1)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for name, (linear, params) in layers.items():
        w = linear.weight.data.float().cpu()
        q = params.integers(w)
        if float((params.dequantize(q) - w).abs().max()) > 1e-3 * float(params.scale.min().clamp(min=1e-12)):
            raise QgenError(f"{name}: its weights do not lie on its recorded grid (changed after quantizing?)")
        del state[f"{name}.weight"]
        state[f"{name}.weight_packed"] = pack_to_int32((q - half).to(torch.int8), fmt.bits)
        state[f"{name}.weight_scale"] = params.scale.to(linear.weight.dtype).contiguous()
        state[f"{name}.weight_shape"] = torch.tensor(list(linear.weight.shape))
        if not fmt.symmetric:
            zp = (params.zero - half).round().to(torch.int8)
            state[f"{name}.weight_zero_point"] = pack_to_int32(zp, fmt.bits, packed_dim=0).contiguous()
    args = QuantizationArgs(num_bits=fmt.bits, type="int", symmetric=fmt.symmetric,
                            strategy="group" if grouped else "channel",
                            group_size=fmt.group_size if grouped else None)
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in layers]
    qconfig = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                                 format="pack-quantized", quantization_status="compressed", ignore=ignore)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    ModelCompressor(quantization_config=qconfig).update_config(str(out))
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / "qgen_export.json").write_text(json.dumps({"format": "compressed-tensors/pack-quantized",
                                                      "layers": len(layers), "bits": fmt.bits,
                                                      "group_size": fmt.group_size, "symmetric": fmt.symmetric}))
    return out
