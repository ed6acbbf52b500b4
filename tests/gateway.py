"""Run the gateway entry point as a gateway would: without torch, torchaudio, lightning or scipy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "onnx_predict.py"
BLOCKED = ("torch", "torchaudio", "lightning", "scipy", "matplotlib", "reportlab")


def blocked_imports(tmp_path: Path) -> Path:
    """A PYTHONPATH folder in which the training-side libraries cannot be imported."""
    blocked = tmp_path / "blocked"
    for name in BLOCKED:
        (blocked / name).mkdir(parents=True, exist_ok=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed on this gateway')\n"
        )
    return blocked


def run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``scripts/onnx_predict.py ARGS`` with the training side blocked, from ``tmp_path``."""
    env = {"PYTHONPATH": f"{blocked_imports(tmp_path)}:{REPO}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def pipeline_and_gateway(run: Path, data: Path, tmp_path: Path):
    """Per-recording tables of ``data`` by ``predict`` (from ``run``'s best checkpoint) and by
    the torch-free gateway (``run``'s ONNX model), indexed by path, and ``predict``'s windows.
    """
    import pandas as pd

    from damage_lightning.cli import main

    out = tmp_path / "pipeline"
    main(
        [
            "predict",
            "--config",
            str(run / "config.yaml"),
            "--ckpt_path",
            str(run / "checkpoints" / "best.ckpt"),
            "--data.predict_data_dir",
            str(data),
            "--output",
            str(out),
        ]
    )
    ours = pd.read_csv(out / "recording_predictions.csv").set_index("path").sort_index()
    gateway_csv = tmp_path / "gateway.csv"
    res = run_script(
        tmp_path, str(run / "export" / "model.onnx"), str(data), "--output", str(gateway_csv)
    )
    assert res.returncode == 0, res.stderr
    gateway = pd.read_csv(gateway_csv).set_index("path").sort_index()
    return ours, gateway, pd.read_csv(out / "predictions.csv")
