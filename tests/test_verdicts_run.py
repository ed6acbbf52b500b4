"""Verdicts of a real tiny fit: calibration in checkpoint and export, recording-level decisions
and ``unknown`` agreeing between the card, ``predict``, the gateway and the runner."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import REPO, tiny_model, tiny_overrides
from gateway import pipeline_and_gateway

from damage_lightning.cli import main
from damage_lightning.deploy.session import read_onnx_metadata
from damage_lightning.runner import run_prediction

CNN = str(REPO / "configs" / "cnn.yaml")
# The tiny model is unsure (five classes, three epochs): this floor leaves some recordings
# unknown and decides others.
FLOOR = 0.3

pytestmark = pytest.mark.slow


def _fit(tiny_data, cache_dir, root, name: str, *extra: str):
    main(
        [
            "fit",
            "--config",
            CNN,
            *tiny_overrides(tiny_data, root, cache_dir, epochs=3),
            *tiny_model(CNN),
            *extra,
            "--run_name",
            name,
        ]
    )
    return root / name


@pytest.fixture(scope="module")
def run(tiny_data, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts") / "models"
    return _fit(tiny_data, cache_dir, root, "verdicts", "--model.init_args.abstain", str(FLOOR))


@pytest.fixture(scope="module")
def gated_run(tiny_data, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gated") / "models"
    return _fit(tiny_data, cache_dir, root, "gated", "--model.init_args.abstain_distance", "true")


def test_temperature_is_fitted_stored_and_exported(run):
    info = json.loads((run / "model_info.json").read_text())
    calibration = info["test_metrics"]["calibration"]
    t = calibration["temperature"]
    fit = calibration["fit"]
    assert fit["temperature"] == pytest.approx(t) and fit["split"] == "val"
    assert fit["val_windows"] > 0
    assert fit["val_nll_after"] <= fit["val_nll_before"]  # fitted to lower the validation NLL
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert float(state["temperature"]) == pytest.approx(t)
    meta = read_onnx_metadata(run / "export" / "model.onnx")
    assert float(meta.extra["temperature"]) == pytest.approx(t)
    assert meta.extra["aggregation"] == "mean_log_prob"
    assert float(meta.extra["abstain"]) == FLOOR
    for name in ("before", "after"):
        figures = calibration[name]
        assert 0.0 <= figures["ece"] <= 1.0 and figures["brier"] >= 0.0
        assert sum(b["count"] for b in figures["reliability"]) == calibration["n_windows"]
    session = ort.InferenceSession(str(run / "export" / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities", "unknown"]


def test_recording_metrics_agree_with_the_table(run):
    test = json.loads((run / "model_info.json").read_text())["test_metrics"]
    rec = test["recording"]
    table = pd.DataFrame(rec["table"])
    level = rec["recording"]
    assert rec["aggregation"] == "mean_log_prob"
    assert level["n"] == len(table) > 0
    assert level["accuracy"] == pytest.approx((table["label"] == table["predicted"]).mean())
    assert level["unknown"] == int((table["decision"] == "unknown").sum())
    assert ((table["confidence"] < FLOOR) == (table["decision"] == "unknown")).all()
    # Worst first: the wrong ones lead, each block by rising confidence.
    assert list(table["correct"]) == sorted(table["correct"])
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["test_acc_recording"].dropna().iloc[-1] == pytest.approx(level["accuracy"])


def _three_ways(run, data, tmp_path):
    """Per-recording decisions of ``data`` by ``predict``, the gateway and the runner."""
    ours, gateway, windows = pipeline_and_gateway(run, data, tmp_path)
    return ours, gateway, run_prediction(run / "export" / "model.onnx", data), windows


def test_predict_gateway_and_runner_give_the_same_decisions(run, tiny_data, tmp_path):
    ours, gateway, runner, windows = _three_ways(run, tiny_data, tmp_path)
    host = runner.recordings.set_index("path").sort_index()
    for other in (gateway, host):
        assert list(other.index) == list(ours.index)
        assert (other["decision"] == ours["decision"]).all()
        assert np.abs(other["confidence"].to_numpy() - ours["confidence"].to_numpy()).max() < 1e-4
    decisions = set(ours["decision"])
    assert "unknown" in decisions and decisions - {"unknown"}, decisions
    assert runner.decisions == dict(zip(host.index, host["decision"], strict=True))
    top = windows[[c for c in windows.columns if c.startswith("p_")]].max(axis=1)
    assert (windows["unknown"] == (top < FLOOR)).all()


def test_test_subcommand_reuses_the_stored_temperature(run, capsys):
    main(
        [
            "test",
            "--config",
            str(run / "config.yaml"),
            "--ckpt_path",
            str(run / "checkpoints" / "best.ckpt"),
        ]
    )
    printed = capsys.readouterr().out
    info = json.loads((run / "model_info.json").read_text())
    expected = info["test_metrics"]["recording"]["recording"]["accuracy"]
    line = next(x for x in printed.splitlines() if "test_acc_recording" in x)
    assert float(line.split()[-1]) == pytest.approx(expected, abs=1e-6)


def test_distance_gate_is_fitted_exported_and_applied_alike(gated_run, tiny_data, tmp_path):
    info = json.loads((gated_run / "model_info.json").read_text())
    rec = info["test_metrics"]["recording"]
    threshold = rec["recording"]["distance_threshold"]
    assert threshold == pytest.approx(rec["distance_fit"]["threshold"]) and threshold > 0
    table = pd.DataFrame(rec["table"])
    # No probability floor: a recording is unknown exactly when it lies beyond the threshold.
    assert ((table["distance"] > threshold) == (table["decision"] == "unknown")).all()
    meta = read_onnx_metadata(gated_run / "export" / "model.onnx")
    assert float(meta.extra["distance_threshold"]) == pytest.approx(threshold)
    session = ort.InferenceSession(str(gated_run / "export" / "model.onnx"))
    assert [o.name for o in session.get_outputs()][-1] == "distance"
    ours, gateway, runner, windows = _three_ways(gated_run, tiny_data, tmp_path)
    for other in (gateway, runner.recordings.set_index("path").sort_index()):
        assert (other["decision"] == ours["decision"]).all()
        np.testing.assert_allclose(other["distance"], ours["distance"], rtol=1e-3)
    assert ((ours["distance"] > threshold) == (ours["decision"] == "unknown")).all()
    assert ((windows["distance"] > threshold) == windows["unknown"]).all()
