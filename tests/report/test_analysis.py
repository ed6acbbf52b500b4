"""The analysis: offline facts and text, strict parsing of Claude's answer, bounded API calls."""

from __future__ import annotations

import json
import time
import typing

import pytest
from fake_anthropic import NORMAL_ANSWER, running
from make_run import CONFUSED_WITH, WEAK_CLASS, make_run, model_info

from damage_lightning.card import ModelCard, TrainingHistory
from damage_lightning.report import analysis as an
from damage_lightning.report import llm
from damage_lightning.report.facts import summarise_run
from damage_lightning.report.offline import offline_sections
from damage_lightning.report.options import MODEL_ENV
from damage_lightning.report.record import RunRecord
from damage_lightning.report.text import SECTIONS, clean_text, format_number


@pytest.fixture
def fake_api(monkeypatch):
    with running(monkeypatch) as server:
        yield server


@pytest.fixture(scope="module")
def run_data(tmp_path_factory):
    return RunRecord.load(make_run(tmp_path_factory.mktemp("runs")))


def record(history=None, **card_parts):
    """A run record from a history and, when parts are given, make_run's card with those parts."""
    card = ModelCard.from_json({**model_info(), **card_parts}) if card_parts else None
    return RunRecord(card=card, history=TrainingHistory.from_json(history or {}))


def _history(train, val, lr=None, **extra):
    epochs = [
        {
            "epoch": i,
            "train_loss": t,
            "val_loss": v,
            "train_acc": 1 - t / 2,
            "val_acc": 1 - v / 2,
            "lr": (lr or [1e-3] * len(train))[i],
        }
        for i, (t, v) in enumerate(zip(train, val, strict=True))
    ]
    return {"monitor": "val_loss", "max_epochs": len(train), "epochs": epochs, **extra}


# ---------------------------------------------------------------------------------------------
# Offline analysis


def test_overfitting_gap_detected_when_train_falls_and_val_rises():
    train = [1.0 - 0.09 * i for i in range(10)]  # 1.0 -> 0.19
    val = [1.0, 0.8, 0.6, 0.5, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]  # minimum at epoch 4
    result = an.analyse(record(_history(train, val)), llm=False)
    facts = result.facts
    assert facts["overfitting"] is True
    assert facts["val_loss_min"] == {"epoch": 4, "value": 0.45}
    assert facts["val_loss_rise_after_min"] == pytest.approx(0.7 / 0.45 - 1)
    assert facts["at_last"]["loss_gap"] == pytest.approx(0.7 - 0.19)
    dynamics = result.sections["Training dynamics"]
    assert "bottomed out at 0.45 in epoch 4" in dynamics
    assert "Overfitting: after epoch 4 val loss rose 55.56%" in dynamics
    assert "Gap at the last epoch (9): val loss - train loss = 0.51" in dynamics
    recs = result.sections["Recommendations"]
    assert "Reduce overfitting: val loss rose 55.56% after epoch 4" in recs
    assert result.source == "offline analysis"
    assert result.fallback_reason == "LLM analysis disabled (report.llm: false)"


def test_no_overfitting_and_train_longer_when_val_still_falls():
    train = [1.0 - 0.05 * i for i in range(10)]
    val = [1.1 - 0.05 * i for i in range(10)]
    facts = summarise_run(record(_history(train, val)))
    assert facts["overfitting"] is False
    assert facts["still_improving"] is True
    recs = offline_sections(facts)["Recommendations"]
    assert "Train longer: validation loss still improved in the last epoch (9)" in recs
    assert "raise max_epochs above 10" in recs


def test_lr_reductions_plateaus_and_early_stop_are_described(run_data):
    history = run_data.history.to_json()
    result = an.analyse(run_data, llm=False)
    text = result.sections["Training dynamics"]
    for r in history["lr_reductions"]:
        assert f"LR reduced at epoch {r['epoch']} from {format_number(r['from'])}" in text
    stop = history["early_stopping"]["stopped_epoch"]
    assert f"Early stopping triggered at epoch {stop} (patience 8)" in text
    assert (
        f"{stop - history['best_epoch']} epochs after the best epoch {history['best_epoch']}"
        in text
    )
    assert "Plateau: no new val-loss minimum from epoch" in text
    # The first reduction un-sticks training in the fake run; the analysis notices.
    first = result.facts["lr_reductions"][0]
    assert first["improved_after"] is True
    assert f"a new val-loss minimum followed in epoch {first['first_new_best_epoch']}" in text


def test_most_confused_pair_weak_recall_and_imbalance_named(run_data):
    result = an.analyse(run_data, llm=False)
    facts = result.facts
    top = facts["confused_pairs"][0]
    assert (top["true"], top["predicted"], top["count"]) == (WEAK_CLASS, CONFUSED_WITH, 9)
    assert [w["class"] for w in facts["weak_recall"]] == [WEAK_CLASS]
    summary = result.sections["Executive summary"]
    assert f"weakest class is {WEAK_CLASS} with recall 0.8167" in summary
    assert f"most often mistaken for {CONFUSED_WITH}" in summary
    assert "accuracy 95.33%" in summary
    recs = result.sections["Recommendations"]
    assert f"Improve class {WEAK_CLASS}: recall 0.8167 is below 0.9; 9 of its test windows" in recs
    assert "bumper_contact only 120 (ratio 2.0)" in recs
    # Every recommendation is tied to a number from the run.
    for line in recs.splitlines():
        assert line.startswith("- ") and any(ch.isdigit() for ch in line)


