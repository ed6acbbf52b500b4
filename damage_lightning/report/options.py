"""The report's options and their defaults, defined once for the CLI, the run and the API."""

from __future__ import annotations

from dataclasses import dataclass

# The Claude model to use when none is given; without it, a current Sonnet is chosen.
MODEL_ENV = "DAMAGE_LIGHTNING_LLM_MODEL"


@dataclass(frozen=True)
class ReportOptions:
    """How the report is written (``--report.*`` on the command line).

    Args:
        enabled: write the PDF report at the end of ``fit``.
        llm: let Claude write the analysis when ``ANTHROPIC_API_KEY`` is set.
        model: Claude model; ``None`` means ``$DAMAGE_LIGHTNING_LLM_MODEL`` or a current Sonnet.
        timeout: overall seconds allowed for the Claude call, retries included.
        max_retries: retries of the Claude call on rate limits, server and connection errors.

    Raises:
        ValueError: ``timeout`` is not positive or ``max_retries`` is negative.
    """

    enabled: bool = True
    llm: bool = True
    model: str | None = None
    timeout: float = 60.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not self.timeout or self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries!r}")
