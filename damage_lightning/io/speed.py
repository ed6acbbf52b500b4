"""Each recording's shaft speed from its manifest column (training, predict, gateway; no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.discovery import RecordingSpec


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
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            problems.append(
                Problem(spec.relpath, where, f"shaft speed {text!r} is not a positive rpm value")
            )
            continue
        speeds[i] = value
    if problems:
        raise DataValidationError(problems)
    return speeds
