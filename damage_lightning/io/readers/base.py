"""The reader interface: what every recording format returns, and the checks all formats share.

A reader turns one file into a :class:`RawRecording`; :func:`check_raw` then applies the same
validation to every format, so a NaN, an empty file or a missing channel reads the same whether it
came from a CSV, a ``.mat`` or a ``.wav`` file. Throughout, ``display`` is the file's name as
shown in errors.
"""

from __future__ import annotations

import abc
import importlib
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from damage_lightning.errors import DataValidationError, Problem

#: Column names (compared case-insensitively) holding time in seconds rather than a sensor channel.
TIME_COLUMN_NAMES = frozenset(
    {"time", "t", "timestamp", "time_s", "time (s)", "time [s]", "time[s]", "time_sec", "seconds"}
)
#: A step of the time column further than this fraction from the mean step is irregular.
TIME_STEP_TOLERANCE = 0.25
#: Ticks per second of Arrow / numpy timestamp units.
TIMESTAMP_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
# Samples of the time column checked at a time (bounds the checks' temporaries to a few MB).
_TIME_SLICE = 1 << 18


def is_time_name(name: str) -> bool:
    """Whether a column or variable name means time in seconds (see ``TIME_COLUMN_NAMES``)."""
    return name.strip().casefold() in TIME_COLUMN_NAMES


@dataclass(frozen=True)
class ReaderOptions:
    """Format-specific choices, the same for every file of a dataset.

    Args:
        variables: ``.mat`` files: glob patterns (``fnmatch``, case-sensitive), one channel per
            pattern, each matching exactly one variable of every file (``"*_DE_time"`` picks
            ``X097_DE_time`` in one file and ``X105_DE_time`` in the next). ``None``: take the
            single numeric array of each file.
        group: ``.tdms`` files: the group to read; ``None``: the only group with data channels.
    """

    variables: tuple[str, ...] | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        # YAML and JSON give lists (or one string); the dataclass is frozen and hashed as a tuple.
        variables = self.variables
        if isinstance(variables, str):
            variables = (variables,)
        if variables is not None:
            variables = tuple(str(v) for v in variables) or None
        object.__setattr__(self, "variables", variables)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (part of the waveform cache key)."""
        return {
            "variables": list(self.variables) if self.variables is not None else None,
            "group": self.group,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ReaderOptions:
        """Inverse of :meth:`to_json`; ``None`` or missing keys give the defaults.

        Args:
            data: what :meth:`to_json` wrote.
        """
        data = data or {}
        variables = data.get("variables")
        return cls(
            variables=tuple(variables) if variables is not None else None,
            group=data.get("group"),
        )


@dataclass
class RawRecording:
    """One file's samples as a reader returns them.

    Args:
        data: float32, C-contiguous, ``(channels, samples)``.
        channels: the name of each row of ``data``.
        sample_rate: the rate in Hz that the file itself states (time column, WAV header, TDMS
            ``wf_increment``, a ``.mat`` ``fs`` variable), or ``None`` when it states none.
    """

    data: np.ndarray
    channels: list[str]
    sample_rate: float | None


class Reader(abc.ABC):
    """One file format. Subclasses set ``name`` and ``suffixes`` and implement :meth:`read`.

    A reader is stateless: one instance serves every file and every thread.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    #: Bump when the arrays produced change, so that cached waveforms miss.
    version: ClassVar[int] = 1

    @abc.abstractmethod
    def read(
        self,
        path: Path,
        display: str,
        options: ReaderOptions,
        channels: list[str] | None = None,
    ) -> RawRecording:
        """Read one recording, validated by :func:`check_raw`.

        Args:
            path: the file.
            display: the file name used in errors.
            options: format-specific choices.
            channels: channel names to return, in this order; ``None`` for every numeric channel
                in file order.

        Raises:
            DataValidationError: naming ``display``, the location and the reason.
        """

    def channel_names(self, path: Path, display: str, options: ReaderOptions) -> list[str]:
        """The channel names :meth:`read` gives with ``channels=None``; override when cheaper."""
        return self.read(path, display, options).channels


def fail(display: str, reason: str, location: str = "") -> DataValidationError:
    """The error (to raise) for one problem: ``location`` is e.g. ``"sample 5, channel 'x'"``."""
    return DataValidationError(Problem(display, location, reason))


