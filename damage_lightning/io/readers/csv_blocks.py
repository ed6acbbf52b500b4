"""CSV text parsed by pyarrow a block at a time into numpy arrays, the samples held only once.

:func:`batches` cuts a long text as pyarrow cuts it and parses a few blocks at once in threads;
:class:`BatchColumns` copies each block's channels into one float32 ``(channels, samples)`` array
and its time column into float64 seconds, in buffers that grow in place (:class:`GrowingRows`)
rather than being concatenated at the end, which would hold every sample twice. What the CSV
reader (``readers/csv.py``) makes of the columns and of failures is decided there.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from damage_lightning.io.readers.base import first_null, seconds_since_start
from damage_lightning.io.readers.text import open_text

#: Bytes of text in one block of the parser: the text is read, cut and parsed a block at a time,
#: as pyarrow cuts it (a line longer than a block is an error). The first block also decides
#: the type of the columns read without one (the time column).
BLOCK_SIZE = 1 << 20
# pyarrow's own thread pool is never used: a process that parsed a buffer with it and then
# closed an onnxruntime session aborted at exit ("terminate called without an active
# exception", SIGABRT) in about one run in five (apache/arrow#34314); our threads are joined
# before a read returns. A text of at most this many blocks is parsed in one piece ...
_PIECE_BLOCKS = 1
# ... a longer one a block at a time, this many blocks at once (by as many threads, at most).
_MAX_WORKERS = 4
# Samples estimated from the first lines' lengths, times this, are allocated up front.
_CAPACITY_MARGIN = 1.1
# Samples moved at a time when the rows of a buffer are moved together (bounds numpy's temporary
# copy of overlapping slices).
_MOVE_SLICE = 1 << 20


def column_into(col: Any, out: np.ndarray) -> None:
    """Copy a numeric pyarrow Array or ChunkedArray into ``out`` (nulls become NaN).

    Reads the Arrow buffers directly: pyarrow's own ``to_numpy``/``cast`` import pandas, which
    costs a third of a second on the first file.
    """
    import pyarrow as pa

    offset = 0
    for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
        k = len(chunk)
        typ = chunk.type
        seg = out[offset : offset + k]
        offset += k
        if pa.types.is_null(typ):
            seg[:] = np.nan
            continue
        if pa.types.is_floating(typ):
            kind = "f"
        elif pa.types.is_signed_integer(typ) or pa.types.is_timestamp(typ):
            kind = "i"
        elif pa.types.is_unsigned_integer(typ):
            kind = "u"
        else:
            raise TypeError(f"not a numeric column: {typ}")
        src = np.dtype(f"<{kind}{typ.bit_width // 8}")
        validity, values = chunk.buffers()[:2]
        seg[:] = np.frombuffer(values, dtype=src, count=k, offset=chunk.offset * src.itemsize)
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
            seg[bits[chunk.offset : chunk.offset + k] == 0] = np.nan


def is_time_type(typ: Any) -> bool:
    """Whether a pyarrow type can hold times: a timestamp or a number of seconds."""
    import pyarrow as pa

    return pa.types.is_timestamp(typ) or pa.types.is_integer(typ) or pa.types.is_floating(typ)


class GrowingRows:
    """A ``(rows, samples)`` array filled a block at a time, its final length unknown up front.

    The buffer is sized from an estimate of the samples; its pages past what is written are never
    touched, so the operating system does not back them with memory. :meth:`finish` moves the
    rows together in place and hands the unused tail back, so the peak stays near the final size
    (a copy at the end, or ``np.concatenate`` of the blocks, would double it). An estimate too
    small costs one copy per growth by half.

    Args:
        rows: number of rows (channels).
        capacity: samples to make room for.
        dtype: the array's dtype.
    """

    def __init__(self, rows: int, capacity: int, dtype: type) -> None:
        self._rows, self._capacity, self._dtype = rows, max(int(capacity), 1), dtype
        self._flat: np.ndarray | None = None
        self.length = 0

    def _grid(self) -> np.ndarray:
        assert self._flat is not None
        return self._flat.reshape(self._rows, self._capacity)

    def extend(self, k: int) -> np.ndarray:
        """The ``(rows, k)`` view for the next ``k`` samples (dropped before :meth:`finish`)."""
        if self._flat is None:
            self._capacity = max(self._capacity, k)
            self._flat = np.empty(self._rows * self._capacity, self._dtype)
        elif self.length + k > self._capacity:
            capacity = max(self.length + k, self._capacity + self._capacity // 2)
            flat = np.empty(self._rows * capacity, self._dtype)
            flat.reshape(self._rows, capacity)[:, : self.length] = self._grid()[:, : self.length]
            self._flat, self._capacity = flat, capacity
        view = self._grid()[:, self.length : self.length + k]
        self.length += k
        return view

    def finish(self) -> np.ndarray:
        """The filled ``(rows, length)`` array, C-contiguous; the buffer is given up to it."""
        n, capacity, flat = self.length, self._capacity, self._flat
        self._flat = None
        if flat is None:
            return np.empty((self._rows, 0), self._dtype)
        if n < capacity:
            # Row r moves from r * capacity down to r * n. Slices go front first, so none
            # overwrites samples still to be moved.
            for r in range(1, self._rows):
                for i in range(0, n, _MOVE_SLICE):
                    m = min(_MOVE_SLICE, n - i)
                    flat[r * n + i : r * n + i + m] = flat[r * capacity + i : r * capacity + i + m]
            # realloc: the tail's pages go back to the operating system and nothing is copied.
            # No view of the buffer is alive (extend's views are gone), so the check is skipped.
            flat.resize(self._rows * n, refcheck=False)
        return flat.reshape(self._rows, n)


class BatchColumns:
    """The channel columns and the time column of record batches, copied out as they arrive.

    Args:
        channels: the channel columns, in the order of the rows of :attr:`data`.
        time: the time column, or ``None``.
        unnamed: columns that must be empty (no name in the header): only whether they hold a
            value is kept.
        capacity: samples expected (see :class:`GrowingRows`).
    """

    def __init__(
        self, channels: list[str], time: str | None, unnamed: list[str], capacity: int
    ) -> None:
        self.channels, self.time, self.unnamed = channels, time, unnamed
        #: float32 ``(channels, samples)``.
        self.data = GrowingRows(len(channels), capacity, np.float32)
        #: Seconds since the first sample, ``(1, samples)`` (left unfilled after a problem).
        self.seconds = GrowingRows(1, capacity, np.float64) if time is not None else None
        #: Rows seen.
        self.rows = 0
        #: The time column's type (pyarrow).
        self.time_type: Any = None
        #: Index of the first row whose time value is empty.
        self.time_null: int | None = None
        #: Unnamed columns that hold a value.
        self.unnamed_with_values: set[str] = set()
        self._first_tick: int | None = None

    def add(self, batch: Any) -> None:
        """Copy one ``pyarrow.RecordBatch`` in."""
        k = batch.num_rows
        block = self.data.extend(k)
        for row, name in enumerate(self.channels):
            column_into(batch.column(name), block[row])
        del block
        for name in self.unnamed:
            col = batch.column(name)
            if col.null_count != len(col):
                self.unnamed_with_values.add(name)
        if self.time is not None:
            self._add_time(batch.column(self.time))
        self.rows += k

    def _add_time(self, col: Any) -> None:
        import pyarrow as pa

        typ = self.time_type = col.type
        if self.time_null is None and col.null_count:
            self.time_null = self.rows + first_null(col)
        if self.time_null is not None or not is_time_type(typ):
            return  # the reader reports it once every row is read; no seconds are needed
        assert self.seconds is not None
        seconds = self.seconds.extend(len(col))[0]
        if pa.types.is_timestamp(typ):
            # Epoch nanoseconds exceed float64's integer precision: subtract the start first.
            ticks = np.empty(len(col), dtype=np.int64)
            column_into(col, ticks)
            if self._first_tick is None and len(ticks):
                self._first_tick = int(ticks[0])
            seconds[:] = seconds_since_start(ticks, typ.unit, self._first_tick)
        else:
            column_into(col, seconds)


@dataclass(frozen=True)
class Layout:
    """What pyarrow parses in one CSV file, the same for the block-wise and the whole-file read.

    Args:
        names: the parser's column names (unnamed columns get placeholders).
        delimiter: the field delimiter.
        channels: the channel columns, in the order asked for.
        unnamed: columns with no name in the header (their cells must be empty).
        time: the time column, or ``None``.
    """

    names: list[str]
    delimiter: str
    channels: list[str]
    unnamed: list[str]
    time: str | None

    @property
    def include(self) -> list[str]:
        """The columns parsed; the others are skipped."""
        return self.channels + self.unnamed + ([self.time] if self.time else [])

    def options(self, types: dict, header: bool = True) -> dict[str, Any]:
        """Keyword arguments of ``pyarrow.csv.read_csv`` (serial: see ``_PIECE_BLOCKS``).

        Args:
            types: pyarrow type by column; the others are inferred.
            header: whether the text starts with the header line (skipped).
        """
        import pyarrow.csv as pacsv

        return {
            "read_options": pacsv.ReadOptions(
                column_names=self.names,
                skip_rows=int(header),
                use_threads=False,
                block_size=BLOCK_SIZE,
            ),
            "parse_options": pacsv.ParseOptions(delimiter=self.delimiter),
            "convert_options": pacsv.ConvertOptions(
                column_types=types, include_columns=self.include, check_utf8=False
            ),
        }

    def columns(self, capacity: int) -> BatchColumns:
        """An empty :class:`BatchColumns` for this layout, sized for ``capacity`` rows."""
        return BatchColumns(self.channels, self.time, self.unnamed, capacity)


def capacity_guess(head: bytes, size: int) -> int:
    """Rows a text of ``size`` bytes holds, guessed from the lengths of its first lines."""
    start, last = head.find(b"\n") + 1, head.rfind(b"\n")
    lines = head.count(b"\n", start, last + 1)
    if lines == 0:
        return 0
    return int(lines * (size - start) / (last + 1 - start) * _CAPACITY_MARGIN) + 1024


def parse(text: Any, options: dict[str, Any]) -> Any:
    """``text`` (bytes or a memoryview) parsed by pyarrow into a ``pyarrow.Table``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pacsv.read_csv(pa.py_buffer(text), **options)


