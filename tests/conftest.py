import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


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


def asset_ready() -> bool:
    from qgen.assets import folder_is_intact, model_asset_dir

    return folder_is_intact(model_asset_dir("smollm2-135m-instruct"))


@pytest.fixture
def needs_assets():
    if not asset_ready():
        pytest.skip("offline assets not prepared: run `make assets`")
