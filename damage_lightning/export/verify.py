"""Verification of an exported file against the eager module on fresh, seeded inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from damage_lightning.errors import ExportVerificationError
from damage_lightning.export.deployable import (
    OUTPUT_NAMES,
    device_of,
    eval_mode,
    example_waveforms,
    model_inputs,
)

#: Runs the exported file on ``(waveform,)`` or ``(waveform, rpm)`` (a model with a speed input).
Runner = Callable[..., Sequence[np.ndarray]]


def output_names(model: nn.Module) -> tuple[str, ...]:
    """A deployable module's output names, in order: its ``output_names``, else a classifier's."""
    return tuple(getattr(model, "output_names", OUTPUT_NAMES))


def _eager_outputs(model: nn.Module, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    with eval_mode(model), torch.no_grad():
        outputs = model(*(t.to(device_of(model)) for t in inputs))
    outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
    return [
        o.cpu().numpy() if not o.is_floating_point() else o.float().cpu().numpy() for o in outputs
    ]


def _compare(
    path: Path,
    batch: int,
    names: Sequence[str],
    eager: Sequence[np.ndarray],
    exported: Sequence[np.ndarray],
    atol: float,
) -> dict[str, float]:
    """Max |difference| per output, or raise ExportVerificationError.

    Float outputs may differ by ``atol * max(1, max|eager|)`` (float32 error is relative, so
    unbounded outputs such as logits get a tolerance that scales with them; for probabilities it
    is ``atol``); other outputs (decisions, flags) must be equal.
    """
    if len(exported) != len(names):
        raise ExportVerificationError(
            f"{path}: the exported model gives {len(exported)} outputs, expected {list(names)}"
        )
    diffs = {}
    for name, ref, got in zip(names, eager, exported, strict=True):
        got = np.asarray(got)
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportVerificationError(
                f"{path}: at batch size {batch} the exported {name} have shape "
                f"{tuple(got.shape)}, the eager model gives {tuple(ref.shape)}"
            )
        if not np.issubdtype(ref.dtype, np.floating):
            if not np.array_equal(got.astype(ref.dtype), ref):
                raise ExportVerificationError(
                    f"{path}: at batch size {batch} the exported {name} differ from the eager "
                    "model's"
                )
            diffs[name] = 0.0
            continue
        if not np.isfinite(ref).all():
            raise ExportVerificationError(
                f"{path}: the eager model gives non-finite {name} at batch size {batch} "
                "(is the front end's normalisation fitted?)"
            )
        if not np.isfinite(got).all():
            raise ExportVerificationError(
                f"{path}: the exported model gives non-finite {name} at batch size {batch}"
            )
        diff = float(np.abs(got.astype(np.float64) - ref).max(initial=0.0))
        tol = atol * max(1.0, float(np.abs(ref).max(initial=0.0)))
        if not diff <= tol:
            raise ExportVerificationError(
                f"{path}: at batch size {batch} the exported {name} differ from the eager "
                f"model's by {diff:.3g} (tolerance {tol:.3g})"
            )
        diffs[name] = diff
    return diffs


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

    A model with a speed input (order spectra) gets fresh seeded speeds with each input too.

    Returns:
        ``{"passed", "max_abs_diff" (of probabilities, else of the first output),
        "max_abs_diff_logits" (when there are logits), "max_abs_diff_outputs" (per output),
        "batch_sizes", "runtime"}``.

    Raises:
        ExportVerificationError: the file does not run, or its outputs differ.
    """
    names = output_names(model)
    worst = dict.fromkeys(names, 0.0)
    for i, batch in enumerate(batch_sizes):
        waveform = example_waveforms(channels, window, int(batch), seed=seed + i)
        inputs = model_inputs(model, waveform, seed=seed + i)
        eager = _eager_outputs(model, inputs)
        try:
            exported = run(*(t.cpu() for t in inputs))
        except Exception as exc:
            raise ExportVerificationError(
                f"{path}: running the exported model at batch size {batch} failed: {exc}"
            ) from exc
        for name, diff in _compare(path, int(batch), names, eager, exported, atol).items():
            worst[name] = max(worst[name], diff)
    result: dict[str, Any] = {
        "passed": True,
        "max_abs_diff": worst.get("probabilities", worst[names[0]]),
    }
    if "logits" in worst:
        result["max_abs_diff_logits"] = worst["logits"]
    result["max_abs_diff_outputs"] = worst
    result["batch_sizes"] = [int(b) for b in batch_sizes]
    result["runtime"] = runtime
    return result
