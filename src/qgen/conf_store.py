"""Config nodes declared in code, stored in Hydra's ConfigStore before anything composes (`register()`), so that
each default is written once, where it belongs, and every one of them can be overridden on the command line:

- `method/<name>`: a quantization method's settings with their defaults, from its class (`QuantMethod.settings`).
  A quantizer is a list of methods by name — `conf/quantizer/gptq.yaml` is `defaults: [/method@methods.gptq: gptq]`
  — and `quantizer.methods.gptq.desc_act=true` overrides one setting.
- `engine/default`: the engine's settings (`EngineSettings`; null where the methods' preference decides).
- `calib_settings/default`: the calib fields the schema declares with a default (min_tokens, chat_template, the
  sampling settings of the `self` source); conf/calib/xsum.yaml, which every calib option extends, takes them from
  here, so `calib.self.temperature=0.7` overrides one.
- `calib/<dataset>`: every registered dataset as a calibration option (qgen/data/calib_configs.py).
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_done = False


def register() -> None:
    """Store the nodes (once per process; the entry point and anything that composes call this first)."""
    global _done
    if _done:
        return
    from hydra.core.config_store import ConfigStore

    from qgen.data import calib_configs
    from qgen.quant.engine import EngineSettings
    from qgen.quant.methods import METHODS
    from qgen.schema import CALIB

    store = ConfigStore.instance()
    for name, method in METHODS.items():
        store.store(group="method", name=name, provider="qgen",
                    node={key: spec.default for key, spec in method.settings.items()})
    store.store(group="engine", name="default", node=EngineSettings.config_defaults(), provider="qgen")
    store.store(group="calib_settings", name="default", node=CALIB.defaults(), provider="qgen")
    calib_configs.register()
    _done = True


def compose(overrides: list[str] | None = None, conf_dir: Path = CONF_DIR):
    """The job config a command line's overrides compose to (without Hydra's own node), for scripts and benchmarks
    that build jobs outside `python -m qgen.main`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides or []))
