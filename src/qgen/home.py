"""Where qgen keeps data on disk: QGEN_HOME (default ~/.cache/qgen)."""

from __future__ import annotations

import os
from pathlib import Path


def qgen_home() -> Path:
    return Path(os.environ.get("QGEN_HOME") or Path.home() / ".cache" / "qgen").expanduser()


def assets_dir() -> Path:
    """Downloaded registry archives (verified by sha256)."""
    return qgen_home() / "assets"


def models_dir() -> Path:
    """Converted model checkpoints (normal Hugging Face folders)."""
    return qgen_home() / "models"


def data_dir() -> Path:
    """Datasets converted to the uniform local format: <name>/{calib,eval}.jsonl."""
    return qgen_home() / "data"


def cache_dir() -> Path:
    """Content-addressed caches (QGEN_CACHE_DIR overrides, e.g. to isolate a test or use a faster disk)."""
    override = os.environ.get("QGEN_CACHE_DIR")
    return Path(override).expanduser() if override else qgen_home() / "cache"
