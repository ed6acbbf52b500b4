"""The typed model card and history: exact round trips, loud schema errors, unknown keys kept."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from make_run import make_run

from damage_lightning.card import ModelCard, ReportEntry, TrainingHistory
from damage_lightning.errors import DataValidationError
from damage_lightning.report.build import generate_report


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("card"))


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "options",
    [{}, {"with_test": False, "with_exports": False, "empty_history": True}],
    ids=["full", "untested"],
)
def test_card_and_history_round_trip_exactly(tmp_path, options):
    run = make_run(tmp_path, **options)
    raw = _json(run / "model_info.json")
    card = ModelCard.from_json(raw)
    assert card.to_json() == raw
    assert card.model.parameters == raw["model"]["parameters"]
    assert card.input.channels == raw["input"]["channels"]
    assert (card.test_metrics is None) == ("test_metrics" not in raw)
    # A file written from the record reads back to the same record and the same JSON.
    card.write(tmp_path / "copy.json")
    assert _json(tmp_path / "copy.json") == raw
    assert ModelCard.read(tmp_path / "copy.json") == card
    history = _json(run / "training_history.json")
    assert TrainingHistory.from_json(history).to_json() == history


def test_typed_parts_of_a_real_card(run):
    card = ModelCard.read(run / "model_info.json")
    onnx = card.exports["onnx"]
    assert onnx.path == "export/model.onnx" and onnx.verification.passed is True
    assert onnx.verification.batch_sizes == [1, 5]
    assert card.test_metrics.per_class["story2_stiffness_loss"].recall == pytest.approx(0.8167)
    assert card.data.per_class["undamaged"]["train"].windows == 240
    assert card.splits.leakage_check.passed is True
    history = TrainingHistory.read(run / "training_history.json")
    assert history.lr_reductions[0].to_lr == history.lr_reductions[0].from_lr / 2
    assert history.epochs[history.best_epoch].val_loss == history.best_val_loss


@pytest.mark.parametrize(
    ("change", "location", "reason"),
    [
        (lambda c: c["model"].pop("parameters"), "model.parameters", "required field is missing"),
        (lambda c: c.pop("classes"), "classes", "required field is missing"),
        (
            lambda c: c["test_metrics"].pop("accuracy"),
            "test_metrics.accuracy",
            "required field is missing",
        ),
        (
            lambda c: c["input"].update(window_length="1024"),
            "input.window_length",
            "expected an integer, got text '1024'",
        ),
        (lambda c: c.update(model="CNN"), "model", "expected an object, got text 'CNN'"),
        (
            lambda c: c["exports"]["onnx"]["verification"].update(passed=None),
            "exports['onnx'].verification.passed",
            "expected true or false, got null",
        ),
    ],
    ids=["model.parameters", "classes", "accuracy", "wrong type", "not an object", "null"],
)
def test_a_card_that_does_not_fit_the_schema_fails_naming_the_field(run, change, location, reason):
    raw = _json(run / "model_info.json")
    change(raw)
    with pytest.raises(DataValidationError) as err:
        ModelCard.from_json(raw)
    (problem,) = err.value.problems
    assert (problem.file, problem.location, problem.reason) == ("model_info.json", location, reason)
    assert str(err.value) == f"model_info.json ({location}): {reason}"


def test_reading_a_broken_file_names_it(tmp_path):
    path = tmp_path / "model_info.json"
    with pytest.raises(DataValidationError, match=r"model_info\.json: not found"):
        ModelCard.read(path)
    path.write_text("{not json")
    with pytest.raises(DataValidationError, match=r"model_info\.json: could not be read \("):
        ModelCard.read(path)
    path.write_text("[]")
    with pytest.raises(DataValidationError, match="expected an object, got a list"):
        ModelCard.read(path)


def test_unknown_keys_survive_the_reports_rewrite(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    run = make_run(tmp_path)
    raw = _json(run / "model_info.json")
    raw["calibration"] = {"method": "temperature", "temperature": 1.3}
    raw["model"]["backbone"] = "cnn"
    int8 = {"path": "export/model.int8.onnx", "sha256": "00", "size_bytes": 9}
    raw["exports"]["onnx_int8"] = int8
    raw["exports"]["onnx"]["verification"]["opset"] = 18
    (run / "model_info.json").write_text(json.dumps(raw))
    card = ModelCard.from_json(raw)
    assert card.extra == {"calibration": raw["calibration"]}
    assert card.model.extra == {"backbone": "cnn"}
    assert card.to_json() == raw

    generate_report(run, llm=False)
    after = _json(run / "model_info.json")
    assert after["report"]["analysis_source"] == "offline analysis"
    del after["report"]
    assert after == raw


def test_a_card_built_in_code_writes_nulls_its_writer_always_writes(run):
    read = ModelCard.read(run / "model_info.json")
    raw = read.to_json()
    assert "last_checkpoint" not in raw and "trainer" not in raw  # absent in the file: kept absent
    built = dataclasses.replace(read, test_metrics=None, best_checkpoint=None)
    written = built.to_json()
    assert written["test_metrics"] is None and written["best_checkpoint"] is None
    assert written["last_checkpoint"] is None  # finalize_run always writes it
    assert "trainer" not in written and "report" not in written  # None: not written
    # A field set after reading is written even where the file had no such key.
    untested = copy.deepcopy(raw)
    del untested["test_metrics"]
    card = ModelCard.from_json(untested)
    assert "test_metrics" not in card.to_json()
    card.report = ReportEntry(
        path="report/training_report.pdf",
        analysis_source="offline analysis",
        fallback_reason=None,
        figures=[],
    )
    assert card.to_json()["report"] == {
        "path": "report/training_report.pdf",
        "analysis_source": "offline analysis",
        "fallback_reason": None,
        "figures": [],
    }
