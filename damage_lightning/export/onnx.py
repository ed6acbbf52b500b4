"""ONNX target: the dynamo exporter at opset 18 (the first with STFT), one file, dynamic batch."""

from __future__ import annotations

import contextlib
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
from damage_lightning.data.order import SPEED_INPUT, takes_speed
from damage_lightning.deploy.metadata import ModelMetadata
from damage_lightning.errors import ExportVerificationError
from damage_lightning.export.deployable import (
    INPUT_NAME,
    DeployableModel,
    device_of,
    eval_mode,
    example_waveforms,
    model_inputs,
)
from damage_lightning.export.verify import output_names, verify

ONNX_FILE = "model.onnx"


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    # The exporter warns once per torchvision op it cannot register (our models use none), and
    # torch.export trips over its own pytree deprecation; neither is anything a user can act on.
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model: DeployableModel,
    path: str | os.PathLike,
    metadata: ModelMetadata,
    opset: int = 18,
) -> Path:
    """Export ``model`` to one self-contained ONNX file with a dynamic batch axis and metadata.

    The dynamo exporter is used (opset 18 is the first with STFT); the graph's input is
    ``waveform`` ``(batch, channels, window)`` float32 (and ``rpm`` ``(batch,)`` float32 for a
    model with order spectra) and its outputs the module's
    ``output_names`` (``logits`` and ``probabilities`` for a classifier). The file is written
    atomically: a crash leaves the previous file intact.

    Args:
        model: the module to export (exported on its own device; its train/eval mode is restored).
        path: target ``.onnx`` file.
        metadata: carried as the file's metadata props; its channels and window length give the
            input shape.
        opset: ONNX opset version.

    Returns:
        The written path.
    """
    import onnx

    path = Path(path)
    # Batch 2, not 1: torch.export specialises dimensions of size 0 and 1.
    channels, window = len(metadata.channels), metadata.window_length
    example = model_inputs(model, example_waveforms(channels, window, 2, device=device_of(model)))
    batch = torch.export.Dim("batch", min=1)
    with eval_mode(model), torch.no_grad(), _quiet_onnx_exporter():
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            opset_version=opset,
            input_names=input_names(model),
            output_names=list(output_names(model)),
            dynamic_shapes=tuple({0: batch} for _ in example),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(metadata.to_props())
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "damage_lightning"
    onnx.checker.check_model(proto)
    # Serialised in memory (our models are far below protobuf's 2 GB limit), then written
    # through a temporary file in the same folder and renamed.
    return atomic_write_bytes(path, proto.SerializeToString())


def input_names(model: DeployableModel) -> list[str]:
    """The graph's inputs: ``waveform``, and ``rpm`` for a model with order spectra."""
    return [INPUT_NAME, SPEED_INPUT] if takes_speed(model) else [INPUT_NAME]


def verify_onnx(
    path: str | os.PathLike,
    model: DeployableModel,
    channels: int,
    window: int,
    batch_sizes: Sequence[int] = (1, 5),
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Check an ONNX file against the eager model with onnxruntime on fresh, seeded inputs.

    Only onnxruntime reads the file (CPU provider); nothing in it is executed as Python code.

    Args:
        path: the ``.onnx`` file.
        model: the eager module it was exported from.
        channels: input channels.
        window: window length.
        batch_sizes: one fresh input per batch size.
        atol: tolerance on probabilities; logits get ``atol * max(1, max|logit|)``.
        seed: seed of the inputs.

    Returns:
        ``{"passed", "max_abs_diff" (probabilities), "max_abs_diff_logits", "batch_sizes",
        "runtime"}``.

    Raises:
        ExportVerificationError: when the file does not load or run, or the outputs differ.
    """
    import onnxruntime as ort

    path = Path(path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportVerificationError(f"{path}: onnxruntime cannot load the model: {exc}") from exc
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    expected, wanted = list(output_names(model)), input_names(model)
    if inputs != wanted or outputs != expected:
        raise ExportVerificationError(
            f"{path}: expected inputs {wanted} and outputs {expected}, found {inputs} and {outputs}"
        )

    def run(*tensors: Tensor) -> list[np.ndarray]:
        feed = {name: t.numpy() for name, t in zip(wanted, tensors, strict=True)}
        return [np.asarray(o) for o in session.run(expected, feed)]

    runtime = f"onnxruntime {ort.__version__}"
    return verify(path, run, model, channels, window, batch_sizes, atol, seed, runtime)
