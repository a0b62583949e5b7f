"""Is a refactor behaviour-preserving? The sha256 of tiny-llama's quantized state dict for every quantizer yaml,
composed and quantized by each given checkout's own code, side by side:

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python benchmarks/fingerprint_quantizers.py /tmp/before .

Each checkout runs in its own process (one thread, float32 block passes, W3 g64; SmoothQuant W8A8 g64), on this
machine, so equal hashes mean bit-identical weights. This is a tool rather than a unit test with recorded hashes:
GPTQ's and AWQ's float sums differ between CPU kernel paths (AVX2, AVX-512) and thread counts, which moves weights
on rounding boundaries (measured here: AWQ picks another α for one layer, GPTQ layer errors move by ~0.5 %), so
recorded hashes would only hold on the machine that recorded them. Checkouts from before the one-declaration
refactor (quantizer yamls listing {name, settings} steps, engine fields inside the quantizer) are read too.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path


def fingerprints(root: Path) -> dict[str, str]:
    """In this process: {quantizer: sha256 prefix} for the checkout at root (its src/ imported first)."""
    sys.path.insert(0, str(root / "src"))
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    try:
        from qgen import conf_store

        conf_store.register()  # method defaults from the classes (after the refactor)
    except ImportError:
        pass
    from qgen.models.arch import adapter_for
    from qgen.models.tiny import tiny_llama
    from qgen.quant.activations import ActFormat
    from qgen.quant.engine import EngineSettings, quantize_model
    from qgen.quant.grid import WeightFormat
    from qgen.quant.methods import build

    torch.set_num_threads(1)
    out = {}
    for q in sorted(p.stem for p in (root / "conf" / "quantizer").glob("*.yaml") if p.stem != "none"):
        GlobalHydra.instance().clear()
        bits = "w8a8" if q.startswith("smoothquant") else "w3a16"
        with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["model=tiny-llama", f"quantizer={q}", f"bits={bits}",
                                               "bits.group_size=64"])
        weight = WeightFormat(cfg.bits.weight_bits, cfg.bits.group_size, cfg.bits.symmetric)
        act = ActFormat(cfg.bits.act_bits, cfg.bits.act_granularity)
        steps = OmegaConf.to_container(cfg.quantizer.methods, resolve=True)
        if isinstance(steps, list):  # before: [{name, settings...}], engine fields in the quantizer
            methods = [build(s["name"], weight, act, {k: v for k, v in s.items() if k != "name"}) for s in steps]
            settings = EngineSettings.from_config(cfg.quantizer)
        else:
            methods = [build(name, weight, act, dict(s or {})) for name, s in steps.items()]
            settings = EngineSettings.from_config(cfg.engine, methods)
        if hasattr(settings, "dtype"):
            settings = EngineSettings(**{**settings.__dict__, "dtype": "float32"})
        model, _ = tiny_llama(dict(cfg.model.random_init), seed=0, dtype=torch.float32)
        ids = torch.randint(0, model.config.vocab_size, (8, 64), generator=torch.Generator().manual_seed(0))
        quantize_model(model.eval(), adapter_for("llama"), methods, act, ids, torch.device("cpu"), settings)
        h = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().contiguous().numpy().tobytes())
        out[q] = h.hexdigest()[:16]
    return out


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(fingerprints(Path(sys.argv[2]).resolve())))
        return
    roots = [Path(r).resolve() for r in sys.argv[1:]]
    if len(roots) < 1:
        sys.exit("usage: fingerprint_quantizers.py CHECKOUT [CHECKOUT ...]")
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    found = [json.loads(subprocess.run([sys.executable, __file__, "--child", str(r)], capture_output=True,
                                       text=True, check=True, env=env).stdout.splitlines()[-1]) for r in roots]
    names = sorted(set().union(*found))
    print("quantizer".ljust(18) + "".join(str(r)[-24:].ljust(26) for r in roots) + "same")
    for q in names:
        values = [f.get(q, "-") for f in found]
        print(q.ljust(18) + "".join(v.ljust(26) for v in values) + ("yes" if len(set(values)) == 1 else "NO"))


if __name__ == "__main__":
    main()
