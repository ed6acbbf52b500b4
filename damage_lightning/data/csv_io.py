"""Find labelled recordings (folder per class or manifest), read their CSV files fast, validate.

Every problem is reported with the file, the row or column, and the reason.

This module must not import torch: the validation step and deployment scripts rely on it importing
in a fraction of a second. pyarrow and scipy are imported only when a file is parsed or resampled.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import sys
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from damage_lightning.data.cache import WaveformCache
from damage_lightning.errors import DataValidationError, Problem

#: Column names (compared case-insensitively) holding time in seconds rather than a sensor channel.
TIME_COLUMN_NAMES = frozenset(
    {"time", "t", "timestamp", "time_s", "time (s)", "time [s]", "time[s]", "time_sec", "seconds"}
)
#: Values allowed in a manifest's ``split`` column.
VALID_SPLITS = ("train", "val", "test")
#: File name suffixes (case-insensitive) that are recordings in the folder-per-class layout.
CSV_SUFFIXES = (".csv", ".csv.gz")
#: Bump when parsing or resampling changes the arrays produced, so that cached entries miss.
PARSER_VERSION = 1
#: Sample rates within this relative tolerance are the same rate (time columns are rounded).
RATE_RTOL = 1e-4
#: A step of the time column further than this fraction from the mean step is irregular.
TIME_STEP_TOLERANCE = 0.25
#: Clipping rule: samples at a channel's extreme value, in runs at least this long ...
CLIP_MIN_RUN = 3
#: ... making up more than this fraction of the channel's samples.
CLIP_MIN_FRACTION = 1e-3
#: ... or: samples exactly at one extreme, in any pattern, making up more than this fraction.
CLIP_ANY_FRACTION = 1e-2

_SNIFF_BYTES = 1 << 16
_BLOCK_SIZE = 1 << 20
_DELIMITERS = (",", ";", "\t")
_NUMBER_RE = r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)\s*$"
_NUMBER = re.compile(_NUMBER_RE, re.IGNORECASE)
# Searching (rather than bytes.strip(), which copies) finds content in multi-GB buffers for free.
_NON_SPACE = re.compile(rb"\S")
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


@dataclass
class RecordingSpec:
    """One recording found in the data folder.

    Args:
        path: absolute, resolved path of the CSV file.
        relpath: POSIX path relative to the data folder, as shown to users and stored in
            ``splits.json``.
        label: the class name.
        group: the physical unit or test run (manifest ``group`` column); windows of one group
            never cross splits.
        split: a split forced by the manifest (``train``, ``val`` or ``test``), else ``None``.
        sample_rate: sample rate in Hz from the manifest ``sample_rate`` column, else ``None``.
        metadata: every other manifest column, as text.
    """

    path: Path
    relpath: str
    label: str
    group: str | None = None
    split: str | None = None
    sample_rate: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedDataset:
    """All recordings of a data folder, parsed and validated.

    Args:
        recordings: the recordings, in :func:`discover` order.
        waveforms: one float32 ``(channels, samples)`` array per recording (read-only memory maps
            when a cache is used).
        channels: channel names, in the order of the array rows.
        sample_rate: sample rate of every waveform, in Hz.
        warnings: problems worth a look that do not stop training (flat or clipped channels, empty
            label folders).
    """

    recordings: list[RecordingSpec]
    waveforms: list[np.ndarray]
    channels: list[str]
    sample_rate: float
    warnings: list[Problem] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The label of each recording."""
        return [r.label for r in self.recordings]

    @property
    def class_names(self) -> list[str]:
        """Sorted unique labels."""
        return sorted(set(self.labels))


# --------------------------------------------------------------------------------- discovery


def _is_csv(name: str) -> bool:
    lower = name.lower()
    return any(lower.endswith(s) for s in CSV_SUFFIXES)


def _sniff_delimiter(line: str) -> str:
    counts = {d: 0 for d in _DELIMITERS}
    in_quotes = False
    for ch in line:
        if ch == '"':
            in_quotes = not in_quotes
        elif not in_quotes and ch in counts:
            counts[ch] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _inside(root: Path, candidate: Path) -> bool:
    # Lexical check (after normalising '..'), so that symlinked files inside the data folder are
    # accepted while '../x.csv' and absolute paths elsewhere are not.
    root_s = os.path.normpath(str(root))
    cand_s = os.path.normpath(str(candidate))
    return cand_s == root_s or cand_s.startswith(root_s.rstrip(os.sep) + os.sep)