def open_error(exc: OSError, display: str) -> DataValidationError:
    """The error for a file that ``open`` (or a library opening it) failed on, alike for all."""
    if isinstance(exc, FileNotFoundError):
        return fail(display, "file not found")
    if isinstance(exc, PermissionError):
        return fail(display, "cannot read the file: permission denied")
    if isinstance(exc, IsADirectoryError):
        return fail(display, "is a folder, not a recording file")
    return fail(display, f"cannot read the file ({exc.strerror or exc})")


def read_head(path: Path, display: str, size: int) -> bytes:
    """The first ``size`` bytes of a file; a missing, unreadable or empty file is an error."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(size)
    except OSError as exc:
        raise open_error(exc, display) from None
    if not head:
        raise fail(display, "file is empty")
    return head


@contextmanager
def library_errors(display: str, what: str) -> Iterator[None]:
    """Turn whatever a format library raises on a damaged file into a :class:`DataValidationError`.

    Libraries signal damaged files with every exception type there is (``ValueError``,
    ``OSError``, ``struct.error``, ``KeyError`` ...), so everything but our own error is caught:
    a bad file must be reported, never crash a worker. Keep the ``with`` block to library calls.

    Args:
        display: the file's name in errors.
        what: the kind of file, e.g. ``".mat file"``.
    """
    try:
        yield
    except DataValidationError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise open_error(exc, display) from None
    except Exception as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise fail(display, f"cannot read the {what} ({detail})") from None


def import_optional(module: str, package: str, display: str, what: str) -> ModuleType:
    """Import a format library, or say which package to install.

    Args:
        module: the module to import, e.g. ``"nptdms"``.
        package: the name to ``pip install``, e.g. ``"npTDMS"``.
        display: the file's name in errors.
        what: the kind of file, e.g. ``".tdms files"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise fail(
            display, f"reading {what} needs the '{package}' package: pip install {package}"
        ) from None


def requested_channels(available: list[str], channels: list[str] | None, display: str) -> list[str]:
    """The channel names to read: ``channels`` checked against ``available``, or all of them.

    Args:
        available: the channels the file has, in file order.
        channels: names requested, in this order; ``None`` for all.
        display: the file's name in errors.
    """
    if channels is None:
        return list(available)
    channels = list(channels)
    dup = [c for c, k in Counter(channels).items() if k > 1]
    if dup:
        raise fail(display, f"channel(s) requested twice: {', '.join(map(repr, dup))}")
    missing = [c for c in channels if c not in available]
    if missing:
        raise fail(
            display,
            f"channel(s) {', '.join(repr(m) for m in missing)} not found; "
            f"available: {', '.join(repr(a) for a in available) or 'none'}",
        )
    return channels


def select_channels(raw: RawRecording, channels: list[str] | None, display: str) -> RawRecording:
    """Keep the requested channels, in the requested order (see :func:`requested_channels`).

    Args:
        raw: what the reader found.
        channels: names to keep, in this order; ``None`` keeps everything.
        display: the file's name in errors.
    """
    names = requested_channels(raw.channels, channels, display)
    if names == raw.channels:
        return raw
    rows = [raw.channels.index(c) for c in names]
    return RawRecording(raw.data[rows], names, raw.sample_rate)


def check_finite(
    data: np.ndarray, names: list[str], display: str, location: Callable[[int, str], str]
) -> None:
    """Fail on the first NaN or infinite value, saying how many there are.

    Args:
        data: ``(channels, samples)``.
        names: the channel names.
        display: the file's name in errors.
        location: ``(sample index, channel name)`` -> location text, e.g. the CSV row.
    """
    if data.size == 0:
        return
    # min/max propagate NaN and reach inf, so one pass per channel settles the common (clean) case.
    lo, hi = data.min(axis=1), data.max(axis=1)
    if np.isfinite(lo).all() and np.isfinite(hi).all():
        return
    bad = ~np.isfinite(data)
    n_bad = int(np.count_nonzero(bad))
    idx = int(np.argmax(bad.any(axis=0)))
    c = int(np.argmax(bad[:, idx]))
    value = data[c, idx]
    reason = (
        "empty or NaN value" if np.isnan(value) else "infinite value (or too large for float32)"
    )
    if n_bad > 1:
        reason += f"; {n_bad} such values in this file"
    raise fail(display, reason, location(idx, names[c]))


