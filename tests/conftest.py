"""Shared fixtures: the real QGEN_HOME (prepared by `make assets`), throwaway homes for tests that write, an
isolated cache, and a helper that runs `python -m qgen.main` the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qgen.home import qgen_home

ROOT = REPO = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
REAL_HOME = qgen_home()  # before any test points QGEN_HOME at a temporary folder


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_dir(tmp_path_factory):
    """Tests never read or fill the user's cache (QGEN_HOME/cache); tests that need a fresh one set their own."""
    os.environ["QGEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("qgen-cache"))
    yield


def run_qgen(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m qgen.main ...` the way a user does; returns the completed process."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "qgen.main", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


def write_user_dataset(tmp_path: Path, name: str, rows: list[dict], **entry) -> Path:
    """A user's own JSONL dataset: the rows as tmp_path/<name>.jsonl and its registry entry (a multiple-choice
    task with a seeded 30 % calibration split unless `entry` says otherwise) in tmp_path/registry, returned for
    QGEN_DATASETS_DIR."""
    import json

    import yaml

    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    regdir = tmp_path / "registry"
    regdir.mkdir(exist_ok=True)
    spec = {"name": name, "title": f"{name} (a user's file)", "task_type": "multiple_choice", "language": "en",
            "scenarios": ["mine"], "source": {"path": str(data), "format": "jsonl"},
            "split": {"method": "seeded_fraction", "calib_fraction": 0.3, "seed": 1}, **entry}
    (regdir / f"{name}.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    return regdir


def asset_ready() -> bool:
    from qgen.assets import folder_is_intact, model_asset_dir

    return folder_is_intact(model_asset_dir("smollm2-135m-instruct"))


@pytest.fixture
def needs_assets():
    if not asset_ready():
        pytest.skip("offline assets not prepared: run `make assets`")


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    """An empty QGEN_HOME; the registry is re-read so that user registry folders set by a test take effect."""
    from qgen.data import registry

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("QGEN_HOME", str(home))
    registry.all_datasets.cache_clear()
    registry.families.cache_clear()
    yield home
    registry.all_datasets.cache_clear()
    registry.families.cache_clear()


def real_archive(filename: str) -> Path:
    """A verified archive in the real QGEN_HOME (skips when `make assets` has not run)."""
    path = REAL_HOME / "assets" / "archives" / filename
    if not path.is_file():
        pytest.skip(f"{filename} not fetched; run `make assets`")
    return path
