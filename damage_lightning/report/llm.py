"""Claude's analysis through the anthropic SDK: model choice, prompt, bounded request, strict parse.

:func:`claude_sections` never waits past its overall timeout and turns every failure (HTTP errors,
timeouts, an answer of the wrong shape) into :class:`CallFailed` with a one-line reason from which
the API key is removed. The SDK is imported only when a call is made.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import typing
from typing import Any

from damage_lightning.report.record import RunRecord
from damage_lightning.report.text import SECTIONS, clean_text, format_number

API_KEY_ENV = "ANTHROPIC_API_KEY"
FALLBACK_MODEL = "claude-sonnet-4-5"
# An answer longer than this is not the few paragraphs we asked for (and would bloat the PDF).
MAX_RESPONSE_CHARS = 60_000
MAX_OUTPUT_TOKENS = 2_500

_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")


class ResponseFormatError(ValueError):
    """Claude's answer is not the JSON object with the three sections that the prompt asks for."""


def redact(text: str, secret: str | None) -> str:
    """Remove ``secret`` (and anything shaped like an Anthropic key) from ``text``."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_PATTERN.sub("[redacted]", text)


def _literal_strings(tp: Any) -> list[str]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return [a for a in args if isinstance(a, str)]
    return [s for a in args for s in _literal_strings(a)]


def _deprecated_models() -> set[str]:
    found: set[str] = set()
    for module in ("anthropic._data", "anthropic.resources.messages.messages"):
        try:
            mod = __import__(module, fromlist=["DEPRECATED_MODELS"])
        except ImportError:
            continue
        table = getattr(mod, "DEPRECATED_MODELS", None)
        if isinstance(table, dict):
            found.update(str(k) for k in table)
    return found


_SONNET = re.compile(r"^claude-sonnet-(\d+)(?:-(\d{1,2}))?(?:-(\d{8}))?$")


def default_model() -> str:
    """The newest non-deprecated ``claude-sonnet-*`` model the installed SDK knows.

    The SDK's ``ModelParam`` / ``Model`` literals list the models; the SDK's ``DEPRECATED_MODELS``
    table marks the ones to avoid. Among equal versions the undated alias wins. Falls back to
    ``FALLBACK_MODEL`` when the SDK cannot be introspected.
    """
    names: set[str] = set()
    try:
        from anthropic.types import model as model_mod
        from anthropic.types import model_param

        for tp in (getattr(model_param, "ModelParam", None), getattr(model_mod, "Model", None)):
            if tp is not None:
                names.update(_literal_strings(tp))
    except ImportError:
        return FALLBACK_MODEL
    deprecated = _deprecated_models()
    best: tuple[tuple[int, int, int, int], str] | None = None
    for name in names - deprecated:
        m = _SONNET.match(name)
        if not m:
            continue
        key = (int(m[1]), int(m[2] or 0), 0 if m[3] else 1, int(m[3] or 0))
        if best is None or key > best[0]:
            best = (key, name)
    return best[1] if best else FALLBACK_MODEL


SYSTEM_PROMPT = (
    "You are a senior machine-learning engineer reviewing one training run of a classifier that "
    "detects structural or machine damage from vibration recordings (spectrograms of windows cut "
    "from accelerometer CSV files). Write for an engineer who will decide what to try next. Use "
    "only the numbers given; quote them. Answer with ONE JSON object and nothing else, with "
    'exactly these three string keys: "Executive summary" (3-5 sentences: the result, whether it '
    'can be trusted, the main weakness), "Training dynamics" (convergence, the train/validation '
    'gap, plateaus, learning-rate reductions, early stopping) and "Recommendations" (3-6 lines, '
    "each starting with '- ', each tied to an observed number). Plain text only: paragraphs "
    "separated by a blank line, no markdown headings, no HTML."
)


def _history_table(record: RunRecord, max_rows: int = 40) -> str:
    rows = [e.to_json() for e in record.history.epochs]
    keys = ["epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_f1", "lr"]
    keys = [k for k in keys if any(k in row for row in rows)]
    step = max(1, math.ceil(len(rows) / max_rows))
    idx = sorted(set(range(0, len(rows), step)) | ({len(rows) - 1} if rows else set()))
    lines = [",".join(keys)]
    for i in idx:
        lines.append(",".join(format_number(rows[i].get(k), 5) for k in keys))
    return "\n".join(lines)


def build_prompt(record: RunRecord, facts: dict[str, Any]) -> str:
    """The user message: the facts as JSON plus a sampled history as CSV (no file paths)."""
    card = record.card
    payload = {
        "facts": {k: v for k, v in facts.items() if k != "hyperparameters"},
        "model": {
            "name": card.model.name,
            "parameters": card.model.parameters,
            "hyperparameters": card.model.hyperparameters,
        }
        if card
        else {},
        "input": card.input.to_json() if card else None,
        "data_per_class": card.data.to_json()["per_class"] if card else None,
        "data_warnings": card.data.warnings[:10] if card else [],
        "splits": card.splits.to_json() if card else None,
        "test_metrics": card.test_metrics.to_json() if card and card.test_metrics else None,
    }
    text = json.dumps(payload, indent=1, default=str, ensure_ascii=False)
    return (
        "Training run facts (JSON):\n"
        + clean_text(text)
        + "\n\nPer-epoch history (CSV, sampled):\n"
        + _history_table(record)
        + "\n\nReturn the JSON object with the keys "
        + ", ".join(f'"{s}"' for s in SECTIONS)
        + "."
    )


def parse_response(text: str) -> dict[str, str]:
    """Parse Claude's answer into the three sections, strictly.

    Accepts the JSON object alone, optionally inside a Markdown code fence or with text around
    the outermost braces. Every section must be present and non-empty; other keys are rejected.

    Raises:
        ResponseFormatError: with a one-line reason.
    """
    if len(text) > MAX_RESPONSE_CHARS:
        raise ResponseFormatError(
            f"answer is too long ({len(text):,} characters, limit {MAX_RESPONSE_CHARS:,})"
        )
    body = text.strip()
    fence = re.fullmatch(r"```[a-zA-Z]*\s*\n(.*)\n\s*```", body, flags=re.S)
    if fence:
        body = fence.group(1).strip()
    try:
        obj = json.loads(body)
    except ValueError:
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            raise ResponseFormatError("answer holds no JSON object") from None
        try:
            obj = json.loads(body[start : end + 1])
        except ValueError as exc:
            raise ResponseFormatError(f"answer is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ResponseFormatError("answer is JSON but not an object")
    for name in SECTIONS:
        if name not in obj:
            raise ResponseFormatError(f"missing section '{name}'")
    extra = [k for k in obj if k not in SECTIONS]
    if extra:
        raise ResponseFormatError(f"unexpected key '{clean_text(extra[0], max_len=40)}'")
    sections = {}
    for name in SECTIONS:
        value = obj[name]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            # A list of bullet strings is the same content in another shape; accept it.
            value = "\n".join(v if v.lstrip().startswith("- ") else f"- {v}" for v in value)
        if not isinstance(value, str):
            raise ResponseFormatError(f"section '{name}' is not text")
        value = clean_text(value).strip()
        if not value:
            raise ResponseFormatError(f"section '{name}' is empty")
        sections[name] = value
    return sections


class CallFailed(Exception):
    """A Claude call that did not produce sections; ``reason`` is the one-line fallback reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _retry_after(exc: Any) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is not None:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    return None


