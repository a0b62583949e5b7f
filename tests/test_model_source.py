"""qgen.models.source: the kind of a model config, and identities unchanged by moving them there (they key every
cache: a changed identity would silently miss every cached calibration, quantization and evaluation)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qgen.models.source import HubModel, LocalFolder, OfflineAsset, RandomInit, model_source

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def test_each_config_names_one_kind(tmp_path):
    assert isinstance(model_source(OmegaConf.load(CONF / "tiny-llama.yaml")), RandomInit)
    assert isinstance(model_source(OmegaConf.load(CONF / "smollm2-135m.yaml")), OfflineAsset)
    assert isinstance(model_source(OmegaConf.load(CONF / "llama-2-7b.yaml")), HubModel)
    assert isinstance(model_source({"pretrained": str(tmp_path)}), LocalFolder)


def test_identities_are_the_ones_the_caches_were_keyed_by(tmp_path):
    tiny = OmegaConf.load(CONF / "tiny-llama.yaml")
    assert model_source(tiny).identity({"source": "random", "seed": 7}, seed=7) == {
        "dtype": "float32", "source": "random", "random_init": OmegaConf.to_container(tiny.random_init), "seed": 7}
    hub = OmegaConf.create({"pretrained": "org/name", "revision": "abc", "dtype": "bfloat16"})
    assert model_source(hub).identity({}, seed=1) == {"dtype": "bfloat16", "source": "hub", "pretrained": "org/name",
                                                      "revision": "abc"}
    (tmp_path / "config.json").write_text("{}")
    local = OmegaConf.create({"pretrained": str(tmp_path), "dtype": "float32"})
    ident = model_source(local).identity({"path": str(tmp_path)}, seed=1)
    assert ident["source"] == "local" and ident["path"] == str(tmp_path.resolve())
    assert list(ident["files"]) == ["config.json"] and ident["files"]["config.json"][0] == 2


def test_hub_ids_and_folders_are_checked_in_one_line(tmp_path):
    from qgen.errors import QgenError

    with pytest.raises(QgenError, match="is neither a folder nor a hub id"):
        model_source({"pretrained": "not a hub id!"}).check(quantizes=False)
    with pytest.raises(QgenError, match="has no config.json"):
        model_source({"pretrained": str(tmp_path)}).check(quantizes=False)
