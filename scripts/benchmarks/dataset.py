"""The generated CSV dataset every benchmark reads: 4 classes x 8 two-channel recordings.

It is split by recording like a user's data (about 6 training, 1 validation and 1 test
recording per class), written once into the work folder and reused by later runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .common import CHANNELS, SAMPLE_RATE, WINDOW

GEN_CLASSES = 4
GEN_RECORDINGS_PER_CLASS = 8
N_RECORDINGS = GEN_CLASSES * GEN_RECORDINGS_PER_CLASS
# CSV bytes per row of the generated data (two float32 columns, six decimals, about unit scale).
ROW_BYTES = 20.0


def recording_rows(total_mb: float) -> int:
    """Samples per recording of a generated dataset of about ``total_mb`` MB (1e6 bytes)."""
    return max(WINDOW * 4, int(total_mb * 1e6 / N_RECORDINGS / ROW_BYTES))


def generate_dataset(root: Path, total_mb: float, seed: int = 0) -> Path:
    """Write (once) a folder-per-class CSV dataset of about ``total_mb`` MB of 2-channel vibration.

    Each class has its own resonances; every recording adds noise, a slow amplitude modulation
    and a second channel that is a delayed, scaled copy plus its own noise. Values are float32
    with six decimals (like real accelerometer exports). A ``complete.json`` marker makes the
    folder reusable; an incomplete folder is rewritten.

    Args:
        root: the dataset folder (``root/<class>/<recording>.csv``).
        total_mb: target CSV size in MB (1e6 bytes).
        seed: seed of the signals.

    Returns:
        ``root``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    marker = root / "complete.json"
    spec = {"total_mb": total_mb, "seed": seed, "classes": GEN_CLASSES,
            "recordings_per_class": GEN_RECORDINGS_PER_CLASS, "channels": list(CHANNELS),
            "sample_rate": SAMPLE_RATE, "version": 1}  # fmt: skip
    if marker.is_file():
        try:
            if json.loads(marker.read_text())["spec"] == spec:
                return root
        except (ValueError, KeyError):
            pass
    if root.exists():
        shutil.rmtree(root)
    rows = recording_rows(total_mb)

    def write(i: int) -> None:
        label, rec = divmod(i, GEN_RECORDINGS_PER_CLASS)
        rng = np.random.default_rng([seed, i])
        t = np.arange(rows, dtype=np.float64) / SAMPLE_RATE
        x = np.zeros(rows)
        for k in range(3):
            f = 300.0 * (label + 1) * (k + 1) + rng.uniform(-20, 20)
            x += rng.uniform(0.2, 1.0) / (k + 1) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
        x *= 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
        x += 0.3 * rng.standard_normal(rows)
        y = 0.6 * np.roll(x, 7) + 0.2 * rng.standard_normal(rows)
        table = pa.table(
            {
                CHANNELS[0]: np.round(x, 6).astype(np.float32),
                CHANNELS[1]: np.round(y, 6).astype(np.float32),
            }
        )
        out = root / f"class_{label}" / f"rec_{rec:02d}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".csv.tmp")
        with tmp.open("wb") as fh:
            fh.write((",".join(CHANNELS) + "\n").encode())
            pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False))
        tmp.replace(out)

    from concurrent.futures import ThreadPoolExecutor

    # pyarrow's writer releases the GIL, so files are written in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(write, range(N_RECORDINGS)))
    marker.write_text(json.dumps({"spec": spec}))
    return root


def csv_bytes(folder: Path) -> int:
    """Bytes of all CSV files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*.csv"))
