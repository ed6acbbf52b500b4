"""The text of a CSV file as a stream: gunzipped, the BOM skipped, read errors named.

``readers/csv.py`` reads the header from the first bytes and hands the stream to pyarrow's
streaming parser, so no read holds the whole file's bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from pathlib import Path
from typing import Any

from damage_lightning.io.readers.base import fail, open_error

#: Bytes read for the header checks (and the buffer of the stream).
SNIFF_BYTES = 1 << 16
# Searching (rather than bytes.strip(), which copies) finds content in multi-GB buffers for free.
NON_SPACE = re.compile(rb"\S")


class TextStream(io.RawIOBase):
    """A CSV file's text: gunzipped when it is gzip (by its magic bytes), the UTF-8 BOM skipped.

    Read errors become the :class:`DataValidationError` that names the file, also when pyarrow's
    parser is the one reading (pyarrow re-raises what a Python file object raises).
    """

    def __init__(self, path: Path, display: str) -> None:
        super().__init__()
        self._display = display
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise open_error(exc, display) from None
        self._gzip = False
        self._inner: Any = self._file
        try:
            self._gzip, self.size = self._guarded(self._probe)
            if self._gzip:
                self._inner = gzip.GzipFile(fileobj=self._file)
            head = self._guarded(lambda: self._inner.read(3))
        except BaseException:
            self._file.close()
            raise
        self._pending = head[3:] if head == b"\xef\xbb\xbf" else head

    def _probe(self) -> tuple[bool, int]:
        """``(gzip?, size of the text in bytes)``.

        The size is exact for a plain file and a guess for gzip (the trailer holds it modulo
        4 GiB); it only sizes the sample buffers.
        """
        is_gzip = self._file.read(2) == b"\x1f\x8b"
        size = os.fstat(self._file.fileno()).st_size
        if is_gzip and size >= 18:
            self._file.seek(-4, os.SEEK_END)
            size = max(size, int.from_bytes(self._file.read(4), "little"))
        self._file.seek(0)
        return is_gzip, size

    def _guarded(self, read: Any) -> Any:
        try:
            return read()
        except (OSError, EOFError, zlib.error) as exc:
            if self._gzip:
                raise fail(self._display, f"gzip content is corrupt or truncated ({exc})") from None
            if isinstance(exc, OSError):
                raise open_error(exc, self._display) from None
            raise

    def readable(self) -> bool:
        """Yes (the io protocol)."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the next bytes of text; 0 at the end."""
        if self._pending:
            k = min(len(buffer), len(self._pending))
            buffer[:k] = self._pending[:k]
            self._pending = self._pending[k:]
            return k
        return self._guarded(lambda: self._inner.readinto(buffer))

    def readall(self) -> bytes:
        """The rest of the text in one read (not in ``io``'s 8 KiB pieces)."""
        pending, self._pending = self._pending, b""
        rest = self._guarded(self._inner.read)
        return pending + rest if pending else rest

    def close(self) -> None:
        """Close the gzip reader and the file."""
        if not self.closed:
            if self._inner is not self._file:
                self._inner.close()
            self._file.close()
        super().close()


def open_text(path: Path, display: str) -> io.BufferedReader:
    """The text of a CSV file (see :class:`TextStream`), buffered; use it as a context manager."""
    return io.BufferedReader(TextStream(path, display), buffer_size=SNIFF_BYTES)


def read_bytes(path: Path, display: str, limit: int | None = None) -> bytes:
    """The text of a file (gunzipped, BOM skipped), or its first ``limit`` bytes."""
    with open_text(path, display) as fh:
        return fh.read() if limit is None else fh.read(limit)


def read_head(fh: io.BufferedReader) -> bytes:
    """The first bytes of a text: what the header checks look at, and little more.

    At least ``SNIFF_BYTES``, and through the first line break and the first non-blank byte
    after it, or the whole text when it has none: on those bytes the CSV reader's header checks
    decide as they would on the whole file.
    """
    head = fh.read(SNIFF_BYTES)
    while True:
        end = head.find(b"\n")
        if end >= 0 and NON_SPACE.search(head, end + 1) is not None:
            return head
        more = fh.read(max(len(head), SNIFF_BYTES))
        if not more:
            return head
        head += more


def drain(fh: io.BufferedReader) -> None:
    """Read to the end: a damaged gzip stream is reported on the way."""
    while fh.read(SNIFF_BYTES):
        pass
