"""Trackers: TensorBoard event files in every run folder, MLflow through configs/mlflow.yaml."""

from __future__ import annotations

import json

import pytest
from conftest import REPO


def _history(run):
    return json.loads((run / "training_history.json").read_text())


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_tensorboard_events_read_back(tracked_runs, name):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tracked_runs[name]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train_loss", "val_loss", "test_acc"} <= set(events.Tags()["scalars"])
    epochs = _history(run)["epochs"]
    assert [e.value for e in events.Scalars("val_loss")] == pytest.approx(
        [e["val_loss"] for e in epochs], rel=1e-6
    )
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx(
        [e["train_loss"] for e in epochs], rel=1e-6
    )
    # The CSV log stays where it was, beside the TensorBoard folder.
    assert "val_loss" in (run / "metrics.csv").read_text().splitlines()[0]


def test_mlflow_overlay_defaults_to_a_local_sqlite_store():
    import yaml

    overlay = yaml.safe_load((REPO / "configs" / "mlflow.yaml").read_text())
    (logger,) = overlay["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.MLFlowLogger"
    assert logger["init_args"]["tracking_uri"] == "sqlite:///models/mlflow.db"


def test_mlflow_run_holds_metrics_and_artefacts(tracked_runs, tmp_path):
    from mlflow import MlflowClient

    run_dir = tracked_runs["cnn"]
    client = MlflowClient(f"sqlite:///{tracked_runs['root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("damage_lightning")
    (run,) = client.search_runs([experiment.experiment_id])  # the ResNet did not use MLflow
    run_id = run.info.run_id
    info = json.loads((run_dir / "model_info.json").read_text())

    assert run.data.metrics["test_acc"] == pytest.approx(info["test_metrics"]["accuracy"])
    assert run.data.metrics["test_f1"] == pytest.approx(info["test_metrics"]["f1_macro"])
    val = client.get_metric_history(run_id, "val_loss")
    assert [m.value for m in sorted(val, key=lambda m: m.step)] == pytest.approx(
        [e["val_loss"] for e in _history(run_dir)["epochs"]], rel=1e-6
    )
    assert float(run.data.params["lr"]) == info["model"]["hyperparameters"]["lr"]
    assert run.data.tags["damage_lightning.run_dir"] == str(run_dir.resolve())

    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"model_info.json", "config.yaml", "training_history.json", "report", "export"} <= top
    assert "report/training_report.pdf" in {a.path for a in client.list_artifacts(run_id, "report")}
    exported = {a.path: a.file_size for a in client.list_artifacts(run_id, "export")}
    assert exported["export/model.onnx"] == info["exports"]["onnx"]["size_bytes"]
    card = client.download_artifacts(run_id, "model_info.json", str(tmp_path))
    assert json.loads(open(card).read()) == info
