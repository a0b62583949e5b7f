"""Every experiment config composes into a job config (against stand-ins for suites and quantizers that other
branches add), with its own output dir and the scenario's suite."""

import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _overrides(path: Path) -> list[tuple[str, str]]:
    out = []
    for entry in yaml.safe_load(path.read_text()).get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                if key.startswith("override /"):
                    out.append((key.removeprefix("override /"), value))
    return out


@pytest.fixture(scope="module")
def conf(tmp_path_factory):
    """conf/ plus a stand-in for every referenced option that has not landed on this branch yet."""
    from qgen import conf_store

    conf_store.register()  # the method and engine settings the configs compose from
    root = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(CONF, root)
    for name in EXPERIMENTS:
        for group, option in _overrides(CONF / "experiment" / f"{name}.yaml"):
            target = root / group / f"{option}.yaml"
            if not target.exists():
                stand_in = {"eval_suite": "smoke.yaml", "quantizer": "rtn.yaml"}.get(group)
                assert stand_in, f"{name}: {group}={option} has no stand-in"
                data = yaml.safe_load((root / group / stand_in).read_text())
                data["name"] = option
                target.write_text(yaml.safe_dump(data))
    return root


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(conf, name):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    for group, option in _overrides(CONF / "experiment" / f"{name}.yaml"):
        assert cfg[group].name == option
    if name.endswith("_baichuan2"):
        assert cfg.model.name == "baichuan2-7b"
    elif "_hub" in name:
        assert cfg.model.name == "llama-2-7b" and cfg.eval_suite.limit is None
    else:
        assert cfg.model.name == "smollm2-135m"
    assert cfg.calib.name == cfg.calib.dataset  # rows of the S2/S3 matrices are named after the dataset
    assert str(cfg.paths.output_dir).endswith(f"experiments/{name}" if not name.startswith("ablation")
                                              else "experiments/ablation")
    if name.startswith("ablation"):
        knob = name.removeprefix("ablation_")
        values = [int(v) for v in str(cfg.hydra.sweeper.params[f"calib.{knob}"]).split(",")]
        assert values[0] == (1 if knob == "n_samples" else 128) and values[-1] in (512, 2048)
