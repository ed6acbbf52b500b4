"""The built-in physically simulated dataset: an n-story shear frame under random base excitation.

Five classes (undamaged, stiffness loss in story 1, 2 or 3, and a bumper contact between floors 2
and 3) are simulated with nuisance variation that is not damage (temperature-like stiffness drift,
added mass, excitation level, sensor noise) and written as folder-per-class CSV plus a manifest.
The ``monitoring`` scenario (``data/monitoring.py``) writes the same frame's recordings for a
novelty detector: many healthy ones and a few damaged ones of graded severity.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from damage_lightning.data.shear_frame import (
    CHANNELS,
    CLASS_NAMES,
    DAMPING_RATIO,
    NOMINAL_MASSES,
    NOMINAL_STIFFNESSES,
    ContactSpec,
    ShearFrame,
    base_excitation,
    check_sample_rate,
    nominal_frame,
    simulate_recording,
)
from damage_lightning.io.cache import default_cache_dir

# The frame's names stay importable from here, where the dataset's users have found them.
__all__ = [
    "CHANNELS",
    "CLASS_NAMES",
    "DAMPING_RATIO",
    "NOMINAL_MASSES",
    "NOMINAL_STIFFNESSES",
    "SCENARIOS",
    "ContactSpec",
    "ShearFrame",
    "base_excitation",
    "default_dataset_dir",
    "generate_dataset",
    "main_synth",
    "nominal_frame",
    "simulate_recording",
]

SCENARIOS = ("classes", "monitoring")

#: Bumped whenever the generated numbers change, so cached datasets of older versions are not used.
DATASET_VERSION = "shear_frame_v2"
MARKER_FILE = "synthetic_dataset.json"
MANIFEST_FILE = "manifest.csv"
# ------------------------------------------------------------------------------------------------
# Dataset on disk


def _parameters(
    seed: int,
    recordings_per_class: int,
    n_samples: int,
    sample_rate: float,
    scenario: str = "classes",
    healthy_recordings: int | None = None,
) -> dict:
    params: dict[str, Any] = {
        "version": DATASET_VERSION,
        "seed": int(seed),
        "recordings_per_class": int(recordings_per_class),
        "n_samples": int(n_samples),
        "sample_rate": float(sample_rate),
    }
    if scenario != "classes":
        # Only other scenarios add keys: markers of datasets written before scenarios existed
        # must keep matching (or every cached dataset would be refused as "other parameters").
        from damage_lightning.data.monitoring import monitoring_parameters

        params.update(monitoring_parameters(healthy_recordings))
    return params


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _csv_bytes(data: np.ndarray) -> bytes:
    # One %-format over the whole table runs in C: far faster than np.savetxt or pandas.
    row = ",".join(["%.6g"] * data.shape[0]) + "\n"
    body = (row * data.shape[1]) % tuple(data.T.ravel().tolist())
    return (",".join(CHANNELS) + "\n" + body).encode("ascii")


def _manifest_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _manifest_row(path: str, label: str, sample_rate: float, metadata: dict[str, Any]) -> dict:
    row: dict[str, Any] = {"path": path, "label": label, "sample_rate": float(sample_rate)}
    for key, value in metadata.items():
        if key == "snr_db":
            row.update({f"snr_db_{ch}": v for ch, v in zip(CHANNELS, value, strict=True)})
        elif key == "natural_frequencies_hz":
            row.update({f"f{i + 1}_hz": v for i, v in enumerate(value)})
        else:
            row[key] = value
    return row


def _class_recordings(params: dict) -> Iterator[tuple[str, str, np.ndarray, dict[str, Any]]]:
    """``(label, relpath, data, metadata)`` of every recording of the five-class dataset."""
    root = np.random.SeedSequence(params["seed"])
    # Each recording has its own child seed (class index, recording index), so a recording does not
    # depend on the order of generation nor on how many recordings the other classes have.
    for class_seq, label in zip(root.spawn(len(CLASS_NAMES)), CLASS_NAMES, strict=True):
        for index, seq in enumerate(class_seq.spawn(params["recordings_per_class"])):
            data, metadata = simulate_recording(
                label, np.random.default_rng(seq), params["n_samples"], params["sample_rate"]
            )
            yield label, f"{label}/{label}_{index:03d}.csv", data, metadata


def _write_dataset(folder: Path, params: dict) -> int:
    """Generate every recording into ``folder`` (which exists and is empty); marker last."""
    if params.get("scenario") == "monitoring":
        from damage_lightning.data.monitoring import monitoring_recordings

        recordings = monitoring_recordings(params)
    else:
        recordings = _class_recordings(params)
    rows = []
    classes: list[str] = []
    for label, rel, data, metadata in recordings:
        if label not in classes:
            classes.append(label)
            (folder / label).mkdir()
        (folder / rel).write_bytes(_csv_bytes(data))
        rows.append(_manifest_row(rel, label, params["sample_rate"], metadata))
    columns = list(rows[0])
    lines = [",".join(columns)]
    lines += [",".join(_manifest_value(r[c]) for c in columns) for r in rows]
    (folder / MANIFEST_FILE).write_text("\n".join(lines) + "\n", encoding="ascii")
    nominal = nominal_frame()
    marker = {
        "generator": "damage_lightning.data.synthetic",
        "parameters": params,
        "classes": classes,
        "channels": list(CHANNELS),
        "n_recordings": len(rows),
        "frame": {
            "masses_kg": list(NOMINAL_MASSES),
            "stiffnesses_n_per_m": list(NOMINAL_STIFFNESSES),
            "damping_ratio": DAMPING_RATIO,
            "natural_frequencies_hz": [round(float(f), 3) for f in nominal.natural_frequencies()],
        },
    }
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return len(rows)


def _existing_state(out_dir: Path, params: dict) -> str:
    """What ``out_dir`` holds now.

    One of ``"absent"``, ``"empty"``, ``"same"`` (a complete dataset with these parameters),
    ``"other_dataset"`` or ``"foreign"`` (a file, or a folder with other content).
    """
    if not out_dir.exists():
        return "absent"
    if not out_dir.is_dir():
        return "foreign"
    marker = _read_marker(out_dir)
    if marker is not None and marker.get("parameters") == params:
        return "same"
    if marker is not None and marker.get("generator") == "damage_lightning.data.synthetic":
        return "other_dataset"
    return "empty" if not any(out_dir.iterdir()) else "foreign"


def _refuse(out_dir: Path, state: str, params: dict) -> FileExistsError:
    if state == "other_dataset":
        old = (_read_marker(out_dir) or {}).get("parameters", {})
        diff = ", ".join(
            f"{k}={old.get(k)!r} (asked {v!r})" for k, v in params.items() if old.get(k) != v
        )
        return FileExistsError(
            f"{out_dir}: holds a synthetic dataset generated with other parameters ({diff}); "
            "pass overwrite=True (--overwrite) to replace it, or choose another folder"
        )
    return FileExistsError(
        f"{out_dir}: exists and holds other files, not a generated dataset; choose a new or empty "
        "folder (it is never deleted, even with overwrite)"
    )


def generate_dataset(
    out_dir: str | Path,
    seed: int = 0,
    recordings_per_class: int = 24,
    n_samples: int = 8192,
    sample_rate: float = 1024.0,
    overwrite: bool = False,
    scenario: Literal["classes", "monitoring"] = "classes",
    healthy_recordings: int | None = None,
) -> Path:
    """Write the simulated dataset as folder-per-class CSV plus ``manifest.csv``.

    Layout: ``out_dir/<label>/<label>_<NNN>.csv`` (header ``base,floor1,floor2,floor3``),
    ``out_dir/manifest.csv`` (``path,label,sample_rate`` and the per-recording metadata) and
    ``out_dir/synthetic_dataset.json`` (the generation parameters). The same seed gives
    byte-identical files. Generation happens in a temporary folder beside ``out_dir`` that is
    renamed into place, so ``out_dir`` never holds half a dataset.

    Args:
        out_dir: the dataset folder.
        seed: the random seed.
        recordings_per_class: recordings of each of the five classes.
        n_samples: samples per recording and channel.
        sample_rate: samples per second.
        overwrite: replace a dataset generated with other parameters. A folder that holds anything
            else is never deleted.
        scenario: ``classes`` (the five classes above) or ``monitoring``
            (``data/monitoring.py``: ``healthy_recordings`` healthy recordings, default
            ``monitoring.HEALTHY_RECORDINGS``, and ``recordings_per_class`` of each damage class).
        healthy_recordings: healthy recordings of the ``monitoring`` scenario.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`. An existing complete dataset with the same
        parameters is returned untouched.

    Raises:
        FileExistsError: ``out_dir`` holds other content (or another dataset without
            ``overwrite``).
        ValueError: a parameter is out of range.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if recordings_per_class < 1:
        raise ValueError(f"recordings_per_class must be at least 1, got {recordings_per_class}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2, got {n_samples}")
    check_sample_rate(nominal_frame(), sample_rate)
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    params = _parameters(
        seed, recordings_per_class, n_samples, sample_rate, scenario, healthy_recordings
    )

    state = _existing_state(out_dir, params)
    if state == "same":
        return out_dir
    if state == "foreign" or (state == "other_dataset" and not overwrite):
        raise _refuse(out_dir, state, params)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling (same file system, so the final rename is atomic); mkdir respects the umask.
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write_dataset(tmp, params)
        try:
            # Succeeds when out_dir is missing or an empty folder (POSIX); atomic.
            os.rename(tmp, out_dir)
            return out_dir
        except OSError:
            pass
        # Another process may have finished the same dataset meanwhile (concurrent callers).
        state = _existing_state(out_dir, params)
        if state == "same":
            shutil.rmtree(tmp, ignore_errors=True)
            return out_dir
        if state == "empty":
            out_dir.rmdir()  # platforms that do not rename onto an empty folder
            os.rename(tmp, out_dir)
            return out_dir
        if state == "other_dataset" and overwrite:
            trash = out_dir.parent / f".old-{out_dir.name}-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out_dir, trash)
            os.rename(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
            return out_dir
        raise _refuse(out_dir, state, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def default_dataset_dir(
    cache_dir: str | Path | None = None,
    seed: int = 0,
    scenario: Literal["classes", "monitoring"] = "classes",
) -> Path:
    """The default dataset, generated once into the cache and reused afterwards.

    Safe when several processes call it at once: each generates into its own temporary folder and
    the first rename wins; the others discard theirs.

    Args:
        cache_dir: the cache root; defaults to :func:`default_cache_dir`.
        seed: the dataset seed.
        scenario: ``classes`` or ``monitoring`` (see :func:`generate_dataset`).

    Returns:
        ``<cache>/synthetic/shear_frame_v2_seed<seed>`` (``monitoring``:
        ``<cache>/synthetic/<monitoring version>_seed<seed>``).
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = DATASET_VERSION
    if scenario == "monitoring":
        from damage_lightning.data.monitoring import MONITORING_VERSION

        name = MONITORING_VERSION
    return generate_dataset(
        root / "synthetic" / f"{name}_seed{int(seed)}", seed=seed, scenario=scenario
    )


def main_synth(argv: list[str] | None = None) -> int:
    """``python -m damage_lightning data synth``: write the simulated dataset to a folder.

    Args:
        argv: the arguments after ``data synth``; ``None`` reads ``sys.argv``.

    Returns:
        The process exit code: 0 on success, 1 when the folder cannot be used, 2 on bad arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python -m damage_lightning data synth",
        description="Generate the built-in simulated shear-frame dataset (folder-per-class CSV "
        "plus manifest.csv).",
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to create")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--recordings-per-class", type=int, default=24, help="recordings per class (default 24)"
    )
    parser.add_argument("--samples", type=int, default=8192, help="samples per recording")
    parser.add_argument("--sample-rate", type=float, default=1024.0, help="samples per second")
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="classes",
        help="classes: five classes for a classifier; monitoring: many healthy recordings and "
        "graded damage for a novelty detector (configs/novelty.yaml)",
    )
    parser.add_argument(
        "--healthy-recordings",
        type=int,
        default=None,
        help="monitoring: healthy recordings (default 340); --recordings-per-class then counts "
        "each damage class",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset made with other parameters"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has printed the message
        return int(exc.code or 0)
    out = args.out.expanduser().absolute()
    params = _parameters(
        args.seed,
        args.recordings_per_class,
        args.samples,
        args.sample_rate,
        args.scenario,
        args.healthy_recordings,
    )
    reused = _existing_state(out, params) == "same"
    start = time.perf_counter()
    try:
        path = generate_dataset(
            out,
            seed=args.seed,
            recordings_per_class=args.recordings_per_class,
            n_samples=args.samples,
            sample_rate=args.sample_rate,
            overwrite=args.overwrite,
            scenario=args.scenario,
            healthy_recordings=args.healthy_recordings,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    marker = _read_marker(path) or {}
    total, classes = marker.get("n_recordings", 0), marker.get("classes", [])
    if reused:
        print(f"Dataset already complete with these parameters, left untouched: {path}")
    else:
        print(
            f"Wrote {total} recordings ({len(classes)} classes: {', '.join(classes)}; "
            f"{args.samples} samples at {args.sample_rate:g} Hz) to {path} in {elapsed:.1f} s"
        )
    print(f"Manifest: {path / MANIFEST_FILE}")
    return 0