def _status_reason(exc: Any, api_key: str) -> str:
    code = getattr(exc, "status_code", None)
    if code == 429:
        return "Claude API call failed: HTTP 429 rate limited"
    if isinstance(code, int) and code >= 500:
        return f"Claude API call failed: HTTP {code} server error"
    body = getattr(exc, "body", None)
    detail = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        detail = f"{err.get('type', '')}: {err.get('message', '')}".strip(": ")
    detail = redact(clean_text(detail or str(exc), max_len=160, newlines=False), api_key)
    return f"Claude API call failed: HTTP {code} {detail}".rstrip()


def _request(
    api_key: str, model: str, prompt: str, timeout: float, max_retries: int, deadline: float
) -> tuple[str, str]:
    """Call the Messages API with our own retry loop bounded by ``deadline``.

    Returns:
        ``(text, model)`` of the answer.

    Raises:
        CallFailed: with the reason for the report.
    """
    import anthropic

    attempt = 0
    with anthropic.Anthropic(api_key=api_key, timeout=timeout, max_retries=0) as client:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                raise CallFailed(f"Claude API call timed out after {timeout:g} s")
            retry_wait: float | None = None
            try:
                message = client.messages.create(
                    model=model,
                    max_tokens=MAX_OUTPUT_TOKENS,
                    system=SYSTEM_PROMPT,
                    messages=[{"role": "user", "content": prompt}],
                    timeout=remaining,
                )
            except anthropic.APITimeoutError:
                raise CallFailed(f"Claude API call timed out after {timeout:g} s") from None
            except anthropic.APIStatusError as exc:
                code = exc.status_code
                if not (code in (408, 409, 429) or code >= 500) or attempt >= max_retries:
                    raise CallFailed(_status_reason(exc, api_key)) from None
                retry_wait = _retry_after(exc)
                if retry_wait is None:
                    retry_wait = min(0.5 * 2**attempt, 8.0)
                failure = _status_reason(exc, api_key)
            except anthropic.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                failure = "Claude API call failed: connection error " + redact(
                    clean_text(f"({type(cause).__name__}: {cause})", max_len=160, newlines=False),
                    api_key,
                )
                if attempt >= max_retries:
                    raise CallFailed(failure) from None
                retry_wait = min(0.5 * 2**attempt, 8.0)
            except ValueError as exc:
                # The SDK hands on json's error when the response body is not JSON.
                raise CallFailed(
                    "Claude response could not be parsed: the API response body is not valid "
                    f"JSON ({redact(clean_text(exc, max_len=120, newlines=False), api_key)})"
                ) from None
            else:
                texts = [
                    getattr(block, "text", "")
                    for block in (message.content or [])
                    if getattr(block, "type", None) == "text"
                ]
                used = message.model if isinstance(message.model, str) and message.model else model
                return "".join(t for t in texts if isinstance(t, str)), used
            if time.monotonic() + retry_wait >= deadline - 0.05:
                raise CallFailed(failure)
            time.sleep(retry_wait)
            attempt += 1


