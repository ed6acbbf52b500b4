"""The registry of recording formats: which reader reads a file, chosen by its suffix.

Reader modules are imported on first use, so importing the registry costs nothing and a gateway
without h5py or npTDMS still reads the formats it has libraries for. A new format is one module
with a :class:`~damage_lightning.io.readers.base.Reader` subclass plus one :func:`register` call
(or one line in ``_BUILTIN``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from damage_lightning.io.readers.base import RawRecording, Reader, ReaderOptions, fail

__all__ = [
    "MANIFEST_NAME",
    "RawRecording",
    "Reader",
    "ReaderOptions",
    "get_reader",
    "is_recording",
    "reader_for",
    "recording_suffixes",
    "register",
]

#: The manifest's file name in a data folder; a CSV file, but never a recording.
MANIFEST_NAME = "manifest.csv"

_BUILTIN: dict[str, tuple[str, tuple[str, ...]]] = {
    "csv": ("damage_lightning.io.readers.csv:CsvReader", (".csv", ".csv.gz")),
    "mat": ("damage_lightning.io.readers.mat:MatReader", (".mat",)),
    "tdms": ("damage_lightning.io.readers.tdms:TdmsReader", (".tdms",)),
    "wav": ("damage_lightning.io.readers.wav:WavReader", (".wav",)),
    "parquet": ("damage_lightning.io.readers.parquet:ParquetReader", (".parquet", ".pq")),
}

_targets: dict[str, str | type[Reader]] = {}
_suffix_owner: dict[str, str] = {}  # suffix -> reader name, in registration order
_instances: dict[str, Reader] = {}


def register(name: str, target: str | type[Reader], suffixes: tuple[str, ...]) -> None:
    """Make a reader known, or replace the one registered under ``name``.

    A later registration takes over the suffixes it names from earlier ones.

    Args:
        name: the registry name, e.g. ``"mat"``.
        target: the :class:`Reader` subclass, or ``"module:Class"`` to import on first use.
        suffixes: file name endings it reads, e.g. ``(".mat",)``; compared case-insensitively.
    """
    if isinstance(target, str):
        if target.count(":") != 1:
            raise ValueError(f"reader target must be 'module:Class', got {target!r}")
    elif not (isinstance(target, type) and issubclass(target, Reader)):
        raise TypeError(f"reader target must be a Reader subclass or 'module:Class': {target!r}")
    cleaned = tuple(s.lower() for s in suffixes)
    if not cleaned or any(not s.startswith(".") or len(s) < 2 for s in cleaned):
        raise ValueError(f"suffixes must be like ('.mat',), got {suffixes!r}")
    for suffix in [s for s, owner in _suffix_owner.items() if owner == name]:
        del _suffix_owner[suffix]
    for suffix in cleaned:
        _suffix_owner.pop(suffix, None)
        _suffix_owner[suffix] = name
    _targets[name] = target
    _instances.pop(name, None)


for _name, (_target, _suffixes) in _BUILTIN.items():
    register(_name, _target, _suffixes)


def get_reader(name: str) -> Reader:
    """The reader registered under ``name`` (imported and built on first use).

    Args:
        name: the registry name, e.g. ``"wav"``.
    """
    reader = _instances.get(name)
    if reader is not None:
        return reader
    if name not in _targets:
        raise ValueError(f"no reader named {name!r}; known: {', '.join(_targets)}")
    target = _targets[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        if not (isinstance(target, type) and issubclass(target, Reader)):
            raise TypeError(f"{_targets[name]!r} is not a Reader subclass")
    reader = target()
    _instances[name] = reader
    return reader


def recording_suffixes() -> tuple[str, ...]:
    """Every file name ending some reader reads, lower-case, in registration order."""
    return tuple(_suffix_owner)


def _suffix_of(name: str) -> str | None:
    lower = name.lower()
    matches = [s for s in _suffix_owner if lower.endswith(s)]
    return max(matches, key=len) if matches else None


def is_recording(name: str) -> bool:
    """Whether a file name is a recording some reader reads (the manifest is not).

    Args:
        name: a file name or path.
    """
    base = Path(name).name
    return base.lower() != MANIFEST_NAME and _suffix_of(base) is not None


def reader_for(path: Path | str, display: str | None = None) -> Reader:
    """The reader for a file, by its suffix (case-insensitive; the longest match wins).

    Args:
        path: the file.
        display: the file name used in the error (default: ``path``).

    Raises:
        DataValidationError: no reader reads this suffix.
    """
    base = Path(path).name
    suffix = _suffix_of(base)
    if suffix is None:
        shown = Path(base).suffix or base
        raise fail(
            display or str(path),
            f"unsupported file type {shown!r}; readable: {', '.join(recording_suffixes())}",
        )
    return get_reader(_suffix_owner[suffix])
