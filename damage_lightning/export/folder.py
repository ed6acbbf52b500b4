"""The export folder: verified ONNX, TorchScript (and int8 ONNX) files, labels and preprocessing."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from damage_lightning.artifacts import TMP_PREFIX, atomic_write_json, sha256_file
from damage_lightning.data.order import refuse_order
from damage_lightning.deploy.metadata import SPEED_INPUT_KEY, ModelMetadata
from damage_lightning.errors import ExportVerificationError
from damage_lightning.export.deployable import (
    INPUT_NAME,
    DeployableModel,
    cpu_float_copy,
)
from damage_lightning.export.int8 import (
    INT8_FILE,
    QuantizationData,
    export_int8,
    quantization_summary,
    verify_int8,
)
from damage_lightning.export.onnx import ONNX_FILE, export_onnx, verify_onnx
from damage_lightning.export.torchscript import (
    TORCHSCRIPT_FILE,
    export_torchscript,
    verify_torchscript,
)
from damage_lightning.export.verify import output_names

LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"


def _file_entry(path: Path) -> dict[str, Any]:
    return {"path": str(path), "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def _export_verified(final: Path, export: Any, verify: Any, describe: Any = None) -> dict[str, Any]:
    """Export to a staging file, verify it, and only then rename it over ``final``.

    ``describe(final)``, when given, adds entries measured on the verified file.
    """
    staging = final.with_name(f"{TMP_PREFIX}unverified-{final.name}")
    start = time.perf_counter()
    try:
        export(staging)
        seconds = time.perf_counter() - start
        verification = verify(staging)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        if isinstance(exc, ExportVerificationError):
            raise ExportVerificationError(
                f"{final}: the new export failed verification and was not written "
                f"(any previous file is unchanged): {exc}"
            ) from exc
        raise
    os.replace(staging, final)
    entry = _file_entry(final)
    entry["export_time_s"] = round(seconds, 3)
    entry["verification"] = verification
    if describe is not None:
        entry.update(describe(final))
    return entry


def preprocessing_spec(model: DeployableModel, metadata: ModelMetadata) -> dict[str, Any]:
    """Describe the exported model's input for deployment code (written as preprocessing.json).

    Args:
        model: the exported module (its front end's ``mean``/``std`` buffers are included).
        metadata: the model's metadata.

    Returns:
        A JSON-ready dict: input name, shape and layout, channels, sample rate, window, hop,
        front-end settings and normalisation statistics.
    """
    meta = metadata
    spec: dict[str, Any] = {
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", len(meta.channels), meta.window_length],
            "dtype": "float32",
            "layout": "(batch, channels, window): raw samples, channels in the order below",
        },
        "outputs": list(output_names(model)),
        "speed_input": meta.extra.get(SPEED_INPUT_KEY),
        "speed_column": meta.speed_column,
        "channels": meta.channels,
        "sample_rate": meta.sample_rate,
        "window_length": meta.window_length,
        "hop": meta.hop,
        "frontend": meta.frontend,
        "damage_lightning_version": meta.version,
    }
    frontend = getattr(model, "frontend", None)
    stats = {}
    for name in ("mean", "std", "fitted"):
        value = getattr(frontend, name, None)
        if isinstance(value, Tensor):
            stats[name] = value.detach().cpu().tolist()
    if stats:
        spec["normalization"] = stats
    return spec


def export_all(
    model: DeployableModel,
    out_dir: str | os.PathLike,
    metadata: ModelMetadata,
    int8: QuantizationData | None = None,
) -> dict[str, Any]:
    """Write and verify the whole export folder: ONNX, TorchScript, labels and preprocessing.

    The model is exported from a CPU float32 copy (the caller's module is left untouched). Each
    model file is verified before it replaces an earlier one, so a failed verification raises and
    leaves the folder as it was.

    Args:
        model: the module to export.
        out_dir: the export folder (created if needed).
        metadata: the model's metadata (its channels and window length give the input shape);
            the ONNX file carries it as metadata props and the TorchScript file as
            ``metadata.json``.
        int8: also write ``model.int8.onnx``, the float ONNX model's network quantised to int8
            (``export.int8``) with these calibration and test windows.

    Returns:
        ``{"onnx": {"path", "sha256", "size_bytes", "export_time_s", "verification"},
        "torchscript": {...same...}, "labels": {"path", "sha256", "size_bytes"},
        "preprocessing": {...}}`` with paths under ``out_dir`` as given; with ``int8`` also
        ``"int8": {...same..., "quantization"}``.

    Raises:
        ExportVerificationError: when an export does not reproduce the eager model.
    """
    out_dir = Path(out_dir)
    if int8 is not None:
        refuse_order(model, "the int8 export (--export.quantize int8)")
    channels, window = len(metadata.channels), metadata.window_length
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu_model = cpu_float_copy(model)
    result: dict[str, Any] = {}
    result["onnx"] = _export_verified(
        out_dir / ONNX_FILE,
        lambda p: export_onnx(cpu_model, p, metadata),
        lambda p: verify_onnx(p, cpu_model, channels, window),
    )
    result["torchscript"] = _export_verified(
        out_dir / TORCHSCRIPT_FILE,
        lambda p: export_torchscript(cpu_model, p, metadata),
        lambda p: verify_torchscript(p, cpu_model, channels, window),
    )
    if int8 is not None:
        float_path = out_dir / ONNX_FILE
        result["int8"] = _export_verified(
            out_dir / INT8_FILE,
            lambda p: export_int8(float_path, p, int8),
            lambda p: verify_int8(p, float_path, int8),
            lambda p: {"quantization": quantization_summary(float_path, p, int8)},
        )
    labels = atomic_write_json(out_dir / LABELS_FILE, metadata.class_names)
    result["labels"] = _file_entry(labels)
    spec = preprocessing_spec(cpu_model, metadata)
    result["preprocessing"] = _file_entry(atomic_write_json(out_dir / PREPROCESSING_FILE, spec))
    return result
