"""Verification of an exported file against the eager module on fresh, seeded inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from damage_lightning.errors import ExportVerificationError
from damage_lightning.export.deployable import OUTPUT_NAMES, device_of, eval_mode, example_waveforms

Runner = Callable[[Tensor], tuple[np.ndarray, np.ndarray]]


def _eager_outputs(model: nn.Module, waveform: Tensor) -> tuple[np.ndarray, np.ndarray]:
    with eval_mode(model), torch.no_grad():
        logits, probs = model(waveform.to(device_of(model)))
    return logits.float().cpu().numpy(), probs.float().cpu().numpy()


def _compare(
    path: Path,
    batch: int,
    eager: tuple[np.ndarray, np.ndarray],
    exported: tuple[np.ndarray, np.ndarray],
    atol: float,
) -> tuple[float, float]:
    """Return (max |diff| of probabilities, of logits) or raise ExportVerificationError."""
    for name, ref, got in zip(OUTPUT_NAMES, eager, exported, strict=True):
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportVerificationError(
                f"{path}: at batch size {batch} the exported {name} have shape "
                f"{tuple(got.shape)}, the eager model gives {tuple(ref.shape)}"
            )
        if not np.isfinite(ref).all():
            raise ExportVerificationError(
                f"{path}: the eager model gives non-finite {name} at batch size {batch} "
                "(is the front end's normalisation fitted?)"
            )
        if not np.isfinite(got).all():
            raise ExportVerificationError(
                f"{path}: the exported model gives non-finite {name} at batch size {batch}"
            )
    diff_logits = float(np.abs(exported[0] - eager[0]).max(initial=0.0))
    diff_probs = float(np.abs(exported[1] - eager[1]).max(initial=0.0))
    if not diff_probs <= atol:
        raise ExportVerificationError(
            f"{path}: at batch size {batch} the exported probabilities differ from the eager "
            f"model's by {diff_probs:.3g} (tolerance {atol:g})"
        )
    # Logits are unbounded, so their tolerance scales with their size (float32 is relative).
    logit_tol = atol * max(1.0, float(np.abs(eager[0]).max(initial=0.0)))
    if not diff_logits <= logit_tol:
        raise ExportVerificationError(
            f"{path}: at batch size {batch} the exported logits differ from the eager model's "
            f"by {diff_logits:.3g} (tolerance {logit_tol:.3g})"
        )
    return diff_probs, diff_logits


def verify(
    path: Path,
    run: Runner,
    model: nn.Module,
    channels: int,
    window: int,
    batch_sizes: Sequence[int],
    atol: float,
    seed: int,
    runtime: str,
) -> dict[str, Any]:
    """Compare ``run`` (the exported file) with the eager ``model``, one fresh input per batch size.

    Returns:
        ``{"passed", "max_abs_diff" (probabilities), "max_abs_diff_logits", "batch_sizes",
        "runtime"}``.

    Raises:
        ExportVerificationError: the file does not run, or its outputs differ.
    """
    worst_p = worst_l = 0.0
    for i, batch in enumerate(batch_sizes):
        waveform = example_waveforms(channels, window, int(batch), seed=seed + i)
        eager = _eager_outputs(model, waveform)
        try:
            exported = run(waveform)
        except Exception as exc:
            raise ExportVerificationError(
                f"{path}: running the exported model at batch size {batch} failed: {exc}"
            ) from exc
        d_p, d_l = _compare(path, int(batch), eager, exported, atol)
        worst_p, worst_l = max(worst_p, d_p), max(worst_l, d_l)
    return {
        "passed": True,
        "max_abs_diff": worst_p,
        "max_abs_diff_logits": worst_l,
        "batch_sizes": [int(b) for b in batch_sizes],
        "runtime": runtime,
    }
