"""int8 target: onnxruntime's static quantisation of the network part of the float ONNX model.

The float ``model.onnx`` is quantised with QDQ nodes (per-channel int8 weights, uint8
activations, MinMax calibration on windows of the training split); the spectrogram front end's
nodes stay in float, since a quantised DFT or logarithm would lose the weak bins the network
reads. Verification runs the int8 and the float model on the test split: the top class must
agree on at least :data:`MIN_AGREEMENT` of the windows and the accuracy may drop by at most
:data:`MAX_ACCURACY_DROP_POINTS` points. The file carries the float model's metadata plus a
``quantization`` entry, so the torch-free predictor runs it like any other export.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from damage_lightning.artifacts import atomic_write_bytes
from damage_lightning.deploy.metadata import json_text
from damage_lightning.errors import ExportVerificationError
from damage_lightning.export.deployable import INPUT_NAME

INT8_FILE = "model.int8.onnx"
MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP_POINTS = 0.5
SCHEME = "onnxruntime static QDQ: int8 per-channel weights, uint8 activations, MinMax calibration"
#: The metadata entry that marks a quantised model.
QUANTIZATION_KEY = "quantization"
# The name scope the dynamo exporter records for every node: ['', 'frontend', ...] for the front
# end's (DeployableModel.frontend).
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"
_FRONTEND = "frontend"


@dataclass
class QuantizationData:
    """The windows that calibrate and verify an int8 model.

    Args:
        calibration: float32 ``(N, C, W)`` windows of the training split.
        test: float32 ``(M, C, W)`` windows the int8 model is verified on.
        test_labels: int64 ``(M,)`` their class indices.
        test_split: which split ``test`` holds (``test``, or ``val`` when there is no test split).
    """

    calibration: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    test_split: str = "test"

    @classmethod
    def from_datamodule(
        cls, datamodule: Any, max_calibration: int = 512, max_test: int = 4096, seed: int = 0
    ) -> QuantizationData:
        """Windows of a ``DamageDataModule``'s splits (set up here when it is not yet).

        Args:
            datamodule: the data the model was trained on.
            max_calibration: at most this many training windows (a seeded sample).
            max_test: at most this many test windows (a seeded sample; all when fewer).
            seed: seed of the samples.

        Raises:
            ExportVerificationError: there are no training windows, or neither test nor
                validation windows to verify on.
        """
        if datamodule.dataset is None or not datamodule.indices:
            datamodule.setup("fit")
        calibration, _ = _split_windows(datamodule, "train", max_calibration, seed)
        split = next((s for s in ("test", "val") if len(datamodule.indices.get(s, ()))), None)
        if not len(calibration) or split is None:
            raise ExportVerificationError(
                "int8 quantisation needs training windows to calibrate on and test (or "
                "validation) windows to verify on; the data have none"
            )
        test, labels = _split_windows(datamodule, split, max_test, seed)
        return cls(calibration, test, labels, split)


def _split_windows(
    datamodule: Any, split: str, limit: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` windows of ``split`` (a seeded sample, in index order) and their labels."""
    from damage_lightning.data.windows import WindowBatchLoader

    index = datamodule.indices[split]
    if len(index) > limit:
        rng = np.random.default_rng(seed)
        index = index[np.sort(rng.choice(len(index), limit, replace=False))]
    names = datamodule.class_names
    labels = np.array([names.index(lab) for lab in datamodule.dataset.labels], dtype=np.int64)
    loader = WindowBatchLoader(
        datamodule.dataset.waveforms, index, labels, datamodule.window, batch_size=512
    )
    windows, targets = [], []
    for waveform, label in loader:
        windows.append(waveform.cpu().numpy().astype(np.float32, copy=False))
        targets.append(label.cpu().numpy())
    if not windows:
        shape = (0, datamodule.in_channels, datamodule.window)
        return np.zeros(shape, np.float32), np.zeros(0, np.int64)
    return np.concatenate(windows), np.concatenate(targets)


