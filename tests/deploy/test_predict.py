"""The torch-free predictor (damage_lightning.deploy, scripts/onnx_predict.py): predictions match
the eager model window by window, any file layout reads the same, and bad input gives one clear
line and exit code 2."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from gateway import REPO, run_script
from torch import nn

from damage_lightning.deploy import cli
from damage_lightning.deploy.predict import predict, score_recording
from damage_lightning.deploy.session import OnnxModel
from damage_lightning.errors import DataValidationError
from damage_lightning.export import DeployableModel, ModelMetadata, export_onnx

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
    meta = ModelMetadata(CLASSES, CHANNELS, SAMPLE_RATE, WINDOW, HOP, {"kind": "framed"})
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    export_onnx(model, path, meta)
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
    (root / "manifest.csv").write_text(
        "path,label\nundamaged/rec_a.csv,undamaged\nbumper/rec_b.csv,bumper\n"
        "bumper/sub/rec_c.CSV.gz,bumper\n"
    )
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


def _check(frame: pd.DataFrame, model, root: Path, hop: int) -> None:
    assert list(frame.columns) == [
        "path",
        "label",
        "predicted_label",
        "decision",
        "confidence",
        "n_windows",
        "agreement",
        "n_flagged",
        *(f"p_{c}" for c in CLASSES),
    ]
    assert (frame["n_flagged"] == 0).all(), "clean recordings pass the sensor-health gate"
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
        # A model without an abstain floor always decides; its confidence is the top mean.
        assert row["decision"] == row["predicted_label"]
        assert row["confidence"] == pytest.approx(probs.max(), abs=1e-5)


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
    got = frame[[f"p_{c}" for c in CLASSES]].to_numpy(np.float64)[0]
    np.testing.assert_allclose(got, probs, atol=1e-5)


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
    assert "a_missing.csv: channel(s) 'floor 1' not found" in message
    assert "b_text.csv (row 9, column 'base'): non-numeric value 'oops'" in message
    assert "c_nan.csv (row 5, column 'étage'): empty or NaN value" in message
    assert "d_short.csv: recording has 127 samples, fewer than the 128 required" in message
    # No scipy on this gateway: a recording at another rate cannot be resampled here.
    assert "e_rate.csv: sampled at 100 Hz but 256 Hz is needed" in message
    assert "needs scipy" in message


def test_gateway_imports_no_training_side_library(tmp_path):
    # Importing and running the predictor pulls in neither torch nor lightning nor scipy.
    code = (
        "import sys, damage_lightning.deploy.predict, damage_lightning.deploy.cli; "
        "import damage_lightning.io.readers.csv; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchaudio', 'lightning', 'scipy')); print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_in_process_errors_and_window_cutting(model_and_file, dataset, tmp_path, capsys):
    _, onnx_path = model_and_file
    assert cli.main([str(onnx_path), str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(onnx_path), str(empty)]) == 2
    assert "no recordings found" in capsys.readouterr().err
    assert cli.main([str(onnx_path), str(dataset), "--hop", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"garbage")
    assert cli.main([str(not_onnx), str(dataset)]) == 2
    assert "onnxruntime cannot load the model" in capsys.readouterr().err
    # Window rows, when asked for, are the windows the training pipeline cuts: 0, hop, 2 hop...
    windows = tmp_path / "windows.csv"
    out = tmp_path / "recordings.csv"
    assert (
        cli.main([str(onnx_path), str(dataset), "--output", str(out), "--windows", str(windows)])
        == 0
    )
    rows = pd.read_csv(windows)
    starts = rows[rows["recording"] == "undamaged/rec_a.csv"]["start"].tolist()
    assert starts == list(range(0, 500 - WINDOW + 1, HOP))
    assert len(rows) == pd.read_csv(out)["n_windows"].sum()


def test_chunked_scoring_equals_whole_recording(model_and_file):
    # A batch at a time (never all windows of a long file at once) gives the same decision.
    _, onnx_path = model_and_file
    model = OnnxModel.load(onnx_path)
    wave = np.random.default_rng(5).normal(size=(3, 5000)).astype(np.float32)
    whole, _ = score_recording(model, wave, HOP, batch_size=10_000)
    chunked, batches = score_recording(model, wave, HOP, batch_size=7, keep=True)
    assert whole.n_windows == chunked.n_windows == (5000 - WINDOW) // HOP + 1
    assert max(len(b[0]) for b in batches) == 7
    np.testing.assert_allclose(chunked.probabilities, whole.probabilities, atol=1e-12)
    assert chunked.predicted == whole.predicted and chunked.agreement == whole.agreement


def _variants(frame: pd.DataFrame, root: Path) -> list[str]:
    """One recording written in every CSV dialect the readers accept."""
    names = []
    values = frame.drop(columns=["time"])
    for time_name in (
        "time",
        "t",
        "timestamp",
        "time_s",
        "time (s)",
        "time [s]",
        "time[s]",
        "time_sec",
        "seconds",
        "Time",
        " TIME ",
    ):
        name = f"time_{len(names)}.csv"
        values.assign(**{time_name: frame["time"]}).to_csv(root / name, index=False)
        names.append(name)
    for sep, suffix in ((";", "semicolon"), ("\t", "tab")):
        frame.to_csv(root / f"{suffix}.csv", index=False, sep=sep)
        names.append(f"{suffix}.csv")
    text = frame.to_csv(index=False)
    (root / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (root / "crlf.csv").write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    (root / "bom_crlf_semicolon.csv").write_bytes(
        b"\xef\xbb\xbf" + frame.to_csv(index=False, sep=";").replace("\n", "\r\n").encode()
    )
    return [*names, "bom.csv", "crlf.csv", "bom_crlf_semicolon.csv"]


def test_every_csv_dialect_gives_the_same_prediction(model_and_file, tmp_path):
    _, onnx_path = model_and_file
    root = tmp_path / "dialects"
    root.mkdir()
    names = _variants(_recording(700, 9), root)
    result = predict(onnx_path, root).recordings.set_index("path")
    assert sorted(result.index) == sorted(names)
    probs = result[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_array_equal(probs, np.repeat(probs[:1], len(probs), axis=0))
    assert (result["n_windows"] == (700 - WINDOW) // HOP + 1).all()


def _faulty_folder(root: Path) -> Path:
    """A clean recording, one with 100 zeros in 'floor 1' and one whose 'étage' is dead."""
    root.mkdir()
    _recording(500, 11).to_csv(root / "a_clean.csv", index=False)
    dropout = _recording(500, 12)
    dropout.loc[200:299, "floor 1"] = 0.0
    dropout.to_csv(root / "b_dropout.csv", index=False)
    dead = _recording(500, 13)
    dead["étage"] = 0.25
    dead.to_csv(root / "c_dead.csv", index=False)
    return root


def test_gateway_flags_windows_at_sensor_faults_instead_of_scoring_them(model_and_file, tmp_path):
    model, onnx_path = model_and_file
    root = _faulty_folder(tmp_path / "site")
    result = predict(onnx_path, root, keep_windows=True)
    rec = result.recordings.set_index("path")
    win = result.windows
    starts = np.arange(0, 500 - WINDOW + 1, HOP)
    # Windows overlapping samples 200-299 of b_dropout.csv are flagged, the rest pass.
    overlap = (starts < 300) & (starts + WINDOW > 200)
    got = win[win["recording"] == "b_dropout.csv"]
    np.testing.assert_array_equal(got["sensor_ok"].to_numpy(), ~overlap)
    assert set(got.loc[~got["sensor_ok"], "sensor_reason"]) == {"dropout floor 1"}
    assert rec.loc["b_dropout.csv", "n_flagged"] == overlap.sum() == 3
    assert rec.loc["b_dropout.csv", "n_windows"] == len(starts) - 3
    # Its decision is the mean over the windows that passed, and only those.
    x = pd.read_csv(root / "b_dropout.csv")[CHANNELS].to_numpy(np.float32).T
    passed = torch.from_numpy(np.stack([x[:, s : s + WINDOW] for s in starts[~overlap]]))
    with torch.no_grad():
        mean = model(passed)[1].numpy().astype(np.float64).mean(axis=0)
    got_p = rec.loc["b_dropout.csv", [f"p_{c}" for c in CLASSES]].to_numpy(np.float64)
    np.testing.assert_allclose(got_p, mean, atol=1e-5)
    # A dead channel flags every window: the recording is a sensor fault, not a damage class.
    assert rec.loc["c_dead.csv", "predicted_label"] == "sensor_fault"
    assert rec.loc["c_dead.csv", "n_windows"] == 0
    assert rec.loc["c_dead.csv", "n_flagged"] == len(starts)
    assert rec.loc["c_dead.csv", [f"p_{c}" for c in CLASSES]].isna().all()
    assert rec.loc["a_clean.csv", "n_flagged"] == 0
    assert {(f.file, f.channel, f.kind) for f in result.findings} == {
        ("b_dropout.csv", "floor 1", "dropout"),
        ("c_dead.csv", "étage", "flat_line"),
    }
    # Without the gate every window counts.
    off = predict(onnx_path, root, health=False).recordings.set_index("path")
    assert (off["n_flagged"] == 0).all() and off.loc["c_dead.csv", "n_windows"] == len(starts)


def test_gateway_cli_names_findings_and_uses_the_models_rms_reference(model_and_file, tmp_path):
    from damage_lightning.evaluation.health import METADATA_KEY, fit_reference

    model, _ = model_and_file
    clean = [_recording(500, s)[CHANNELS].to_numpy(np.float32).T for s in range(20, 26)]
    reference = fit_reference(clean, CHANNELS)
    meta = ModelMetadata(
        CLASSES, CHANNELS, SAMPLE_RATE, WINDOW, HOP, {"kind": "framed"},
        extra={METADATA_KEY: json.dumps(reference.to_json())},
    )  # fmt: skip
    onnx_path = tmp_path / "with_reference.onnx"
    export_onnx(model, onnx_path, meta)
    root = _faulty_folder(tmp_path / "site")
    loud = _recording(500, 14)
    loud["base"] *= 1000.0  # a sensitivity a thousand times too high
    loud.to_csv(root / "d_loud.csv", index=False)
    out = tmp_path / "verdicts.csv"
    proc = run_script(tmp_path, str(onnx_path), str(root), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "sensor health: d_loud.csv (channel 'base', samples 0-500): rms_range:" in proc.stderr
    assert "sensor health: b_dropout.csv (channel 'floor 1', samples 200-300): dropout" in (
        proc.stderr
    )
    frame = pd.read_csv(out).set_index("path")
    assert frame.loc["d_loud.csv", "predicted_label"] == "sensor_fault"
    assert frame.loc["a_clean.csv", "predicted_label"] in CLASSES


@pytest.mark.slow
def test_a_process_that_read_a_csv_and_closed_its_model_exits_cleanly(model_and_file, tmp_path):
    # pyarrow's thread pool, once used to parse a buffer, made a process that then closed an
    # onnxruntime session abort at exit (SIGABRT) about one run in ten: the gateway's exit code
    # 2 on bad input became -6. The readers now parse in their own, joined threads.
    _, onnx_path = model_and_file
    csv = tmp_path / "rec.csv"
    _recording(300, 9).to_csv(csv, index=False)
    code = (
        "import sys\n"
        "from damage_lightning.deploy.session import OnnxModel\n"
        "from damage_lightning.io.readers.base import ReaderOptions\n"
        "from damage_lightning.io.readers.csv import CsvReader\n"
        "model = OnnxModel.load(sys.argv[1])\n"
        "CsvReader().read(sys.argv[2], 'rec.csv', ReaderOptions())\n"
        "del model\n"
        "sys.exit(2)\n"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    codes = []
    for _ in range(12):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(onnx_path), str(csv)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        codes += [(p.wait(timeout=60), p.stderr.read().decode()) for p in procs]
    assert [c for c in codes if c[0] != 2] == []


def test_a_bad_hop_or_batch_size_is_named_with_its_value(model_and_file, dataset):
    _, onnx_path = model_and_file
    csv = dataset / "undamaged" / "rec_a.csv"
    with pytest.raises(DataValidationError) as exc:
        predict(onnx_path, csv, hop=0)
    message = "hop and batch size must be positive integers, got hop 0, batch size 64"
    assert str(exc.value) == message


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_an_output_path_that_cannot_be_written_is_named(
    model_and_file, dataset, tmp_path, capsys, where
):
    _, onnx_path = model_and_file
    csv = dataset / "undamaged" / "rec_a.csv"
    (tmp_path / "a_file").write_text("keep")
    out = tmp_path if where == "folder" else tmp_path / "a_file" / "out.csv"
    code = cli.main([str(onnx_path), str(csv), "--output", str(out)])
    assert code == 2
    reason = "is a folder" if where == "folder" else "a file stands where its folder should be"
    err = capsys.readouterr().err
    assert f"error: {out}: " in err and reason in err
    assert (tmp_path / "a_file").read_text() == "keep"
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("rpm", ["-5", "0", "nan", "inf"])
def test_a_speed_that_is_not_a_positive_rpm_is_refused_for_any_model(
    model_and_file, dataset, tmp_path, capsys, rpm
):
    # This model has no order spectra and would not use the speed, but a negative, zero or
    # NaN shaft speed is a mistake in the command, said before anything is scored or written.
    _, onnx_path = model_and_file
    out = tmp_path / "out.csv"
    code = cli.main([str(onnx_path), str(dataset), "--rpm", rpm, "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"error: --rpm must be a positive shaft speed in rpm, got {float(rpm)!r}")
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(DataValidationError, match="positive shaft speed"):
        predict(onnx_path, dataset, rpm=float(rpm))
