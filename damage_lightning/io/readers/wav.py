"""Read ``.wav`` recordings with numpy alone: PCM 8/16/24/32-bit, IEEE float 32/64-bit.

The RIFF chunks are parsed here rather than with scipy or the stdlib ``wave`` module, because a
gateway may lack scipy and ``wave`` reads neither float samples nor WAVE_FORMAT_EXTENSIBLE files.
Integer samples are divided by their full scale (2**(bits-1)), giving [-1, 1); channels are
named ``ch1``, ``ch2``, ... as WAV files name none.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from damage_lightning.io.readers.base import (
    RawRecording,
    Reader,
    ReaderOptions,
    check_raw,
    fail,
    open_error,
    select_channels,
)

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# WAVE_FORMAT_EXTENSIBLE sub-formats are GUIDs: the format tag, then this fixed tail.
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
# Recorders that stream to disk write this size and never come back to fix it.
_UNKNOWN_SIZE = 0xFFFFFFFF
_BITS = {_PCM: (8, 16, 24, 32), _FLOAT: (32, 64)}
_TAG_NAMES = {0x0002: "ADPCM", 0x0006: "A-law", 0x0007: "µ-law", 0x0055: "MP3"}
_READABLE = "readable: PCM 8/16/24/32-bit and IEEE float 32/64-bit"


@dataclass(frozen=True)
class _Layout:
    encoding: int  # _PCM or _FLOAT
    channels: int
    sample_rate: int
    bits: int  # bits per sample as stored (the container size)
    data_offset: int
    frames: int


def _parse_fmt(body: bytes, display: str) -> tuple[int, int, int, int, int]:
    """``(encoding, channels, sample_rate, block_align, bits)`` from a ``fmt `` chunk."""
    if len(body) < 16:
        raise fail(display, "malformed 'fmt ' chunk (shorter than 16 bytes)", "header")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise fail(display, "malformed WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk", "header")
        guid = body[24:40]
        if guid[2:] != _GUID_TAIL:
            raise fail(display, f"unsupported WAV sub-format {guid.hex()}; {_READABLE}", "header")
        tag = struct.unpack("<H", guid[:2])[0]
    if tag not in _BITS:
        kind = _TAG_NAMES.get(tag, "compressed or unknown")
        raise fail(display, f"unsupported WAV encoding {kind} (tag {tag:#06x}); {_READABLE}")
    if bits not in _BITS[tag]:
        word = "PCM" if tag == _PCM else "float"
        raise fail(display, f"unsupported WAV encoding: {bits}-bit {word}; {_READABLE}")
    if channels == 0:
        raise fail(display, "the WAV header says 0 channels", "header")
    if rate == 0:
        raise fail(display, "the WAV header says a sample rate of 0 Hz", "header")
    if block_align != channels * bits // 8:
        raise fail(
            display,
            f"inconsistent WAV header: {block_align}-byte frames for {channels} channel(s) of "
            f"{bits} bits",
            "header",
        )
    return tag, channels, rate, block_align, bits


def _layout(fh: BinaryIO, display: str) -> _Layout:
    """Walk the RIFF chunks up to the samples."""
    head = fh.read(12)
    if not head:
        raise fail(display, "file is empty")
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:] != b"WAVE":
        raise fail(display, "not a WAV file (no RIFF/WAVE header)")
    if head[:4] != b"RIFF":
        variant = head[:4].decode("ascii")
        raise fail(display, f"unsupported WAV variant {variant} (little-endian RIFF is read)")
    file_size = os.fstat(fh.fileno()).st_size
    fmt: tuple[int, int, int, int, int] | None = None
    data: tuple[int, int] | None = None
    while data is None or fmt is None:
        chunk = fh.read(8)
        if len(chunk) < 8:
            break
        size = struct.unpack("<I", chunk[4:])[0]
        start = fh.tell()
        if chunk[:4] == b"fmt ":
            body = fh.read(size)
            if len(body) < size:
                raise fail(display, "truncated WAV file: it ends inside the 'fmt ' chunk", "header")
            fmt = _parse_fmt(body, display)
        elif chunk[:4] == b"data":
            data = (start, size)
        # Chunks are padded to an even size.
        fh.seek(start + size + (size & 1))
    if fmt is None:
        raise fail(display, "no 'fmt ' chunk: not a valid WAV file (truncated?)", "header")
    if data is None:
        raise fail(display, "no 'data' chunk: the file ends before the samples (truncated?)")
    encoding, channels, rate, block_align, bits = fmt
    offset, size = data
    available = max(0, file_size - offset)
    if size == _UNKNOWN_SIZE:
        size = available - available % block_align
    elif size > available:
        raise fail(
            display,
            f"truncated WAV file: the data chunk says {size} bytes but {available} follow",
            "data chunk",
        )
    if size % block_align:
        raise fail(
            display,
            f"the data chunk ({size} bytes) is not a whole number of {block_align}-byte frames",
            "data chunk",
        )
    return _Layout(encoding, channels, rate, bits, offset, size // block_align)


def _decode(buf: bytearray, layout: _Layout) -> np.ndarray:
    """Samples as ``(frames, channels)``, integers scaled to [-1, 1)."""
    bits = layout.bits
    if layout.encoding == _FLOAT:
        x = np.frombuffer(buf, dtype=f"<f{bits // 8}")
    elif bits == 8:
        # 8-bit WAV is the one unsigned encoding.
        x = (np.frombuffer(buf, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif bits == 24:
        # Place the three bytes in the top of an int32 so the shift back extends the sign.
        wide = np.zeros((len(buf) // 3, 4), dtype=np.uint8)
        wide[:, 1:] = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 3)
        x = (wide.view("<i4").ravel() >> 8).astype(np.float64) / float(1 << 23)
    else:
        ints = np.frombuffer(buf, dtype=f"<i{bits // 8}")
        x = ints.astype(np.float64) / float(1 << (bits - 1))
    return x.reshape(layout.frames, layout.channels)


class WavReader(Reader):
    """``.wav`` files: channels ``ch1`` ... ``chN``, the sample rate from the header."""

    name: ClassVar[str] = "wav"
    suffixes: ClassVar[tuple[str, ...]] = (".wav",)

    def _open(self, path: Path, display: str) -> BinaryIO:
        try:
            return open(path, "rb")
        except OSError as exc:
            raise open_error(exc, display) from None

    def read(
        self,
        path: Path,
        display: str,
        options: ReaderOptions,
        channels: list[str] | None = None,
    ) -> RawRecording:
        """Read one WAV file; see :meth:`Reader.read`."""
        with self._open(path, display) as fh:
            layout = _layout(fh, display)
            fh.seek(layout.data_offset)
            # A bytearray, so that the arrays made from it are writable like every reader's.
            buf = bytearray(layout.frames * layout.channels * layout.bits // 8)
            fh.readinto(buf)
        names = [f"ch{i + 1}" for i in range(layout.channels)]
        raw = RawRecording(_decode(buf, layout).T, names, float(layout.sample_rate))
        return check_raw(select_channels(raw, channels, display), display)

    def channel_names(self, path: Path, display: str, options: ReaderOptions) -> list[str]:
        """Channel names from the header alone."""
        with self._open(path, display) as fh:
            layout = _layout(fh, display)
        return [f"ch{i + 1}" for i in range(layout.channels)]
