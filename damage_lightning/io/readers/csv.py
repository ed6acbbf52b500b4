"""CSV recordings: header sniffing, fast pyarrow parsing, and errors that name the row and column.

Accepts a UTF-8 BOM, ``,`` ``;`` or tab delimiters (sniffed from the header line), CRLF line
ends, gzip content (detected by its magic bytes, whatever the extension) and unicode names. A
long file is parsed a block of text at a time, cut as pyarrow cuts it, a few blocks at once in
threads, so a read holds the samples and a few MB of text, not the file. The slow diagnosis runs
only when the typed read fails, to name the first bad cell; it reads the whole file.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from damage_lightning.errors import DataValidationError
from damage_lightning.io.readers.base import (
    RawRecording,
    Reader,
    ReaderOptions,
    check_finite,
    fail,
    is_time_name,
    rate_from_times,
    requested_channels,
)
from damage_lightning.io.readers.csv_blocks import (
    BatchColumns,
    Layout,
    batches,
    capacity_guess,
    is_time_type,
    parse,
)
from damage_lightning.io.readers.text import (
    NON_SPACE,
    SNIFF_BYTES,
    drain,
    open_text,
    read_bytes,
    read_head,
)

_DELIMITERS = (",", ";", "\t")
_NUMBER_RE = r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)\s*$"
_NUMBER = re.compile(_NUMBER_RE, re.IGNORECASE)
_DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+\s*$")
# pyarrow's default null spellings plus the empty cell: all of them mean "no value" here.
_NULL_TOKENS = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "n/a",
    "nan",
    "null",
)


def sniff_delimiter(line: str) -> str:
    """The delimiter of a header line: the most frequent of , ; and tab outside quotes."""
    counts = {d: 0 for d in _DELIMITERS}
    in_quotes = False
    for ch in line:
        if ch == '"':
            in_quotes = not in_quotes
        elif not in_quotes and ch in counts:
            counts[ch] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _looks_numeric(text: str) -> bool:
    return bool(_NUMBER.match(text))


#: How a line of comments or metadata written before the header by logging software starts.
COMMENT_STARTS = ("#", "%", "//")


def _first_uncommented(raw: bytes) -> str:
    """The first later line that is neither blank nor a comment (latin-1: any bytes decode)."""
    lines = raw.decode("latin-1").splitlines()[1:]
    return next((ln for ln in lines if ln.strip() and not _is_comment(ln)), "")


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith(COMMENT_STARTS)


def _fields(line: str) -> int:
    """How many fields ``line`` splits into with its own likely delimiter."""
    return len(next(csv.reader([line], delimiter=sniff_delimiter(line)), []))


def _parse_header(raw: bytes, display: str) -> tuple[list[str], str]:
    """Check that ``raw`` is CSV text and return ``(column names, delimiter)``."""
    if NON_SPACE.search(raw) is None:
        raise fail(display, "file is empty")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise fail(display, "file is UTF-16 encoded; save it as UTF-8 CSV")
    if b"\x00" in raw[:SNIFF_BYTES]:
        raise fail(display, "not a text CSV file (binary content)")
    end = raw.find(b"\n")
    line_b = (raw if end < 0 else raw[:end]).rstrip(b"\r")
    try:
        line = line_b.decode("utf-8")
    except UnicodeDecodeError:
        # Spreadsheet exports on Windows write the header in cp1252 / latin-1.
        line = line_b.decode("latin-1")
    if "\r" in line:
        raise fail(
            display,
            "lines end in a carriage return alone (classic Mac OS line endings); save the file "
            "with LF or CRLF line endings (e.g. tr '\\r' '\\n' < old.csv > new.csv)",
            "row 1",
        )
    if any(ord(c) < 32 and c != "\t" for c in line):
        raise fail(display, "not a text CSV file (control characters in the first line)")
    stripped = line.strip()
    if not stripped:
        raise fail(display, "the first line is empty; expected a header row naming the channels")
    if _is_comment(line) and _fields(line) != _fields(_first_uncommented(raw)):
        shown = stripped if len(stripped) <= 40 else stripped[:37] + "..."
        raise fail(
            display,
            f"the file starts with a comment or metadata line ({shown!r}); remove the lines "
            "before the header row naming the channels",
            "row 1",
        )
    if stripped.lower().startswith("sep="):
        raise fail(
            display,
            f"the first line is a spreadsheet's separator hint ({stripped!r}); remove it so "
            "the header row naming the channels comes first",
            "row 1",
        )
    delimiter = sniff_delimiter(line)
    names = [n.strip() for n in next(csv.reader([line], delimiter=delimiter))]
    if all(_looks_numeric(n) for n in names if n):
        raise fail(
            display,
            "the first line looks like data, not a header: add a header row naming the channels",
            "row 1",
        )
    counts = Counter(n for n in names if n)
    dups = [n for n, k in counts.items() if k > 1]
    if dups:
        where = "; ".join(
            f"'{d}' in columns " + ", ".join(str(i + 1) for i, n in enumerate(names) if n == d)
            for d in dups
        )
        raise fail(display, f"duplicate column names: {where}", "row 1")
    return names, delimiter


def _file_row(lines: Iterable[bytes], index: int) -> int:
    """Row number in the file (1-based, header = row 1) of data row ``index`` (0-based).

    Args:
        lines: the file's text, a line at a time (an open :func:`open_text`).
        index: the row as the parser counts rows: it skips blank lines, which are counted back in.
    """
    count = -1
    for lineno, line in enumerate(lines, 1):
        if line in (b"\n", b"\r\n", b"", b"\r"):
            continue
        count += 1
        if count == index + 1:
            return lineno
    return index + 2


def _row_finder(path: Path, display: str) -> Callable[[int], int]:
    """Data row index -> row number in the file, by reading the file again (for errors only)."""

    def row(index: int) -> int:
        with open_text(path, display) as fh:
            return _file_row(fh, index)

    return row


def _find_ragged(raw: bytes, delimiter: str, n_fields: int) -> tuple[int, int] | None:
    text = raw.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for row in reader:
            if reader.line_num == 1 or not row:
                continue
            if len(row) != n_fields:
                return reader.line_num, len(row)
    except csv.Error:
        return reader.line_num, -1
    return None


def _layout(names: list[str], delimiter: str, channels: list[str] | None) -> Layout:
    """The layout of a file with header ``names``; ``channels`` as :meth:`CsvReader.read`."""
    # Unnamed columns (e.g. from a trailing delimiter) get placeholder names for the parser.
    arrow_names = [n or f"<unnamed column {i + 1}>" for i, n in enumerate(names)]
    time = next((n for n in names if n and is_time_name(n)), None)
    if channels is not None:
        unnamed: list[str] = []
    else:
        channels = [n for n in names if n and not is_time_name(n)]
        unnamed = [a for a, n in zip(arrow_names, names, strict=True) if not n]
    return Layout(arrow_names, delimiter, channels, unnamed, time)


def _classify_text_column(col: Any) -> tuple[int, int | None]:
    """For a text column: (number of numeric-looking cells, first index that is not numeric)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numeric = pc.match_substring_regex(col, _NUMBER_RE, ignore_case=True)
    numeric = pc.fill_null(numeric, False)
    n_numeric = pc.sum(numeric).as_py() or 0
    bad = pc.invert(numeric)
    first = pc.index(bad, pa.scalar(True)).as_py()
    return n_numeric, (None if first is None or first < 0 else first)


