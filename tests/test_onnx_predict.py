"""scripts/onnx_predict.py: torch-free prediction from an exported ONNX model matches the eager
model window by window, and bad input gives one clear line and exit code 2."""

from __future__ import annotations

import ast
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from damage_lightning.export import DeployableModel, build_metadata, export_onnx

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "onnx_predict.py"
CHANNELS = ["base", "floor 1", "étage"]
CLASSES = ["undamaged", "bumper, contact", 'story "1"']
SAMPLE_RATE = 256.0
WINDOW = 128
HOP = 64


class FramedLogEnergy(nn.Module):
    """A conv1d filter-bank front end (not an STFT): export works for any front-end module."""

    def __init__(self, n_channels: int, n_filters: int = 8):
        super().__init__()
        self.n_channels = n_channels
        self.bank = nn.Conv1d(1, n_filters, kernel_size=32, stride=16, bias=False)
        self.register_buffer("mean", torch.full((n_channels,), -1.0))
        self.register_buffer("std", torch.full((n_channels,), 2.0))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        b, c, w = waveform.shape
        frames = self.bank(waveform.reshape(b * c, 1, w))
        spec = torch.log(frames.pow(2) + 1e-6).reshape(b, c, frames.shape[1], frames.shape[2])
        return (spec - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


class PoolNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 5, 3, padding=1)
        self.head = nn.Linear(5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def model_and_file(tmp_path_factory):
    torch.manual_seed(3)
    model = DeployableModel(FramedLogEnergy(3), PoolNet(3, 3)).eval()
    meta = build_metadata(CLASSES, CHANNELS, SAMPLE_RATE, WINDOW, HOP, {"kind": "framed"})
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    export_onnx(model, path, channels=3, window=WINDOW, metadata=meta)
    return model, path


def _recording(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {"time": np.arange(n) / SAMPLE_RATE}
    for i, name in enumerate(CHANNELS):
        data[name] = rng.normal(scale=0.5 + i, size=n)
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Folder-per-class recordings, a manifest and a hidden cache folder that must be skipped."""
    root = tmp_path_factory.mktemp("data")
    (root / "undamaged").mkdir()
    (root / "bumper" / "sub").mkdir(parents=True)
    (root / ".cache").mkdir()
    _recording(500, 1).to_csv(root / "undamaged" / "rec_a.csv", index=False)
    _recording(WINDOW, 2).to_csv(root / "bumper" / "rec_b.csv", index=False)  # exactly 1 window
    # Other column order, an extra column and no time column: selected by name.
    rec = _recording(300, 3)[["étage", "floor 1", "base"]]
    rec.insert(1, "temperature", 21.5)
    rec.to_csv(root / "bumper" / "sub" / "rec_c.CSV.gz", index=False)
    (root / "manifest.csv").write_text("path,label\nundamaged/rec_a.csv,undamaged\n")
    (root / ".cache" / "junk.csv").write_text("not,a\nrecording,!\n")
    return root


def expected(model: nn.Module, csv: Path, hop: int) -> tuple[int, np.ndarray]:
    """Mean window probabilities computed here with torch, windows cut independently."""
    x = pd.read_csv(csv)[CHANNELS].to_numpy(np.float64).T.astype(np.float32)
    starts = list(range(0, x.shape[1] - WINDOW + 1, hop))
    windows = torch.from_numpy(np.stack([x[:, s : s + WINDOW] for s in starts]))
    with torch.no_grad():
        _, probs = model(windows)
    return len(starts), probs.numpy().astype(np.float64).mean(axis=0)


def _blocked_imports(tmp_path: Path) -> Path:
    """A PYTHONPATH folder in which torch, lightning and damage_lightning cannot be imported."""
    blocked = tmp_path / "blocked"
    for name in ("torch", "torchaudio", "lightning", "damage_lightning"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed on this gateway')\n"
        )
    return blocked


def run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(_blocked_imports(tmp_path)), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def _check(frame: pd.DataFrame, model, root: Path, hop: int) -> None:
    assert list(frame.columns) == [
        "path",
        "predicted_label",
        "n_windows",
        *(f"p_{c}" for c in CLASSES),
    ]
    assert list(frame["path"]) == [
        "bumper/rec_b.csv",
        "bumper/sub/rec_c.CSV.gz",
        "undamaged/rec_a.csv",
    ]
    for _, row in frame.iterrows():
        n, probs = expected(model, root / row["path"], hop)
        assert row["n_windows"] == n
        got = row[[f"p_{c}" for c in CLASSES]].to_numpy(np.float64)
        np.testing.assert_allclose(got, probs, atol=1e-5)
        assert row["predicted_label"] == CLASSES[int(np.argmax(probs))]


@pytest.mark.slow
def test_folder_prediction_without_torch_matches_eager(model_and_file, dataset, tmp_path):
    model, onnx_path = model_and_file
    out = tmp_path / "preds" / "predictions.csv"
    proc = run_script(
        tmp_path, str(onnx_path), str(dataset), "--output", str(out), "--batch-size", "2"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    frame = pd.read_csv(out)
    _check(frame, model, dataset, HOP)
    assert list(frame["n_windows"]) == [1, 3, 6]
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]


@pytest.mark.slow
def test_single_csv_to_stdout_with_own_hop(model_and_file, dataset, tmp_path):
    model, onnx_path = model_and_file
    csv = dataset / "undamaged" / "rec_a.csv"
    proc = run_script(tmp_path, str(onnx_path), str(csv), "--hop", "32")
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(io.StringIO(proc.stdout))
    assert list(frame["path"]) == ["rec_a.csv"]
    n, probs = expected(model, csv, 32)
    assert frame["n_windows"].item() == n == 12
    np.testing.assert_allclose(frame.iloc[0, 3:].to_numpy(np.float64), probs, atol=1e-5)


@pytest.mark.slow
def test_bad_input_gives_one_line_and_exit_code_2(model_and_file, tmp_path):
    _, onnx_path = model_and_file
    bad = tmp_path / "bad"
    bad.mkdir()
    _recording(200, 4).drop(columns=["floor 1"]).to_csv(bad / "a_missing.csv", index=False)
    text = _recording(200, 5)
    text["base"] = text["base"].astype(object)
    text.loc[7, "base"] = "oops"
    text.to_csv(bad / "b_text.csv", index=False)
    nan = _recording(200, 6)
    nan.loc[3, "étage"] = np.nan
    nan.to_csv(bad / "c_nan.csv", index=False)
    _recording(WINDOW - 1, 7).to_csv(bad / "d_short.csv", index=False)
    _recording(200, 8).assign(time=np.arange(200) / 100.0).to_csv(bad / "e_rate.csv", index=False)
    proc = run_script(tmp_path, str(onnx_path), str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    message = proc.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "a_missing.csv: missing channel column(s) ['floor 1']" in message
    assert "b_text.csv (line 9, column 'base'): non-numeric value 'oops'" in message
    assert "c_nan.csv (line 5, column 'étage'): missing, NaN or inf value" in message
    assert "d_short.csv: 127 samples, shorter than one window of 128" in message
    assert "e_rate.csv (column 'time'): sampled at 100 Hz but the model expects 256 Hz" in message


def _load_script_module():
    spec = importlib.util.spec_from_file_location("onnx_predict_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_script_imports_only_numpy_pandas_onnxruntime_and_stdlib():
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    third_party = roots - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "pandas", "onnxruntime"}


def test_in_process_errors_and_window_cutting(model_and_file, dataset, tmp_path, capsys):
    _, onnx_path = model_and_file
    script = _load_script_module()
    # The windows are exactly those the training pipeline cuts: starts 0, hop, 2*hop, ...
    wave = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    view = script.window_view(wave, 4, 3)
    assert view.shape == (3, 2, 4)
    np.testing.assert_array_equal(view[2], wave[:, 6:10])
    assert script.main([str(onnx_path), str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert script.main([str(onnx_path), str(empty)]) == 2
    assert "no CSV recordings found" in capsys.readouterr().err
    assert script.main([str(onnx_path), str(dataset), "--hop", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"garbage")
    assert script.main([str(not_onnx), str(dataset)]) == 2
    assert "onnxruntime cannot load the model" in capsys.readouterr().err
