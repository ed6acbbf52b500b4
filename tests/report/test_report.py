"""The PDF report end to end: content read back with pypdf, fallbacks, escaping, no leaked key."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_anthropic import INJECTION_PIECES, LONG_TOKEN, NORMAL_ANSWER, running
from make_run import CLASSES, WEAK_CLASS, make_run
from pypdf import PdfReader

from damage_lightning.artifacts import TMP_PREFIX, capture_output
from damage_lightning.errors import DataValidationError
from damage_lightning.report import figures, layout
from damage_lightning.report.build import generate_report
from damage_lightning.report.sections import HEADINGS
from damage_lightning.report.text import format_percent

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_api(monkeypatch):
    with running(monkeypatch) as server:
        yield server


@pytest.fixture(scope="module")
def template_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("template"))


@pytest.fixture
def run_dir(template_run, tmp_path):
    return Path(shutil.copytree(template_run, tmp_path / template_run.name))


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("DAMAGE_LIGHTNING_LLM_MODEL", raising=False)


def pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)


def flat(text: str) -> str:
    """Extracted text with line breaks folded, for phrases that wrap."""
    return re.sub(r"\s+", " ", text)


def image_count(path: Path) -> int:
    count = 0
    for page in PdfReader(path).pages:
        xobjects = page.get("/Resources", {}).get("/XObject", {})
        for obj in xobjects.values():
            if obj.get_object().get("/Subtype") == "/Image":
                count += 1
    return count


def assert_in_order(text: str, parts: list[str]) -> None:
    pos = 0
    for part in parts:
        found = text.find(part, pos)
        assert found >= 0, f"{part!r} missing or out of order"
        pos = found + len(part)


def test_offline_report_has_every_section_in_order_with_the_runs_numbers(run_dir, no_key):
    result = generate_report(run_dir)
    info = json.loads((run_dir / "model_info.json").read_text())
    history = json.loads((run_dir / "training_history.json").read_text())

    assert result.pdf_path == run_dir / "report" / "training_report.pdf"
    assert result.analysis_source == "offline analysis"
    assert result.fallback_reason == "ANTHROPIC_API_KEY is not set"
    text = pdf_text(result.pdf_path)
    assert_in_order(text, ["Training report", "At a glance", *HEADINGS])
    one_line = flat(text)
    accuracy = format_percent(info["test_metrics"]["accuracy"])
    assert accuracy == "95.33%"
    assert accuracy in text
    for name in CLASSES:
        assert name in text
    assert f"best epoch {history['best_epoch']}" in one_line
    assert (
        "Analysis by: offline analysis (computed from the run's numbers). "
        "Claude not used: ANTHROPIC_API_KEY is not set" in one_line
    )
    # Offline analysis text, split check, history rows, log tail and checksums are all there.
    assert "Validation loss bottomed out at" in one_line
    assert "Passed: no recording or sample range is in two splits" in one_line
    assert "Re-checked from splits.json: 120 recordings" in one_line
    assert info["exports"]["onnx"]["sha256"] in text
    assert "Report: report/training_report.pdf" in text  # the last log line
    assert "LR reduced" in text and "early stop" in text
    assert "EarlyStopping" in text and "ReduceLROnPlateau" in text
    assert f"Classes with recall below 0.9: {WEAK_CLASS} (0.817)" in one_line
    assert "Shaded rows: recall below 0.9." in one_line

    # Three figures (curves, counts, normalised), each embedded once, at print resolution.
    assert [p.name for p in result.figures] == [
        "training_curves.png",
        "confusion_matrix.png",
        "confusion_matrix_normalised.png",
    ]
    assert image_count(result.pdf_path) == 3
    for png in result.figures:
        width_px = int.from_bytes(png.read_bytes()[16:20], "big")
        assert width_px == round(6.5 * figures.DPI)
    assert 150 <= figures.DPI <= 200

    md = result.analysis_path.read_text()
    assert_in_order(md, ["## Executive summary", "## Training dynamics", "## Recommendations"])
    assert "Analysis written by: offline analysis" in md
    assert info["report"] == {
        "path": "report/training_report.pdf",
        "analysis_source": "offline analysis",
        "fallback_reason": "ANTHROPIC_API_KEY is not set",
        "figures": [f"report/{p.name}" for p in result.figures],
    }
    assert info["test_metrics"]["accuracy"] == 0.9533  # the rest of the model card is kept
    leftovers = [p for p in run_dir.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert leftovers == []
    assert 8 <= len(PdfReader(result.pdf_path).pages) <= 16


def test_history_table_is_sampled_to_about_25_rows():
    assert layout.sample_indices(10) == list(range(10))
    rows = layout.sample_indices(200, keep=(137,))
    assert rows[0] == 0 and rows[-1] == 199 and 137 in rows
    assert 24 <= len(rows) <= 27
    # Every 9th epoch (200 / 24 rounded up), plus the last and the kept one.
    assert set(rows) == set(range(0, 200, 9)) | {137, 199}


def test_claude_answer_lands_in_the_pdf(run_dir, fake_api):
    result = generate_report(run_dir, llm_model="claude-test", timeout=10, max_retries=0)
    assert result.analysis_source == "Claude claude-test"
    assert result.fallback_reason is None
    text = flat(pdf_text(result.pdf_path))
    for section in NORMAL_ANSWER.values():
        for line in section.splitlines():
            assert line.removeprefix("- ").strip() in text
    assert "Analysis by: Claude claude-test." in text
    assert "Claude not used" not in text
    assert_in_order(
        text, ["FAKE-CLAUDE-SUMMARY", "FAKE-CLAUDE-DYNAMICS", "FAKE-CLAUDE-RECOMMENDATION"]
    )
    info = json.loads((run_dir / "model_info.json").read_text())
    assert info["report"]["analysis_source"] == "Claude claude-test"
    assert info["report"]["fallback_reason"] is None
    assert "FAKE-CLAUDE-SUMMARY" in result.analysis_path.read_text()


@pytest.mark.parametrize(
    ("mode", "timeout", "reason"),
    [
        ("slow", 1.0, "Claude API call timed out after 1 s"),
        ("429", 10.0, "Claude API call failed: HTTP 429 rate limited"),
        ("500", 10.0, "Claude API call failed: HTTP 500 server error"),
        ("unparseable", 10.0, "Claude response could not be parsed: answer holds no JSON object"),
    ],
)
def test_api_failures_give_the_offline_analysis_and_the_reason(
    run_dir, fake_api, mode, timeout, reason
):
    fake_api.mode = mode
    start = time.monotonic()
    result = generate_report(run_dir, timeout=timeout, max_retries=1)
    assert time.monotonic() - start < timeout + 15  # the PDF itself takes a few seconds
    assert result.analysis_source == "offline analysis"
    assert result.fallback_reason == reason
    text = flat(pdf_text(result.pdf_path))
    assert f"Claude not used: {reason}" in text
    assert "Validation loss bottomed out at" in text
    assert "FAKE-CLAUDE" not in text
    assert_in_order(pdf_text(result.pdf_path), list(HEADINGS))
    assert image_count(result.pdf_path) == 3
    info = json.loads((run_dir / "model_info.json").read_text())
    assert info["report"]["fallback_reason"] == reason


def test_markup_in_the_answer_and_in_class_names_is_drawn_literally(tmp_path, fake_api):
    classes = [
        "<font color=red>RED</font>",
        '<a href="javascript:x">click</a>',
        "Tom & Jerry $x$ 50%",
        "<b>unbalanced",
        "ctrl\x00\x07\x1b[31mchars",
        "עברית ومرحبا",
        LONG_TOKEN,
    ]
    run = make_run(tmp_path, name="run <b>&amp; 1", classes=classes)
    fake_api.mode = "injection"
    result = generate_report(run, timeout=10, max_retries=0)
    assert result.analysis_source.startswith("Claude ")
    text = pdf_text(result.pdf_path)
    one_line = flat(text)
    for piece in INJECTION_PIECES[:4]:
        assert piece in one_line
    assert "ctrlchars" in text  # control characters and ANSI codes are removed
    assert "INJECT-RECOMMENDATION <b>bold & <i>italic" in one_line
    assert "second line </font>" in one_line
    assert "Tom & Jerry $x$ 50%" in text
    assert "run <b>&amp; 1" in text
    assert "X" * 150 in text.replace("\n", "") and "X" * 300 not in text.replace("\n", "")
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", text)
    assert image_count(result.pdf_path) == 3
    md = result.analysis_path.read_text()
    assert "<font color=red>RED</font>" in md and "\x00" not in md


def test_many_classes_with_long_names_render(tmp_path, no_key):
    classes = [f"sensor_{i}_very_long_descriptive_damage_condition_name_{i:02d}" for i in range(10)]
    run = make_run(tmp_path, classes=classes)
    result = generate_report(run)
    text = pdf_text(result.pdf_path)
    for name in classes:
        assert name in text  # the per-class table holds the full names
    assert image_count(result.pdf_path) == 3


def test_missing_optional_parts_are_named_not_fatal(tmp_path, no_key):
    run = make_run(
        tmp_path,
        with_test=False,
        with_exports=False,
        empty_history=True,
        files=("model_info.json", "training_history.json"),
    )
    (run / "config.yaml").write_text("trainer: [unclosed\n")
    result = generate_report(run)
    assert result.figures == []
    assert image_count(result.pdf_path) == 0
    text = flat(pdf_text(result.pdf_path))
    assert_in_order(text, list(HEADINGS))
    for phrase in (
        "Not available in the run folder: splits.json: not found; config.yaml: could not be read (",
        "training_log.txt: not found",
        "No test metrics: model_info.json has no test_metrics",
        "training_history.json has no per-epoch values: no curves",
        "training_history.json has no epochs",
        "training_log.txt is not available",
        "No exports recorded in model_info.json",
        "config.yaml is not available",
    ):
        assert phrase in text
    info = json.loads((run / "model_info.json").read_text())
    assert info["report"]["figures"] == []


def test_stale_figures_are_removed_when_a_rebuild_has_fewer(run_dir, no_key):
    generate_report(run_dir, llm=False)
    assert (run_dir / "report" / "confusion_matrix.png").exists()
    info = json.loads((run_dir / "model_info.json").read_text())
    del info["test_metrics"]
    (run_dir / "model_info.json").write_text(json.dumps(info))
    result = generate_report(run_dir, llm=False)
    assert [p.name for p in result.figures] == ["training_curves.png"]
    assert not (run_dir / "report" / "confusion_matrix.png").exists()
    assert image_count(result.pdf_path) == 1


def test_not_a_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataValidationError, match="run folder not found"):
        generate_report(tmp_path / "nope")
    with pytest.raises(DataValidationError, match="not a training run folder"):
        generate_report(tmp_path)


def test_api_key_never_reaches_any_file_of_the_run_folder(run_dir, fake_api):
    key = fake_api.api_key
    # Log everything the SDK and HTTP client say, at debug level, into the run's log.
    for name in ("anthropic", "httpx2", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        with capture_output(run_dir / "training_log.txt"):
            logging.getLogger().handlers[-1].setLevel(logging.DEBUG)
            ok = generate_report(run_dir, timeout=10, max_retries=0)
            fake_api.mode = "401_echo"  # an error that echoes the key back
            failed = generate_report(run_dir, timeout=10, max_retries=0)
    finally:
        for name in ("anthropic", "httpx2", "httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert ok.fallback_reason is None
    assert failed.fallback_reason.startswith("Claude API call failed: HTTP 401")
    # The key was really sent, so finding it nowhere below means something.
    assert any(key in json.dumps(r["headers"]) for r in fake_api.requests)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        data = path.read_bytes()
        assert key.encode() not in data, path
        assert b"FAKEKEY" not in data, path
    # PDF page streams are compressed; check the text as well.
    assert "FAKEKEY" not in pdf_text(failed.pdf_path)
    assert "[redacted]" in flat(pdf_text(failed.pdf_path))


@pytest.mark.slow
def test_report_modules_import_without_torch_or_heavy_libraries():
    code = (
        "import sys; import damage_lightning.report.build, damage_lightning.report.analysis; "
        "print(sorted(m for m in ('torch', 'reportlab', 'matplotlib', 'anthropic', 'lightning') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_files_of_the_wrong_shape_are_named_gaps_and_not_rewritten(run_dir, no_key):
    # A card of the wrong shape is not a model card: the report names the first problem, draws
    # every section from what it can read, and leaves the file as it was.
    info = {
        "run_name": "odd",
        "model": "CNN",
        "classes": "abc",
        "data": {"per_class": {"a": [1, 2]}, "warnings": "one"},
        "splits": [],
        "test_metrics": {"accuracy": "high", "per_class": "bad", "confusion_matrix": [[1, 2], [3]]},
        "exports": {"onnx": "model.onnx"},
        "versions": ["torch"],
    }
    good_card = (run_dir / "model_info.json").read_text()
    odd_card = json.dumps(info)
    (run_dir / "model_info.json").write_text(odd_card)
    (run_dir / "splits.json").write_text(json.dumps({"recordings": [{"segments": "x"}, 3]}))
    (run_dir / "config.yaml").write_text("- just\n- a list\n")
    result = generate_report(run_dir)
    text = flat(pdf_text(result.pdf_path))
    assert_in_order(text, list(HEADINGS))
    assert "model_info.json: created: required field is missing" in text
    assert "splits.json: not a split assignment (TypeError: " in text
    assert "config.yaml: not a YAML mapping" in text
    assert "Validation loss bottomed out at" in text  # the history is still analysed
    assert (run_dir / "model_info.json").read_text() == odd_card
    assert [p.name for p in result.figures] == ["training_curves.png"]

    history = {
        "epochs": [{"epoch": "a", "val_loss": "NaN", "train_loss": None}, 5, {"val_loss": 0.5}],
        "lr_reductions": "x",
        "early_stopping": "yes",
        "best_epoch": "7",
    }
    (run_dir / "model_info.json").write_text(good_card)
    (run_dir / "training_history.json").write_text(json.dumps(history))
    result = generate_report(run_dir)
    text = flat(pdf_text(result.pdf_path))
    assert_in_order(text, list(HEADINGS))
    assert "training_history.json: epochs[0].epoch: expected an integer, got text 'a'" in text
    assert "training_history.json has no epochs" in text
    assert json.loads((run_dir / "model_info.json").read_text())["report"]["figures"] == [
        "report/confusion_matrix.png",
        "report/confusion_matrix_normalised.png",
    ]
