"""The report's sensor-health section, read back with pypdf: findings, none found, not checked."""

from __future__ import annotations

import json
import re

import pytest
from make_run import make_run
from pypdf import PdfReader

from damage_lightning.report.build import generate_report
from damage_lightning.report.sections import HEADINGS

HEADING = "10 Sensor health"
FINDING = {
    "file": "undamaged/undamaged_007.csv",
    "channel": "floor2",
    "start": 3072,
    "stop": 3328,
    "kind": "dropout",
    "reason": "a run of exactly repeated zeros, longest 256 samples (limit 16)",
}
REFERENCE = {
    "channels": ["base", "floor1"],
    "log10_rms_median": [0.0, 0.3],
    "log10_rms_low": [-1.5, -1.2],
    "log10_rms_high": [1.5, 1.8],
    "dc_coupled": [False, True],
    "recordings": 120,
}


def _text(run_dir) -> str:
    pdf = generate_report(run_dir, llm=False).pdf_path
    return re.sub(r"\s+", " ", "\n".join(p.extract_text() or "" for p in PdfReader(pdf).pages))


def _with_health(run_dir, health) -> None:
    info_path = run_dir / "model_info.json"
    info = json.loads(info_path.read_text())
    info["sensor_health"] = health
    info_path.write_text(json.dumps(info))


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return make_run(tmp_path)


def test_section_lists_the_findings_and_the_action(run_dir):
    _with_health(
        run_dir,
        {
            "action": "exclude_windows",
            "recordings_checked": 120,
            "recordings_with_findings": 1,
            "findings": [FINDING],
            "findings_total": 1,
            "flagged_windows": {"train": 3, "val": 0, "test": 0},
            "reference": REFERENCE,
            "options": {},
        },
    )
    text = _text(run_dir)
    assert HEADINGS[-1] == HEADING and HEADING in text
    section = text[text.index(HEADING) :]
    assert "1 findings in 1 of the 120 recordings checked (action: exclude_windows)" in section
    assert "Windows overlapping a finding (left out): train 3, val 0, test 0" in section
    # A long file name may wrap inside its cell.
    assert "undamaged/undamaged_007.csv" in section.replace(" ", "")
    assert "floor2 3,072-3,328 dropout" in section
    assert "repeated zeros, longest 256 samples" in section
    assert "Fitted on 120 recordings" in section


def test_section_says_when_nothing_was_found(run_dir):
    _with_health(
        run_dir,
        {
            "action": "warn",
            "recordings_checked": 120,
            "recordings_with_findings": 0,
            "findings": [],
            "findings_total": 0,
        },
    )
    section = _text(run_dir).split(HEADING, 1)[1]
    assert "No sensor faults were found in the 120 recordings checked (action: warn)." in section


def test_section_says_when_the_gate_did_not_run(run_dir):
    section = _text(run_dir).split(HEADING, 1)[1]
    assert "The sensor-health gate did not run for this model" in section
