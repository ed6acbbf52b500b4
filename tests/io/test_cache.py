"""Tests for the on-disk waveform cache: hits, misses after edits, and corrupt entries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from damage_lightning.io.cache import WaveformCache, default_cache_dir

SETTINGS = {"parser": 1, "channels": None, "sample_rate": 100.0}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "rec.csv"
    path.parent.mkdir()
    path.write_text("a,b\n" + "".join(f"{i},{-i}\n" for i in range(50)))
    return path


@pytest.fixture
def array() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 50)).astype(np.float32)


def _entry(cache: WaveformCache, source: Path) -> tuple[Path, Path]:
    return cache.entry_files(cache.key(source, SETTINGS))


def test_put_then_get_returns_memmap_and_meta(tmp_path, source, array):
    cache = WaveformCache(tmp_path / "cache")
    assert cache.get(source, SETTINGS) is None
    meta = {"channels": ["a", "b"], "sample_rate": 100.0, "warnings": []}
    stored = cache.put(source, SETTINGS, array, meta)
    assert isinstance(stored, np.memmap)
    np.testing.assert_array_equal(stored, array)

    hit = cache.get(source, SETTINGS)
    assert hit is not None
    data, got_meta = hit
    assert isinstance(data, np.memmap) and not data.flags.writeable
    assert data.dtype == np.float32 and data.shape == (2, 50) and data.flags.c_contiguous
    np.testing.assert_array_equal(data, array)
    assert got_meta == meta
    side = json.loads(_entry(cache, source)[1].read_text())
    assert side["shape"] == [2, 50] and side["dtype"] == "float32" and "crc32" in side


def test_key_depends_on_settings_path_and_content(tmp_path, source):
    cache = WaveformCache(tmp_path / "cache")
    k = cache.key(source, SETTINGS)
    assert k == cache.key(source, dict(SETTINGS))
    assert k != cache.key(source, {**SETTINGS, "sample_rate": 50.0})
    assert k != cache.key(source, {**SETTINGS, "channels": ["b", "a"]})
    other = source.with_name("other.csv")
    other.write_bytes(source.read_bytes())
    assert k != cache.key(other, SETTINGS)

    # Same size and the same mtime restored: only the content hash can notice this edit.
    st = source.stat()
    raw = bytearray(source.read_bytes())
    raw[5] = ord("7") if raw[5] != ord("7") else ord("8")
    source.write_bytes(bytes(raw))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source.stat().st_size == st.st_size
    assert cache.key(source, SETTINGS) != k


def test_edit_of_source_misses_and_drops_stale_entry(tmp_path, source, array):
    cache = WaveformCache(tmp_path / "cache")
    cache.put(source, SETTINGS, array, {"channels": ["a", "b"]})
    old_npy, _ = _entry(cache, source)
    source.write_text("a,b\n1,2\n3,4\n")
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    assert cache.get(source, SETTINGS) is None
    cache.put(source, SETTINGS, array[:, :2], {"channels": ["a", "b"]})
    assert not old_npy.exists(), "the entry of the old file version must be removed"
    assert len(list(cache.dir.rglob("*.f32"))) == 1


def _truncate(npy: Path, side: Path) -> None:
    npy.write_bytes(npy.read_bytes()[:-37])


def _flip_data_byte(npy: Path, side: Path) -> None:
    raw = bytearray(npy.read_bytes())
    raw[-5] ^= 0xFF  # inside the array data
    npy.write_bytes(bytes(raw))


def _garbage_sidecar(npy: Path, side: Path) -> None:
    side.write_bytes(b"\x00\xffnot json{")


def _wrong_shape_sidecar(npy: Path, side: Path) -> None:
    info = json.loads(side.read_text())
    info["shape"] = [1, 100]
    side.write_text(json.dumps(info))


def _missing_sidecar(npy: Path, side: Path) -> None:
    side.unlink()


def _garbage_npy(npy: Path, side: Path) -> None:
    npy.write_bytes(b"this is not a numpy file at all" * 10)


def _sidecar_list(npy: Path, side: Path) -> None:
    side.write_text("[1, 2, 3]")


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _flip_data_byte,
        _garbage_sidecar,
        _wrong_shape_sidecar,
        _missing_sidecar,
        _garbage_npy,
        _sidecar_list,
    ],
)
def test_corrupt_entry_is_a_miss_and_is_deleted(tmp_path, source, array, damage):
    cache = WaveformCache(tmp_path / "cache")
    cache.put(source, SETTINGS, array, {"channels": ["a", "b"]})
    npy, side = _entry(cache, source)
    damage(npy, side)
    assert cache.get(source, SETTINGS) is None
    assert not npy.exists() and not side.exists()
    # Rebuilt entries work again.
    cache.put(source, SETTINGS, array, {"channels": ["a", "b"]})
    hit = cache.get(source, SETTINGS)
    assert hit is not None
    np.testing.assert_array_equal(hit[0], array)


def test_put_leaves_no_temporary_files(tmp_path, source, array):
    cache = WaveformCache(tmp_path / "cache")
    cache.put(source, SETTINGS, array, {})
    names = sorted(p.name for p in cache.dir.rglob("*") if p.is_file())
    assert len(names) == 2 and all(not n.startswith(".tmp-") for n in names)


def test_put_rejects_non_2d(tmp_path, source):
    with pytest.raises(ValueError, match="2-D"):
        WaveformCache(tmp_path / "cache").put(source, SETTINGS, np.zeros(5, np.float32), {})


def test_put_into_unwritable_location_raises_oserror(tmp_path, source, array):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(OSError):
        WaveformCache(blocker).put(source, SETTINGS, array, {})


def test_get_for_missing_source_is_a_miss(tmp_path):
    assert WaveformCache(tmp_path / "c").get(tmp_path / "nope.csv", SETTINGS) is None


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DAMAGE_LIGHTNING_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.setenv("DAMAGE_LIGHTNING_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "damage_lightning"
    monkeypatch.delenv("DAMAGE_LIGHTNING_CACHE")
    assert default_cache_dir() == tmp_path / ".cache" / "damage_lightning"


def test_entries_are_read_without_parsing_python_literals(tmp_path, source, array, monkeypatch):
    # np.load parses .npy headers with ast, which CPython 3.11 breaks under threads; the cache
    # must not depend on it at all.
    import ast

    def no_ast(*args, **kwargs):
        raise AssertionError("the cache parsed a Python literal")

    monkeypatch.setattr(ast, "literal_eval", no_ast)
    monkeypatch.setattr(ast, "parse", no_ast)
    cache = WaveformCache(tmp_path / "cache")
    np.testing.assert_array_equal(cache.put(source, SETTINGS, array, {}), array)
    np.testing.assert_array_equal(cache.get(source, SETTINGS)[0], array)


def test_cold_cache_parallel_loads_never_fail(tmp_path):
    # A stress test of the first-run path: many files, a cold cache, parallel loads, 100 times.
    from concurrent.futures import ThreadPoolExecutor

    from damage_lightning.io.dataset import load_dataset

    root = tmp_path / "data"
    rng = np.random.default_rng(3)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(24):
            values = rng.standard_normal((64, 2)).astype(np.float32)
            text = "x,y\n" + "".join(f"{u:.6f},{v:.6f}\n" for u, v in values)
            (root / label / f"r{i}.csv").write_text(text)
    reference = load_dataset(root, sample_rate=100.0)

    def load(k: int) -> int:
        ds = load_dataset(root, sample_rate=100.0, cache_dir=tmp_path / f"cache{k % 50}")
        for got, want in zip(ds.waveforms, reference.waveforms, strict=True):
            np.testing.assert_array_equal(got, want)
        return len(ds.waveforms)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(load, range(100))) == [48] * 100
