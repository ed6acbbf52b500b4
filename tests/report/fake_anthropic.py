"""A fake Anthropic Messages API on loopback, so the real SDK can be tested without the internet.

``FakeAnthropic`` serves ``POST /v1/messages`` from a daemon thread on 127.0.0.1 (the OS picks the
port). Its ``mode`` decides the answer: a valid message, a slow one, HTTP 429/500, text that is not
the structured answer, a body that is not JSON, a 5 MB answer, or markup meant to break the PDF.
Every request is recorded (path, headers, JSON body) so tests can check what the SDK sent.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

SECTIONS = ("Executive summary", "Training dynamics", "Recommendations")

NORMAL_ANSWER = {
    "Executive summary": (
        "FAKE-CLAUDE-SUMMARY: the classifier generalises well and the split is leakage free."
    ),
    "Training dynamics": (
        "FAKE-CLAUDE-DYNAMICS: validation loss bottomed out before early stopping.\n\n"
        "- the learning-rate reductions helped once"
    ),
    "Recommendations": (
        "- FAKE-CLAUDE-RECOMMENDATION: collect more recordings of the weakest class\n"
        "- keep early stopping on val_loss"
    ),
}

# Strings a model (or a user's class names) could produce that would break reportlab's markup.
INJECTION_PIECES = (
    "<font color=red>RED</font>",
    '<a href="javascript:x">click</a>',
    "Tom & Jerry",
    "<b>unbalanced bold",
    "</para></b>",
    "ctrl\x00\x07\x1b[31m\x7fchars",
    "עברית ومرحبا RTL",
)
LONG_TOKEN = "X" * 5000

INJECTION_ANSWER = {
    "Executive summary": "INJECT-SUMMARY " + " ".join(INJECTION_PIECES),
    "Training dynamics": "INJECT-DYNAMICS " + LONG_TOKEN,
    "Recommendations": "- INJECT-RECOMMENDATION <b>bold & <i>italic\n- second line </font>",
}

MODES = (
    "normal",
    "slow",
    "429",
    "500",
    "unparseable",
    "missing_section",
    "malformed_json",
    "oversized",
    "injection",
    "401_echo",
)


class FakeAnthropic:
    """A threaded HTTP server that answers like the Messages API.

    Args:
        mode: one of ``MODES``; can be changed between requests.
        slow_s: how long the ``slow`` mode waits before answering (interrupted by ``stop``).
        delay_s: a wait before every answer in any mode (to test deadlines across retries).
    """

    def __init__(self, mode: str = "normal", slow_s: float = 30.0, delay_s: float = 0.0):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.api_key = "sk-ant-test-FAKEKEY-" + secrets.token_hex(12)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL to give the SDK (``ANTHROPIC_BASE_URL``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        """Start serving in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes sleeping handlers so nothing outlives the test for long."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def answer_text(self) -> str:
        """The text the fake model returns in the current mode."""
        if self.mode == "injection":
            return json.dumps(INJECTION_ANSWER, ensure_ascii=False)
        if self.mode == "unparseable":
            return "Sorry, here are my thoughts in prose instead of the JSON object you asked for."
        if self.mode == "missing_section":
            return json.dumps({k: v for k, v in NORMAL_ANSWER.items() if k != "Recommendations"})
        if self.mode == "oversized":
            return json.dumps({k: "word " * 350_000 for k in SECTIONS})
        return json.dumps(NORMAL_ANSWER)

    def _message(self, model: str) -> dict[str, Any]:
        return {
            "id": "msg_fake_" + secrets.token_hex(6),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": self.answer_text()}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 321, "output_tokens": 123},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                # Keep pytest's output clean; requests are recorded in fake.requests instead.
                return

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with fake._lock:
                    fake.requests.append(
                        {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                    )
                if self.path.rstrip("/") != "/v1/messages":
                    self._send(404, b'{"type":"error","error":{"type":"not_found_error"}}')
                    return
                mode = fake.mode
                wait = fake.slow_s if mode == "slow" else fake.delay_s
                if wait > 0:
                    fake._stopping.wait(wait)
                    if fake._stopping.is_set():
                        return
                if mode == "429":
                    err = {
                        "type": "error",
                        "error": {"type": "rate_limit_error", "message": "slow"},
                    }
                    self._send(429, json.dumps(err).encode(), {"retry-after": "0"})
                    return
                if mode == "500":
                    err = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
                    self._send(500, json.dumps(err).encode())
                    return
                if mode == "401_echo":
                    # Some proxies echo the credentials they rejected; the report must not.
                    sent = self.headers.get("x-api-key") or self.headers.get("authorization") or ""
                    err = {
                        "type": "error",
                        "error": {"type": "authentication_error", "message": f"invalid key {sent}"},
                    }
                    self._send(401, json.dumps(err).encode())
                    return
                if mode == "malformed_json":
                    self._send(200, b'{"id": "msg_1", "type": "message", "content": [')
                    return
                model = (body or {}).get("model", "claude-fake")
                self._send(200, json.dumps(fake._message(model)).encode())

        return Handler


@contextlib.contextmanager
def running(monkeypatch: pytest.MonkeyPatch, mode: str = "normal") -> Iterator[FakeAnthropic]:
    """Run a fake server and point the SDK at it through the environment, for one test."""
    server = FakeAnthropic(mode).start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", server.api_key)
    for name in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DAMAGE_LIGHTNING_LLM_MODEL", raising=False)
    try:
        yield server
    finally:
        server.stop()