def _is_channel_type(typ: Any) -> bool:
    """Whether a column that pyarrow typed by inference is a channel (numbers, or all empty)."""
    import pyarrow as pa

    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ)


def _is_text_type(typ: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _looks_like_decimal_comma(col: Any) -> bool:
    """Whether a text column's first cell is a number written with a decimal comma."""
    return bool(len(col)) and bool(_DECIMAL_COMMA.match(str(col[0].as_py() or "")))


def _diagnose(
    raw: bytes, display: str, layout: Layout, requested: bool, file_row: Callable[[int], int]
) -> tuple[Any, list[str]]:
    """Slow path after the typed read failed: find the first bad row/column, or drop text columns.

    Returns the table read with type inference and the sensor columns that are numeric.
    """
    import pyarrow as pa

    try:
        table = parse(raw, layout.options({}))
    except pa.ArrowInvalid as exc:
        n_fields = len(layout.names)
        ragged = _find_ragged(raw, layout.delimiter, n_fields)
        if ragged is None:
            raise fail(display, f"cannot parse the CSV ({exc})") from None
        row, found = ragged
        reason = (
            f"expected {n_fields} fields like the header, found {found}"
            if found >= 0
            else "malformed quoting"
        )
        raise fail(display, reason, f"row {row}") from None
    keep: list[str] = []
    first_bad: tuple[int, str, str] | None = None
    for name in layout.include:
        if name == layout.time:
            continue
        col = table.column(name)
        typ = col.type
        if _is_channel_type(typ):
            keep.append(name)
            continue
        if _is_text_type(typ):
            n_numeric, first = _classify_text_column(col)
            if n_numeric == 0 and _looks_like_decimal_comma(col):
                # Numbers written with a decimal comma: a sensor column, not a text column.
                n_numeric, first = 1, 0
            if n_numeric > 0 and first is not None:
                value = col[first].as_py()
                if first_bad is None or first < first_bad[0]:
                    first_bad = (first, name, value)
                continue
            if n_numeric > 0:
                # Every cell looks numeric but pyarrow's parser disagreed: convert in Python.
                try:
                    values = [float(v) for v in col.to_pylist()]
                except (TypeError, ValueError):
                    first_bad = first_bad or (0, name, col[0].as_py())
                    continue
                table = table.set_column(
                    table.schema.get_field_index(name), name, pa.array(values, pa.float32())
                )
                keep.append(name)
                continue
        if requested:
            sample = col[0].as_py() if len(col) else ""
            raise fail(
                display,
                f"channel is not numeric (first value {str(sample)!r})",
                f"column '{name}'",
            )
    if first_bad is not None:
        index, name, value = first_bad
        text = "" if value is None else str(value)
        where = f"row {file_row(index)}, column '{name}'"
        if text.strip() in _NULL_TOKENS:
            raise fail(display, "empty or NaN value", where)
        reason = f"non-numeric value {text!r}"
        if text.strip() == name:
            reason += " (the header line repeated inside the file?)"
        elif _DECIMAL_COMMA.match(text):
            reason += " (decimal comma? use '.' as the decimal separator)"
        raise fail(display, reason, where)
    return table, keep


def _check_header(
    path: Path, display: str, channels: list[str] | None
) -> tuple[bytes, int, list[str], str, list[str] | None]:
    """``(head, text size, names, delimiter, channels)`` from the file's first bytes, checked.

    ``channels`` is checked against the header (``requested_channels``). On a problem the rest
    is read first, so that a damaged gzip stream is reported before it, as it always was.
    """
    with open_text(path, display) as fh:
        head = read_head(fh)
        try:
            names, delimiter = _parse_header(head, display)
            end = head.find(b"\n")
            if end < 0 or NON_SPACE.search(head, end + 1) is None:
                raise fail(display, "the file has a header but no data rows")
            if channels is not None:
                available = [n for n in names if n and not is_time_name(n)]
                channels = requested_channels(available, channels, display)
        except DataValidationError:
            drain(fh)
            raise
        return head, fh.raw.size, names, delimiter, channels


def _read_dropping_text(
    path: Path, display: str, layout: Layout, capacity: int
) -> BatchColumns | None:
    """The read again with inferred types, so that a file with text columns streams too.

    For a typed read that failed at its first block, with no channels asked for: a column
    without a single number (a status, a comment) is not a channel. The numeric columns are
    parsed as float64 and stored as float32, as the whole-file read does with them.

    Returns:
        The columns, or ``None`` when a text column holds a number or a block fails: the
        whole-file read names the problem.
    """
    import pyarrow as pa

    columns, text = None, []
    with closing(batches(path, display, layout, dict.fromkeys(layout.unnamed, pa.null()))) as it:
        try:
            for batch in it:
                if columns is None:
                    types = {f.name: f.type for f in batch.schema}
                    text = [n for n in layout.channels if _is_text_type(types[n])]
                    numeric = [n for n in layout.channels if _is_channel_type(types[n])]
                    columns = replace(layout, channels=numeric).columns(capacity)
                for name in text:
                    col = batch.column(name)
                    comma = columns.rows == 0 and _looks_like_decimal_comma(col)
                    if comma or _classify_text_column(col)[0]:
                        return None
                columns.add(batch)
        except pa.ArrowInvalid:
            return None
    return columns


def _read_whole(
    path: Path, display: str, layout: Layout, requested: bool, file_row: Callable[[int], int]
) -> BatchColumns:
    """Parse the whole text at once (after the block-wise read failed), diagnosing what failed.

    With type inference a text column is dropped (an error when ``requested``), a bad cell is
    named by its row and column. Holds the file's bytes and the whole table while it runs.
    """
    import pyarrow as pa

    raw = read_bytes(path, display)
    try:
        table = parse(raw, layout.options(dict.fromkeys(layout.channels, pa.float32())))
    except pa.ArrowInvalid:
        table, numeric = _diagnose(raw, display, layout, requested, file_row)
        layout = replace(layout, channels=[n for n in numeric if n not in layout.unnamed])
    del raw
    columns = layout.columns(table.num_rows)
    for batch in table.to_batches():
        columns.add(batch)
    return columns


def _recording(
    columns: BatchColumns, layout: Layout, display: str, file_row: Callable[[int], int]
) -> RawRecording:
    """The checks on what was read, in the order they always ran, and the recording."""
    for name in layout.unnamed:
        if name in columns.unnamed_with_values:
            # A trailing delimiter makes an empty unnamed column; one with values needs a name.
            where = f"column {layout.names.index(name) + 1}"
            raise fail(display, "column has values but no name in the header", where)
    time = layout.time
    if not columns.channels:
        only = f" besides the time column '{time}'" if time else ""
        raise fail(display, f"no numeric column{only}: every channel must be a column of numbers")
    data = columns.data.finish()
    check_finite(
        data, columns.channels, display, lambda i, name: f"row {file_row(i)}, column '{name}'"
    )
    rate = None
    if columns.seconds is not None:
        where = f"column '{time}'"
        if columns.time_null is not None:
            raise fail(display, "empty time value", f"row {file_row(columns.time_null)}, {where}")
        if not is_time_type(columns.time_type):
            raise fail(display, "time column is not numeric (expected seconds)", where)
        t = columns.seconds.finish()[0]
        rate = rate_from_times(t, display, str(time), lambda i: f"row {file_row(i)}")
    return RawRecording(data, list(columns.channels), rate)


class CsvReader(Reader):
    """CSV text (plain or gzip): a header row; every numeric column is a channel, except time.

    A time column (``TIME_COLUMN_NAMES``) gives the sample rate; a column without a single number
    (a comment, a status text) is not a channel and is dropped. pyarrow parses a long file a
    block at a time, so a read holds the samples and a few MB of text, not the file.
    """

    name: ClassVar[str] = "csv"
    suffixes: ClassVar[tuple[str, ...]] = (".csv", ".csv.gz")
    version: ClassVar[int] = 1

    def channel_names(self, path: Path, display: str, options: ReaderOptions) -> list[str]:
        """Channel names from the header line alone (cheap).

        The time column and unnamed columns are left out. Whether a column is numeric is not
        known from the header, so a text column is still listed; :meth:`read` drops it.
        """
        raw = read_bytes(Path(path), display, limit=SNIFF_BYTES)
        names, _ = _parse_header(raw, display)
        return [n for n in names if n and not is_time_name(n)]

    def read(
        self,
        path: Path,
        display: str,
        options: ReaderOptions,
        channels: list[str] | None = None,
    ) -> RawRecording:
        """Parse one CSV file into float32 ``(channels, samples)``.

        The channels are parsed as float32, a long file a block at a time (``csv_blocks``).
        When a block does not convert (a bad cell, a ragged row, a text column, a value in an
        unnamed column, a time column whose type changes after the first block), the file is
        parsed again with type inference, to drop the text columns or to name the problem.

        Args:
            path: the CSV file.
            display: the file name used in error messages.
            options: unused (CSV has no format options).
            channels: channel names to return, in this order; ``None`` for all numeric columns.

        Raises:
            DataValidationError: naming the file, the row and/or column, and the reason.
        """
        import pyarrow as pa

        path = Path(path)
        head, size, names, delimiter, channels = _check_header(path, display, channels)
        layout = _layout(names, delimiter, channels)
        file_row = _row_finder(path, display)
        capacity = capacity_guess(head, size)
        columns = layout.columns(capacity)
        types = dict.fromkeys(layout.channels, pa.float32())
        # An unnamed column must be empty: typed null, a value in it fails the block.
        types.update(dict.fromkeys(layout.unnamed, pa.null()))
        try:
            for batch in batches(path, display, layout, types):
                columns.add(batch)
            streamed = True
        except pa.ArrowInvalid:
            streamed = False  # (the traceback holds the partial arrays until this block ends)
        if not streamed:
            at_start = columns.rows == 0
            del columns  # freed before the file is read again
            again = None
            if at_start and channels is None:
                again = _read_dropping_text(path, display, layout, capacity)
            if again is None:
                again = _read_whole(path, display, layout, channels is not None, file_row)
            columns = again
        return _recording(columns, layout, display, file_row)
