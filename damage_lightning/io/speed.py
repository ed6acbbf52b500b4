"""Each recording's shaft speed from its manifest column (training, predict, gateway; no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.discovery import RecordingSpec


def check_speed(value: object, name: str) -> float:
    """``value`` as a shaft speed in rpm: a finite number above zero.

    Args:
        value: the speed given (a number, or text from a command line).
        name: how the user gave it (e.g. ``"--rpm"``), named in the error.

    Raises:
        DataValidationError: the value is not a positive, finite number.
    """
    speed = _positive_speed(value)
    if speed is None:
        raise DataValidationError(
            Problem("", "", f"{name} must be a positive shaft speed in rpm, got {value!r}")
        )
    return speed


def _positive_speed(value: object) -> float | None:
    """``value`` as a finite number above zero, or ``None`` (also for text that is no number)."""
    if isinstance(value, bool):
        return None
    try:
        speed = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return speed if math.isfinite(speed) and speed > 0 else None


def recording_speeds(
    specs: Sequence[RecordingSpec],
    column: str = "rpm",
    default: float | None = None,
    fallback: str = "",
) -> np.ndarray:
    """The speed in rpm of every recording: its manifest ``column``, else ``default``.

    A row's own value wins; ``default`` (``data.predict_rpm``, the gateway's ``--rpm``) serves
    recordings whose row leaves the column empty, or that come without a manifest.

    Args:
        specs: the recordings (their ``metadata`` holds the manifest's other columns).
        column: the manifest column of the speed.
        default: the speed of recordings without one, rpm; ``None``: they are an error.
        fallback: how the user gives ``default`` (e.g. ``"--rpm"``), named in the error.

    Returns:
        float32 ``(len(specs),)`` speeds, all positive.

    Raises:
        DataValidationError: naming each recording whose speed is missing, not a number or not
            positive, and the column.
    """
    if default is not None:
        default = check_speed(default, fallback or "the default speed")
    speeds = np.empty(len(specs), dtype=np.float32)
    problems = []
    where = f"column '{column}'"
    for i, spec in enumerate(specs):
        text = spec.metadata.get(column, "").strip()
        if not text:
            if default is not None:
                speeds[i] = default
                continue
            given = f" or {fallback}" if fallback else ""
            problems.append(
                Problem(
                    spec.relpath,
                    where,
                    f"no shaft speed: order spectra need each recording's speed in rpm, in the "
                    f"manifest column '{column}'{given}",
                )
            )
            continue
        value = _positive_speed(text)
        if value is None:
            problems.append(
                Problem(spec.relpath, where, f"shaft speed {text!r} is not a positive rpm value")
            )
            continue
        speeds[i] = value
    if problems:
        raise DataValidationError(problems)
    return speeds