def frontend_nodes(model: Any) -> list[str]:
    """Names of the nodes of an exported ``DeployableModel`` that belong to its front end.

    Args:
        model: the float ``onnx.ModelProto``.

    Raises:
        ExportVerificationError: the graph does not record which module each node came from
            (not an export of this package's dynamo exporter), so the front end cannot be kept
            in float.
    """
    names, scoped = [], 0
    for node in model.graph.node:
        scope = next((p.value for p in node.metadata_props if p.key == _SCOPE_KEY), None)
        if scope is None:
            continue
        scoped += 1
        parts = ast.literal_eval(scope)
        if len(parts) > 1 and parts[1] == _FRONTEND:
            names.append(node.name)
    if not scoped or not names:
        raise ExportVerificationError(
            "the float ONNX model does not say which nodes are the front end's "
            f"(no '{_SCOPE_KEY}' node metadata), so it cannot be quantised with a float front end"
        )
    return names


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _no_preprocessing_advice() -> Iterator[None]:
    # onnxruntime advises its quant_pre_process (shape inference and graph fusions) on the root
    # logger. The exporter's graph is optimised and fully shaped already, and those fusions would
    # rename the front-end nodes that must stay float.
    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


class _Windows:
    """onnxruntime's ``CalibrationDataReader`` protocol over an array of windows."""

    def __init__(self, windows: np.ndarray, batch_size: int = 64):
        self._batches = iter(
            [{INPUT_NAME: windows[i : i + batch_size]} for i in range(0, len(windows), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def export_int8(
    float_path: str | os.PathLike, path: str | os.PathLike, data: QuantizationData
) -> Path:
    """Quantise the float ONNX model's network to int8 (QDQ), the front end kept in float.

    Args:
        float_path: the verified float ``model.onnx``.
        path: target file (written atomically).
        data: ``data.calibration`` calibrates the activation ranges.

    Returns:
        The written path.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    float_model = onnx.load(str(float_path))
    keep_float = frontend_nodes(float_model)
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp, _no_preprocessing_advice():
        staging = Path(tmp) / "model.int8.onnx"
        quantize_static(
            str(float_path),
            str(staging),
            _Windows(np.ascontiguousarray(data.calibration, np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(staging))
    props = {p.key: p.value for p in float_model.metadata_props}
    props[QUANTIZATION_KEY] = json_text(
        {
            "scheme": SCHEME,
            "calibration_windows": len(data.calibration),
            "float_nodes": len(keep_float),
        }
    )
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "damage_lightning"
    onnx.checker.check_model(proto)
    return atomic_write_bytes(Path(path), proto.SerializeToString())


def _session(path: str | os.PathLike) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _probabilities(session: Any, windows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    parts = [
        session.run(["probabilities"], {INPUT_NAME: windows[i : i + batch_size]})[0]
        for i in range(0, len(windows), batch_size)
    ]
    return np.concatenate(parts).astype(np.float64)


def verify_int8(
    path: str | os.PathLike,
    float_path: str | os.PathLike,
    data: QuantizationData,
    min_agreement: float = MIN_AGREEMENT,
    max_accuracy_drop_points: float = MAX_ACCURACY_DROP_POINTS,
) -> dict[str, Any]:
    """Check the int8 model against the float one on ``data.test``.

    Args:
        path: the int8 file.
        float_path: the float ``model.onnx`` it was quantised from.
        data: the test windows and labels.
        min_agreement: least share of windows whose top class both models agree on.
        max_accuracy_drop_points: largest allowed accuracy drop, in percentage points.

    Returns:
        The card's ``Verification`` fields: ``passed``, ``max_abs_diff`` (of probabilities,
        against the float model), ``batch_sizes``, ``runtime``, ``reference``, ``test_split``,
        ``test_windows``, ``agreement``, ``min_agreement``, ``accuracy_reference``,
        ``accuracy``, ``accuracy_drop_points``, ``max_accuracy_drop_points``.

    Raises:
        ExportVerificationError: the file does not load or run, or a criterion is missed.
    """
    import onnxruntime as ort

    path = Path(path)
    if not len(data.test):
        raise ExportVerificationError(f"{path}: no test windows to verify the int8 model on")
    try:
        reference = _probabilities(_session(float_path), data.test)
        quantised = _probabilities(_session(path), data.test)
    except Exception as exc:
        raise ExportVerificationError(f"{path}: running the int8 model failed: {exc}") from exc
    agreement = float(np.mean(reference.argmax(axis=1) == quantised.argmax(axis=1)))
    acc_ref = float(np.mean(reference.argmax(axis=1) == data.test_labels))
    acc = float(np.mean(quantised.argmax(axis=1) == data.test_labels))
    drop = (acc_ref - acc) * 100.0
    result = {
        "passed": True,
        "max_abs_diff": float(np.abs(quantised - reference).max()),
        "batch_sizes": [min(256, len(data.test))],
        "runtime": f"onnxruntime {ort.__version__}",
        "reference": Path(float_path).name,
        "test_split": data.test_split,
        "test_windows": len(data.test),
        "agreement": agreement,
        "min_agreement": min_agreement,
        "accuracy_reference": acc_ref,
        "accuracy": acc,
        "accuracy_drop_points": drop,
        "max_accuracy_drop_points": max_accuracy_drop_points,
    }
    failures = []
    if not agreement >= min_agreement:
        failures.append(f"its top class agrees with the float model on {agreement:.2%} of the "
                        f"{len(data.test)} {data.test_split} windows (at least {min_agreement:.0%} "
                        "needed)")  # fmt: skip
    if not drop <= max_accuracy_drop_points:
        failures.append(f"its accuracy drops by {drop:.2f} points ({acc_ref:.4f} -> {acc:.4f}; at "
                        f"most {max_accuracy_drop_points} allowed)")  # fmt: skip
    if failures:
        raise ExportVerificationError(f"{path}: the int8 model " + "; ".join(failures))
    return result


def speed(
    path: str | os.PathLike, windows: np.ndarray, batch_size: int = 64, seconds: float = 0.5
) -> dict[str, Any]:
    """Size, batch-1 latency (median) and batch throughput of an ONNX file in onnxruntime.

    Args:
        path: the model file.
        windows: float32 ``(N, C, W)`` inputs (cycled when fewer than ``batch_size``).
        batch_size: the throughput batch.
        seconds: about how long each figure is timed.

    Returns:
        ``{"size_bytes", "latency_ms_batch1", "throughput_windows_per_s"}``.
    """
    session = _session(path)
    one = np.ascontiguousarray(windows[:1], np.float32)
    reps = int(np.ceil(batch_size / len(windows)))
    batch = np.ascontiguousarray(np.concatenate([windows] * reps)[:batch_size], np.float32)

    def timed(x: np.ndarray, least: int) -> list[float]:
        session.run(None, {INPUT_NAME: x})  # warm-up
        times: list[float] = []
        end = time.perf_counter() + seconds
        while len(times) < least or time.perf_counter() < end:
            start = time.perf_counter()
            session.run(None, {INPUT_NAME: x})
            times.append(time.perf_counter() - start)
        return times

    latency = statistics.median(timed(one, 10)) * 1000.0
    throughput = batch_size / statistics.median(timed(batch, 3))
    return {
        "size_bytes": Path(path).stat().st_size,
        "latency_ms_batch1": round(latency, 4),
        "throughput_windows_per_s": round(throughput, 1),
    }


def quantization_summary(
    float_path: str | os.PathLike, path: str | os.PathLike, data: QuantizationData
) -> dict[str, Any]:
    """The card's ``quantization`` entry: how the int8 model was built and how fast both are.

    Speeds are measured here, on this machine, with onnxruntime on the CPU; the two models are
    timed one after the other on the same test windows.
    """
    import onnxruntime as ort

    batch = 64
    float_speed = speed(float_path, data.test, batch)
    int8_speed = speed(path, data.test, batch)
    built = json.loads(_session(path).get_modelmeta().custom_metadata_map[QUANTIZATION_KEY])
    return {
        **built,
        "calibration_split": "train",
        "runtime": f"onnxruntime {ort.__version__}, CPU, {os.cpu_count()} cores",
        "throughput_batch": batch,
        "float_model": float_speed,
        "int8_model": int8_speed,
        "size_ratio": round(int8_speed["size_bytes"] / float_speed["size_bytes"], 4),
        "latency_speedup": round(
            float_speed["latency_ms_batch1"] / int8_speed["latency_ms_batch1"], 3
        ),
        "throughput_speedup": round(
            int8_speed["throughput_windows_per_s"] / float_speed["throughput_windows_per_s"], 3
        ),
    }
