"""Run-folder artefacts of a real tiny fit; atomic writes, output capture, torch-free deployment."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny_model, tiny_overrides
from gateway import pipeline_and_gateway

from damage_lightning.artifacts import TMP_PREFIX, atomic_write_json, capture_output, sha256_file
from damage_lightning.cli import main
from damage_lightning.deploy.session import read_onnx_metadata

CNN = str(REPO / "configs" / "cnn.yaml")


@pytest.fixture(scope="module")
def run(tiny_data, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts") / "models"
    main(
        [
            "fit",
            "--config",
            CNN,
            *tiny_overrides(tiny_data, root, cache_dir, epochs=3),
            *tiny_model(CNN),
            "--run_name",
            "card",
        ]
    )
    return root / "card"


def test_model_card_matches_the_run(run, tiny_data):
    info = json.loads((run / "model_info.json").read_text())
    metrics = pd.read_csv(run / "metrics.csv")
    history = json.loads((run / "training_history.json").read_text())
    splits = json.loads((run / "splits.json").read_text())

    assert info["run_name"] == "card"
    assert info["classes"] == sorted(p.name for p in tiny_data.iterdir() if p.is_dir())
    assert info["input"]["channels"] == ["base", "floor1", "floor2", "floor3"]
    assert info["input"]["window_length"] == 256 and info["input"]["hop"] == 128
    assert info["input"]["sample_rate"] == pytest.approx(1024.0)
    assert info["model"]["parameters"] > 0 and info["model"]["name"] == "CNNClassifier"
    # Test metrics are exactly what `test` logged.
    logged = metrics["test_acc"].dropna().iloc[-1]
    assert info["test_metrics"]["accuracy"] == pytest.approx(logged, abs=1e-6)
    cm = np.array(info["test_metrics"]["confusion_matrix"])
    assert cm.sum() == info["data"]["windows"]["test"]
    assert np.trace(cm) / cm.sum() == pytest.approx(info["test_metrics"]["accuracy"], abs=1e-6)
    assert set(info["test_metrics"]["per_class"]) == set(info["classes"])
    # Data summary agrees with splits.json.
    per_class = info["data"]["per_class"]
    assert sum(c["train"]["recordings"] for c in per_class.values()) == sum(
        1 for r in splits["recordings"] if any(s["split"] == "train" for s in r["segments"])
    )
    assert info["splits"]["leakage_check"]["passed"] is True
    # History: one entry per epoch, the best epoch is where val_loss was lowest.
    epochs = history["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    best = min(epochs, key=lambda e: e["val_loss"])["epoch"]
    assert history["best_epoch"] == best == info["best_epoch"]
    assert all(e["lr"] > 0 and e["epoch_time_s"] > 0 for e in epochs)
    # Exports: checksums are those of the files, verification passed within 1e-4.
    for kind in ("onnx", "torchscript"):
        entry = info["exports"][kind]
        assert sha256_file(run / entry["path"]) == entry["sha256"]
        assert entry["verification"]["passed"] is True
        assert entry["verification"]["max_abs_diff"] <= 1e-4
        assert entry["verification"]["batch_sizes"] == [1, 5]
    assert info["versions"]["torch"].startswith("2.11")
    assert info["seed"] == 42


def test_onnx_metadata_describes_the_input(run):
    meta = read_onnx_metadata(run / "export" / "model.onnx")
    info = json.loads((run / "model_info.json").read_text())
    assert meta.class_names == info["classes"]
    assert meta.channels == info["input"]["channels"]
    assert meta.window_length == 256 and meta.hop == 128
    assert meta.sample_rate == pytest.approx(1024.0)
    assert meta.frontend["kind"] == "stft"


def test_torch_free_predictor_equals_pipeline_predict(run, tiny_data, cache_dir, tmp_path):
    ours, gateway, _ = pipeline_and_gateway(run, tiny_data, tmp_path)
    assert list(gateway.index) == list(ours.index)
    assert (gateway["predicted_label"] == ours["predicted_label"]).all()
    cols = [c for c in ours.columns if c.startswith("p_")]
    assert np.abs(gateway[cols].to_numpy() - ours[cols].to_numpy()).max() < 1e-4
    assert (gateway["n_windows"] == ours["n_windows"]).all()


def test_atomic_write_interrupted_keeps_previous(tmp_path, monkeypatch):
    target = tmp_path / "model_info.json"
    atomic_write_json(target, {"version": 1})

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(target, {"version": 2, "big": "x" * 100_000})
    assert json.loads(target.read_text()) == {"version": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


WRITER = """
import sys
from damage_lightning.artifacts import atomic_write_json
i = 0
while True:
    atomic_write_json(sys.argv[1], {"i": i, "payload": [i] * 50000})
    i += 1
