"""On-disk cache of parsed waveforms: one checksummed raw float32 file per recording, memory-mapped.

A second run over the same files skips parsing entirely; any entry that does not verify is
treated as missing, deleted and rebuilt, never used. The array file is raw little-endian float32
samples with shape and checksum in a JSON sidecar, mapped with ``np.memmap``: nothing parses a
header with ``ast`` (``np.load`` does, and CPython 3.11's ``ast`` raises ``SystemError`` when
threads parse at once), so parallel loads are safe by construction, not by a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

#: Bump when the layout of an entry or the meaning of a cached array changes; old entries then miss.
CACHE_FORMAT_VERSION = 2

#: How much of the source file is hashed at its start, middle and end (256 KiB each: hashing
#: 3 MiB instead cost ~7 % of a cold load of the CWRU files, for no realistic gain).
HASH_CHUNK = 1 << 18

_SUBDIR = "waveforms"
_TMP_PREFIX = ".tmp-"


def default_cache_dir() -> Path:
    """Return the cache folder used when none is configured.

    ``$DAMAGE_LIGHTNING_CACHE`` when set (and not empty), otherwise ``~/.cache/damage_lightning``.
    """
    env = os.environ.get("DAMAGE_LIGHTNING_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/damage_lightning").expanduser()


def content_hash(path: Path, chunk: int = HASH_CHUNK) -> str:
    """SHA-256 of the first, middle and last ``chunk`` bytes (256 KiB) of a file, or all of it.

    Reading three slices instead of the whole file keeps a cache look-up cheap for multi-GB
    recordings. Together with size and ``mtime_ns`` (both also in the key) this catches every
    realistic edit; an edit that keeps size and mtime and only touches unhashed bytes is not
    detected, a trade-off taken for speed.

    Args:
        path: the file to hash.
        chunk: bytes read at each of the three places.
    """
    # SHA-256 runs at ~2 GB/s with CPU support, several times blake2b and md5 here.
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size <= 3 * chunk:
            h.update(fh.read())
        else:
            for offset in (0, (size - chunk) // 2, size - chunk):
                fh.seek(offset)
                h.update(fh.read(chunk))
    return h.hexdigest()


def _map(path: Path, info: dict[str, Any]) -> np.ndarray:
    """Memory-map an entry's samples; any mismatch with the sidecar raises ``ValueError``."""
    shape = tuple(int(n) for n in info["shape"])
    if len(shape) != 2 or min(shape) < 1 or info["dtype"] != "float32":
        raise ValueError("sidecar shape or dtype")
    if path.stat().st_size != shape[0] * shape[1] * 4:
        raise ValueError("entry size does not match its sidecar")
    return np.memmap(path, dtype="<f4", mode="r", shape=shape, order="C")


def _crc32(data: np.ndarray) -> int:
    # The shape is part of the checksum: raw samples alone cannot tell (2, 50) from (1, 100).
    # zlib.crc32 releases the GIL on large buffers, so verifying in worker threads overlaps.
    seed = zlib.crc32(repr(tuple(int(n) for n in data.shape)).encode("ascii"))
    return zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B"), seed) & 0xFFFFFFFF


