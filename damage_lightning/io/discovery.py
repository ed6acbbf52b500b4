"""Find the recordings of a data folder: a folder per class, a manifest, or files to predict.

Every problem is reported with the file, the row, and the reason, all of them together.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.readers import is_recording, recording_suffixes
from damage_lightning.io.readers.csv import sniff_delimiter

#: Values allowed in a manifest's ``split`` column.
#: ``train+val``: the recording trains, except its last block, which validates.
VALID_SPLITS = ("train", "val", "test", "train+val")


@dataclass
class RecordingSpec:
    """One recording found in the data folder.

    Args:
        path: absolute, resolved path of the file.
        relpath: POSIX path relative to the data folder, as shown to users and stored in
            ``splits.json``.
        label: the class name (``None`` for a file to predict whose class is unknown).
        group: the physical unit or test run (manifest ``group`` column); windows of one group
            never cross splits.
        split: a split forced by the manifest (``train``, ``val`` or ``test``), else ``None``.
        sample_rate: sample rate in Hz from the manifest ``sample_rate`` column, else ``None``.
        metadata: every other manifest column, as text.
    """

    path: Path
    relpath: str
    label: str | None
    group: str | None = None
    split: str | None = None
    sample_rate: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


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
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(first))
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
            reason = "is a folder, not a file" if full.is_dir() else "file not found"
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
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and is_recording(p.name))
    if loose:
        warnings.append(
            Problem(
                str(root),
                "",
                f"{len(loose)} recording file(s) directly in the data folder are ignored "
                f"(e.g. '{loose[0]}'); put each recording in a folder named after its class, "
                "or list them in manifest.csv",
            )
        )
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = 0
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not is_recording(name):
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
                Problem(
                    f"{folder.name}/", "", "label folder contains no recording file; class skipped"
                )
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
                "no recordings found: expected <data_dir>/<label>/<recording> (one folder per "
                f"class; readable: {', '.join(recording_suffixes())}) or a manifest.csv with "
                "columns path,label",
            )
        )
    specs.sort(key=lambda s: (s.label, s.relpath))
    return specs, warnings, problems


def discover_with_warnings(
    data_dir: str | Path, manifest: str | Path | None = None
) -> tuple[list[RecordingSpec], list[Problem]]:
    """Like :func:`discover`, also returning warnings (e.g. a label folder without recordings).

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
    Otherwise every ``data_dir/<label>/**/<file>`` that a reader handles (``.csv``, ``.csv.gz``,
    ``.mat``, ``.tdms``, ``.wav``, ``.parquet``) is a recording of ``label``.

    Args:
        data_dir: the data folder.
        manifest: manifest path, relative to ``data_dir`` or absolute.

    Raises:
        DataValidationError: with every problem found (missing folder, bad manifest rows, ...).
    """
    return discover_with_warnings(data_dir, manifest)[0]


def find_recordings(path: str | Path) -> list[RecordingSpec]:
    """The recordings to predict under ``path``, sorted by relative path; labels where known.

    One file (any readable format); a folder with a ``manifest.csv`` (labels and groups from it);
    or a folder searched recursively, where a file inside a sub-folder takes the top sub-folder's
    name as its label (the folder-per-class layout) and a file at the top has no label. Hidden
    files and folders (caches, half-written temporaries) are skipped.

    Args:
        path: a recording or a folder.

    Raises:
        DataValidationError: nothing readable there.
    """
    root = Path(os.path.abspath(Path(path).expanduser()))
    if root.is_file():
        return [RecordingSpec(path=root.resolve(), relpath=root.name, label=None)]
    if not root.is_dir():
        raise DataValidationError(Problem(str(path), "", "no such file or folder to predict"))
    if (root / "manifest.csv").is_file():
        return sorted(discover(root), key=lambda s: s.relpath)
    specs = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not is_recording(name):
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root)
            label = rel.parts[0] if len(rel.parts) > 1 else None
            specs.append(RecordingSpec(path=full.resolve(), relpath=rel.as_posix(), label=label))
    if not specs:
        raise DataValidationError(
            Problem(
                str(path), "", f"no recordings found to predict ({', '.join(recording_suffixes())})"
            )
        )
    return sorted(specs, key=lambda s: s.relpath)