"""


def test_killed_writer_never_leaves_a_truncated_file(tmp_path):
    target = tmp_path / "history.json"
    rng = np.random.default_rng(3)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)], env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        deadline = time.time() + 30
        while not target.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        doc = json.loads(target.read_text())
        assert len(doc["payload"]) == 50000 and set(doc["payload"]) == {doc["i"]}


def test_capture_output_tees_and_restores(tmp_path, capsys):
    handlers = list(logging.getLogger().handlers)
    log = tmp_path / "training_log.txt"
    with capture_output(log):
        print("hello from the run")
        sys.stdout.write("Epoch 1:  10%|#\rEpoch 1: 100%|##########\n")
        sys.stdout.write("\x1b[AValidation DataLoader 0: 100%|####| 3/3\n")
        logging.getLogger("damage_lightning.test").info("an info line")
        logging.getLogger("onnxscript.noisy").info("exporter chatter")
    text = log.read_text()
    assert "hello from the run" in capsys.readouterr().out  # the terminal still shows it
    assert "hello from the run\nEpoch 1: 100%|##########\n" in text
    assert "10%" not in text and "\x1b" not in text and "Validation DataLoader" not in text
    assert "an info line" in text and "exporter chatter" not in text
    assert logging.getLogger().handlers == handlers


def test_report_subcommand_rewrites_an_existing_run(run, capsys):
    pdf = run / "report" / "training_report.pdf"
    before = pdf.stat().st_mtime_ns
    assert main(["report", "--run_dir", str(run), "--no-llm"]) == 0
    out = capsys.readouterr().out
    assert f"report: {pdf}" in out
    assert pdf.stat().st_mtime_ns > before
    info = json.loads((run / "model_info.json").read_text())
    assert info["report"]["analysis_source"] == "offline analysis"
    assert "disabled" in info["report"]["fallback_reason"]
    with pytest.raises(SystemExit) as exc:
        main(["report", "--run_dir", str(run / "nope")])
    assert exc.value.code == 2


def test_data_synth_command_writes_a_dataset(tmp_path):
    out = tmp_path / "frame"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--seed",
                "3",
                "--recordings-per-class",
                "3",
                "--samples",
                "1024",
            ]
        )
        == 0
    )
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 15
    assert set(manifest["label"]) == {
        "undamaged",
        "story1_stiffness_loss",
        "story2_stiffness_loss",
        "story3_stiffness_loss",
        "bumper_contact",
    }
    assert main(["data", "nonsense"]) == 2


def test_fit_and_export_write_identical_metadata(run, tmp_path):
    import onnx

    from damage_lightning.export import read_torchscript_metadata

    out = tmp_path / "again"
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

    def props(path):
        return {p.key: p.value for p in onnx.load(str(path)).metadata_props}

    after_fit, after_export = props(run / "export" / "model.onnx"), props(out / "model.onnx")
    assert after_fit == after_export
    # Complete: every front-end setting and the task class travel with the model.
    meta = read_onnx_metadata(out / "model.onnx")
    assert {"win_length", "log", "eps"} <= set(meta.frontend)
    assert meta.model_class_path == "damage_lightning.models.cnn.CNNClassifier"
    assert read_torchscript_metadata(run / "export" / "model.ts.pt") == meta


def test_csv_dialects_predict_identically_in_pipeline_and_gateway(run, tiny_data, tmp_path):
    # The same recording as ';', tab, BOM, CRLF, and under every time-column name: the pipeline's
    # predict and the torch-free predictor read each one the same way.
    from damage_lightning.io.readers.base import TIME_COLUMN_NAMES

    source = sorted((tiny_data / "undamaged").glob("*.csv"))[0]
    frame = pd.read_csv(source)
    frame.insert(0, "time", np.arange(len(frame)) / 1024.0)
    root = tmp_path / "dialects"
    root.mkdir()
    text = frame.to_csv(index=False)
    (root / "comma.csv").write_text(text)
    (root / "semicolon.csv").write_text(frame.to_csv(index=False, sep=";"))
    (root / "tab.csv").write_text(frame.to_csv(index=False, sep="\t"))
    (root / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (root / "crlf.csv").write_bytes(text.replace("\n", "\r\n").encode())
    for i, name in enumerate(sorted(TIME_COLUMN_NAMES)):
        frame.rename(columns={"time": name}).to_csv(root / f"time_{i}.csv", index=False)
    ours, gateway, _ = pipeline_and_gateway(run, root, tmp_path)
    assert len(ours) == 5 + len(TIME_COLUMN_NAMES) and list(gateway.index) == list(ours.index)
    cols = [c for c in ours.columns if c.startswith("p_")]
    pipeline_probs, gateway_probs = ours[cols].to_numpy(), gateway[cols].to_numpy()
    np.testing.assert_allclose(pipeline_probs, pipeline_probs[:1].repeat(len(ours), 0), atol=1e-6)
    np.testing.assert_allclose(gateway_probs, gateway_probs[:1].repeat(len(ours), 0), atol=1e-6)
    assert np.abs(gateway_probs - pipeline_probs).max() < 1e-4
    assert (gateway["n_windows"] == ours["n_windows"]).all()