def first_null(col: Any) -> int:
    """Index of the first null of a pyarrow array or chunked array that has one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return int(pc.index(pc.is_null(col), pa.scalar(True)).as_py())


def check_raw(raw: RawRecording, display: str) -> RawRecording:
    """The validation every format shares; returns the recording as float32, C-contiguous.

    Args:
        raw: what a reader produced.
        display: the file's name in errors.
    """
    data = np.asarray(raw.data)
    if data.ndim != 2 or data.shape[0] != len(raw.channels):
        raise fail(
            display,
            f"the reader produced an array of shape {data.shape} for {len(raw.channels)} "
            "channel(s); expected (channels, samples)",
        )
    if data.shape[0] == 0:
        raise fail(display, "no numeric channel: every channel must hold numbers")
    if data.shape[1] == 0:
        raise fail(display, "the file has no samples")
    if data.dtype != np.float32 or not data.flags.c_contiguous:
        # Values beyond float32's range become inf here, and check_finite names them.
        with np.errstate(over="ignore"):
            data = np.ascontiguousarray(data, dtype=np.float32)
    check_finite(data, raw.channels, display, lambda i, name: f"sample {i + 1}, channel '{name}'")
    rate = raw.sample_rate
    if rate is not None:
        rate = float(rate)
        if not (math.isfinite(rate) and rate > 0):
            raise fail(display, f"the file states a sample rate of {rate!r} Hz; expected > 0")
    return RawRecording(data, list(raw.channels), rate)


def seconds_since_start(ticks: np.ndarray, unit: str, start: int | None = None) -> np.ndarray:
    """Timestamps (integer ticks of ``unit``) as seconds since the first one.

    Epoch nanoseconds exceed float64's integer precision, so the start is subtracted first.

    Args:
        ticks: int64 ticks.
        unit: ``"s"``, ``"ms"``, ``"us"`` or ``"ns"``.
        start: the first tick of the recording, when ``ticks`` is a later part of it (a reader
            converting block by block); ``None``: ``ticks[0]``.
    """
    ticks = np.asarray(ticks, dtype=np.int64)
    start = ticks[0] if start is None else np.int64(start)
    return (ticks - start).astype(np.float64) / TIMESTAMP_UNITS[unit]


def _time_steps(t: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(first index, np.diff)`` of ``t``, a slice at a time.

    Whole-recording temporaries (the steps, their deviations) would each be as large as the time
    column itself.
    """
    for start in range(0, len(t) - 1, _TIME_SLICE):
        yield start, np.diff(t[start : start + _TIME_SLICE + 1])


def rate_from_times(
    t: np.ndarray, display: str, column: str, row_label: Callable[[int], str]
) -> float | None:
    """Infer the sample rate from times in seconds; irregular sampling is an error.

    Args:
        t: time of each sample, in seconds.
        display: the file's name in errors.
        column: the time column's name.
        row_label: sample index -> location text of that sample (e.g. the file row of a CSV).

    Returns:
        The rate in Hz (6 significant digits), or ``None`` with fewer than two samples.
    """
    if len(t) < 2:
        return None

    def where(i: int) -> str:
        return f"{row_label(i)}, column '{column}'"

    for start in range(0, len(t), _TIME_SLICE):
        finite = np.isfinite(t[start : start + _TIME_SLICE])
        if not finite.all():
            first = start + int(np.flatnonzero(~finite)[0])
            raise fail(display, "time value is not finite", where(first))
    step = (t[-1] - t[0]) / (len(t) - 1)
    back = next(
        (start + int(np.flatnonzero(d <= 0)[0]) for start, d in _time_steps(t) if (d <= 0).any()),
        None,
    )
    if step <= 0 or back is not None:
        raise fail(
            display,
            "time column does not increase (times must be strictly ascending)",
            where((back or 0) + 1),
        )
    for start, d in _time_steps(t):
        off = np.abs(d - step) > TIME_STEP_TOLERANCE * step
        if off.any():
            first = int(np.flatnonzero(off)[0])
            raise fail(
                display,
                f"irregular time column: step {d[first]:.6g} s where the mean step is "
                f"{step:.6g} s (samples must be evenly spaced; missing or repeated rows?)",
                where(start + first + 1),
            )
    # Time values are printed with few digits; keep 6 significant digits of the rate.
    return float(f"{1.0 / step:.6g}")