class WaveformCache:
    """Parsed waveforms on disk, keyed by the source file and the settings that shaped the array.

    Each entry is ``waveforms/<slot>/<version>.f32`` (the float32 ``(channels, samples)`` array
    as raw little-endian bytes, C order) plus ``<version>.json`` beside it (shape, dtype, CRC32 of
    the array bytes, and the caller's meta such as channel names and sample rate). ``slot``
    hashes the absolute path and the settings, ``version`` hashes size, ``mtime_ns`` and
    :func:`content_hash` of the file; an edited file therefore gets a new entry and the stale one
    in its slot folder is removed (a folder per slot keeps that cheap with thousands of files).

    Entries are written to a temporary file and renamed into place, so readers never see half an
    entry. They are not fsynced: every read verifies shape, dtype and CRC32, and a damaged entry
    is simply rebuilt, which is cheaper than syncing on every write.

    Args:
        cache_dir: root folder of the cache; entries go into its ``waveforms/`` subfolder.
    """

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir).expanduser()
        self.dir = self.root / _SUBDIR
        # A miss is normally followed by a put of the same file: the put reuses the content hash
        # of the miss (once, and only while size and mtime are unchanged) instead of rereading.
        self._pending: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def key(self, path: Path, settings: dict) -> str:
        """Return the entry name for ``path`` parsed with ``settings``.

        Args:
            path: the source CSV file.
            settings: everything that changes the parsed array (selected channels, target sample
                rate, parser version, ...); must be JSON serialisable.
        """
        return self._key(path, settings)[0]

    def _key(
        self, path: Path, settings: dict, reuse: bool = False
    ) -> tuple[str, tuple[str, int, int], str]:
        path = Path(path).resolve()
        st = path.stat()
        slot_src = json.dumps(
            {"path": str(path), "settings": settings, "format": CACHE_FORMAT_VERSION},
            sort_keys=True,
            default=str,
        )
        slot = hashlib.blake2b(slot_src.encode("utf-8"), digest_size=10).hexdigest()
        stamp = (str(path), st.st_size, st.st_mtime_ns)
        digest = None
        if reuse:
            with self._lock:
                digest = self._pending.pop(stamp, None)
        if digest is None:
            digest = content_hash(path)
        version_src = f"{st.st_size}:{st.st_mtime_ns}:{digest}"
        version = hashlib.blake2b(version_src.encode("utf-8"), digest_size=10).hexdigest()
        return f"{slot}-{version}", stamp, digest

    def entry_files(self, key: str) -> tuple[Path, Path]:
        """Return the ``(.f32, .json)`` paths of the entry named ``key`` (see :meth:`key`).

        Args:
            key: an entry name from :meth:`key`.
        """
        slot, version = key.split("-", 1)
        return self.dir / slot / f"{version}.f32", self.dir / slot / f"{version}.json"

    def _drop(self, key: str) -> None:
        for p in self.entry_files(key):
            with contextlib.suppress(OSError):
                p.unlink()

    def get(self, path: Path, settings: dict) -> tuple[np.ndarray, dict] | None:
        """Return the cached ``(array, meta)`` for ``path`` and ``settings``, or ``None``.

        The array is a read-only memory map. A missing, truncated, garbled or otherwise
        inconsistent entry returns ``None`` and is deleted so that the caller rebuilds it.

        Args:
            path: the source CSV file.
            settings: as for :meth:`key`.
        """
        try:
            key, stamp, digest = self._key(path, settings)
        except OSError:
            return None
        samples, side = self.entry_files(key)
        if not samples.exists() and not side.exists():
            with self._lock:
                if len(self._pending) > 1024:
                    self._pending.clear()
                self._pending[stamp] = digest
            return None
        try:
            info = json.loads(side.read_text(encoding="utf-8"))
            if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT_VERSION:
                raise ValueError("sidecar format")
            arr = _map(samples, info)
            if _crc32(arr) != int(info["crc32"]):
                raise ValueError("entry does not match its sidecar")
            meta = info["meta"]
            if not isinstance(meta, dict):
                raise ValueError("sidecar meta")
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            self._drop(key)
            return None
        return arr, meta

    def put(self, path: Path, settings: dict, data: np.ndarray, meta: dict) -> np.ndarray:
        """Store ``data`` (float32, 2-D) with ``meta`` and return it memory-mapped from the cache.

        Args:
            path: the source CSV file.
            settings: as for :meth:`key`.
            data: the parsed waveform, ``(channels, samples)``.
            meta: JSON-serialisable facts to return with the array on a hit.

        Raises:
            OSError: the cache folder cannot be written.
        """
        data = np.ascontiguousarray(data, dtype=np.float32)
        if data.ndim != 2:
            raise ValueError(f"cache entries are 2-D (channels, samples), got shape {data.shape}")
        key = self._key(path, settings, reuse=True)[0]
        samples, side = self.entry_files(key)
        samples.parent.mkdir(parents=True, exist_ok=True)
        for stale in samples.parent.iterdir():
            # An earlier version of the same file with the same settings can never hit again.
            if stale.stem != samples.stem and not stale.name.startswith(_TMP_PREFIX):
                with contextlib.suppress(OSError):
                    stale.unlink()
        info: dict[str, Any] = {
            "format": CACHE_FORMAT_VERSION,
            "source": str(Path(path).resolve()),
            "shape": list(data.shape),
            "dtype": str(data.dtype),
            "crc32": _crc32(data),
            "meta": meta,
        }
        self._write_atomic(
            samples, lambda fh: fh.write(memoryview(data.astype("<f4", copy=False)).cast("B"))
        )
        text = json.dumps(info, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._write_atomic(side, lambda fh: fh.write(text))
        return _map(samples, info)

    def _write_atomic(self, target: Path, write: Any) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + target.name + ".", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