def test_most_confused_pair_named_without_weak_classes():
    info = {
        "classes": ["a", "b", "c"],
        "test_metrics": {
            "loss": None,
            "accuracy": 0.95,
            "f1_macro": None,
            "confusion_matrix": [[95, 4, 1], [0, 100, 0], [0, 2, 98]],
        },
    }
    result = an.analyse(record(**info), llm=False)
    assert result.facts["weak_recall"] == []
    # Per-class metrics were derived from the matrix because per_class was absent.
    assert result.facts["per_class"]["a"]["recall"] == pytest.approx(0.95)
    assert (
        "most frequent confusion is a -> b (4 test windows)" in result.sections["Recommendations"]
    )


def test_offline_analysis_of_an_almost_empty_run_does_not_fail():
    result = an.analyse(record({"epochs": []}), llm=False)
    assert all(result.sections[name].strip() for name in SECTIONS)
    assert "history is empty" in result.sections["Executive summary"]
    assert "no test metrics" in result.sections["Executive summary"]
    assert "No epochs were recorded" in result.sections["Training dynamics"]


def test_null_values_in_history_are_skipped():
    history = _history([1.0, 0.5, 0.4], [1.0, 0.6, 0.7])
    history["epochs"][1]["val_loss"] = None  # NaN is written as null
    facts = summarise_run(record(history))
    assert facts["val_loss_min"] == {"epoch": 2, "value": 0.7}
    assert facts["at_best"]["epoch"] == 2


# ---------------------------------------------------------------------------------------------
# Parsing Claude's answer


def test_parse_response_accepts_the_object_plain_or_fenced():
    text = json.dumps(NORMAL_ANSWER)
    assert llm.parse_response(text) == {k: v.strip() for k, v in NORMAL_ANSWER.items()}
    assert llm.parse_response(f"```json\n{text}\n```") == llm.parse_response(text)
    assert llm.parse_response(f"Here it is:\n{text}\nThanks") == llm.parse_response(text)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("no json here", "answer holds no JSON object"),
        ("[1, 2]", "answer is JSON but not an object"),
        (
            '{"Executive summary": "x", "Training dynamics": "y"}',
            "missing section 'Recommendations'",
        ),
        (
            '{"Executive summary": "x", "Training dynamics": " ", "Recommendations": "z"}',
            "section 'Training dynamics' is empty",
        ),
        (
            '{"Executive summary": 3, "Training dynamics": "y", "Recommendations": "z"}',
            "section 'Executive summary' is not text",
        ),
        (
            '{"Executive summary": "x", "Training dynamics": "y", "Recommendations": "z", "P": 1}',
            "unexpected key 'P'",
        ),
        ('{"Executive summary": "x", ', "answer holds no JSON object"),
        ("{" + "x" * (llm.MAX_RESPONSE_CHARS + 1) + "}", "answer is too long"),
    ],
)
def test_parse_response_rejects(answer, reason):
    with pytest.raises(llm.ResponseFormatError, match=reason.replace("(", r"\(")):
        llm.parse_response(answer)


def test_clean_text_strips_controls_and_cuts():
    assert clean_text("a\x00b\x07c\x1b[31md\x1b[0m\u202ee\u202c\tf") == "abcde    f"
    assert clean_text("x" * 50, max_len=10) == "x" * 9 + "…"
    assert clean_text("שלום") == "שלום"


# ---------------------------------------------------------------------------------------------
# Model choice


def test_default_model_is_a_current_sonnet_of_the_installed_sdk():
    from anthropic._data import DEPRECATED_MODELS

    name = llm.default_model()
    assert name.startswith("claude-sonnet-")
    assert name not in DEPRECATED_MODELS


def test_default_model_skips_deprecated_and_prefers_newest(monkeypatch):
    import anthropic._data
    from anthropic.types import model as model_mod
    from anthropic.types import model_param

    names = typing.Literal[
        "claude-sonnet-4-6",
        "claude-sonnet-7-1",
        "claude-sonnet-7-1-20270101",
        "claude-sonnet-7",
        "claude-opus-9-9",
        "claude-haiku-8",
    ]
    monkeypatch.setattr(model_param, "ModelParam", typing.Union[names, str])  # noqa: UP007
    monkeypatch.setattr(model_mod, "Model", typing.Union[names, str])  # noqa: UP007
    monkeypatch.setattr(anthropic._data, "DEPRECATED_MODELS", {"claude-sonnet-7-1": "soon"})
    assert llm.default_model() == "claude-sonnet-7-1-20270101"

    only_opus = typing.Literal["claude-opus-9-9"]
    monkeypatch.setattr(model_param, "ModelParam", only_opus)
    monkeypatch.setattr(model_mod, "Model", only_opus)
    assert llm.default_model() == llm.FALLBACK_MODEL


