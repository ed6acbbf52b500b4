"""The command line end to end on tiny data: fit, validate, test, predict, export, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, tiny_model, tiny_overrides
from helpers import checkpoint_state

from damage_lightning.card import ModelCard
from damage_lightning.cli import main
from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.evaluation.attribution import Attribution, AttributionOptions
from damage_lightning.export.checkpoint import load_from_checkpoint
from damage_lightning.tasks.attribution import attribute

CNN = str(REPO / "configs" / "cnn.yaml")
RESNET = str(REPO / "configs" / "resnet.yaml")


def run_dir_from(out: str) -> Path:
    last = out.strip().splitlines()[-1]
    assert last.startswith("run folder: "), out[-2000:]
    return Path(last.removeprefix("run folder: "))


@pytest.fixture(scope="module")
def fitted(tiny_data, cache_dir, tmp_path_factory):
    """One CNN fit shared by the tests that only read its results."""
    root = tmp_path_factory.mktemp("fitted") / "models"
    args = ["fit", "--config", CNN, *tiny_overrides(tiny_data, root, cache_dir), *tiny_model(CNN)]
    from contextlib import redirect_stdout
    from io import StringIO

    buf = StringIO()
    with redirect_stdout(buf):
        main([*args, "--run_name", "shared"])
    return root / "shared", buf.getvalue()


def test_help_in_subprocess():
    res = subprocess.run(
        [sys.executable, "-m", "damage_lightning", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    for sub in ("fit", "validate", "test", "predict", "export"):
        assert sub in res.stdout


@pytest.mark.parametrize("config", [CNN, RESNET], ids=["cnn", "resnet"])
def test_fit_writes_run_folder(config, tiny_args, capsys):
    main(["fit", "--config", config, *tiny_args, *tiny_model(config)])
    out = capsys.readouterr().out
    run = run_dir_from(out)
    assert run.parent == Path(tiny_args[tiny_args.index("--trainer.default_root_dir") + 1])
    assert run.name.startswith("cnn-" if config == CNN else "resnet-")
    for name in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv"):
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"val_loss", "train_loss", "test_acc"} <= set(metrics.columns)
    history = json.loads((run / "training_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1]
    info = json.loads((run / "model_info.json").read_text())
    # The model card's test accuracy is what `test` logged into metrics.csv.
    assert info["test_metrics"]["accuracy"] == pytest.approx(
        metrics["test_acc"].dropna().iloc[-1], abs=1e-6
    )
    assert info["classes"] == sorted(
        [
            "undamaged",
            "story1_stiffness_loss",
            "story2_stiffness_loss",
            "story3_stiffness_loss",
            "bumper_contact",
        ]
    )
    assert "run folder:" in (run / "training_log.txt").read_text()


def test_fit_explains_each_class_in_hertz(fitted, tiny_data, cache_dir):
    run, out = fitted
    card = ModelCard.read(run / "model_info.json")
    result = Attribution.read(run / "attribution.json")
    assert card.attribution is not None and card.attribution.path == "attribution.json"
    assert card.attribution.method == result.method == "integrated_gradients"
    assert set(card.attribution.top_bands) == set(card.classes)
    assert [c.name for c in result.classes] == card.classes
    assert result.reference_class == "undamaged" and result.channels == card.input.channels
    # One cell per spectrogram row, in Hz: n_fft 64 at 1024 Hz is 16 Hz bins up to Nyquist.
    assert len(result.freq_hz) == card.input.spectrogram_shape[1] == 33
    assert result.freq_hz[1] - result.freq_hz[0] == 16.0 and result.freq_hz[-1] == 512.0
    test_windows = {c: card.data.per_class[c]["test"].windows for c in card.classes}
    assert all(c.windows == min(8, test_windows[c.name]) for c in result.classes)
    assert (
        f"attribution: attribution.json (integrated_gradients, {result.wall_time_s:.1f} s)" in out
    )
    # The same from Python, for the trained task and its DataModule, here by band occlusion.
    model, _, spec = load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    dm = DamageDataModule(
        data_dir=str(tiny_data), cache_dir=str(cache_dir), window=256, hop=128, n_fft=64,
        hop_length=16, f_max=None,
    )  # fmt: skip
    dm.restore_frontend_state(spec.frontend_state, spec.class_names)
    bands = attribute(model, dm, AttributionOptions(method="occlusion", band_hz=128.0))
    # The bin at Nyquist (512 Hz, on the top edge) falls into the top band.
    assert bands.freq_low_hz == [0.0, 128.0, 256.0, 384.0]
    assert bands.freq_high_hz == [128.0, 256.0, 384.0, 512.0]
    assert bands.values(card.classes[0]).shape == (4, 4)


def test_attribution_can_be_switched_off(tiny_args, capsys):
    main(["fit", "--config", CNN, *tiny_args, *tiny_model(CNN), "--trainer.max_epochs", "1",
          "--report.enabled", "false", "--attribution.enabled", "false"])  # fmt: skip
    run = run_dir_from(capsys.readouterr().out)
    assert ModelCard.read(run / "model_info.json").attribution is None
    assert not (run / "attribution.json").exists()


def test_validate_test_predict_with_checkpoints(fitted, tiny_data, cache_dir, tmp_path, capsys):
    run, _ = fitted
    root = run.parent
    common = [*tiny_overrides(tiny_data, root, cache_dir), *tiny_model(CNN)]
    for sub in ("validate", "test"):
        for ckpt in ("best", "last", str(run / "checkpoints" / "best.ckpt")):
            main([sub, "--config", CNN, *common, "--run_name", "shared", "--ckpt_path", ckpt])
    out = tmp_path / "pred"
    main(
        [
            "predict",
            "--config",
            CNN,
            *common,
            "--run_name",
            "shared",
            "--ckpt_path",
            "best",
            "--output",
            str(out),
        ]
    )
    windows = pd.read_csv(out / "predictions.csv")
    recs = pd.read_csv(out / "recording_predictions.csv")
    classes = json.loads((run / "model_info.json").read_text())["classes"]
    assert {"recording", "label", "start", "predicted", *[f"p_{c}" for c in classes]} <= set(
        windows.columns
    )
    probs = windows[[f"p_{c}" for c in classes]].to_numpy()
    assert abs(probs.sum(axis=1) - 1).max() < 1e-4
    assert set(recs["path"]) == set(windows["recording"])
    assert ((recs["agreement"] > 0) & (recs["agreement"] <= 1)).all()
    # The built-in data pass the sensor-health gate: no window is flagged.
    assert windows["sensor_ok"].all() and (recs["n_flagged"] == 0).all()
    # Predicting the test split: its window count is what the model card says.
    info = json.loads((run / "model_info.json").read_text())
    assert len(windows) == info["data"]["windows"]["test"]


def test_fit_records_sensor_health_and_ships_its_reference(fitted):
    from damage_lightning.deploy.session import OnnxModel
    from damage_lightning.evaluation.health import reference_from_metadata

    run, _ = fitted
    health = json.loads((run / "model_info.json").read_text())["sensor_health"]
    assert health["action"] == "warn" and health["recordings_checked"] == 20
    assert health["findings_total"] == 0 and health["findings"] == []
    # The RMS reference reaches the checkpoint and the exported model, for the gateway's gate.
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["damage_lightning"]["health_reference"] == health["reference"]
    meta = OnnxModel.load(run / "export" / "model.onnx").metadata
    assert reference_from_metadata(meta.extra).to_json() == health["reference"]


def test_export_subcommand_regenerates(fitted, tmp_path, capsys):
    run, _ = fitted
    out = tmp_path / "exp"
    main(
        [
            "export",
            "--config",
            str(run / "config.yaml"),
            "--ckpt_path",
            str(run / "checkpoints" / "best.ckpt"),
            "--output",
            str(out),
        ]
    )
    assert (out / "model.onnx").stat().st_size > 1000
    assert (out / "model.ts.pt").stat().st_size > 1000


def _lenient_int8(monkeypatch):
    # The tiny model's probabilities are close together, so quantisation may flip a few top
    # classes: these tests check the wiring, tests/test_int8.py the criteria.
    import functools

    from damage_lightning.export import folder, verify_int8

    lenient = functools.partial(verify_int8, min_agreement=0.0, max_accuracy_drop_points=100.0)
    monkeypatch.setattr(folder, "verify_int8", lenient)


def test_export_quantize_int8_calibrates_on_the_runs_data(fitted, tmp_path, monkeypatch, capsys):
    run, _ = fitted
    _lenient_int8(monkeypatch)
    out = tmp_path / "exp"
    ckpt = str(run / "checkpoints" / "best.ckpt")
    main(["export", "--config", str(run / "config.yaml"), "--ckpt_path", ckpt,
          "--output", str(out), "--quantize", "int8"])  # fmt: skip
    assert f"int8: {out / 'model.int8.onnx'}" in capsys.readouterr().out
    from damage_lightning.deploy.session import OnnxModel

    model = OnnxModel.load(out / "model.int8.onnx")
    assert "quantization" in model.metadata.extra
    assert model.metadata.frontend == OnnxModel.load(out / "model.onnx").metadata.frontend


@pytest.mark.slow
def test_fit_with_conv_frontend_and_int8_export(tiny_args, monkeypatch, capsys):
    _lenient_int8(monkeypatch)
    main(["fit", "--config", CNN, *tiny_args, *tiny_model(CNN), "--trainer.max_epochs", "1",
          "--data.stft_impl", "conv", "--export.quantize", "int8"])  # fmt: skip
    run = run_dir_from(capsys.readouterr().out)
    card = json.loads((run / "model_info.json").read_text())
    assert card["input"]["frontend"]["stft"] == "conv"
    int8 = card["exports"]["int8"]
    assert int8["path"] == "export/model.int8.onnx" and int8["verification"]["passed"]
    assert int8["quantization"]["calibration_split"] == "train"
    assert int8["verification"]["test_split"] == "test"


def test_resume_continues_state(tiny_data, cache_dir, tmp_path):
    root = tmp_path / "models"
    base = [
        "fit",
        "--config",
        CNN,
        *tiny_overrides(tiny_data, root, cache_dir, epochs=3),
        *tiny_model(CNN),
        "--run_name",
        "r",
    ]
    main(base)
    last = root / "r" / "checkpoints" / "last.ckpt"
    saved = checkpoint_state(last)
    probe = tmp_path / "probe.json"
    main(
        [
            *base[:-2],
            "--trainer.max_epochs",
            "5",
            "--ckpt_path",
            "last",
            "--run_name",
            "r",
            "--trainer.callbacks+=helpers.ResumeProbe",
            f"--trainer.callbacks.path={probe}",
        ]
    )
    resumed = json.loads(probe.read_text())
    assert resumed == pytest.approx(saved)
    history = json.loads((root / "r" / "training_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2, 3, 4]
    # A new run under an existing name is refused rather than overwritten.
    with pytest.raises(SystemExit) as exc:
        main(base)
    assert exc.value.code == 2


def test_custom_model_by_class_path(tiny_args, capsys):
    main(["fit", "--config", CNN, *tiny_args, "--model", "helpers.TinyNet", "--model.hidden", "3"])
    run = run_dir_from(capsys.readouterr().out)
    info = json.loads((run / "model_info.json").read_text())
    assert info["model"]["class_path"] == "helpers.TinyNet"


def test_same_seed_same_metrics(tiny_data, cache_dir, tmp_path, capsys):
    results = []
    for name in ("a", "b"):
        main(
            [
                "fit",
                "--config",
                CNN,
                *tiny_overrides(tiny_data, tmp_path / "m", cache_dir),
                *tiny_model(CNN),
                "--run_name",
                name,
            ]
        )
        results.append(
            json.loads((tmp_path / "m" / name / "model_info.json").read_text())["test_metrics"]
        )
    assert results[0] == results[1]


def test_bad_data_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad" / "only_class"
    bad.mkdir(parents=True)
    (bad / "a.csv").write_text("x,y\n1,2\n3,oops\n")
    # A second class: one class alone is refused (pointing to the novelty config) before any file
    # is read; tests/tasks/test_novelty.py covers that message.
    (tmp_path / "bad" / "other").mkdir()
    (tmp_path / "bad" / "other" / "b.csv").write_text("x,y\n1,2\n3,4\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "damage_lightning",
            "fit",
            "--config",
            CNN,
            "--data.data_dir",
            str(tmp_path / "bad"),
            "--trainer.default_root_dir",
            str(tmp_path / "models"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "a.csv" in res.stderr
    assert not list((tmp_path / "models").rglob("*.ckpt"))


@pytest.mark.slow
def test_ddp_on_cpu(tiny_data, cache_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    env.pop("DAMAGE_LIGHTNING_RUN_NAME", None)
    root = tmp_path / "models"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "damage_lightning",
            "fit",
            "--config",
            CNN,
            *tiny_overrides(tiny_data, root, cache_dir),
            *tiny_model(CNN),
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--run_name",
            "ddp",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert [p.name for p in root.iterdir()] == ["ddp"]
    info = json.loads((root / "ddp" / "model_info.json").read_text())
    cm = torch.tensor(info["test_metrics"]["confusion_matrix"])
    # Metrics are synced over both processes: the confusion matrix counts every test window once.
    assert int(cm.sum()) == info["data"]["windows"]["test"]
    assert res.stdout.strip().splitlines()[-1] == f"run folder: {root / 'ddp'}"


def test_bf16_mixed_precision_trains_and_exports(tiny_args, capsys):
    # The GPU default for speed; CPU autocast runs the same code path (front end kept in float32).
    main(
        ["fit", "--config", CNN, *tiny_args, *tiny_model(CNN), "--trainer.precision", "bf16-mixed"]
    )
    run = run_dir_from(capsys.readouterr().out)
    info = json.loads((run / "model_info.json").read_text())
    assert info["trainer"]["precision"] == "bf16-mixed"
    assert (run / info["attribution"]["path"]).is_file()  # explained in float32 all the same
    assert info["exports"]["onnx"]["verification"]["passed"] is True


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (["--data.window", "-5"], "data.window must be at least 2 samples, got -5"),
        (["--data.batch_size", "0"], "data.batch_size must be positive, got 0"),
        (["--data.n_fft", "1024"], "too short for n_fft=1024"),
        (["--model.dropout", "2"], "dropout must be in [0, 1), got 2.0"),
        (["--trainer.accelerator", "gpu"], "No supported gpu backend found"),
        (["--trainer.max_epochs", "0"], "trainer.max_epochs is 0: fit would train nothing"),
        (["--trainer.limit_train_batches", "0"], "trainer.limit_train_batches is 0"),
    ],
    ids=["window", "batch_size", "n_fft", "dropout", "accelerator", "no_epochs", "no_batches"],
)
def test_a_setting_the_classes_refuse_is_one_line_and_exit_2(
    setting, message, tiny_data, cache_dir, tmp_path, capsys
):
    if "gpu" in setting and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the accelerator is valid here")
    root = tmp_path / "models"
    args = ["fit", "--config", CNN, *tiny_overrides(tiny_data, root, cache_dir)]
    with pytest.raises(SystemExit) as exc:
        main([*args, *tiny_model(CNN), "--run_name", "bad", *setting])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("error: "))
    assert line.startswith("error: invalid setting: ") and message in line
    # Nothing was trained: the run folder made for it is gone, so the name can be used again.
    assert not (root / "bad").exists()
