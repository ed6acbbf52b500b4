"""The reader interface: every format returns the same RawRecording, checked the same way."""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from damage_lightning.errors import DataValidationError, Problem

#: Column names (compared case-insensitively) holding time in seconds rather than a sensor channel.
TIME_COLUMN_NAMES = frozenset(
    {"time", "t", "timestamp", "time_s", "time (s)", "time [s]", "time[s]", "time_sec", "seconds"}
)
#: A step of the time column further than this fraction from the mean step is irregular.
TIME_STEP_TOLERANCE = 0.25


def is_time_name(name: str) -> bool:
    """Whether a column name denotes time in seconds (see ``TIME_COLUMN_NAMES``)."""
    return name.strip().casefold() in TIME_COLUMN_NAMES


def fail(display: str, reason: str, location: str = "") -> DataValidationError:
    """The error for one problem of one file."""
    return DataValidationError([Problem(display, location, reason)])


@dataclass(frozen=True)
class ReaderOptions:
    """Format-specific choices.

    Args:
        variables: ``.mat`` files: glob patterns of the variables to read, one channel each.
        group: ``.tdms`` files: the group to read.
    """

    variables: tuple[str, ...] | None = None
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (part of cache keys)."""
        return {"variables": list(self.variables) if self.variables else None, "group": self.group}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ReaderOptions:
        """Inverse of :meth:`to_json`."""
        data = data or {}
        variables = data.get("variables")
        return cls(tuple(variables) if variables else None, data.get("group"))


@dataclass
class RawRecording:
    """One file's samples as read.

    Args:
        data: float32 ``(channels, samples)``, C-contiguous.
        channels: channel names, one per row.
        sample_rate: the rate the file itself states, in Hz, or ``None``.
    """

    data: np.ndarray
    channels: list[str]
    sample_rate: float | None


class Reader(abc.ABC):
    """One file format."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    version: ClassVar[int] = 1

    @abc.abstractmethod
    def read(
        self,
        path: Path,
        display: str,
        options: ReaderOptions,
        channels: list[str] | None = None,
    ) -> RawRecording:
        """Read a file: every numeric channel in file order, or exactly ``channels``."""

    def channel_names(self, path: Path, display: str, options: ReaderOptions) -> list[str]:
        """The channel names of a file (formats with a cheap header override this)."""
        return self.read(path, display, options).channels


def select_channels(raw: RawRecording, channels: list[str] | None, display: str) -> RawRecording:
    """Keep ``channels`` in that order (all when ``None``)."""
    if channels is None:
        return raw
    dup = [c for c, k in Counter(channels).items() if k > 1]
    if dup:
        raise fail(display, f"channel(s) requested twice: {', '.join(map(repr, dup))}")
    missing = [c for c in channels if c not in raw.channels]
    if missing:
        raise fail(
            display,
            f"channel(s) {', '.join(repr(m) for m in missing)} not found; "
            f"available: {', '.join(repr(a) for a in raw.channels) or 'none'}",
        )
    rows = [raw.channels.index(c) for c in channels]
    return RawRecording(np.ascontiguousarray(raw.data[rows]), list(channels), raw.sample_rate)


def check_raw(raw: RawRecording, display: str) -> RawRecording:
    """The checks every format passes: a 2-D float32 array of finite samples, named channels."""
    data = np.ascontiguousarray(raw.data, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] == 0:
        raise fail(display, "no numeric channel: every channel must be a series of numbers")
    if data.shape[1] == 0:
        raise fail(display, "the file has no samples")
    if len(raw.channels) != data.shape[0]:
        raise fail(display, f"{data.shape[0]} channels but {len(raw.channels)} names")
    lo, hi = data.min(axis=1), data.max(axis=1)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        bad = ~np.isfinite(data)
        first = np.argmax(bad, axis=1)
        c = min((int(i) for i in np.flatnonzero(bad.any(axis=1))), key=lambda i: first[i])
        idx = int(first[c])
        kind = "empty or NaN value" if np.isnan(data[c, idx]) else "infinite value"
        n_bad = int(bad.sum())
        more = f"; {n_bad} such values in this file" if n_bad > 1 else ""
        raise fail(display, kind + more, f"sample {idx}, channel '{raw.channels[c]}'")
    rate = raw.sample_rate
    if rate is not None and not (np.isfinite(rate) and rate > 0):
        raise fail(display, f"sample rate {rate!r} is not a positive number of Hz")
    return RawRecording(data, list(raw.channels), None if rate is None else float(rate))


def rate_from_times(
    t: np.ndarray, display: str, column: str, row_label: Callable[[int], str]
) -> float | None:
    """Infer the sample rate from a time column in seconds; irregular sampling is an error.

    Args:
        t: the times, float64.
        display: the file, for errors.
        column: the time column's name.
        row_label: location text (``"row 17"``) of sample ``i``.
    """
    if len(t) < 2:
        return None
    if not np.isfinite(t).all():
        first = int(np.flatnonzero(~np.isfinite(t))[0])
        raise fail(display, "time value is not finite", f"{row_label(first)}, column '{column}'")
    step = (t[-1] - t[0]) / (len(t) - 1)
    d = np.diff(t)
    if step <= 0 or (d <= 0).any():
        first = int(np.flatnonzero(d <= 0)[0]) if (d <= 0).any() else 0
        raise fail(
            display,
            "time column does not increase (times must be strictly ascending)",
            f"{row_label(first + 1)}, column '{column}'",
        )
    off = np.abs(d - step) > TIME_STEP_TOLERANCE * step
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise fail(
            display,
            f"irregular time column: step {d[first]:.6g} s where the mean step is {step:.6g} s "
            "(samples must be evenly spaced; missing or repeated rows?)",
            f"{row_label(first + 1)}, column '{column}'",
        )
    # Time values are printed with few digits; keep 6 significant digits of the rate.
    return float(f"{1.0 / step:.6g}")
