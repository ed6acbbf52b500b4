"""TorchScript target: the same deployable module, scripted (or traced), with its metadata."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from damage_lightning.artifacts import atomic_write_bytes
from damage_lightning.deploy.metadata import ModelMetadata, json_text
from damage_lightning.errors import ExportVerificationError
from damage_lightning.export.deployable import (
    DeployableModel,
    device_of,
    eval_mode,
    example_waveforms,
    model_inputs,
)
from damage_lightning.export.verify import verify

log = logging.getLogger(__name__)

TORCHSCRIPT_FILE = "model.ts.pt"
TORCHSCRIPT_METADATA_FILE = "metadata.json"


@contextlib.contextmanager
def _torchscript_allowed() -> Iterator[None]:
    # torch 2.11 deprecates torch.jit in favour of torch.export; the design still ships a
    # TorchScript file for C++/LibTorch hosts, so the warning says nothing a user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.", DeprecationWarning)
        yield


def export_torchscript(
    model: DeployableModel,
    path: str | os.PathLike,
    metadata: ModelMetadata,
) -> Path:
    """Export ``model`` to TorchScript (scripted, or traced when scripting fails), atomically.

    Args:
        model: the module to export (its train/eval mode is restored afterwards).
        path: target file (``.ts.pt``).
        metadata: gives the input shape for tracing; stored in the archive as the extra file
            ``metadata.json`` (:func:`read_torchscript_metadata` reads it back).

    Returns:
        The written path.
    """
    path = Path(path)
    with eval_mode(model), torch.no_grad(), _torchscript_allowed():
        try:
            compiled = torch.jit.script(model)
            how = "scripted"
        except Exception as exc:  # scripting rejects many valid modules; tracing is the fallback
            log.info("TorchScript scripting failed (%s); tracing instead", exc)
            channels, window = len(metadata.channels), metadata.window_length
            example = example_waveforms(channels, window, batch=2, device=device_of(model))
            compiled = torch.jit.trace(model, model_inputs(model, example), check_trace=False)
            how = "traced"
        log.info("TorchScript model %s", how)
        buffer = io.BytesIO()
        extra = {TORCHSCRIPT_METADATA_FILE: json_text(metadata.to_props())}
        torch.jit.save(compiled, buffer, _extra_files=extra)
    return atomic_write_bytes(path, buffer.getvalue())


def verify_torchscript(
    path: str | os.PathLike,
    model: DeployableModel,
    channels: int,
    window: int,
    batch_sizes: Sequence[int] = (1, 5),
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Check a TorchScript file against the eager model with ``torch.jit.load`` on CPU.

    Args:
        path: the TorchScript file.
        model: the eager module it was exported from.
        channels: input channels.
        window: window length.
        batch_sizes: one fresh input per batch size.
        atol: tolerance on probabilities; logits get ``atol * max(1, max|logit|)``.
        seed: seed of the inputs.

    Returns:
        Same keys as :func:`verify_onnx`.

    Raises:
        ExportVerificationError: when the file does not load or run, or the outputs differ.
    """
    path = Path(path)
    try:
        with _torchscript_allowed():
            loaded = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        reason = f"torch.jit.load cannot load the model: {exc}"
        raise ExportVerificationError(f"{path}: {reason}") from exc
    loaded.eval()

    def run(*inputs: Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = loaded(*inputs)
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        return [o.numpy() if not o.is_floating_point() else o.float().numpy() for o in outputs]

    runtime = f"torch.jit {torch.__version__.split('+')[0]}"
    return verify(path, run, model, channels, window, batch_sizes, atol, seed, runtime)


def read_torchscript_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The metadata stored in a TorchScript file written by :func:`export_torchscript`."""
    import json

    files = {TORCHSCRIPT_METADATA_FILE: ""}
    with _torchscript_allowed():
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return ModelMetadata.from_props(json.loads(files[TORCHSCRIPT_METADATA_FILE]), str(path))
