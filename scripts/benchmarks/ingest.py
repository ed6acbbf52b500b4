"""CSV ingest speed: megabytes of CSV per second of ``io.dataset.load_dataset``, cold and warm.

Section ``ingest`` (``ingest_cold``, ``ingest_warm``): each load in a fresh process, so every
phase pays the imports; with an empty cache folder (parse, validate, write the cache) and with
the cache filled (read the cache). Section ``ingest_in_process`` (``ingest_in_process_<phase>``,
only when named in ``--only``): repeated loads of one folder (default CWRU) in one process, the
imports paid once by the first cold load; phases ``first_cold``, ``cold``, ``warm`` and
``no_cache``, best and median of the repeats. Targets (issue 7): cold >= 250 MB/s, warm >= 1000
MB/s. The CSV files are in the OS page cache, so these are parsing speeds, not disk speeds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    ENTRY_POINT,
    REPO,
    SAMPLE_RATE,
    Recorder,
    at_least,
    peak_rss_mb,
    rounded,
    vm_hwm_mb,
)
from .dataset import csv_bytes

TARGET_INGEST_COLD_MBS = 250.0
TARGET_INGEST_WARM_MBS = 1000.0
# Loads per phase of ``ingest_in_process`` unless ``--ingest-repeats`` says otherwise.
IN_PROCESS_REPEATS = 3


def child_main(spec_json: str) -> int:
    """Run the measurement of an ingest child (``--ingest-child``) and print it as one JSON line.

    Args:
        spec_json: ``{"mode": "phase" | "in_process", ...}``, the rest being the keyword
            arguments of that mode's function.
    """
    spec = json.loads(spec_json)
    mode = spec.pop("mode")
    result = _load_once(**spec) if mode == "phase" else _load_repeatedly(**spec)
    print(json.dumps(result), flush=True)
    return 0


def _run_child(mode: str, **spec: Any) -> dict[str, Any]:
    cmd = [sys.executable, str(ENTRY_POINT), "--ingest-child", json.dumps({"mode": mode, **spec})]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest of {spec['folder']} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------- one load per fresh process
def _load_once(folder: str, cache: str | None, channels: list[str] | None) -> dict[str, Any]:
    """One ingest phase in this fresh process: time and peak RSS of one ``load_dataset``."""
    from damage_lightning.io import dataset as csv_io

    wall, cpu = time.perf_counter(), time.process_time()
    ds = csv_io.load_dataset(folder, channels=channels, sample_rate=SAMPLE_RATE, cache_dir=cache)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    samples = int(sum(w.shape[1] for w in ds.waveforms))
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "peak_rss_mb": vm_hwm_mb() or peak_rss_mb(),
        "ru_maxrss_mb": peak_rss_mb(),
        "files": len(ds.waveforms),
        "samples_per_channel": samples,
    }


def _run_ingest_phase(folder: Path, cache: Path, channels: list[str] | None) -> dict[str, Any]:
    return _run_child("phase", folder=str(folder), cache=str(cache), channels=channels or None)


def bench_ingest(rec: Recorder, folder: Path, label: str, cache_root: Path, repeats: int,
                 channels: list[str] | None) -> Path:  # fmt: skip
    """Cold (empty cache) and warm (filled cache) ingest, each phase in a fresh process.

    Returns the filled cache folder (``<cache_root>/waveforms``), for the DataModule to reuse.
    """
    nbytes = csv_bytes(folder)
    warm_cache = cache_root / "waveforms"
    params = {"dataset": label, "path": str(folder), "csv_mb": rounded(nbytes / 1e6, 2),
              "files": len(list(folder.rglob("*.csv"))), "sample_rate": SAMPLE_RATE,
              "channels": channels, "repeats": repeats, "fresh_process_per_phase": True,
              "csv_in_os_page_cache": "likely (files were just written or read)"}  # fmt: skip
    cold_runs, warm_runs = [], []
    for i in range(repeats):
        if i == repeats - 1:
            # The last cold run fills the cache that the warm runs and the DataModule read.
            shutil.rmtree(warm_cache, ignore_errors=True)
            cold_runs.append(_run_ingest_phase(folder, warm_cache, channels))
        else:
            with tempfile.TemporaryDirectory(dir=cache_root.parent) as tmp:
                cold_runs.append(_run_ingest_phase(folder, Path(tmp) / "waveforms", channels))
    for _ in range(repeats):
        warm_runs.append(_run_ingest_phase(folder, warm_cache, channels))
    for phase, runs, target in (
        ("cold", cold_runs, TARGET_INGEST_COLD_MBS),
        ("warm", warm_runs, TARGET_INGEST_WARM_MBS),
    ):
        best = min(runs, key=lambda r: r["seconds"])
        mbs = nbytes / best["seconds"] / 1e6
        rec.emit(
            f"ingest_{phase}", rounded(mbs, 1), "MB/s", params, target=target,
            met=at_least(mbs, target), device="cpu", seconds=rounded(best["seconds"]),
            cpu_seconds=rounded(best["cpu_seconds"]), peak_rss_mb=rounded(best["peak_rss_mb"], 1),
            ru_maxrss_mb=rounded(best["ru_maxrss_mb"], 1),
            all_mb_per_s=[rounded(nbytes / r["seconds"] / 1e6, 1) for r in runs],
            what=("load_dataset with an empty cache folder: parse, validate, write the cache"
                  if phase == "cold" else "load_dataset with the cache filled: read the cache"),
        )  # fmt: skip
    return warm_cache


# ----------------------------------------------------------- repeated loads in one process
IN_PROCESS_PHASES = {
    "first_cold": "the first load, empty cache: also pays pyarrow's import and thread-pool start",
    "cold": "load_dataset with an empty cache folder: parse, validate, write the cache",
    "warm": "load_dataset with the cache filled: read the cache",
    "no_cache": "load_dataset without a cache folder: parse and validate only",
}


def _load_repeatedly(folder: str, manifest: str | None, channels: list[str] | None,
                     sample_rate: float, repeats: int) -> dict[str, Any]:  # fmt: skip
    """Every ``ingest_in_process`` load of ``folder`` in this process, in order.

    Each repeat loads into a new cache folder (cold) and again from it (warm); then ``repeats``
    loads without a cache follow.
    """
    t0 = time.perf_counter()
    from damage_lightning.io import dataset as csv_io
    from damage_lightning.io.discovery import discover

    import_s = time.perf_counter() - t0
    specs = discover(Path(folder), manifest)

    def load(cache_dir: str | None) -> dict[str, float]:
        w, c = time.perf_counter(), time.process_time()
        ds = csv_io.load_dataset(folder, manifest=manifest, channels=channels,
                                 sample_rate=sample_rate, cache_dir=cache_dir)  # fmt: skip
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        assert len(ds.waveforms) == len(specs)
        # VmHWM: this child's ru_maxrss starts at its parent's size (see vm_hwm_mb).
        return {"seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": vm_hwm_mb() or peak_rss_mb(),
                "load_avg_1min": os.getloadavg()[0]}  # fmt: skip

    runs: dict[str, list[dict[str, float]]] = {phase: [] for phase in IN_PROCESS_PHASES}
    with tempfile.TemporaryDirectory(prefix="ingest-speed-") as tmp:
        for i in range(repeats):
            cache = os.path.join(tmp, f"cache{i}")
            runs["first_cold" if i == 0 else "cold"].append(load(cache))
            runs["warm"].append(load(cache))
        for _ in range(repeats):
            runs["no_cache"].append(load(None))
    return {"files": len(specs), "csv_bytes": sum(s.path.stat().st_size for s in specs),
            "import_csv_io_s": import_s, "runs": runs}  # fmt: skip


def bench_ingest_in_process(rec: Recorder, folder: Path, label: str, repeats: int,
                            sample_rate: float, channels: list[str] | None,
                            manifest: str | None) -> None:  # fmt: skip
    """Repeated loads of ``folder`` in one fresh process: best and median MB/s of each phase.

    The loads run in a child process of their own, so its peak RSS and the first load's import
    cost are those of ``csv_io`` alone, not of this process (which holds torch).
    """
    out = _run_child("in_process", folder=str(folder), manifest=manifest, channels=channels,
                     sample_rate=sample_rate, repeats=repeats)  # fmt: skip
    nbytes = out["csv_bytes"]
    params = {"dataset": label, "path": str(folder), "csv_mb": rounded(nbytes / 1e6, 2),
              "files": out["files"], "sample_rate": sample_rate, "channels": channels,
              "manifest": manifest, "repeats": repeats, "fresh_process_per_phase": False,
              "import_csv_io_s": rounded(out["import_csv_io_s"], 3),
              "cpu_count": os.cpu_count()}  # fmt: skip
    targets = {"cold": TARGET_INGEST_COLD_MBS, "warm": TARGET_INGEST_WARM_MBS}
    for phase, runs in out["runs"].items():
        if not runs:  # one repeat has a first cold load and no further one
            continue
        seconds = [r["seconds"] for r in runs]
        best = nbytes / min(seconds) / 1e6
        target = targets.get(phase)
        rec.emit(
            f"ingest_in_process_{phase}", rounded(best, 1), "MB/s", params, target=target,
            met=None if target is None else at_least(best, target), device="cpu",
            median_mb_per_s=rounded(nbytes / statistics.median(seconds) / 1e6, 1),
            all_mb_per_s=[rounded(nbytes / s / 1e6, 1) for s in seconds],
            seconds=[rounded(s) for s in seconds],
            cpu_seconds=[rounded(r["cpu_seconds"]) for r in runs],
            peak_rss_mb=rounded(max(r["peak_rss_mb"] for r in runs), 1),
            load_avg_1min_runs=[rounded(r["load_avg_1min"], 2) for r in runs],
            what=IN_PROCESS_PHASES[phase],
        )  # fmt: skip
