"""The host application's API: run_training / run_cnn / run_resnet and TrainingResult."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from damage_lightning.errors import DataValidationError
from damage_lightning.runner import TrainingResult, run_cnn, run_resnet, run_training


def tiny(cache_dir, resnet: bool = False) -> dict:
    opts = {
        "data.cache_dir": str(cache_dir),
        "data.window": 256,
        "data.hop": 128,
        "data.n_fft": 64,
        "data.hop_length": 16,
        "data.f_max": None,
        "data.batch_size": 16,
        "trainer.max_epochs": 2,
        "report.llm": False,
        "model.init_args.widths": [8, 16],
    }
    if resnet:
        opts.update({"model.init_args.stem_width": 8, "model.init_args.blocks_per_stage": [1, 1]})
    return opts


@pytest.mark.parametrize("fn,resnet", [(run_cnn, False), (run_resnet, True)], ids=["cnn", "resnet"])
def test_runner_returns_training_result(fn, resnet, tiny_data, cache_dir, tmp_path):
    handlers = list(logging.getLogger().handlers)
    stdout = sys.stdout
    result = fn(tiny_data, tmp_path / "models", **tiny(cache_dir, resnet))
    assert isinstance(result, TrainingResult)
    assert result.run_dir.parent == tmp_path / "models"
    for p in (result.checkpoint, result.onnx_path, result.torchscript_path, result.report_path):
        assert p is not None and p.is_file()
    info = json.loads(result.model_info_path.read_text())
    assert result.metrics["accuracy"] == info["test_metrics"]["accuracy"]
    assert 0 < result.duration_s
    log = (result.run_dir / "training_log.txt").read_text()
    assert "Epoch" in log or "epoch" in log
    assert log.strip().splitlines()[-1] == f"run folder: {result.run_dir}"
    # No leaked global state: stdout and logging handlers are as before.
    assert sys.stdout is stdout
    assert logging.getLogger().handlers == handlers


def test_two_runs_do_not_interfere(tiny_data, cache_dir, tmp_path):
    a = run_cnn(tiny_data, tmp_path / "models", **tiny(cache_dir))
    b = run_cnn(tiny_data, tmp_path / "models", **tiny(cache_dir))
    assert a.run_dir != b.run_dir
    log_a = (a.run_dir / "training_log.txt").read_text()
    assert str(b.run_dir) not in log_a


def test_bad_arguments_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        run_training(tmp_path, tmp_path / "out", model_type="transformer")
    with pytest.raises(DataValidationError, match="does not exist"):
        run_training(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bearing_model_type_starts_from_the_recommended_config(tiny_data, cache_dir, tmp_path):
    # configs/bearing.yaml has no CNN: its linear spectrum model trains, tests and exports like
    # the others, and what was trained is what the config says.
    opts = {k: v for k, v in tiny(cache_dir).items() if not k.startswith("model.")}
    opts.update({"data.window": 512, "data.hop": 256, "data.n_fft": 128, "data.hop_length": 32})
    result = run_training(tiny_data, tmp_path / "models", model_type="bearing", **opts)
    assert result.model_type == "bearing"
    info = json.loads(result.model_info_path.read_text())
    config = (result.run_dir / "config.yaml").read_text()
    assert "class_path: damage_lightning.tasks.ClassificationTask" in config
    assert "backbone: spectrum" in config
    assert "whiten: 7" in config and "spectrogram: stft" in config
    assert result.onnx_path is not None and result.onnx_path.is_file()
    assert 0.0 <= info["test_metrics"]["accuracy"] <= 1.0
