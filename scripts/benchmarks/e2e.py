"""The default ``fit --config configs/cnn.yaml`` end to end: wall time and peak RSS of the run.

It runs in a subprocess, as a user would start it (built-in dataset generation, training, test,
exports and the PDF report); the peak RSS is the child's own ``VmHWM``, polled. Records
``e2e_fit_wall`` and ``e2e_fit_peak_rss``; they carry no target field, docs/benchmarks.md holds
them against issue 7's: <= 3 minutes and <= 3 GiB.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, Recorder, Size, rounded, vm_hwm_mb


def bench_e2e(
    rec: Recorder, workdir: Path, size: Size, device: str, data_dir: Path, deadline: float
) -> None:
    """Wall time and peak RSS of the default ``fit --config configs/cnn.yaml`` (a subprocess).

    The run is stopped at ``deadline`` (a ``time.perf_counter()`` value), and recorded as such.
    """
    root = workdir / "e2e-runs"
    shutil.rmtree(root, ignore_errors=True)
    cmd = [sys.executable, "-m", "damage_lightning", "fit", "--config", "configs/cnn.yaml",
           "--trainer.default_root_dir", str(root), "--data.cache_dir", str(workdir / "e2e-cache"),
           "--report.llm", "false",
           *(o.replace("{data_dir}", str(data_dir)) for o in size.e2e_overrides)]  # fmt: skip
    log = workdir / "e2e.log"
    start = time.perf_counter()
    peak = 0.0
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        # The child's own VmHWM, polled: its ru_maxrss would start at this (large) process's size.
        while proc.poll() is None:
            peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                rec.skipped("e2e_fit_wall", "stopped: the --time-budget ran out during the run",
                            {"command": " ".join(cmd),
                             "ran_s": rounded(time.perf_counter() - start, 1),
                             "peak_rss_mb_so_far": rounded(peak, 1)})  # fmt: skip
                return
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the default fit run failed (exit {proc.returncode}):\n{tail}")
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    epochs = None
    if runs and (runs[-1] / "training_history.json").is_file():
        epochs = len(json.loads((runs[-1] / "training_history.json").read_text())["epochs"])
    params = {"command": " ".join(cmd), "log": str(log), "epochs_run": epochs,
              "note": "includes the built-in dataset (generated once into --data.cache_dir), "
                      "training, test, exports and the PDF report"}  # fmt: skip
    params["peak_rss_source"] = "VmHWM of the child, polled every 0.1 s"
    rec.emit(
        "e2e_fit_wall", rounded(wall, 2), "s", params, device=device, peak_rss_mb=rounded(peak, 1)
    )
    rec.emit("e2e_fit_peak_rss", rounded(peak, 1), "MB", params, device=device)
