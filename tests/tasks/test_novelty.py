"""The novelty task end to end on a tiny monitoring scenario: fit, card, export, predict, gateway.

One ``fit --config configs/novelty.yaml`` is shared by the tests that read its results.
"""

from __future__ import annotations

import json
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import REPO

from damage_lightning.card import ModelCard
from damage_lightning.cli import main
from damage_lightning.data.synthetic import generate_dataset
from damage_lightning.deploy.novelty import NoveltyRule, recording_score
from damage_lightning.deploy.predict import predict
from damage_lightning.deploy.session import OnnxModel
from damage_lightning.evaluation.conformal import conformal_rank
from damage_lightning.export import deployable_from_checkpoint, example_waveforms
from damage_lightning.export.torchscript import _torchscript_allowed
from damage_lightning.io.dataset import load_recording
from damage_lightning.io.discovery import find_recordings

NOVELTY = str(REPO / "configs" / "novelty.yaml")
CNN = str(REPO / "configs" / "cnn.yaml")
TINY = [
    "--data.window",
    "256",
    "--data.hop",
    "128",
    "--data.n_fft",
    "64",
    "--data.hop_length",
    "16",
    "--data.f_max",
    "null",
    "--data.batch_size",
    "64",
    "--report.llm",
    "false",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("novelty") / "monitoring"
    return generate_dataset(
        out,
        seed=5,
        scenario="monitoring",
        healthy_recordings=24,
        recordings_per_class=2,
        n_samples=2048,
    )


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    args = [
        "fit",
        "--config",
        NOVELTY,
        "--data.data_dir",
        str(data),
        "--data.cache_dir",
        str(root / "cache"),
        "--trainer.default_root_dir",
        str(root),
        "--run_name",
        "novelty",
        *TINY,
    ]
    with redirect_stdout(StringIO()):
        main(args)
    return root / "novelty"


def test_fit_calibrates_on_held_out_healthy_recordings(run: Path) -> None:
    card = ModelCard.read(run / "model_info.json")
    novelty = card.novelty
    assert novelty is not None and card.test_metrics is None
    # A detector has no classes to explain: the attribution is skipped, without an error.
    assert card.attribution is None and not (run / "attribution.json").exists()
    assert novelty.healthy_label == "healthy" and novelty.calibration_unit == "recording"
    splits = json.loads((run / "splits.json").read_text())
    val = [r for r in splits["recordings"] if any(s["split"] == "val" for s in r["segments"])]
    assert novelty.calibration_recordings == len(val) and {r["label"] for r in val} == {"healthy"}
    assert card.data.per_class["healthy"]["val"].windows == novelty.calibration_windows
    w, r = novelty.window_threshold, novelty.recording_threshold
    assert w.n == novelty.calibration_windows and w.rank == conformal_rank(w.n, 0.01)
    assert r.n == novelty.calibration_recordings and not r.met  # 7 recordings cannot reach 1 %
    assert r.threshold >= w.threshold  # so the window threshold is the floor
    test = novelty.test
    assert test is not None and novelty.reference is not None
    assert set(test.window.detection) == {
        "stiffness_loss_05",
        "stiffness_loss_10",
        "stiffness_loss_20",
        "bumper_contact",
    }
    assert test.recording.healthy == card.data.per_class["healthy"]["test"].recordings
    assert test.window.detection["bumper_contact"] == 1.0
    scores = pd.read_csv(run / "novelty_scores.csv")
    assert len(scores) == sum(test.window.counts.values())
    assert (scores["alarm"] == (scores["score"] > w.threshold)).all()
    assert {"reference_score", "recording", "start"} <= set(scores.columns)


def test_export_gives_score_and_alarm_with_the_rule_in_the_metadata(run: Path) -> None:
    card = ModelCard.read(run / "model_info.json")
    assert card.exports["onnx"].verification.max_abs_diff_outputs.keys() == {"score", "alarm"}
    model = OnnxModel.load(run / "export" / "model.onnx")
    assert model.output_names == ["score", "alarm"]
    rule = NoveltyRule.from_metadata(model.metadata)
    assert model.metadata.extra["task"] == "novelty"
    assert rule.threshold == card.novelty.window_threshold.threshold
    assert rule.recording_threshold == card.novelty.recording_threshold.threshold
    assert rule.calibration["windows"] == card.novelty.calibration_windows
    assert rule.calibration["recordings"] == card.novelty.calibration_recordings
    assert "median" in rule.decision_rule and rule.false_alarm_rate == 0.01


def _healthy_and_damaged_windows(data: Path, n: int) -> np.ndarray:
    picks = []
    for rel in ("healthy/healthy_000.csv", "stiffness_loss_20/stiffness_loss_20_000.csv"):
        rec = np.loadtxt(data / rel, delimiter=",", skiprows=1, dtype=np.float32).T
        picks += [rec[:, i * 200 : i * 200 + 256] for i in range(n)]
    return np.stack(picks)


@pytest.mark.parametrize("batch", [1, 6])
def test_export_parity_of_score_and_alarm(run: Path, data: Path, batch: int) -> None:
    deployable, _ = deployable_from_checkpoint(run / "checkpoints" / "best.ckpt")
    windows = torch.from_numpy(_healthy_and_damaged_windows(data, 4))
    windows = torch.cat([windows, example_waveforms(4, 256, 4, seed=3)])
    session = ort.InferenceSession(str(run / "export" / "model.onnx"))
    with _torchscript_allowed():
        scripted = torch.jit.load(str(run / "export" / "model.ts.pt"))
    for start in range(0, len(windows), batch):
        x = windows[start : start + batch]
        with torch.no_grad():
            score, alarm = deployable(x)
            ts_score, ts_alarm = scripted(x)
        onnx_score, onnx_alarm = session.run(None, {"waveform": x.numpy()})
        assert alarm.dtype == torch.bool and onnx_alarm.dtype == np.bool_
        np.testing.assert_allclose(onnx_score, score.numpy(), rtol=1e-4)
        np.testing.assert_allclose(ts_score.numpy(), score.numpy(), rtol=1e-5)
        np.testing.assert_array_equal(onnx_alarm, alarm.numpy())
        np.testing.assert_array_equal(ts_alarm.numpy(), alarm.numpy())
    # The healthy windows score low, the 20 % stiffness loss high: the alarms are not constant.
    with torch.no_grad():
        _, alarms = deployable(windows[:8])
    assert not alarms[:4].all() and alarms[4:8].all()


def test_torch_free_predictor_and_predict_agree_on_scores_and_alarms(
    run: Path, data: Path, tmp_path: Path
) -> None:
    folder = data / "stiffness_loss_10"
    gateway = predict(run / "export" / "model.onnx", folder, keep_windows=True)
    rule = NoveltyRule.from_metadata(OnnxModel.load(run / "export" / "model.onnx").metadata)
    rows = gateway.recordings
    assert list(rows.columns) == ["path", "label", "n_windows", "score", "alarm", "alarm_fraction"]
    for _, row in rows.iterrows():
        mine = gateway.windows[gateway.windows["recording"] == row["path"]]
        assert row["score"] == pytest.approx(recording_score(mine["score"], 0.5))
        assert row["alarm"] == (row["score"] > rule.recording_threshold)
        assert row["alarm_fraction"] == pytest.approx(mine["alarm"].mean())
    args = [
        "predict",
        "--config",
        str(run / "config.yaml"),
        "--ckpt_path",
        str(run / "checkpoints" / "best.ckpt"),
        "--data.predict_data_dir",
        str(folder),
        "--output",
        str(tmp_path),
    ]
    with redirect_stdout(StringIO()):
        main(args)
    pipeline = pd.read_csv(tmp_path / "recording_predictions.csv")
    windows = pd.read_csv(tmp_path / "predictions.csv")
    assert list(windows.columns) == ["recording", "label", "start", "score", "alarm"]
    assert pipeline["path"].tolist() == rows["path"].tolist()
    assert pipeline["alarm"].tolist() == rows["alarm"].tolist()
    np.testing.assert_allclose(pipeline["score"], rows["score"], rtol=1e-4)
    # The gateway reads and windows a file as training does.
    spec = find_recordings(folder)[0]
    rec = load_recording(spec, ["base", "floor1", "floor2", "floor3"], 1024.0, None, 256)
    assert rows["n_windows"].iloc[0] == 1 + (rec.data.shape[1] - 256) // 128


def test_report_has_the_novelty_results_and_figures(run: Path) -> None:
    from pypdf import PdfReader

    text = "".join(
        p.extract_text() for p in PdfReader(run / "report" / "training_report.pdf").pages
    )
    for phrase in (
        "False alarms and detection",
        "Threshold and calibration",
        "PCA + Mahalanobis on log band energies",
        "novelty detector",
    ):
        assert phrase in text
    assert "accuracy" not in text.split("6 Test results")[1].split("7 Training history")[0]
    for name in ("novelty_score_histograms.png", "novelty_scores_over_time.png"):
        assert (run / "report" / name).is_file()


def test_one_class_data_for_a_classifier_exits_with_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As from a shell: LightningCLI warns when sys.argv (here pytest's) and args both hold options.
    monkeypatch.setattr(sys, "argv", ["damage_lightning"])
    one = tmp_path / "normal_only" / "normal"
    one.mkdir(parents=True)
    for i in range(3):
        name = f"healthy_{i:03d}.csv"
        (one / name).write_bytes((data / "healthy" / name).read_bytes())
    root = tmp_path / "models"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit",
                "--config",
                CNN,
                "--data.data_dir",
                str(one.parent),
                "--trainer.default_root_dir",
                str(root),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "only one class ('normal')" in err[0] and "--config configs/novelty.yaml" in err[0]
    assert not root.exists()  # refused before a run folder (or any model) was made
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                CNN,
                "--data.data_dir",
                str(data),
                "--data.healthy_label",
                "healthy",
                "--trainer.default_root_dir",
                str(root),
            ]
        )
    assert "configs/novelty.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_a_learned_backbone_trains_as_an_autoencoder(data: Path, tmp_path: Path) -> None:
    args = [
        "fit",
        "--config",
        NOVELTY,
        "--data.data_dir",
        str(data),
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--run_name",
        "ae",
        "--model.backbone",
        "cnn",
        "--model.backbone_args",
        "{widths: [4, 8]}",
        "--trainer.max_epochs",
        "2",
        "--report.enabled",
        "false",
        *TINY,
    ]
    with redirect_stdout(StringIO()):
        main(args)
    card = ModelCard.read(tmp_path / "ae" / "model_info.json")
    assert card.model.trainable_parameters > 0
    assert "autoencoder" in card.novelty.detector
    history = json.loads((tmp_path / "ae" / "training_history.json").read_text())
    assert len(history["epochs"]) == 2 and history["epochs"][0]["train_loss"] > 0