def _parse_rate(text: str) -> float | None:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def _read_manifest(
    root: Path, manifest_path: Path, shown: str, problems: list[Problem]
) -> list[RecordingSpec]:
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        problems.append(Problem(shown, "", "manifest file not found"))
        return []
    except PermissionError:
        problems.append(Problem(shown, "", "cannot read the manifest: permission denied"))
        return []
    except OSError as exc:
        problems.append(Problem(shown, "", f"cannot read the manifest ({exc.strerror or exc})"))
        return []
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        problems.append(Problem(shown, "", "manifest is empty (expected a header 'path,label')"))
        return []
    text = raw.decode("utf-8", errors="replace")
    first = text.splitlines()[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(first))
    header = [h.strip() for h in next(reader)]
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        problems.append(
            Problem(
                shown,
                "header",
                f"manifest lacks column(s) {', '.join(repr(m) for m in missing)} "
                f"(found: {', '.join(repr(h) for h in header)})",
            )
        )
        return []
    col = {name: i for i, name in enumerate(header)}
    specs: list[RecordingSpec] = []
    seen: dict[str, int] = {}
    n_rows = 0
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        n_rows += 1
        where = f"row {line}"
        if len(row) != len(header):
            problems.append(
                Problem(
                    shown, where, f"expected {len(header)} fields like the header, found {len(row)}"
                )
            )
            continue
        cells = {name: row[i].strip() for name, i in col.items()}
        path_text, label = cells["path"], cells["label"]
        if not path_text:
            problems.append(Problem(shown, where, "empty 'path'"))
            continue
        if not label:
            problems.append(Problem(shown, f"{where}, '{path_text}'", "empty 'label'"))
            continue
        rel = Path(path_text)
        full = rel if rel.is_absolute() else root / rel
        if not full.exists() and "\\" in path_text:
            # Manifests written on Windows use backslashes.
            alt = root / Path(path_text.replace("\\", "/"))
            full = alt if alt.exists() else full
        full = Path(os.path.normpath(full))
        if not _inside(root, full):
            problems.append(
                Problem(shown, f"{where}, '{path_text}'", "path is outside the data folder")
            )
            continue
        if not full.is_file():
            reason = "is a folder, not a CSV file" if full.is_dir() else "file not found"
            problems.append(Problem(shown, f"{where}, '{path_text}'", reason))
            continue
        relpath = full.relative_to(root).as_posix()
        if relpath in seen:
            problems.append(
                Problem(
                    shown, where, f"'{relpath}' is listed twice (rows {seen[relpath]} and {line})"
                )
            )
            continue
        seen[relpath] = line
        split = cells.get("split") or None
        if split is not None:
            split = split.lower()
            if split not in VALID_SPLITS:
                problems.append(
                    Problem(
                        shown,
                        f"{where}, column 'split'",
                        f"split {cells['split']!r} is not one of {', '.join(VALID_SPLITS)}",
                    )
                )
                continue
        rate = None
        if cells.get("sample_rate"):
            try:
                rate = _parse_rate(cells["sample_rate"])
            except ValueError:
                problems.append(
                    Problem(
                        shown,
                        f"{where}, column 'sample_rate'",
                        f"sample rate {cells['sample_rate']!r} is not a positive number (Hz)",
                    )
                )
                continue
        extra = {k: v for k, v in cells.items() if k not in ("path", "label", "group", "split")}
        extra.pop("sample_rate", None)
        specs.append(
            RecordingSpec(
                path=full.resolve(),
                relpath=relpath,
                label=label,
                group=cells.get("group") or None,
                split=split,
                sample_rate=rate,
                metadata=extra,
            )
        )
    if n_rows == 0:
        problems.append(Problem(shown, "", "manifest has a header but no rows"))
    return specs


def _scan_folders(root: Path, warnings: list[Problem]) -> list[RecordingSpec]:
    specs: list[RecordingSpec] = []
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and _is_csv(p.name))
    if loose:
        warnings.append(
            Problem(
                str(root),
                "",
                f"{len(loose)} CSV file(s) directly in the data folder are ignored "
                f"(e.g. '{loose[0]}'); put each recording in a folder named after its class, "
                "or list them in manifest.csv",
            )
        )
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = 0
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not _is_csv(name):
                    continue
                full = Path(dirpath) / name
                specs.append(
                    RecordingSpec(
                        path=full.resolve(),
                        relpath=full.relative_to(root).as_posix(),
                        label=folder.name,
                    )
                )
                found += 1
        if not found:
            warnings.append(
                Problem(f"{folder.name}/", "", "label folder contains no CSV file; class skipped")
            )
    return specs


