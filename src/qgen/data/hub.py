"""Datasets without an offline source: is the Hugging Face hub reachable, fetch a dataset's files from its hub
repository into `<QGEN_HOME>/assets/hub/<repo>/` (laid out like the repository, so a local copy made by hand
reads the same way), and the one line that says what a dataset needs when neither is at hand.
"""

from __future__ import annotations

import os
from pathlib import Path

from qgen.data.readers import source_members
from qgen.data.registry import DatasetSpec
from qgen.errors import QgenError
from qgen.home import assets_dir


def needs_local_copy(spec: DatasetSpec) -> str:
    """The one line saying what a dataset without an offline source needs."""
    hub = spec.source.get("hub")
    where = f"Hugging Face hub access ({hub['repo']})" if hub else "no public download"
    files = ", ".join(m for items in source_members(spec.source).values() for m, _ in items[:2])
    return (f"dataset {spec.name!r} is not prepared and needs {where} or a local copy: run `qgen prepare "
            f"{spec.name} --from DIR` with DIR holding {spec.source.get('layout', 'the files')} ({files})")


def hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def download_from_hub(spec: DatasetSpec) -> Path:
    """Fetch the dataset's files from its hub repository into assets/hub/<repo>/ (same layout as the repo)."""
    hub = spec.source["hub"]
    folder = assets_dir() / "hub" / hub["repo"]
    try:
        from huggingface_hub import hf_hub_download

        for items in source_members(spec.source).values():
            for member, _ in items:
                hf_hub_download(hub["repo"], member, repo_type="dataset", revision=hub.get("revision"),
                                local_dir=folder)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; the user needs one line
        raise QgenError(f"{needs_local_copy(spec)} (hub download failed: {type(exc).__name__})") from None
    return folder