# ---------------------------------------------------------------------------------------------
# Claude through the real SDK against the fake server


def test_claude_answer_is_used(fake_api, run_data):
    result = an.analyse(run_data, model="claude-test-model", timeout=10, max_retries=0)
    assert result.fallback_reason is None
    assert result.source == "Claude claude-test-model"
    assert result.sections == {k: v.strip() for k, v in NORMAL_ANSWER.items()}
    (request,) = fake_api.requests
    assert request["path"] == "/v1/messages"
    sent = request["headers"].get("X-Api-Key") or request["headers"].get("Authorization", "")
    assert fake_api.api_key in sent
    body = request["body"]
    assert body["model"] == "claude-test-model"
    prompt = body["messages"][0]["content"]
    assert '"accuracy": 0.9533' in prompt and WEAK_CLASS in prompt
    assert "Executive summary" in body["system"]
    # No file system paths go to the API.
    assert "/data/shear_frame" not in json.dumps(body)


def test_model_from_environment(fake_api, run_data, monkeypatch):
    monkeypatch.setenv(MODEL_ENV, "claude-from-env")
    an.analyse(run_data, timeout=10, max_retries=0)
    an.analyse(run_data, model="claude-argument", timeout=10, max_retries=0)
    monkeypatch.delenv(MODEL_ENV)
    an.analyse(run_data, timeout=10, max_retries=0)
    models = [r["body"]["model"] for r in fake_api.requests]
    assert models == ["claude-from-env", "claude-argument", llm.default_model()]


def test_no_key_means_offline_without_a_request(fake_api, run_data, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    result = an.analyse(run_data, timeout=5)
    assert result.source == "offline analysis"
    assert result.fallback_reason == "ANTHROPIC_API_KEY is not set"
    disabled = an.analyse(run_data, llm=False)
    assert disabled.fallback_reason == "LLM analysis disabled (report.llm: false)"
    assert fake_api.requests == []


def test_slow_server_is_abandoned_at_the_overall_timeout(fake_api, run_data):
    fake_api.mode = "slow"
    start = time.monotonic()
    result = an.analyse(run_data, timeout=1.0, max_retries=3)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0
    assert result.source == "offline analysis"
    assert result.fallback_reason == "Claude API call timed out after 1 s"


def test_retries_stay_within_the_overall_timeout(fake_api, run_data):
    fake_api.mode = "500"
    fake_api.delay_s = 0.4
    start = time.monotonic()
    result = an.analyse(run_data, timeout=1.0, max_retries=20)
    assert time.monotonic() - start < 2.0
    assert result.source == "offline analysis"
    assert 1 <= len(fake_api.requests) <= 3
    assert result.fallback_reason in (
        "Claude API call failed: HTTP 500 server error",
        "Claude API call timed out after 1 s",
    )


@pytest.mark.parametrize(
    ("mode", "retries", "n_requests", "reason"),
    [
        ("429", 2, 3, "Claude API call failed: HTTP 429 rate limited"),
        ("500", 1, 2, "Claude API call failed: HTTP 500 server error"),
        ("unparseable", 2, 1, "Claude response could not be parsed: answer holds no JSON object"),
        (
            "missing_section",
            2,
            1,
            "Claude response could not be parsed: missing section 'Recommendations'",
        ),
        (
            "malformed_json",
            2,
            1,
            "Claude response could not be parsed: the API response body is not valid JSON",
        ),
        ("oversized", 0, 1, "Claude response could not be parsed: answer is too long"),
    ],
)
def test_failures_fall_back_with_a_one_line_reason(
    fake_api, run_data, mode, retries, n_requests, reason
):
    fake_api.mode = mode
    start = time.monotonic()
    result = an.analyse(run_data, timeout=10, max_retries=retries)
    assert time.monotonic() - start < 10
    assert result.source == "offline analysis"
    assert result.fallback_reason.startswith(reason)
    assert "\n" not in result.fallback_reason
    assert len(fake_api.requests) == n_requests
    assert result.sections == offline_sections(result.facts)


def test_connection_refused_falls_back(run_data, monkeypatch):
    with running(monkeypatch) as server:
        url = server.url
    # The server is stopped: nothing listens on the port any more.
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    result = an.analyse(run_data, timeout=5, max_retries=0)
    assert result.fallback_reason.startswith("Claude API call failed: connection error")


def test_api_key_in_an_error_message_is_redacted(fake_api, run_data):
    fake_api.mode = "401_echo"
    result = an.analyse(run_data, timeout=5, max_retries=2)
    assert len(fake_api.requests) == 1  # 401 is not retried
    assert result.fallback_reason.startswith("Claude API call failed: HTTP 401")
    assert "[redacted]" in result.fallback_reason
    assert fake_api.api_key not in result.fallback_reason
    assert "FAKEKEY" not in result.fallback_reason


def test_invalid_arguments_are_rejected(run_data):
    with pytest.raises(ValueError, match="timeout"):
        an.analyse(run_data, timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        an.analyse(run_data, max_retries=-1)
