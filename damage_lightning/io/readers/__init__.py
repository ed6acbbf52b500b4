"""Reader registry: file suffix to reader, modules imported only when a file of theirs is read."""

from __future__ import annotations

import importlib
from pathlib import Path

from damage_lightning.io.readers.base import Reader, fail

_BUILTIN: dict[str, tuple[str, tuple[str, ...]]] = {
    "csv": ("damage_lightning.io.readers.csv:CsvReader", (".csv", ".csv.gz")),
}
_LOADED: dict[str, Reader] = {}


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``."""
    if name not in _LOADED:
        module, _, cls = _BUILTIN[name][0].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]


def recording_suffixes() -> tuple[str, ...]:
    """Every suffix a reader handles."""
    return tuple(s for _, suffixes in _BUILTIN.values() for s in suffixes)


def _match(name: str) -> str | None:
    lower = name.lower()
    best = None
    for reader, (_, suffixes) in _BUILTIN.items():
        for s in suffixes:
            if lower.endswith(s) and (best is None or len(s) > best[1]):
                best = (reader, len(s))
    return best[0] if best else None


def is_recording(name: str) -> bool:
    """Whether a file name is a recording some reader handles (``manifest.csv`` is not)."""
    return name.lower() != "manifest.csv" and _match(name) is not None


def reader_for(path: Path | str, display: str | None = None) -> Reader:
    """The reader of a file, by its suffix."""
    name = _match(Path(path).name)
    if name is None:
        raise fail(
            display or str(path),
            f"unsupported file type; readable: {', '.join(recording_suffixes())}",
        )
    return get_reader(name)
