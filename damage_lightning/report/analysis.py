"""The report's written analysis: by Claude when a key is set, else offline (:func:`analyse`).

Both start from the same facts (:mod:`damage_lightning.report.facts`), so the offline text and the
prompt agree on the numbers. A failed, slow or unparseable Claude call never raises: the offline
text is used and the report says why in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from damage_lightning.report.facts import summarise_run
from damage_lightning.report.llm import (
    API_KEY_ENV,
    CallFailed,
    claude_sections,
    default_model,
    redact,
)
from damage_lightning.report.offline import offline_sections
from damage_lightning.report.options import MODEL_ENV, ReportOptions
from damage_lightning.report.record import RunRecord

OFFLINE_SOURCE = "offline analysis"
LLM_DISABLED_REASON = "LLM analysis disabled (report.llm: false)"
# Called through this module's name, so tests (tests/test_reliability_runs.py) can wrap the call.
_claude_sections = claude_sections


@dataclass
class Analysis:
    """The three analysis sections and who wrote them.

    Args:
        sections: ``text.SECTIONS`` mapped to text (paragraphs separated by blank lines; bullet
            lines start with ``"- "``).
        source: ``"Claude <model>"`` or ``"offline analysis"``.
        fallback_reason: one line saying why Claude was not used; ``None`` when it was.
        facts: the facts the analysis was written from (``facts.summarise_run``).
    """

    sections: dict[str, str]
    source: str
    fallback_reason: str | None = None
    facts: dict[str, Any] = field(default_factory=dict, repr=False)


def analyse(
    record: RunRecord,
    *,
    llm: bool = ReportOptions.llm,
    model: str | None = ReportOptions.model,
    timeout: float = ReportOptions.timeout,
    max_retries: int = ReportOptions.max_retries,
) -> Analysis:
    """Write the analysis of a run: by Claude when possible, else offline from the numbers.

    Never raises for API problems and never takes longer than ``timeout`` seconds in total
    (all retries included, plus a fraction of a second).

    Args:
        record: the run folder as loaded by ``RunRecord.load``.
        llm: ask Claude (needs ``ANTHROPIC_API_KEY``); ``False`` gives the offline analysis.
        model: Claude model; default ``$DAMAGE_LIGHTNING_LLM_MODEL`` or ``llm.default_model()``.
        timeout: overall limit in seconds for the Claude call, retries included.
        max_retries: retries after the first attempt on HTTP 408/409/429/5xx and connection errors.

    Raises:
        ValueError: ``timeout`` is not positive or ``max_retries`` is negative.
    """
    options = ReportOptions(llm=llm, model=model, timeout=timeout, max_retries=max_retries)
    facts = summarise_run(record)

    def offline(reason: str) -> Analysis:
        return Analysis(offline_sections(facts), OFFLINE_SOURCE, reason, facts)

    if not options.llm:
        return offline(LLM_DISABLED_REASON)
    api_key = (os.environ.get(API_KEY_ENV) or "").strip()
    if not api_key:
        return offline(f"{API_KEY_ENV} is not set")
    try:
        import anthropic  # noqa: F401  (only to detect a missing SDK before starting a thread)
    except ImportError:
        return offline("the anthropic package is not installed")
    name = options.model or os.environ.get(MODEL_ENV) or default_model()
    try:
        sections, used = _claude_sections(
            record,
            facts,
            api_key=api_key,
            model=name,
            timeout=options.timeout,
            max_retries=options.max_retries,
        )
    except CallFailed as exc:
        return offline(redact(exc.reason, api_key))
    return Analysis(sections, f"Claude {used}", None, facts)