def claude_sections(
    record: RunRecord,
    facts: dict[str, Any],
    *,
    api_key: str,
    model: str,
    timeout: float,
    max_retries: int,
) -> tuple[dict[str, str], str]:
    """Ask Claude, within ``timeout`` seconds overall; raise ``CallFailed`` otherwise."""
    prompt = build_prompt(record, facts)
    deadline = time.monotonic() + timeout
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["ok"] = _request(api_key, model, prompt, timeout, max_retries, deadline)
        except CallFailed as exc:
            outcome["failed"] = exc.reason
        except Exception as exc:  # anything else the SDK or httpx may raise: report, never crash
            outcome["failed"] = "Claude API call failed: " + redact(
                clean_text(f"{type(exc).__name__}: {exc}", max_len=200, newlines=False), api_key
            )

    # A worker thread lets us give up at the deadline even if a connection trickles bytes and so
    # never trips the SDK's per-read timeout; the thread ends on its own timeout soon after.
    worker = threading.Thread(target=work, name="claude-analysis", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()) + 0.2)
    if worker.is_alive() or not outcome:
        raise CallFailed(f"Claude API call timed out after {timeout:g} s")
    if "failed" in outcome:
        raise CallFailed(outcome["failed"])
    text, used_model = outcome["ok"]
    try:
        sections = parse_response(text)
    except ResponseFormatError as exc:
        raise CallFailed(f"Claude response could not be parsed: {exc}") from None
    return sections, clean_text(used_model, max_len=80, newlines=False)