def blocks(fh: io.BufferedReader) -> Iterator[memoryview]:
    """The text a block at a time, cut where pyarrow cuts it.

    pyarrow's parser (values hold no line breaks) reads ``BLOCK_SIZE`` bytes at a time and ends
    each block at the last line break (LF or CR) in them, each block parsed alone; these are the
    same blocks, so the rows are the same as when pyarrow reads the whole text. Each block after
    the first starts with the line break the one before ended with: a blank line to the parser,
    which skips it, and a line starting with a BOM is not at the start of a buffer (where
    pyarrow would drop the BOM).

    Raises:
        pyarrow.ArrowInvalid: ``BLOCK_SIZE`` bytes without a line break, as pyarrow raises.
    """
    import pyarrow as pa

    carry = b""
    while True:
        # One copy of the text: read after the carried line into a fresh buffer (the blocks in
        # flight still hold theirs).
        text = bytearray(len(carry) + BLOCK_SIZE)
        text[: len(carry)] = carry
        n = fh.readinto(memoryview(text)[len(carry) :])
        if not n:
            break
        start = len(carry)
        end = start + n
        cut = max(text.rfind(b"\n", start, end), text.rfind(b"\r", start, end))
        if cut < 0:
            if n == BLOCK_SIZE:
                raise pa.ArrowInvalid("a line longer than a block")
            carry = bytes(text[:end])  # the last line, without a line break
            break
        yield memoryview(text)[: cut + 1]
        carry = bytes(text[cut:end])
    if carry not in (b"", b"\n", b"\r"):
        yield memoryview(carry)


