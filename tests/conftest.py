"""Shared fixtures: the real QGEN_HOME (prepared by `make assets`) and throwaway homes for tests that write."""

from __future__ import annotations

from pathlib import Path

import pytest

from qgen.home import qgen_home

REPO = Path(__file__).resolve().parents[1]
REAL_HOME = qgen_home()  # before any test points QGEN_HOME at a temporary folder


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
