"""Models with order spectra: the speed is the exported model's second input (eager, ONNX and
TorchScript agree at two batch sizes), the metadata names it, the gateway takes ``--rpm`` and
refuses to guess a missing speed, and a tiny fit with ``data.order`` runs end to end."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from data.test_order import SR, write_machine

from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.deploy.cli import main as gateway_main
from damage_lightning.deploy.session import OnnxModel
from damage_lightning.errors import DataValidationError
from damage_lightning.export import DeployableModel, ExportSpec, export_all
from damage_lightning.export.deployable import example_speeds, example_waveforms
from damage_lightning.models import CNNClassifier

WINDOW = 1024
SETTINGS = {"kind": "stft", "n_fft": 256, "hop_length": 64, "order": True}
SETTINGS |= {"orders_max": 20.0, "n_orders": 64}

jit_deprecated = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
export_warnings = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export in 2.11


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeployableModel, Path, dict]:
    """A fitted front end with order spectra and a small CNN, exported and verified."""
    fe = SpectrogramFrontend(SR, 2, **SETTINGS)
    fe.fit_normalization([example_waveforms(2, WINDOW, 16, seed=3)])
    torch.manual_seed(0)
    net = CNNClassifier(num_classes=2, in_channels=2, input_shape=fe.output_shape(WINDOW)).net
    model = DeployableModel(fe, net).eval()
    spec = ExportSpec(
        "damage_lightning.models.CNNClassifier", fe.settings(), fe.state_dict(),
        ["fault", "healthy"], ["a", "b"], SR, WINDOW, WINDOW // 2, speed_column="rpm",
    )  # fmt: skip
    out = tmp_path_factory.mktemp("order_export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export and torch.jit deprecations in 2.11
        result = export_all(model, out, spec.metadata())
    return model, out, result


def test_the_export_verifies_with_the_speed_input(exported) -> None:
    _, _, result = exported
    for target in ("onnx", "torchscript"):
        verification = result[target]["verification"]
        assert verification["passed"] and verification["batch_sizes"] == [1, 5]
        assert verification["max_abs_diff"] <= 1e-4


@jit_deprecated
@pytest.mark.parametrize("batch", [1, 5])
def test_eager_onnx_and_torchscript_agree_with_the_rpm_input(exported, batch: int) -> None:
    model, out, _ = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveform", "rpm"]
    assert session.get_inputs()[1].shape[0] == session.get_inputs()[0].shape[0]
    props = session.get_modelmeta().custom_metadata_map
    assert props["speed_input"] == "rpm" and props["speed_column"] == "rpm"
    scripted = torch.jit.load(str(out / "model.ts.pt"))
    x = example_waveforms(2, WINDOW, batch, seed=50 + batch)
    rpm = example_speeds(model, batch, seed=batch)
    with torch.no_grad():
        want = model(x, rpm)[1].numpy()
        got_ts = scripted(x, rpm)[1].numpy()
    got = session.run(["probabilities"], {"waveform": x.numpy(), "rpm": rpm.numpy()})[0]
    assert got.shape == want.shape == (batch, 2)
    assert float(np.abs(got - want).max()) <= 1e-4
    assert float(np.abs(got_ts - want).max()) <= 1e-5
    # The speed matters: the same windows at other speeds give other probabilities.
    other = session.run(["probabilities"], {"waveform": x.numpy(), "rpm": rpm.numpy() * 1.7})[0]
    assert float(np.abs(other - got).max()) > 1e-6
    preprocessing = json.loads((out / "preprocessing.json").read_text())
    assert preprocessing["speed_input"] == "rpm"


@jit_deprecated
def test_a_model_that_needs_the_speed_says_so_when_it_gets_none(exported) -> None:
    model, out, _ = exported
    x = example_waveforms(2, WINDOW, 2)
    with pytest.raises(ValueError, match="needs each window's shaft speed"):
        model(x)
    scripted = torch.jit.load(str(out / "model.ts.pt"))
    with pytest.raises(Exception, match="needs each window's shaft speed"):
        scripted(x)
    onnx_model = OnnxModel.load(out / "model.onnx")
    assert onnx_model.speed_input == "rpm"
    with pytest.raises(DataValidationError, match=r"needs the shaft speed .*--rpm"):
        onnx_model.run(x.numpy())


def test_the_gateway_takes_rpm_and_the_manifest_column(exported, tmp_path: Path, capsys) -> None:
    _, out, _ = exported
    data = write_machine(tmp_path / "m", {"healthy": ["1200", ""], "fault": ["1500", "1800"]})
    model = str(out / "model.onnx")
    # healthy_1 has no speed in the manifest: without --rpm it is named, nothing is scored.
    assert gateway_main([model, str(data), "--output", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "healthy_1.csv" in err and "column 'rpm'" in err and "--rpm" in err
    assert not (tmp_path / "p.csv").exists()
    windows = tmp_path / "w.csv"
    args = [model, str(data), "--output", str(tmp_path / "p.csv"), "--windows", str(windows)]
    assert gateway_main([*args, "--rpm", "1500"]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("path,label,predicted_label")
    # One file without a manifest: --rpm is its speed, and a different one changes the result.
    single = tmp_path / "one" / "healthy_0.csv"
    single.parent.mkdir()
    shutil.copy(data / "healthy_0.csv", single)
    from damage_lightning.runner import run_prediction

    slow = run_prediction(model, single, rpm=600.0, keep_windows=True).windows
    fast = run_prediction(model, single, rpm=2400.0, keep_windows=True).windows
    assert not np.allclose(slow["p_fault"].to_numpy(), fast["p_fault"].to_numpy())
    with pytest.raises(DataValidationError, match="no shaft speed"):
        run_prediction(model, single)


@jit_deprecated
@export_warnings
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's hints about tiny data
def test_a_tiny_fit_with_order_spectra_through_the_cli(tmp_path: Path, capsys) -> None:
    from conftest import REPO

    from damage_lightning.cli import main

    speeds = {"healthy": ["1200", "1500", "1800"], "fault": ["1300", "1600", "1900"]}
    data = write_machine(tmp_path / "data", speeds)
    root = tmp_path / "models"
    main([
        "fit", "--config", str(REPO / "configs" / "cnn.yaml"),
        "--data.data_dir", str(data), "--data.cache_dir", str(tmp_path / "cache"),
        "--data.window", "1024", "--data.hop", "512", "--data.n_fft", "256",
        "--data.hop_length", "64", "--data.f_max", "null", "--data.batch_size", "8",
        "--data.order", "true", "--data.orders_max", "20",
        "--data.n_orders", "64", "--data.augment_speed", "0.05",
        "--model.init_args.widths", "[8, 16]", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.default_root_dir", str(root),
        "--run_name", "order", "--report.enabled", "false", "--report.llm", "false",
    ])  # fmt: skip
    run = root / "order"
    card = json.loads((run / "model_info.json").read_text())
    assert card["input"]["speed_input"] == "rpm" and card["input"]["speed_column"] == "rpm"
    assert card["input"]["spectrogram_shape"][1] == 64
    assert "attribution: skipped" in capsys.readouterr().out
    model = OnnxModel.load(run / "export" / "model.onnx")
    assert model.speed_input == "rpm" and model.metadata.speed_column == "rpm"
    # ``predict`` of the pipeline reads the manifest's speeds (every recording has one).
    main([
        "predict", "--config", str(run / "config.yaml"), "--ckpt_path",
        str(run / "checkpoints" / "best.ckpt"), "--data.predict_data_dir", str(data),
        "--output", str(tmp_path / "pred"),
    ])  # fmt: skip
    assert any((tmp_path / "pred").glob("*.csv"))
    # A lone recording has no manifest speed: ``predict --rpm`` gives it, and without it the
    # run stops with a message that asks for the speed.
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(data / "healthy_0.csv", single / "healthy_0.csv")
    lone = [
        "predict", "--config", str(run / "config.yaml"), "--ckpt_path",
        str(run / "checkpoints" / "best.ckpt"), "--data.predict_data_dir", str(single),
        "--data.sample_rate", f"{SR:g}",
    ]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([*lone, "--output", str(tmp_path / "pred_none")])
    assert stop.value.code == 2 and "rpm" in capsys.readouterr().err
    main([*lone, "--rpm", "1200", "--output", str(tmp_path / "pred_rpm")])
    rows = (tmp_path / "pred_rpm" / "recording_predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and "healthy_0.csv" in rows[1]


@pytest.mark.parametrize(
    ("config", "extra", "named", "reason"),
    [
        ("cnn.yaml", ["--export.quantize", "int8"], "--export.quantize int8",
         "int8 export has no shaft speed input"),
        ("novelty.yaml", [], "--data.order true", "novelty detector"),
    ],
    ids=["int8", "novelty"],
)  # fmt: skip
def test_fit_refuses_what_cannot_take_the_speed_before_training(
    tmp_path: Path, capsys, config: str, extra: list[str], named: str, reason: str
) -> None:
    # Both would otherwise fail at export, after the whole training.
    from conftest import REPO

    from damage_lightning.cli import main

    data = write_machine(tmp_path / "data", {"healthy": ["1200", "1500"], "fault": ["1300"]})
    root = tmp_path / "models"
    with pytest.raises(SystemExit) as stop:
        main([
            "fit", "--config", str(REPO / "configs" / config),
            "--data.data_dir", str(data), "--data.cache_dir", str(tmp_path / "cache"),
            "--data.f_max", "null", "--data.order", "true", *extra,
            "--trainer.default_root_dir", str(root), "--run_name", "order",
        ])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert named in err and reason in err
    assert not (root / "order" / "checkpoints").exists()
