"""Measure how fast a folder of CSV recordings is ingested: cold (empty cache) and warm (cached).

Prints one JSON object per line: CSV megabytes per second (CSV bytes on disk / wall seconds of
``load_dataset``), CPU seconds, peak RSS, and the load average (other work on the machine slows
the cold figure). Default: the CWRU 10-class folder beside the repository, at 12 kHz.

    python scripts/ingest_speed.py [folder] [--sample-rate 12000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_FOLDER = REPO.parent / "shared" / "data" / "cwru_0hp_10class"


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print JSON lines; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER))
    parser.add_argument("--sample-rate", type=float, default=12000.0)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--channels", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    from damage_lightning.data import csv_io

    import_s = time.perf_counter() - t0
    folder = Path(args.folder)
    specs = csv_io.discover(folder, args.manifest)
    csv_bytes = sum(s.path.stat().st_size for s in specs)
    _emit(
        phase="setup",
        folder=str(folder),
        files=len(specs),
        csv_mb=round(csv_bytes / 1e6, 2),
        import_csv_io_s=round(import_s, 3),
        cpus=os.cpu_count(),
        load_avg_1min=round(os.getloadavg()[0], 2),
    )

    def load(cache_dir: str | None) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        ds = csv_io.load_dataset(
            folder,
            manifest=args.manifest,
            channels=args.channels,
            sample_rate=args.sample_rate,
            cache_dir=cache_dir,
        )
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        assert len(ds.waveforms) == len(specs)
        return wall, cpu

    results: dict[str, list[float]] = {"first_cold": [], "cold": [], "warm": [], "no_cache": []}
    with tempfile.TemporaryDirectory(prefix="ingest-speed-") as tmp:
        for i in range(args.repeats):
            cache = os.path.join(tmp, f"cache{i}")
            wall, cpu = load(cache)
            # The very first load also pays pyarrow's import and thread-pool start.
            phase = "first_cold" if i == 0 else "cold"
            results[phase].append(wall)
            _emit(
                phase=phase,
                repeat=i,
                seconds=round(wall, 4),
                cpu_seconds=round(cpu, 4),
                mb_per_s=round(csv_bytes / wall / 1e6, 1),
                peak_rss_mb=round(_peak_rss_mb(), 1),
                load_avg_1min=round(os.getloadavg()[0], 2),
            )
            wall, cpu = load(cache)
            results["warm"].append(wall)
            _emit(
                phase="warm",
                repeat=i,
                seconds=round(wall, 4),
                cpu_seconds=round(cpu, 4),
                mb_per_s=round(csv_bytes / wall / 1e6, 1),
                peak_rss_mb=round(_peak_rss_mb(), 1),
            )
        for i in range(args.repeats):
            wall, cpu = load(None)
            results["no_cache"].append(wall)
            _emit(
                phase="no_cache",
                repeat=i,
                seconds=round(wall, 4),
                cpu_seconds=round(cpu, 4),
                mb_per_s=round(csv_bytes / wall / 1e6, 1),
                peak_rss_mb=round(_peak_rss_mb(), 1),
            )
    summary = {
        phase: {
            "best_mb_per_s": round(csv_bytes / min(v) / 1e6, 1),
            "median_mb_per_s": round(csv_bytes / statistics.median(v) / 1e6, 1),
        }
        for phase, v in results.items()
        if v
    }
    _emit(phase="summary", peak_rss_mb=round(_peak_rss_mb(), 1), **summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
