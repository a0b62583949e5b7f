"""The content-addressed cache: atomic entries, damage detection, size cap, listing and clearing."""

import pytest

from qgen import cache
from qgen.cache import Cache, make_key


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QGEN_CACHE_DIR", str(tmp_path / "cache"))


def _write(payload: bytes):
    def write(folder):
        (folder / "data.bin").write_bytes(payload)
        return {"n": len(payload)}

    return write


def test_put_then_get_returns_the_entry():
    c = Cache("eval")
    key = make_key("eval", {"a": 1})
    assert c.get(key) is None
    c.put(key, _write(b"x" * 10))
    hit = c.get(key)
    assert hit.meta == {"n": 10} and (hit.folder / "data.bin").read_bytes() == b"x" * 10


def test_keys_depend_on_identity_and_kind():
    assert make_key("eval", {"a": 1}) == make_key("eval", {"a": 1})
    assert make_key("eval", {"a": 1}) != make_key("eval", {"a": 2})
    assert make_key("eval", {"a": 1}) != make_key("quantized", {"a": 1})


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove_entry"])
def test_damaged_entry_is_detected_dropped_and_reported(damage):
    c = Cache("quantized")
    key = make_key("quantized", {"m": 1})
    folder = c.put(key, _write(b"0123456789")).folder
    if damage == "truncate":
        (folder / "data.bin").write_bytes(b"01234")
    elif damage == "flip":
        (folder / "data.bin").write_bytes(b"0123456780")
    else:
        (folder / "entry.json").unlink()
    assert c.get(key) is None and c.damaged
    assert not folder.exists()
    c.put(key, _write(b"0123456789"))
    assert c.get(key) is not None and not c.damaged


def test_size_cap_evicts_least_recently_used(monkeypatch):
    c = Cache("calibration")
    keys = [make_key("calibration", {"i": i}) for i in range(3)]
    for k in keys:
        c.put(k, _write(b"y" * 1000))
    c.get(keys[0])  # most recently used now
    removed = cache.evict(max_bytes=2500)
    assert len(removed) == 1 and removed[0].endswith(keys[1])
    assert c.get(keys[0]) is not None and c.get(keys[2]) is not None
    assert cache.clear("calibration") == 2 and cache.entries() == []