def batches(path: Path, display: str, layout: Layout, types: dict) -> Iterator[Any]:
    """The file's record batches: a short text in one piece, a longer one a block at a time.

    A text of at most ``_PIECE_BLOCKS`` blocks is parsed in one piece. A
    longer one is cut as pyarrow cuts it (:func:`blocks`, so the rows are the same) and parsed
    by a few threads while the next blocks are read; a column without a type in ``types`` gets
    the type pyarrow infers from the first block, as when it reads the whole text (a later block
    inferred otherwise is parsed again with that type).

    Raises:
        pyarrow.ArrowInvalid: a cell that does not convert to its column's type, a ragged row.
    """
    with open_text(path, display) as fh:
        size = fh.raw.size
        # A gzip file's size is a guess: one more read tells whether the text is longer.
        text = fh.read(size + 1) if size <= _PIECE_BLOCKS * BLOCK_SIZE else b""
        whole = bool(text) and len(text) <= size and not fh.read(1)
    if whole:
        yield from parse(memoryview(text), layout.options(types)).to_batches()
        return
    del text
    first = layout.options(types)
    rest = layout.options(types, header=False)
    first_types: list[Any] | None = None
    parsing: deque[tuple[memoryview, Future]] = deque()

    def parsed() -> Any:
        nonlocal first_types
        block, job = parsing.popleft()
        table = job.result()
        found = [table.schema.field(name).type for name in layout.include]
        if first_types is None:
            first_types = found
        elif found != first_types:
            typed = dict(zip(layout.include, first_types, strict=True))
            table = parse(block, layout.options(typed, header=False))
        return table.to_batches()

    workers = max(1, min(_MAX_WORKERS, os.cpu_count() or 1))
    with open_text(path, display) as fh, ThreadPoolExecutor(workers) as pool:
        for i, block in enumerate(blocks(fh)):
            parsing.append((block, pool.submit(parse, block, rest if i else first)))
            del block
            if len(parsing) > workers:
                yield from parsed()
        while parsing:
            yield from parsed()
