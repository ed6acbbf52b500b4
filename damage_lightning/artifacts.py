"""Run folder helpers: atomic writes, JSON, checksums, and output capture into training_log.txt."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

TMP_PREFIX = ".tmp-"
# Terminal control sequences (cursor moves, colours) that progress bars print: the log drops them.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Lightning's validation/test/sanity bars are transient on the terminal (leave=False); in the log
# they would be hundreds of empty-looking lines. The epoch bars' final states are kept.
_TRANSIENT_BAR = re.compile(r"^\s*(Validation|Sanity Checking|Testing|Predicting)\b[^|]*\|")
# Python logging that reaches the log file: ours and Lightning's at INFO, other libraries (the ONNX
# exporter is chatty) only from WARNING up.
_INFO_LOGGERS = ("damage_lightning", "lightning", "__main__")


def _log_record_wanted(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.startswith(_INFO_LOGGERS)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, then renamed over
    the target; the rename is atomic on POSIX file systems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    # numpy and torch scalars/arrays reach the JSON files through metrics; store them as numbers.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    # JSON has no NaN/inf; write null so every file parses with strict readers.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def to_jsonable(obj: Any) -> Any:
    """Turn numpy/torch values into plain JSON values (NaN and inf become ``None``)."""
    return _finite(json.loads(json.dumps(obj, default=_json_default)))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, strictly valid JSON (UTF-8, non-ASCII kept)."""
    text = json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_writable(folder: str | os.PathLike, probe_bytes: int = 1 << 20) -> None:
    """Fail early, with a clear message, when ``folder`` cannot take the run's files.

    A probe file of ``probe_bytes`` is written, fsynced and removed, which catches read-only
    folders, permission problems and full disks before any training time is spent.
    """
    from damage_lightning.errors import OutputLocationError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + "probe.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\0" * probe_bytes)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:
        raise OutputLocationError(
            f"{folder}: cannot write the run folder here ({exc.strerror or exc})"
        ) from exc


def _final(line: str) -> str:
    """What a terminal finally shows of a line redrawn with carriage returns."""
    return _ANSI.sub("", line).rstrip("\r").rsplit("\r", 1)[-1]


class _Tee:
    """A text stream that writes to the terminal and, line by line, to a log file.

    Progress bars redraw a line with carriage returns many times a second; the log keeps only
    the final state of each such line, so it stays readable and small.
    """

    def __init__(self, stream: TextIO, log: TextIO, lock: threading.Lock):
        self._stream = stream
        self._log = log
        self._lock = lock
        self._partial = ""

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            if "\n" in self._partial:
                *lines, self._partial = self._partial.split("\n")
                with contextlib.suppress(ValueError, OSError):
                    kept = (_final(line) for line in lines)
                    self._log.write("".join(k + "\n" for k in kept if not _TRANSIENT_BAR.match(k)))
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        with self._lock, contextlib.suppress(ValueError, OSError):
            self._log.flush()

    def close_log(self) -> None:
        """Write what is left of an unfinished line."""
        with self._lock, contextlib.suppress(ValueError, OSError):
            if self._partial:
                self._log.write(_final(self._partial) + "\n")
                self._partial = ""

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def capture_output(log_path: str | os.PathLike) -> Iterator[Path]:
    """Copy everything printed (stdout, stderr, and Python logging) into ``log_path``, live.

    The terminal still shows everything. On exit the previous streams and logging handlers are
    restored exactly, so two captures in one process (two ``run_training`` calls) do not interfere.
    Secrets are never printed by this package, so the log holds nothing the terminal did not show.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    fh = open(log_path, "a", encoding="utf-8", errors="replace")
    old_out, old_err = sys.stdout, sys.stderr
    tees = (_Tee(old_out, fh, lock), _Tee(old_err, fh, lock))
    sys.stdout, sys.stderr = tees  # type: ignore[assignment]
    handler = logging.StreamHandler(fh)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    handler.addFilter(_log_record_wanted)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield log_path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        sys.stdout, sys.stderr = old_out, old_err
        for tee in tees:
            tee.close_log()
        with lock:
            fh.close()
