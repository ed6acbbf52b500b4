"""A real gateway: a fresh virtual environment with numpy, pandas, pyarrow and onnxruntime only,
and the package installed with ``--no-deps``, predicts the same as the pipeline's model does."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pandas as pd
import pytest
import torch
from gateway import REPO
from test_predict import CHANNELS, CLASSES, FramedLogEnergy, PoolNet, _recording, expected

from damage_lightning.export import DeployableModel, ModelMetadata, export_onnx

GATEWAY_PACKAGES = ("numpy", "pandas", "pyarrow", "onnxruntime")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.mark.slow
def test_fresh_gateway_environment_predicts_without_torch(tmp_path):
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
    )  # fmt: skip
    (wheel,) = wheels.glob("damage_lightning-*.whl")
    env_dir = tmp_path / "gateway-env"
    _run([sys.executable, "-m", "venv", str(env_dir)])
    python = env_dir / "bin" / "python"
    # The versions this suite runs with, so the install comes from pip's cache.
    pins = [f"{name}=={version(name)}" for name in GATEWAY_PACKAGES]
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins])
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    missing = _run(
        [str(python), "-c",
         "import importlib.util as u; print([m for m in ('torch', 'lightning', 'scipy') "
         "if u.find_spec(m)])"],
    )  # fmt: skip
    assert missing.stdout.strip() == "[]", "the gateway environment must not have torch"

    torch.manual_seed(3)
    model = DeployableModel(FramedLogEnergy(3), PoolNet(3, 3)).eval()
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path, ModelMetadata(CLASSES, CHANNELS, 256.0, 128, 64, {"k": "x"}))
    data = tmp_path / "site" / "pump_7"
    data.mkdir(parents=True)
    _recording(900, 1).to_csv(data / "monday.csv", index=False, sep=";")
    _recording(400, 2).to_parquet(data / "tuesday.parquet")

    work = tmp_path / "elsewhere"
    work.mkdir()
    out = work / "verdicts.csv"
    _run(
        [str(python), "-m", "damage_lightning.deploy", str(onnx_path), str(data.parent),
         "--output", str(out)],
        cwd=work,
    )  # fmt: skip
    frame = pd.read_csv(out).set_index("path")
    assert list(frame.index) == ["pump_7/monday.csv", "pump_7/tuesday.parquet"]
    for name, rec in (("monday.csv", _recording(900, 1)), ("tuesday.parquet", _recording(400, 2))):
        csv = tmp_path / f"{name}.ref.csv"
        rec.to_csv(csv, index=False)
        n, probs = expected(model, csv, 64)
        row = frame.loc[f"pump_7/{name}"]
        assert row["n_windows"] == n
        np.testing.assert_allclose(
            row[[f"p_{c}" for c in CLASSES]].to_numpy(float), probs, atol=1e-5
        )
