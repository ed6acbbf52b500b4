"""`compare`: the table of two tiny runs (a CNN and a ResNet) holds what their cards say."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from damage_lightning.cli import main


def _rows(out):
    with open(out / "comparison.csv", newline="") as f:
        return list(csv.DictReader(f))


def _card(run):
    return json.loads((run / "model_info.json").read_text())


def test_compare_two_runs_gives_the_cards_values(tracked_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    runs = [tracked_runs["cnn"], tracked_runs["resnet"]]
    assert main(["compare", *map(str, runs), "--out", str(out), "--pdf"]) == 0
    rows = _rows(out)
    assert [r["run"] for r in rows] == ["cnn", "resnet"]
    for row, run in zip(rows, runs, strict=True):
        info, test = _card(run), _card(run)["test_metrics"]
        history = json.loads((run / "training_history.json").read_text())
        assert row["model"] == info["model"]["name"]
        assert float(row["test_acc_window"]) == test["accuracy"]
        assert float(row["test_f1_window"]) == test["f1_macro"]
        assert float(row["test_loss"]) == test["loss"]
        assert int(row["params"]) == info["model"]["parameters"]
        assert int(row["onnx_bytes"]) == info["exports"]["onnx"]["size_bytes"]
        assert float(row["duration_s"]) == info["duration_s"]
        assert float(row["best_val_loss"]) == history["best_val_loss"]
        assert int(row["epochs"]) == len(history["epochs"])
        times = [e["epoch_time_s"] for e in history["epochs"]]
        assert float(row["epoch_time_s"]) == pytest.approx(sum(times) / len(times))
        assert float(row["dropout"]) == info["model"]["hyperparameters"]["dropout"]
        recording = test["recording"]["recording"]
        assert float(row["test_acc_recording"]) == recording["accuracy"]
        assert float(row["test_f1_recording"]) == recording["f1_macro"]
    # Settings that differ get a column.
    assert "stem_width" in rows[0] and rows[0]["stem_width"] == ""

    md = (out / "comparison.md").read_text()
    cnn_acc = _card(runs[0])["test_metrics"]["accuracy"]
    assert "| cnn | CNNClassifier |" in md and f"{cnn_acc:.4f}" in md
    assert md in capsys.readouterr().out
    for name in ("validation_curves.png", "per_class_f1.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import pypdf

    text = "".join(p.extract_text() for p in pypdf.PdfReader(out / "comparison.pdf").pages)
    assert "Run comparison" in text and "resnet" in text


def test_a_folder_of_runs_and_a_glob_stand_for_their_runs(tracked_runs, tmp_path):
    # models/ holds both runs beside MLflow's files: like a cv folder of fold runs.
    root = tracked_runs["root"]
    main(["compare", str(root), "--out", str(tmp_path / "a")])
    main(["compare", str(root / "*"), "--out", str(tmp_path / "b")])
    assert [r["run"] for r in _rows(tmp_path / "a")] == ["cnn", "resnet"]
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


def test_recording_level_metrics_appear_when_the_card_has_them(tracked_runs, tmp_path):
    cv = tmp_path / "cv"
    for fold in ("fold-a", "fold-b"):
        shutil.copytree(tracked_runs["cnn"], cv / fold, ignore=shutil.ignore_patterns("*.ckpt"))
    card = _card(cv / "fold-b")
    card["test_metrics"]["recording"]["recording"].update(accuracy=0.75, f1_macro=0.5)
    (cv / "fold-b" / "model_info.json").write_text(json.dumps(card))
    card = _card(cv / "fold-a")  # a card written before recording-level metrics existed
    del card["test_metrics"]["recording"]
    (cv / "fold-a" / "model_info.json").write_text(json.dumps(card))
    main(["compare", str(cv), "--out", str(tmp_path / "out")])
    rows = _rows(tmp_path / "out")
    assert [r["run"] for r in rows] == ["fold-a", "fold-b"]
    assert (rows[0]["test_acc_recording"], rows[1]["test_acc_recording"]) == ("", "0.75")
    assert rows[1]["test_f1_recording"] == "0.5"


def test_a_folder_without_runs_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path / "empty")])
    assert exc.value.code == 2
    assert "no run folder" in capsys.readouterr().err
