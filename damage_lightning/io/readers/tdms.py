"""Read NI ``.tdms`` recordings (LabVIEW, DAQmx) with npTDMS.

One group is one recording: its numeric channels, which must have equal lengths; the sample rate
comes from the channels' ``wf_increment`` property, or from a time channel (``TIME_COLUMN_NAMES``).
A file cut short by an interrupted acquisition gives the samples it holds, as NI's own tools do;
npTDMS's warning about the incomplete last segment is kept off the console and named in the
error when the cut leaves nothing to read or channels of unequal length. Only the channels asked
for are read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from damage_lightning.io.readers.base import (
    RawRecording,
    Reader,
    ReaderOptions,
    check_raw,
    fail,
    import_optional,
    is_time_name,
    library_errors,
    open_error,
    rate_from_times,
    read_head,
    requested_channels,
)

_WHAT = ".tdms file"
# A TDMS segment starts with a 28-byte lead-in whose first 4 bytes are "TDSm".
_LEAD_IN = 28
_NPTDMS_LOGGERS = ("nptdms.reader", "nptdms.tdms_segment")
_CUT_SHORT = "the file is cut short (its last segment is incomplete)"
# What npTDMS logs (at warning level) while it opens and reads a cut file.
_CUT_WARNINGS = ("incomplete", "less data than expected", "not a multiple of the chunk size")
# Two channels of one acquisition state the same increment; allow for its text round trip.
_INCREMENT_RTOL = 1e-9


def _is_numeric(channel: Any, empty_ok: bool = False) -> bool:
    dtype = channel.dtype
    return dtype is not None and np.dtype(dtype).kind in "iuf" and (empty_ok or len(channel) > 0)


@contextmanager
def _incomplete_segments() -> Iterator[list[str]]:
    """Collect npTDMS's warnings about an incomplete last segment instead of printing them.

    Its other warnings are left to its console handler.
    """
    seen: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in _CUT_WARNINGS):
            seen.append(message)
            return False
        return True

    loggers = [logging.getLogger(name) for name in _NPTDMS_LOGGERS]
    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield seen
    finally:
        for logger in loggers:
            logger.removeFilter(keep)


def _pick_group(tdms: Any, display: str, wanted: str | None, cut: bool = False) -> Any:
    groups = tdms.groups()
    if not groups and cut:
        raise fail(display, f"{_CUT_SHORT}: not one complete data segment to read")
    names = ", ".join(repr(g.name) for g in groups) or "none"
    if wanted is not None:
        for group in groups:
            if group.name == wanted:
                return group
        raise fail(display, f"no group {wanted!r} (data.tdms_group); groups in the file: {names}")
    with_data = [g for g in groups if any(_is_numeric(c) for c in g.channels())]
    if len(with_data) == 1:
        return with_data[0]
    if not with_data:
        why = f"; {_CUT_SHORT}" if cut else ""
        raise fail(display, f"no channel with numeric data in any group (groups: {names}){why}")
    listed = ", ".join(repr(g.name) for g in with_data)
    raise fail(
        display,
        f"several groups hold data ({listed}); choose one with data.tdms_group, "
        f"e.g. --data.tdms_group {with_data[0].name!r}",
    )


def _rate_from_increments(channels: list[Any], display: str) -> float | None:
    found = [(c.name, c.properties.get("wf_increment")) for c in channels]
    found = [(name, float(inc)) for name, inc in found if inc is not None]
    if not found:
        return None
    name0, inc0 = found[0]
    for name, inc in found:
        if not (math.isfinite(inc) and inc > 0):
            raise fail(display, f"wf_increment is {inc!r} s; expected > 0", f"channel {name!r}")
        if abs(inc - inc0) > _INCREMENT_RTOL * abs(inc0):
            raise fail(
                display,
                f"channels state different sample intervals (wf_increment {inc:g} s for "
                f"{name!r}, {inc0:g} s for {name0!r})",
            )
    # The increment is stored exactly; 12 digits drop the noise of taking its inverse.
    return float(f"{1.0 / inc0:.12g}")


class TdmsReader(Reader):
    """``.tdms`` files: the numeric channels of one group, named as in the file."""

    name: ClassVar[str] = "tdms"
    suffixes: ClassVar[tuple[str, ...]] = (".tdms",)

    def _catalog(
        self, tdms: Any, cut: bool, display: str, options: ReaderOptions
    ) -> tuple[list, Any]:
        """``(sensor channels, time channel or None)`` of the chosen group (``cut``: cut short)."""
        group = _pick_group(tdms, display, options.group, cut)
        # In a cut file a channel may have lost all its samples: it counts, so that the unequal
        # lengths are named instead of the channel quietly missing.
        numeric = [c for c in group.channels() if _is_numeric(c, empty_ok=cut)]
        time = next((c for c in numeric if is_time_name(c.name)), None)
        sensors = [c for c in numeric if c is not time]
        if not sensors:
            raise fail(display, f"group {group.name!r} has no channel with numeric data")
        lengths = {len(c) for c in sensors + ([time] if time is not None else [])}
        if len(lengths) > 1:
            shown = ", ".join(f"{c.name!r} {len(c)}" for c in sensors)
            if time is not None:
                shown += f", {time.name!r} {len(time)}"
            why = f"; {_CUT_SHORT}" if cut else ""
            raise fail(
                display,
                f"channels of group {group.name!r} differ in length ({shown} samples); "
                f"a recording needs channels of equal length{why}",
            )
        return sensors, time

    @contextmanager
    def _open(self, path: Path, display: str) -> Iterator[tuple[Any, bool]]:
        """The open ``TdmsFile`` and whether the file is cut short."""
        nptdms = import_optional("nptdms", "npTDMS", display, ".tdms files")
        read_head(path, display, 1)
        # npTDMS leaves the file open when it rejects a damaged one; so we own the handle.
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise open_error(exc, display) from None
        with fh, _incomplete_segments() as warnings:
            with library_errors(display, _WHAT):
                tdms = nptdms.TdmsFile.open(fh)
            cut = bool(warnings) or path.stat().st_size < _LEAD_IN
            with tdms:
                yield tdms, cut

    def read(
        self,
        path: Path,
        display: str,
        options: ReaderOptions,
        channels: list[str] | None = None,
    ) -> RawRecording:
        """Read the chosen group of one TDMS file; see :meth:`Reader.read`."""
        with self._open(path, display) as (tdms, cut):
            sensors, time = self._catalog(tdms, cut, display, options)
            names = [c.name for c in sensors]
            # Checked before reading, so that only the channels asked for are read.
            picked = requested_channels(names, channels, display)
            by_name = {c.name: c for c in sensors}
            chosen = [by_name[n] for n in picked]
            with library_errors(display, _WHAT):
                data = np.stack([np.asarray(c[:], dtype=np.float64) for c in chosen])
                t = np.asarray(time[:], dtype=np.float64) if time is not None else None
            rate = _rate_from_increments(chosen, display)
        if rate is None and t is not None:
            rate = rate_from_times(t, display, time.name, lambda i: f"sample {i + 1}")
        return check_raw(RawRecording(data, picked, rate), display)

    def channel_names(self, path: Path, display: str, options: ReaderOptions) -> list[str]:
        """Channel names from the file's metadata alone."""
        with self._open(path, display) as (tdms, cut):
            return [c.name for c in self._catalog(tdms, cut, display, options)[0]]
