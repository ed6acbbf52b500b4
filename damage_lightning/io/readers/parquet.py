"""Read Parquet recordings (``.parquet``, ``.pq``) with pyarrow.

Like a CSV file: every numeric column is a channel, in file order, except a time column (see
``TIME_COLUMN_NAMES``), which gives the sample rate; text and other non-numeric columns are not
channels. Only the columns needed are read.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from damage_lightning.io.readers.base import (
    RawRecording,
    Reader,
    ReaderOptions,
    check_finite,
    check_raw,
    fail,
    first_null,
    import_optional,
    is_time_name,
    library_errors,
    rate_from_times,
    read_head,
    requested_channels,
    seconds_since_start,
)

_WHAT = "Parquet file"


def _row(i: int) -> str:
    return f"row {i + 1}"


def _is_numeric(pa: Any, typ: Any) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_floating(typ)


def _is_time_type(pa: Any, typ: Any) -> bool:
    return pa.types.is_timestamp(typ) or pa.types.is_duration(typ)


class ParquetReader(Reader):
    """Parquet files: numeric columns are channels, a time column gives the rate."""

    name: ClassVar[str] = "parquet"
    suffixes: ClassVar[tuple[str, ...]] = (".parquet", ".pq")

    def _open(self, path: Path, display: str) -> tuple[Any, Any]:
        """``(pyarrow, ParquetFile)``; close the file when done."""
        pa = import_optional("pyarrow", "pyarrow", display, "Parquet files")
        pq = import_optional("pyarrow.parquet", "pyarrow", display, "Parquet files")
        read_head(path, display, 1)
        with library_errors(display, _WHAT):
            return pa, pq.ParquetFile(path)

    def _columns(self, pa: Any, pf: Any, display: str) -> tuple[list[str], str | None]:
        """``(numeric sensor columns, time column or None)``."""
        with library_errors(display, _WHAT):
            schema = pf.schema_arrow
            pandas_meta = schema.pandas_metadata or {}
        # A DataFrame's index written by pandas is not a sensor.
        index = {c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)}
        fields = [f for f in schema if f.name not in index]
        time = next((f for f in fields if is_time_name(f.name)), None)
        if time is not None and not (_is_numeric(pa, time.type) or _is_time_type(pa, time.type)):
            raise fail(
                display,
                f"time column is not numeric (expected seconds; found {time.type})",
                f"column '{time.name}'",
            )
        sensors = [f.name for f in fields if f is not time and _is_numeric(pa, f.type)]
        return sensors, (time.name if time is not None else None)

    def read(
        self,
        path: Path,
        display: str,
        options: ReaderOptions,
        channels: list[str] | None = None,
    ) -> RawRecording:
        """Read one Parquet file; see :meth:`Reader.read`."""
        pa, pf = self._open(path, display)
        with closing(pf):
            return self._read(pa, pf, display, channels)

    def _read(self, pa: Any, pf: Any, display: str, channels: list[str] | None) -> RawRecording:
        sensors, time = self._columns(pa, pf, display)
        if channels is not None:
            types = {f.name: f.type for f in pf.schema_arrow}
            for name in channels:
                if name in types and name not in sensors and name != time:
                    raise fail(
                        display,
                        f"channel is not numeric (type {types[name]})",
                        f"column '{name}'",
                    )
        names = requested_channels(sensors, channels, display)
        if not names:
            only = f" besides the time column '{time}'" if time else ""
            raise fail(
                display, f"no numeric column{only}: every channel must be a column of numbers"
            )
        with library_errors(display, _WHAT):
            table = pf.read(columns=names + ([time] if time else []), use_threads=True)
        data = np.empty((len(names), table.num_rows), dtype=np.float32)
        for row, name in enumerate(names):
            # Nulls become NaN, and values beyond float32's range inf: check_finite names both.
            with np.errstate(over="ignore"):
                data[row] = table.column(name).to_numpy()
        check_finite(data, names, display, lambda i, name: f"{_row(i)}, column '{name}'")
        rate = None
        if time is not None and table.num_rows:
            col = table.column(time)
            if col.null_count:
                where = f"{_row(first_null(col))}, column '{time}'"
                raise fail(display, "empty time value", where)
            if _is_time_type(pa, col.type):
                t = seconds_since_start(col.cast(pa.int64()).to_numpy(), col.type.unit)
            else:
                t = col.to_numpy().astype(np.float64)
            rate = rate_from_times(t, display, time, _row)
        return check_raw(RawRecording(data, names, rate), display)

    def channel_names(self, path: Path, display: str, options: ReaderOptions) -> list[str]:
        """Channel names from the schema alone."""
        pa, pf = self._open(path, display)
        with closing(pf):
            return self._columns(pa, pf, display)[0]