def _discover(
    data_dir: str | Path, manifest: str | Path | None
) -> tuple[list[RecordingSpec], list[Problem], list[Problem]]:
    """Return ``(specs, warnings, errors)`` without raising, so callers can add their own errors."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    root = Path(os.path.abspath(Path(data_dir).expanduser()))
    if not root.exists():
        return [], warnings, [Problem(str(data_dir), "", "data folder does not exist")]
    if not root.is_dir():
        return [], warnings, [Problem(str(data_dir), "", "data path is not a folder")]
    if manifest is not None:
        mpath = Path(manifest).expanduser()
        mpath = mpath if mpath.is_absolute() else root / mpath
        shown = str(manifest)
        specs = _read_manifest(root, mpath, shown, problems)
    elif (root / "manifest.csv").is_file():
        specs = _read_manifest(root, root / "manifest.csv", "manifest.csv", problems)
    else:
        specs = _scan_folders(root, warnings)
    if not specs and not problems:
        problems.append(
            Problem(
                str(data_dir),
                "",
                "no recordings found: expected <data_dir>/<label>/*.csv (one folder per class) "
                "or a manifest.csv with columns path,label",
            )
        )
    specs.sort(key=lambda s: (s.label, s.relpath))
    return specs, warnings, problems


def discover_with_warnings(
    data_dir: str | Path, manifest: str | Path | None = None
) -> tuple[list[RecordingSpec], list[Problem]]:
    """Like :func:`discover`, also returning warnings (e.g. a label folder without CSV files).

    Args:
        data_dir: the data folder.
        manifest: manifest path, relative to ``data_dir`` or absolute; see :func:`discover`.

    Raises:
        DataValidationError: with every problem found.
    """
    specs, warnings, problems = _discover(data_dir, manifest)
    if problems:
        raise DataValidationError(problems)
    return specs, warnings


def discover(data_dir: str | Path, manifest: str | Path | None = None) -> list[RecordingSpec]:
    """Find the recordings of a data folder, sorted by ``(label, relpath)``.

    With ``manifest`` given, or a ``manifest.csv`` in ``data_dir``, the manifest lists the files
    (columns ``path`` and ``label``, optional ``group``, ``split``, ``sample_rate`` and any other
    columns kept as metadata; paths are relative to ``data_dir`` and must stay inside it).
    Otherwise every ``data_dir/<label>/**/*.csv`` (or ``.csv.gz``) is a recording of ``label``.

    Args:
        data_dir: the data folder.
        manifest: manifest path, relative to ``data_dir`` or absolute.

    Raises:
        DataValidationError: with every problem found (missing folder, bad manifest rows, ...).
    """
    return discover_with_warnings(data_dir, manifest)[0]


# --------------------------------------------------------------------------------- reading


def _fail(display: str, reason: str, location: str = "") -> DataValidationError:
    return DataValidationError([Problem(display, location, reason)])


def _read_bytes(path: Path, display: str, limit: int | None = None) -> bytes:
    """Read (and gunzip) a file, or its first ``limit`` bytes; BOM stripped."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read() if limit is None else fh.read(limit)
            if raw[:2] == b"\x1f\x8b":
                fh.seek(0)
                try:
                    with gzip.GzipFile(fileobj=fh) as gz:
                        raw = gz.read() if limit is None else gz.read(limit)
                except (OSError, EOFError, zlib.error) as exc:
                    raise _fail(display, f"gzip content is corrupt or truncated ({exc})") from None
    except PermissionError:
        raise _fail(display, "cannot read the file: permission denied") from None
    except IsADirectoryError:
        raise _fail(display, "is a folder, not a CSV file") from None
    except FileNotFoundError:
        raise _fail(display, "file not found") from None
    except OSError as exc:
        raise _fail(display, f"cannot read the file ({exc.strerror or exc})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw


def _looks_numeric(text: str) -> bool:
    return bool(_NUMBER.match(text))


def _is_time_name(name: str) -> bool:
    return name.strip().casefold() in TIME_COLUMN_NAMES


def _parse_header(raw: bytes, display: str) -> tuple[list[str], str]:
    """Check that ``raw`` is CSV text and return ``(column names, delimiter)``."""
    if _NON_SPACE.search(raw) is None:
        raise _fail(display, "file is empty")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise _fail(display, "file is UTF-16 encoded; save it as UTF-8 CSV")
    if b"\x00" in raw[:_SNIFF_BYTES]:
        raise _fail(display, "not a text CSV file (binary content)")
    end = raw.find(b"\n")
    line_b = (raw if end < 0 else raw[:end]).rstrip(b"\r")
    try:
        line = line_b.decode("utf-8")
    except UnicodeDecodeError:
        # Spreadsheet exports on Windows write the header in cp1252 / latin-1.
        line = line_b.decode("latin-1")
    if any(ord(c) < 32 and c != "\t" for c in line):
        raise _fail(display, "not a text CSV file (control characters in the first line)")
    if not line.strip():
        raise _fail(display, "the first line is empty; expected a header row naming the channels")
    delimiter = _sniff_delimiter(line)
    names = [n.strip() for n in next(csv.reader([line], delimiter=delimiter))]
    if all(_looks_numeric(n) for n in names if n):
        raise _fail(
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
        raise _fail(display, f"duplicate column names: {where}", "row 1")
    return names, delimiter


def read_header(path: Path) -> list[str]:
    """Return the channel names of a recording from its header line alone (cheap).

    The time column (see ``TIME_COLUMN_NAMES``) and unnamed columns are left out. Whether a
    column is numeric is not known from the header, so a text column is still listed here;
    :func:`read_recording` drops it.

    Args:
        path: the CSV file (plain or gzip).

    Raises:
        DataValidationError: the file cannot be read or has no usable header.
    """
    path = Path(path)
    raw = _read_bytes(path, str(path), limit=_SNIFF_BYTES)
    names, _ = _parse_header(raw, str(path))
    return [n for n in names if n and not _is_time_name(n)]


def _file_row(raw: bytes, index: int) -> int:
    """Row number in the file (1-based, header = row 1) of data row ``index`` (0-based)."""
    if b"\n\n" not in raw and b"\n\r\n" not in raw:
        return index + 2
    # The parser skips blank lines; count them back in.
    count = -1
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if line in (b"", b"\r"):
            continue
        count += 1
        if count == index + 1:
            return lineno
    return index + 2


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


def _arrow_read(raw: bytes, names: list[str], delimiter: str, include: list[str], types: dict):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pacsv.read_csv(
        pa.py_buffer(raw),
        read_options=pacsv.ReadOptions(
            column_names=names, skip_rows=1, use_threads=True, block_size=_BLOCK_SIZE
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(
            column_types=types, include_columns=include, check_utf8=False
        ),
    )


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


def _diagnose(
    raw: bytes,
    display: str,
    names: list[str],
    arrow_names: list[str],
    delimiter: str,
    include: list[str],
    requested: bool,
    time_name: str | None,
) -> tuple[Any, list[str]]:
    """Slow path after the typed read failed: find the first bad row/column, or drop text columns.

    Returns the table read with type inference and the sensor columns that are numeric.
    """
    import pyarrow as pa

    try:
        table = _arrow_read(raw, arrow_names, delimiter, include, {})
    except pa.ArrowInvalid as exc:
        ragged = _find_ragged(raw, delimiter, len(names))
        if ragged is None:
            raise _fail(display, f"cannot parse the CSV ({exc})") from None
        row, found = ragged
        reason = (
            f"expected {len(names)} fields like the header, found {found}"
            if found >= 0
            else "malformed quoting"
        )
        raise _fail(display, reason, f"row {row}") from None
    keep: list[str] = []
    first_bad: tuple[int, str, str] | None = None
    for name in include:
        if name == time_name:
            continue
        col = table.column(name)
        typ = col.type
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ):
            keep.append(name)
            continue
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            n_numeric, first = _classify_text_column(col)
            if n_numeric == 0 and len(col) and _DECIMAL_COMMA.match(str(col[0].as_py() or "")):
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
            raise _fail(
                display,
                f"channel is not numeric (first value {str(sample)!r})",
                f"column '{name}'",
            )
    if first_bad is not None:
        index, name, value = first_bad
        text = "" if value is None else str(value)
        where = f"row {_file_row(raw, index)}, column '{name}'"
        if text.strip() in _NULL_TOKENS:
            raise _fail(display, "empty or NaN value", where)
        reason = f"non-numeric value {text!r}"
        if text.strip() == name:
            reason += " (the header line repeated inside the file?)"
        elif _DECIMAL_COMMA.match(text):
            reason += " (decimal comma? use '.' as the decimal separator)"
        raise _fail(display, reason, where)
    return table, keep


def _time_seconds(col: Any, raw: bytes, display: str, name: str) -> np.ndarray:
    import pyarrow as pa

    typ = col.type
    if col.null_count:
        # Rare error path: finding the row may load pyarrow.compute.
        import pyarrow.compute as pc

        first = pc.index(pc.is_null(col), pa.scalar(True)).as_py()
        raise _fail(display, "empty time value", f"row {_file_row(raw, first)}, column '{name}'")
    if pa.types.is_timestamp(typ) or pa.types.is_integer(typ) or pa.types.is_floating(typ):
        if pa.types.is_timestamp(typ):
            # Epoch nanoseconds exceed float64's integer precision: subtract the start first.
            ticks = np.empty(len(col), dtype=np.int64)
            _column_into(col, ticks)
            return (ticks - ticks[0]).astype(np.float64) / _TIMESTAMP_UNITS[typ.unit]
        t = np.empty(len(col), dtype=np.float64)
        _column_into(col, t)
        return t
    raise _fail(display, "time column is not numeric (expected seconds)", f"column '{name}'")


_TIMESTAMP_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def _column_into(col: Any, out: np.ndarray) -> None:
    """Copy a numeric pyarrow ChunkedArray into ``out`` (nulls become NaN).

    Reads the Arrow buffers directly: pyarrow's own ``to_numpy``/``cast`` import pandas, which
    costs a third of a second on the first file.
    """
    import pyarrow as pa

    offset = 0
    for chunk in col.chunks:
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


def _rate_from_time(t: np.ndarray, raw: bytes, display: str, name: str) -> float | None:
    """Infer the sample rate from a time column in seconds; irregular sampling is an error."""
    if len(t) < 2:
        return None
    if not np.isfinite(t).all():
        first = int(np.flatnonzero(~np.isfinite(t))[0])
        where = f"row {_file_row(raw, first)}, column '{name}'"
        raise _fail(display, "time value is not finite", where)
    step = (t[-1] - t[0]) / (len(t) - 1)
    d = np.diff(t)
    if step <= 0 or (d <= 0).any():
        first = int(np.flatnonzero(d <= 0)[0]) if (d <= 0).any() else 0
        where = f"row {_file_row(raw, first + 1)}, column '{name}'"
        raise _fail(
            display, "time column does not increase (times must be strictly ascending)", where
        )
    off = np.abs(d - step) > TIME_STEP_TOLERANCE * step
    if off.any():
        first = int(np.flatnonzero(off)[0])
        where = f"row {_file_row(raw, first + 1)}, column '{name}'"
        raise _fail(
            display,
            f"irregular time column: step {d[first]:.6g} s where the mean step is {step:.6g} s "
            "(samples must be evenly spaced; missing or repeated rows?)",
            where,
        )
    # Time values are printed with few digits; keep 6 significant digits of the rate.
    return float(f"{1.0 / step:.6g}")


def read_recording(
    path: Path, channels: list[str] | None = None, display: str | None = None
) -> tuple[np.ndarray, list[str], float | None]:
    """Parse one recording CSV into a float32 ``(channels, samples)`` array.

    Accepts a UTF-8 BOM, ``,`` ``;`` or tab delimiters (sniffed from the header line), CRLF line
    ends, gzip content (detected by its magic bytes, whatever the extension) and unicode names.
    Every numeric column is a channel except a time column (``TIME_COLUMN_NAMES``), from which the
    sample rate is inferred; a column without a single number in it (a comment, a status text) is
    not a channel and is dropped. Parsing is done by pyarrow with threads; a slower diagnosis runs
    only when that fails, to name the first bad row.

    Args:
        path: the CSV file.
        channels: channel names to return, in this order; ``None`` for all numeric columns in
            file order.
        display: the file name used in error messages (default: ``path``).

    Returns:
        ``(data, channel_names, sample_rate)``: C-contiguous float32 array, the names of its rows,
        and the rate in Hz from the time column, or ``None`` without one.

    Raises:
        DataValidationError: naming the file, the row and/or column, and the reason.
    """
    import pyarrow as pa

    path = Path(path)
    display = display or str(path)
    raw = _read_bytes(path, display)
    names, delimiter = _parse_header(raw, display)
    end = raw.find(b"\n")
    if end < 0 or _NON_SPACE.search(raw, end + 1) is None:
        raise _fail(display, "the file has a header but no data rows")
    # Unnamed columns (e.g. from a trailing delimiter) get placeholder names for the parser.
    arrow_names = [n or f"<unnamed column {i + 1}>" for i, n in enumerate(names)]
    time_names = [n for n in names if n and _is_time_name(n)]
    time_name = time_names[0] if time_names else None
    available = [n for n in names if n and not _is_time_name(n)]
    if channels is not None:
        channels = list(channels)
        dup = [c for c, k in Counter(channels).items() if k > 1]
        if dup:
            raise _fail(display, f"channel(s) requested twice: {', '.join(map(repr, dup))}")
        missing = [c for c in channels if c not in available]
        if missing:
            raise _fail(
                display,
                f"channel(s) {', '.join(repr(m) for m in missing)} not found; "
                f"available: {', '.join(repr(a) for a in available) or 'none'}",
            )
        selected = channels
        unnamed: list[str] = []
    else:
        selected = list(available)
        unnamed = [a for a, n in zip(arrow_names, names, strict=True) if not n]
    include = selected + unnamed + ([time_name] if time_name else [])
    types = {name: pa.float32() for name in selected}
    try:
        table = _arrow_read(raw, arrow_names, delimiter, include, types)
    except pa.ArrowInvalid:
        table, selected = _diagnose(
            raw,
            display,
            names,
            arrow_names,
            delimiter,
            include,
            channels is not None,
            time_name,
        )
        selected = [n for n in selected if n not in unnamed]
    for name in unnamed:
        col = table.column(name)
        if col.null_count != len(col):
            # A trailing delimiter makes an empty unnamed column; one with values needs a name.
            where = f"column {arrow_names.index(name) + 1}"
            raise _fail(display, "column has values but no name in the header", where)
    if not selected:
        only = f" besides the time column '{time_name}'" if time_name else ""
        raise _fail(display, f"no numeric column{only}: every channel must be a column of numbers")
    n = table.num_rows
    data = np.empty((len(selected), n), dtype=np.float32)
    for row, name in enumerate(selected):
        _column_into(table.column(name), data[row])
    _check_finite(data, selected, raw, display)
    rate = None
    if time_name is not None:
        t = _time_seconds(table.column(time_name), raw, display, time_name)
        rate = _rate_from_time(t, raw, display, time_name)
    return data, list(selected), rate


def _check_finite(data: np.ndarray, names: list[str], raw: bytes, display: str) -> None:
    # min/max propagate NaN and reach inf, so one pass per channel settles the common (clean) case.
    if data.size == 0:
        return
    lo, hi = data.min(axis=1), data.max(axis=1)
    if np.isfinite(lo).all() and np.isfinite(hi).all():
        return
    first: tuple[int, int] | None = None
    n_bad = 0
    for c in range(data.shape[0]):
        bad = ~np.isfinite(data[c])
        k = int(np.count_nonzero(bad))
        if k:
            n_bad += k
            idx = int(np.argmax(bad))
            if first is None or idx < first[0]:
                first = (idx, c)
    assert first is not None
    idx, c = first
    value = data[c, idx]
    reason = (
        "empty or NaN value" if np.isnan(value) else "infinite value (or too large for float32)"
    )
    if n_bad > 1:
        reason += f"; {n_bad} such cells in this file"
    raise _fail(display, reason, f"row {_file_row(raw, idx)}, column '{names[c]}'")


# --------------------------------------------------------------------------------- checks


def channel_warnings(data: np.ndarray, names: list[str]) -> list[tuple[str, str]]:
    """Return ``(location, reason)`` for constant (flat-line) and clipped channels.

    A channel is clipped (saturated) when the samples at its maximum value, or at its minimum
    value, that sit in runs of at least ``CLIP_MIN_RUN`` equal consecutive samples make up more
    than ``CLIP_MIN_FRACTION`` (0.1 %) of the channel, or when more than ``CLIP_ANY_FRACTION``
    (1 %) of all samples sit exactly at one extreme (broadband signals hit a rail in isolated
    samples). A healthy analogue signal reaches its extreme once or a few times; a sensor or ADC
    at its rail stays there for several samples, many times.

    Args:
        data: ``(channels, samples)`` array.
        names: the channel names.
    """
    out: list[tuple[str, str]] = []
    n = data.shape[1]
    if n == 0:
        return out
    lo, hi = data.min(axis=1), data.max(axis=1)
    for c, name in enumerate(names):
        where = f"column '{name}'"
        if lo[c] == hi[c]:
            out.append((where, f"channel is constant (flat line at {float(lo[c]):.6g})"))
            continue
        x = data[c]
        reasons = []
        for level, side in ((hi[c], "maximum"), (lo[c], "minimum")):
            idx = np.flatnonzero(x == level)
            if len(idx) < CLIP_MIN_RUN:
                continue
            breaks = np.flatnonzero(np.diff(idx) != 1)
            starts = np.concatenate(([0], breaks + 1))
            stops = np.concatenate((breaks + 1, [len(idx)]))
            lengths = stops - starts
            in_runs = int(lengths[lengths >= CLIP_MIN_RUN].sum())
            if in_runs > CLIP_MIN_FRACTION * n:
                reasons.append(
                    f"{in_runs} samples ({100.0 * in_runs / n:.2g}%) stay at its {side} "
                    f"{float(level):.6g} in runs of {CLIP_MIN_RUN} or more"
                )
            elif len(idx) > CLIP_ANY_FRACTION * n:
                reasons.append(
                    f"{len(idx)} samples ({100.0 * len(idx) / n:.2g}%) sit exactly at its "
                    f"{side} {float(level):.6g}"
                )
        if reasons:
            out.append((where, "channel looks clipped (saturated): " + "; ".join(reasons)))
    return out


def resample(data: np.ndarray, from_rate: float, to_rate: float) -> tuple[np.ndarray, float]:
    """Resample ``(channels, samples)`` with a polyphase filter (``scipy.signal.resample_poly``).

    The ratio is approximated by a fraction with a denominator of at most 1000, so the effective
    rate can differ from ``to_rate`` by a few parts per million; it is returned.

    Args:
        data: float32 ``(channels, samples)``.
        from_rate: the recording's rate in Hz.
        to_rate: the wanted rate in Hz.

    Returns:
        ``(resampled float32 C-contiguous array, effective rate)``.
    """
    from scipy.signal import resample_poly

    ratio = Fraction(to_rate / from_rate).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    out = resample_poly(data, up, down, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32), from_rate * up / down


def _same_rate(a: float, b: float) -> bool:
    return abs(a - b) <= RATE_RTOL * max(abs(a), abs(b))


def _fmt_rate(rate: float) -> str:
    return f"{rate:g} Hz"


@dataclass
class _FileResult:
    data: np.ndarray | None = None
    channels: list[str] = field(default_factory=list)
    rate: float | None = None  # rate of `data`, or None when unknown
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def _load_one(
    spec: RecordingSpec,
    channels: list[str] | None,
    sample_rate: float | None,
    cache: WaveformCache | None,
    cache_failed: list[str],
) -> _FileResult:
    res = _FileResult()
    settings = {
        "parser": PARSER_VERSION,
        "channels": channels,
        "sample_rate": sample_rate,
        "manifest_sample_rate": spec.sample_rate,
    }
    hit = cache.get(spec.path, settings) if cache is not None else None
    if hit is not None:
        data, meta = hit
        source_rate = meta.get("source_rate")
        res.data, res.channels, res.rate = data, list(meta["channels"]), meta.get("sample_rate")
        res.warnings = [Problem(spec.relpath, loc, why) for loc, why in meta.get("warnings", [])]
        _check_rate_conflict(spec, source_rate, res)
        return res
    try:
        data, names, time_rate = read_recording(spec.path, channels, display=spec.relpath)
    except DataValidationError as exc:
        res.problems.extend(exc.problems)
        return res
    warns = channel_warnings(data, names)
    res.channels = names
    res.warnings = [Problem(spec.relpath, loc, why) for loc, why in warns]
    if not _check_rate_conflict(spec, time_rate, res):
        return res
    own = time_rate if time_rate is not None else spec.sample_rate
    rate = own
    if sample_rate is not None:
        rate = sample_rate
        if own is not None and not _same_rate(own, sample_rate):
            data, _ = resample(data, own, sample_rate)
    res.data, res.rate = data, rate
    if cache is not None and not cache_failed:
        meta = {
            "channels": names,
            "sample_rate": rate,
            "source_rate": time_rate,
            "warnings": [list(w) for w in warns],
        }
        try:
            res.data = cache.put(spec.path, settings, data, meta)
        except OSError as exc:
            cache_failed.append(f"{cache.root}: {exc.strerror or exc}")
    return res


def _check_rate_conflict(spec: RecordingSpec, time_rate: float | None, res: _FileResult) -> bool:
    if time_rate is not None and spec.sample_rate is not None:
        if not _same_rate(time_rate, spec.sample_rate):
            res.problems.append(
                Problem(
                    spec.relpath,
                    "",
                    f"the time column gives {_fmt_rate(time_rate)} but the manifest's sample_rate "
                    f"says {_fmt_rate(spec.sample_rate)}",
                )
            )
            res.data = None
            return False
    return True


def load_dataset(
    data_dir: str | Path,
    manifest: str | Path | None = None,
    channels: list[str] | None = None,
    sample_rate: float | None = None,
    min_samples: int = 1,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> LoadedDataset:
    """Discover, read and validate every recording of a data folder.

    All problems (per file and across files) are collected and raised together as one
    :class:`DataValidationError` before anything is returned. Across files, every recording must
    have the same channels in the same order (unless ``channels`` selects them) and the same
    sample rate. The rate comes from ``sample_rate`` when given: a recording whose own rate (time
    column or manifest) differs is resampled to it (see :func:`resample`); otherwise it comes from
    the time columns or the manifest, and must be known.

    Args:
        data_dir: the data folder (folder per class, or with a manifest).
        manifest: manifest path, relative to ``data_dir`` or absolute; see :func:`discover`.
        channels: channels to use, in this order; ``None`` for all (which must then match).
        sample_rate: the rate (Hz) the model works at; ``None`` to take it from the files.
        min_samples: shortest acceptable recording (after resampling), e.g. one window.
        cache_dir: where parsed arrays are cached; ``None`` reads without a cache.
        progress: print a progress line to stderr while reading.

    Raises:
        DataValidationError: with every problem found.
    """
    specs, warnings, problems = _discover(data_dir, manifest)
    if not specs:
        raise DataValidationError(problems)
    if sample_rate is not None and not (math.isfinite(sample_rate) and sample_rate > 0):
        raise DataValidationError(
            f"data.sample_rate must be a positive number of Hz, got {sample_rate!r}",
            file=str(data_dir),
        )
    cache = WaveformCache(cache_dir) if cache_dir is not None else None
    cache_failed: list[str] = []
    results: list[_FileResult] = []
    workers = max(1, min(4, os.cpu_count() or 1, len(specs)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [
            pool.submit(_load_one, s, channels, sample_rate, cache, cache_failed) for s in specs
        ]
        for i, job in enumerate(jobs, 1):
            results.append(job.result())
            if progress:
                end = "\n" if i == len(jobs) else ""
                print(
                    f"\rReading recordings: {i}/{len(jobs)}", end=end, file=sys.stderr, flush=True
                )
    if cache_failed:
        warnings.append(
            Problem(cache_failed[0], "", "cannot write the waveform cache; reading without it")
        )
    for res in results:
        problems.extend(res.problems)
        warnings.extend(res.warnings)
    good = [(s, r) for s, r in zip(specs, results, strict=True) if r.data is not None]

    # Channels: with no selection, every file must match the most common channel list.
    final_channels = list(channels) if channels is not None else []
    if good and channels is None:
        common = Counter(tuple(r.channels) for _, r in good).most_common(1)[0][0]
        final_channels = list(common)
        ref = next(s.relpath for s, r in good if tuple(r.channels) == common)
        for s, r in good:
            if tuple(r.channels) == common:
                continue
            missing = [c for c in common if c not in r.channels]
            extra = [c for c in r.channels if c not in common]
            detail = []
            if missing:
                detail.append("missing " + ", ".join(repr(c) for c in missing))
            if extra:
                detail.append("extra " + ", ".join(repr(c) for c in extra))
            if not missing and not extra:
                detail.append("same names in another order")
            problems.append(
                Problem(
                    s.relpath,
                    "header",
                    f"channels {r.channels} differ from {list(common)} of {ref} "
                    f"({'; '.join(detail)}); all files must share channels, "
                    "or select them with data.channels",
                )
            )

    # Sample rate.
    final_rate = sample_rate
    if sample_rate is None and good:
        known = [(s, r.rate) for s, r in good if r.rate is not None]
        if not known:
            problems.append(
                Problem(
                    str(data_dir),
                    "",
                    "sample rate unknown: add a time column, a manifest sample_rate column, "
                    "or set data.sample_rate",
                )
            )
        else:
            common_rate = Counter(rate for _, rate in known).most_common(1)[0][0]
            ref = next(s.relpath for s, rate in known if rate == common_rate)
            final_rate = common_rate
            for s, r in good:
                if r.rate is None:
                    problems.append(
                        Problem(
                            s.relpath,
                            "",
                            f"sample rate unknown (no time column or manifest sample_rate) while "
                            f"{ref} has {_fmt_rate(common_rate)}; set data.sample_rate",
                        )
                    )
                elif not _same_rate(r.rate, common_rate):
                    problems.append(
                        Problem(
                            s.relpath,
                            "",
                            f"sample rate {_fmt_rate(r.rate)} differs from {_fmt_rate(common_rate)}"
                            f" of {ref}; set data.sample_rate to resample all files to one rate",
                        )
                    )

    for s, r in good:
        n = r.data.shape[1] if r.data is not None else 0
        if n < min_samples:
            problems.append(
                Problem(
                    s.relpath,
                    "",
                    f"recording has {n} samples, fewer than the {min_samples} required "
                    "(at least one window)",
                )
            )

    labels = sorted({s.label for s in specs})
    if len(labels) == 1:
        problems.append(
            Problem(
                str(data_dir),
                "",
                f"only one class ('{labels[0]}') found; a classifier needs at least two classes",
            )
        )
    if problems:
        raise DataValidationError(problems)
    assert final_rate is not None
    return LoadedDataset(
        recordings=specs,
        waveforms=[r.data for r in results if r.data is not None],
        channels=final_channels,
        sample_rate=float(final_rate),
        warnings=warnings,
    )
