"""pyarrow record batches copied into numpy arrays as they arrive, the samples held only once.

A streamed read (``readers/csv.py``) gets a file's columns a block at a time; :class:`BatchColumns`
copies each block's channels into one float32 ``(channels, samples)`` array and its time column
into float64 seconds, in buffers that grow in place (:class:`GrowingRows`) rather than being
concatenated at the end, which would hold every sample twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from damage_lightning.io.readers.base import first_null, seconds_since_start

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
