"""Read MATLAB ``.mat`` recordings: v4/v5/v7 with scipy, v7.3 (HDF5) with h5py.

Test labs publish one array per file under names that change from file to file (CWRU's
``X097_DE_time``, ``X105_DE_time``, ...). Without settings, the single numeric array of a file is
the recording, its channels named ``ch1``, ``ch2``, ...; with ``ReaderOptions.variables``, each
glob pattern picks one vector per file and names the channel after the pattern's fixed text
(``"*_DE_time"`` gives ``DE_time``), so every file yields the same channel names.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

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
    rate_from_times,
    read_head,
    select_channels,
)

#: Scalar variables (names compared case-insensitively) that state the sample rate in Hz.
RATE_VARIABLE_NAMES = frozenset(
    {"fs", "sample_rate", "sampling_rate", "samplerate", "sampling_frequency", "sr"}
)
_NUMERIC_CLASSES = frozenset(
    {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
)
_GLOB_CHARACTERS = re.compile(r"[*?\[\]]")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_WHAT = ".mat file"

Loader = Callable[[list[str]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class _Variable:
    name: str
    shape: tuple[int, ...]  # as MATLAB shows it (rows first)
    matlab_class: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def numeric(self) -> bool:
        return self.matlab_class in _NUMERIC_CLASSES and self.size > 0

    @property
    def dims(self) -> list[int]:
        """The dimensions that are not 1."""
        return [d for d in self.shape if d != 1]

    def describe(self) -> str:
        return f"{self.name!r} ({'x'.join(map(str, self.shape))} {self.matlab_class})"


@dataclass(frozen=True)
class _Plan:
    """Which variables make the channels, named how, and where the sample rate comes from."""

    picks: list[_Variable]
    channels: list[str]
    rate_vars: list[_Variable]
    time: _Variable | None


def channel_name(pattern: str, position: int) -> str:
    """The channel name a ``data.variables`` pattern gives: its text without glob characters.

    Args:
        pattern: e.g. ``"*_DE_time"`` (gives ``"DE_time"``).
        position: 1-based position of the pattern; ``ch<position>`` when no text is left.
    """
    return _GLOB_CHARACTERS.sub("", pattern).strip("_-. ") or f"ch{position}"


def _listing(variables: list[_Variable]) -> str:
    return ", ".join(v.describe() for v in variables) or "none"


def _example_pattern(name: str) -> str:
    # 'X097_DE_time' -> '*_DE_time': the part that stays the same from file to file.
    return "*" + name[name.index("_") :] if "_" in name.strip("_") else name


def _match(
    patterns: tuple[str, ...], arrays: list[_Variable], variables: list[_Variable], display: str
) -> tuple[list[_Variable], list[str]]:
    picks: list[_Variable] = []
    names: list[str] = []
    for position, pattern in enumerate(patterns, 1):
        found = [v for v in arrays if fnmatch.fnmatchcase(v.name, pattern)]
        if len(found) != 1:
            what = ", ".join(repr(v.name) for v in found) if found else "no numeric array"
            raise fail(
                display,
                f"variable pattern {pattern!r} (data.variables) matches {what}; each pattern must "
                f"match exactly one; variables in the file: {_listing(variables)}",
            )
        var, name = found[0], channel_name(pattern, position)
        if var in picks:
            other = patterns[picks.index(var)]
            raise fail(display, f"patterns {other!r} and {pattern!r} both select {var.name!r}")
        if name in names:
            other = patterns[names.index(name)]
            raise fail(display, f"patterns {other!r} and {pattern!r} both give channel {name!r}")
        if len(var.dims) > 1:
            raise fail(
                display,
                f"variable {var.describe()} is a matrix; a data.variables pattern selects one "
                "channel, a vector (leave data.variables unset to read a file's single matrix)",
            )
        picks.append(var)
        names.append(name)
    lengths = {v.size for v in picks}
    if len(lengths) > 1:
        shown = ", ".join(f"{v.name!r} {v.size}" for v in picks)
        raise fail(display, f"the selected variables differ in length ({shown} samples)")
    return picks, names


def _plan(variables: list[_Variable], options: ReaderOptions, display: str) -> _Plan:
    arrays = [v for v in variables if v.numeric and v.size >= 2]
    rate_vars = [
        v
        for v in variables
        if v.numeric and v.size == 1 and v.name.casefold() in RATE_VARIABLE_NAMES
    ]
    times = [v for v in arrays if is_time_name(v.name) and len(v.dims) == 1]
    if options.variables is not None:
        picks, names = _match(options.variables, arrays, variables, display)
    else:
        candidates = [v for v in arrays if v not in times]
        if not candidates:
            raise fail(display, f"no numeric array in the file; variables: {_listing(variables)}")
        if len(candidates) > 1:
            example = _example_pattern(candidates[0].name)
            raise fail(
                display,
                f"{len(candidates)} numeric arrays ({_listing(candidates)}); choose the channels "
                f"with data.variables, e.g. --data.variables '[\"{example}\"]'",
            )
        var = candidates[0]
        if len(var.dims) > 2:
            raise fail(display, f"variable {var.describe()} has more than two dimensions")
        # The longer side holds the samples; a square matrix is read as MATLAB's samples x channels.
        n_channels = 1 if len(var.dims) < 2 else min(var.dims)
        picks, names = [var], [f"ch{i + 1}" for i in range(n_channels)]
    time = next((t for t in times if t not in picks), None)
    return _Plan(picks, names, rate_vars, time)


def _as_rows(x: np.ndarray) -> np.ndarray:
    """A vector or matrix as ``(channels, samples)``, the longer side being the samples."""
    x = x.reshape([d for d in x.shape if d != 1] or [1])
    if x.ndim == 1:
        return x[None, :]
    return x.T if x.shape[0] >= x.shape[1] else x


def _rate(plan: _Plan, values: dict[str, np.ndarray], n: int, display: str) -> float | None:
    rates = {v.name: float(np.asarray(values[v.name]).reshape(-1)[0].real) for v in plan.rate_vars}
    for name, rate in rates.items():
        if not (math.isfinite(rate) and rate > 0):
            raise fail(display, f"sample rate variable {name!r} is {rate!r}; expected Hz > 0")
    if len(set(rates.values())) > 1:
        shown = ", ".join(f"{k!r} = {v:g}" for k, v in rates.items())
        raise fail(display, f"the sample rate variables disagree ({shown})")
    if rates:
        return next(iter(rates.values()))
    if plan.time is None:
        return None
    if plan.time.size != n:
        raise fail(
            display,
            f"time variable {plan.time.name!r} has {plan.time.size} values for {n} samples",
        )
    t = np.asarray(values[plan.time.name], dtype=np.float64).reshape(-1)
    return rate_from_times(t, display, plan.time.name, lambda i: f"sample {i + 1}")


def _class_of(dtype: np.dtype) -> str:
    """The MATLAB class of an HDF5 dataset written without MATLAB's attributes."""
    if dtype.kind == "f":
        return {4: "single", 8: "double"}.get(dtype.itemsize, f"float{8 * dtype.itemsize}")
    if dtype.kind in "iu":
        return f"{'u' if dtype.kind == 'u' else ''}int{8 * dtype.itemsize}"
    return "logical" if dtype.kind == "b" else f"non-numeric ({dtype})"


@contextmanager
def _v5(path: Path, display: str) -> Iterator[tuple[list[_Variable], Loader]]:
    sio = import_optional("scipy.io", "scipy", display, "MATLAB .mat files")
    with library_errors(display, _WHAT):
        info = sio.whosmat(str(path))
    variables = [_Variable(n, tuple(s), c) for n, s, c in info if not n.startswith("__")]

    def load(names: list[str]) -> dict[str, np.ndarray]:
        with library_errors(display, _WHAT):
            got = sio.loadmat(str(path), variable_names=names, squeeze_me=False)
        return {n: np.asarray(got[n]) for n in names}

    yield variables, load


@contextmanager
def _v73(path: Path, display: str) -> Iterator[tuple[list[_Variable], Loader]]:
    h5py = import_optional("h5py", "h5py", display, "MATLAB v7.3 .mat files")
    what = "MATLAB v7.3 (HDF5) .mat file"
    with library_errors(display, what):
        h5 = h5py.File(path, "r")
    with h5:
        variables = []
        with library_errors(display, what):
            for name, obj in h5.items():
                # '#refs#' and '#subsystem#' hold the contents of cells and objects.
                if name.startswith(("#", "__")):
                    continue
                if not isinstance(obj, h5py.Dataset):
                    variables.append(_Variable(name, (1, 1), "struct"))
                    continue
                cls = obj.attrs.get("MATLAB_class")
                cls = cls.decode() if isinstance(cls, bytes) else cls or _class_of(obj.dtype)
                # MATLAB writes empty arrays as their dimensions, flagged MATLAB_empty.
                empty = bool(obj.attrs.get("MATLAB_empty", 0))
                # HDF5 stores MATLAB's column-major arrays with the dimensions reversed.
                variables.append(_Variable(name, (0, 0) if empty else obj.shape[::-1], str(cls)))

        def load(names: list[str]) -> dict[str, np.ndarray]:
            with library_errors(display, what):
                return {n: np.asarray(h5[n][()]).T for n in names}

        yield variables, load


def _open(path: Path, display: str) -> AbstractContextManager[tuple[list[_Variable], Loader]]:
    head = read_head(path, display, 520)
    is_hdf5 = head.startswith((b"MATLAB 7.3", _HDF5_SIGNATURE)) or head[512:] == _HDF5_SIGNATURE
    return _v73(path, display) if is_hdf5 else _v5(path, display)


class MatReader(Reader):
    """MATLAB ``.mat`` files (v4 to v7.3); see the module docstring for how channels are chosen."""

    name: ClassVar[str] = "mat"
    suffixes: ClassVar[tuple[str, ...]] = (".mat",)

    def read(
        self,
        path: Path,
        display: str,
        options: ReaderOptions,
        channels: list[str] | None = None,
    ) -> RawRecording:
        """Read one ``.mat`` file; see :meth:`Reader.read`."""
        with _open(path, display) as (variables, load):
            plan = _plan(variables, options, display)
            needed = [*plan.picks, *plan.rate_vars, *([plan.time] if plan.time else [])]
            values = load([v.name for v in needed])
        arrays = [values[v.name] for v in plan.picks]
        for var, x in zip(plan.picks, arrays, strict=True):
            if np.iscomplexobj(x):
                raise fail(display, f"variable {var.name!r} holds complex numbers")
        if options.variables is None:
            data = _as_rows(arrays[0])
        else:
            data = np.stack([x.reshape(-1) for x in arrays])
        rate = _rate(plan, values, data.shape[1], display)
        raw = RawRecording(data, plan.channels, rate)
        return check_raw(select_channels(raw, channels, display), display)

    def channel_names(self, path: Path, display: str, options: ReaderOptions) -> list[str]:
        """Channel names from the variables' shapes alone."""
        with _open(path, display) as (variables, _):
            return _plan(variables, options, display).channels
