"""Deployment: the waveform-in module, its verified ONNX/TorchScript exports, checkpoint loading."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from damage_lightning.artifacts import (
    TMP_PREFIX,
    atomic_write_bytes,
    atomic_write_json,
    sha256_file,
    to_jsonable,
)
from damage_lightning.errors import DataValidationError, ExportVerificationError, Problem

if TYPE_CHECKING:
    from damage_lightning.models.base import DamageClassifier

log = logging.getLogger(__name__)

INPUT_NAME = "waveform"
OUTPUT_NAMES = ("logits", "probabilities")
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts.pt"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
TORCHSCRIPT_METADATA_FILE = "metadata.json"

# Keys build_metadata writes itself; ``extra`` may not overwrite them.
_RESERVED_KEYS = (
    "class_names",
    "channels",
    "sample_rate",
    "window_length",
    "hop",
    "frontend",
    "damage_lightning_version",
)


class DeployableModel(nn.Module):
    """Waveform in, (logits, probabilities) out: the front end and the network in one module.

    This is what ONNX and TorchScript carry, so serving runs the very same front end (with its
    normalisation statistics) as training did.

    Args:
        frontend: maps waveform windows ``(B, C, window)`` to features, e.g. a normalised log
            spectrogram ``(B, C, F, T)``.
        net: maps those features to logits ``(B, K)``.
    """

    def __init__(self, frontend: nn.Module, net: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.net = net

    def forward(self, waveform: Tensor) -> tuple[Tensor, Tensor]:
        """Classify waveform windows.

        Args:
            waveform: float32 ``(B, C, window)``.

        Returns:
            ``(logits, probabilities)``, both float32 ``(B, K)``; probabilities are the softmax of
            the logits (cast to float32 first when the network runs at lower precision).
        """
        logits = self.net(self.frontend(waveform)).float()
        return logits, torch.softmax(logits, dim=-1)


# --------------------------------------------------------------------------------------------
# metadata


def _json_text(obj: Any) -> str:
    """JSON text that keeps non-ASCII readable, escaping only what UTF-8 cannot carry."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (e.g. from badly decoded file names) cannot go into a protobuf string;
        # \\u escapes carry them and still decode to the same Python string.
        text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    return text


def _check_names(kind: str, names: Sequence[str]) -> list[str]:
    names = list(names)
    if not names:
        raise ValueError(f"{kind}: at least one name is needed")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"{kind}: every name must be a string, got {bad[0]!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{kind}: duplicate names {dupes[:5]!r}")
    return names


def build_metadata(
    class_names: list[str],
    channels: list[str],
    sample_rate: float,
    window_length: int,
    hop: int,
    frontend_settings: dict,
    extra: dict | None = None,
) -> dict[str, str]:
    """Build the metadata an exported model carries, as strings (what ONNX metadata props hold).

    Lists and the front-end settings are JSON (non-ASCII kept as is); numbers are plain decimal
    text. Every JSON value is decoded again and compared with the input, so hostile text (markup,
    control characters, right-to-left text, very long names) either survives exactly or fails here.

    Args:
        class_names: class names in the order of the model's outputs.
        channels: sensor channel names in the order of the model's input channels.
        sample_rate: samples per second the model expects.
        window_length: samples per window (the model's input length).
        hop: default step between windows when a recording is cut for prediction.
        frontend_settings: the front end's settings (JSON-serialisable values).
        extra: more entries; string values are kept verbatim, others are JSON-encoded. Keys may
            not replace the entries above.

    Returns:
        ``{key: text}`` with keys ``class_names``, ``channels``, ``sample_rate``,
        ``window_length``, ``hop``, ``frontend``, ``damage_lightning_version`` and those of
        ``extra``.

    Raises:
        ValueError: on empty or duplicate names, a non-positive or non-finite number, a reserved
            or non-string extra key, or text that does not survive the round trip.
    """
    from damage_lightning import __version__

    class_names = _check_names("class_names", class_names)
    channels = _check_names("channels", channels)
    sample_rate = float(sample_rate)
    if not (math.isfinite(sample_rate) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive number, got {sample_rate!r}")
    for name, value in (("window_length", window_length), ("hop", hop)):
        if isinstance(value, bool) or int(value) != value or int(value) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    settings = to_jsonable(dict(frontend_settings))

    encoded = {"class_names": class_names, "channels": channels, "frontend": settings}
    meta = {key: _json_text(value) for key, value in encoded.items()}
    for key, value in encoded.items():
        if json.loads(meta[key]) != value:
            raise ValueError(f"metadata {key!r} does not survive a JSON round trip: {value!r}")
    meta["sample_rate"] = repr(sample_rate)
    meta["window_length"] = str(int(window_length))
    meta["hop"] = str(int(hop))
    meta["damage_lightning_version"] = __version__

    for key, value in (extra or {}).items():
        if not isinstance(key, str) or key in _RESERVED_KEYS:
            raise ValueError(f"extra metadata key {key!r} is reserved or not a string")
        text = value if isinstance(value, str) else _json_text(to_jsonable(value))
        try:
            key.encode("utf-8")
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"extra metadata {key!r} is not valid Unicode text: {exc}") from exc
        meta[key] = text
    return meta


def parse_metadata(meta: dict[str, str], source: str = "") -> dict[str, Any]:
    """Decode metadata written by :func:`build_metadata` back into Python values.

    Args:
        meta: the ``{key: text}`` map (ONNX metadata props or the TorchScript ``metadata.json``).
        source: the file it came from, for error messages.

    Returns:
        ``class_names`` and ``channels`` (lists), ``sample_rate`` (float), ``window_length`` and
        ``hop`` (int), ``frontend`` (dict), ``version`` (str) and ``extra`` (the other entries,
        as text).

    Raises:
        DataValidationError: when an entry is missing or malformed (e.g. a model not exported by
            damage_lightning).
    """
    missing = [k for k in _RESERVED_KEYS if k not in meta]
    if missing:
        raise DataValidationError(
            Problem(
                source,
                "metadata",
                f"missing entries {missing}; was this model exported by damage_lightning?",
            )
        )
    try:
        out: dict[str, Any] = {
            "class_names": json.loads(meta["class_names"]),
            "channels": json.loads(meta["channels"]),
            "sample_rate": float(meta["sample_rate"]),
            "window_length": int(meta["window_length"]),
            "hop": int(meta["hop"]),
            "frontend": json.loads(meta["frontend"]),
            "version": meta["damage_lightning_version"],
        }
    except ValueError as exc:
        raise DataValidationError(Problem(source, "metadata", f"malformed entry: {exc}")) from exc
    if not (
        isinstance(out["class_names"], list)
        and isinstance(out["channels"], list)
        and isinstance(out["frontend"], dict)
    ):
        raise DataValidationError(
            Problem(
                source,
                "metadata",
                "class_names/channels must be JSON lists, frontend a JSON object",
            )
        )
    out["extra"] = {k: v for k, v in meta.items() if k not in _RESERVED_KEYS}
    return out


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and decode the metadata of an exported ONNX model (needs onnxruntime, not torch).

    Args:
        path: the ``.onnx`` file.

    Returns:
        See :func:`parse_metadata`.
    """
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        reason = f"onnxruntime cannot load the model: {exc}"
        raise DataValidationError(Problem(str(path), "", reason)) from exc
    return parse_metadata(dict(session.get_modelmeta().custom_metadata_map), str(path))


# --------------------------------------------------------------------------------------------
# export


def _device_of(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def example_waveforms(
    channels: int, window: int, batch: int, seed: int = 0, device: torch.device | str = "cpu"
) -> Tensor:
    """Seeded waveform windows of realistic shape and scale, for tracing and verification.

    Each window is a few sinusoids of random frequency and amplitude plus broadband noise, at an
    overall level between about 0.01 and 10 (vibration signals in g or m/s^2 span that range), so
    the log spectrogram sees both peaks and a noise floor as it does on real data.

    Args:
        channels: number of channels ``C``.
        window: samples per window ``W``.
        batch: number of windows ``B``.
        seed: random seed.
        device: where the tensor is created.

    Returns:
        float32 ``(B, C, W)``.
    """
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(window, dtype=torch.float64)
    freqs = torch.rand(batch, channels, 3, 1, generator=gen, dtype=torch.float64) * 0.45 + 0.01
    phases = torch.rand(batch, channels, 3, 1, generator=gen, dtype=torch.float64) * 2 * math.pi
    amps = torch.rand(batch, channels, 3, 1, generator=gen, dtype=torch.float64) + 0.1
    tones = (amps * torch.sin(2 * math.pi * freqs * t + phases)).sum(dim=2)
    noise = 0.3 * torch.randn(batch, channels, window, generator=gen, dtype=torch.float64)
    level = 10 ** (torch.rand(batch, 1, 1, generator=gen, dtype=torch.float64) * 3 - 2)
    return (level * (tones + noise)).to(torch.float32).to(device)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _torchscript_allowed() -> Iterator[None]:
    # torch 2.11 deprecates torch.jit in favour of torch.export; the design still ships a
    # TorchScript file for C++/LibTorch hosts, so the warning says nothing a user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.", DeprecationWarning)
        yield


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
    channels: int,
    window: int,
    metadata: dict[str, str],
    opset: int = 18,
) -> Path:
    """Export ``model`` to one self-contained ONNX file with a dynamic batch axis and metadata.

    The dynamo exporter is used (opset 18 is the first with STFT); the graph's input is
    ``waveform`` ``(batch, channels, window)`` float32 and its outputs ``logits`` and
    ``probabilities``. The file is written atomically: a crash leaves the previous file intact.

    Args:
        model: the module to export (exported on its own device; its train/eval mode is restored).
        path: target ``.onnx`` file.
        channels: input channels ``C``.
        window: input window length ``W``.
        metadata: ``{key: text}`` metadata props, normally from :func:`build_metadata`.
        opset: ONNX opset version.

    Returns:
        The written path.
    """
    import onnx

    path = Path(path)
    # Batch 2, not 1: torch.export specialises dimensions of size 0 and 1.
    example = example_waveforms(channels, window, batch=2, device=_device_of(model))
    batch = torch.export.Dim("batch", min=1)
    with _eval_mode(model), torch.no_grad(), _quiet_onnx_exporter():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch},),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({str(k): str(v) for k, v in metadata.items()})
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "damage_lightning"
    onnx.checker.check_model(proto)
    # Serialised in memory (our models are far below protobuf's 2 GB limit), then written
    # through a temporary file in the same folder and renamed.
    return atomic_write_bytes(path, proto.SerializeToString())


def export_torchscript(
    model: DeployableModel,
    path: str | os.PathLike,
    channels: int,
    window: int,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export ``model`` to TorchScript (scripted, or traced when scripting fails), atomically.

    Args:
        model: the module to export (its train/eval mode is restored afterwards).
        path: target file (``.ts.pt``).
        channels: input channels ``C`` (for the tracing example).
        window: input window length ``W`` (for the tracing example).
        metadata: stored in the archive as the extra file ``metadata.json``; read it back with
            ``torch.jit.load(path, _extra_files={"metadata.json": ""})``.

    Returns:
        The written path.
    """
    path = Path(path)
    with _eval_mode(model), torch.no_grad(), _torchscript_allowed():
        try:
            compiled = torch.jit.script(model)
            how = "scripted"
        except Exception as exc:  # scripting rejects many valid modules; tracing is the fallback
            log.info("TorchScript scripting failed (%s); tracing instead", exc)
            example = example_waveforms(channels, window, batch=2, device=_device_of(model))
            compiled = torch.jit.trace(model, (example,), check_trace=False)
            how = "traced"
        log.info("TorchScript model %s", how)
        buffer = io.BytesIO()
        extra = {TORCHSCRIPT_METADATA_FILE: _json_text(dict(metadata or {}))}
        torch.jit.save(compiled, buffer, _extra_files=extra)
    return atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# verification


def _eager_outputs(model: nn.Module, waveform: Tensor) -> tuple[np.ndarray, np.ndarray]:
    with _eval_mode(model), torch.no_grad():
        logits, probs = model(waveform.to(_device_of(model)))
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


def _verify(
    path: Path,
    run: Any,
    model: nn.Module,
    channels: int,
    window: int,
    batch_sizes: Sequence[int],
    atol: float,
    seed: int,
    runtime: str,
) -> dict[str, Any]:
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
    if inputs != [INPUT_NAME] or outputs[:2] != list(OUTPUT_NAMES):
        raise ExportVerificationError(
            f"{path}: expected input {[INPUT_NAME]} and outputs {list(OUTPUT_NAMES)}, "
            f"found {inputs} and {outputs}"
        )

    def run(waveform: Tensor) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: waveform.numpy()})
        return np.asarray(logits), np.asarray(probs)

    runtime = f"onnxruntime {ort.__version__}"
    return _verify(path, run, model, channels, window, batch_sizes, atol, seed, runtime)


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

    def run(waveform: Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits, probs = loaded(waveform)
        return logits.float().numpy(), probs.float().numpy()

    runtime = f"torch.jit {torch.__version__.split('+')[0]}"
    return _verify(path, run, model, channels, window, batch_sizes, atol, seed, runtime)


# --------------------------------------------------------------------------------------------
# the export folder


def _cpu_float_copy(model: nn.Module) -> nn.Module:
    # Exports must not depend on the training device or precision, and must not change the
    # caller's module (it may be the live LightningModule's network).
    return copy.deepcopy(model).cpu().float().eval()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"path": str(path), "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def _export_verified(final: Path, export: Any, verify: Any) -> dict[str, Any]:
    """Export to a staging file, verify it, and only then rename it over ``final``."""
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
    return entry


def preprocessing_spec(model: DeployableModel, metadata: dict[str, str]) -> dict[str, Any]:
    """Describe the exported model's input for deployment code (written as preprocessing.json).

    Args:
        model: the exported module (its front end's ``mean``/``std`` buffers are included).
        metadata: the model's metadata (from :func:`build_metadata`).

    Returns:
        A JSON-ready dict: input name, shape and layout, channels, sample rate, window, hop,
        front-end settings and normalisation statistics.
    """
    meta = parse_metadata(metadata)
    spec: dict[str, Any] = {
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", len(meta["channels"]), meta["window_length"]],
            "dtype": "float32",
            "layout": "(batch, channels, window): raw samples, channels in the order below",
        },
        "outputs": list(OUTPUT_NAMES),
        "channels": meta["channels"],
        "sample_rate": meta["sample_rate"],
        "window_length": meta["window_length"],
        "hop": meta["hop"],
        "frontend": meta["frontend"],
        "damage_lightning_version": meta["version"],
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
    channels: int,
    window: int,
    metadata: dict[str, str],
) -> dict[str, Any]:
    """Write and verify the whole export folder: ONNX, TorchScript, labels and preprocessing.

    The model is exported from a CPU float32 copy (the caller's module is left untouched). Each
    model file is verified before it replaces an earlier one, so a failed verification raises and
    leaves the folder as it was.

    Args:
        model: the module to export.
        out_dir: the export folder (created if needed).
        channels: input channels; must equal the number of channel names in ``metadata``.
        window: window length; must equal ``metadata["window_length"]``.
        metadata: from :func:`build_metadata`; the ONNX file carries it as metadata props and the
            TorchScript file as ``metadata.json``.

    Returns:
        ``{"onnx": {"path", "sha256", "size_bytes", "export_time_s", "verification"},
        "torchscript": {...same...}, "labels": {"path", "sha256", "size_bytes"},
        "preprocessing": {...}}`` with paths under ``out_dir`` as given.

    Raises:
        ExportVerificationError: when an export does not reproduce the eager model.
        ValueError: when ``channels``/``window`` disagree with the metadata.
    """
    out_dir = Path(out_dir)
    meta = parse_metadata(metadata)
    if len(meta["channels"]) != channels or meta["window_length"] != window:
        raise ValueError(
            f"export of {channels} channels x {window} samples does not match the metadata "
            f"({len(meta['channels'])} channels x {meta['window_length']} samples)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu_model = _cpu_float_copy(model)
    result: dict[str, Any] = {}
    result["onnx"] = _export_verified(
        out_dir / ONNX_FILE,
        lambda p: export_onnx(cpu_model, p, channels, window, metadata),
        lambda p: verify_onnx(p, cpu_model, channels, window),
    )
    result["torchscript"] = _export_verified(
        out_dir / TORCHSCRIPT_FILE,
        lambda p: export_torchscript(cpu_model, p, channels, window, metadata),
        lambda p: verify_torchscript(p, cpu_model, channels, window),
    )
    labels = atomic_write_json(out_dir / LABELS_FILE, meta["class_names"])
    result["labels"] = _file_entry(labels)
    spec = preprocessing_spec(cpu_model, metadata)
    result["preprocessing"] = _file_entry(atomic_write_json(out_dir / PREPROCESSING_FILE, spec))
    return result


# --------------------------------------------------------------------------------------------
# checkpoints


def _bad_ckpt(path: Path, reason: str) -> DataValidationError:
    return DataValidationError([Problem(str(path), "", reason)])


def _model_class(path: Path, class_path: Any) -> type:
    """Import the model class named in a checkpoint, accepting only DamageClassifier subclasses.

    The class path comes from a file, so it is not trusted: it must name an importable class
    that subclasses ``DamageClassifier``; anything else is refused before it is called.
    """
    from damage_lightning.models.base import DamageClassifier

    if not isinstance(class_path, str) or "." not in class_path:
        raise _bad_ckpt(path, f"model_class_path {class_path!r} is not 'package.module.Class'")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _bad_ckpt(path, f"cannot import the model's module {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, DamageClassifier)):
        raise _bad_ckpt(
            path,
            f"model_class_path {class_path!r} is not a DamageClassifier subclass; refusing to "
            "build it",
        )
    return cls


def load_from_checkpoint(
    ckpt_path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[DamageClassifier, nn.Module, dict[str, Any]]:
    """Rebuild a trained model and its front end from a checkpoint alone (e.g. in a notebook).

    The checkpoint is read with ``torch.load(..., weights_only=True)``: it may hold only tensors
    and plain values, never pickled objects, so loading a file cannot run code from it. The
    model class named in it must subclass ``DamageClassifier``; it is built from the saved
    hyperparameters and its weights are loaded strictly.

    Args:
        ckpt_path: a checkpoint written by a damage_lightning run (``checkpoints/best.ckpt``).
        map_location: device for the model and front end.

    Returns:
        ``(model, frontend, info)``: the model and ``SpectrogramFrontend`` (with its
        normalisation statistics) in eval mode, and ``info`` with ``class_names``, ``channels``,
        ``sample_rate``, ``window``, ``hop``, ``model_class_path`` and ``frontend_settings``.

    Raises:
        DataValidationError: when the file is missing, unsafe or not a damage_lightning
            checkpoint, or its weights do not fit the model it names.
    """
    from damage_lightning.data.frontend import SpectrogramFrontend

    path = Path(ckpt_path)
    if not path.is_file():
        raise _bad_ckpt(path, "checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise _bad_ckpt(
            path,
            "cannot be read as a weights-only checkpoint (it is damaged, or it holds pickled "
            f"Python objects that are not loaded for safety): {exc}",
        ) from exc
    section = ckpt.get("damage_lightning") if isinstance(ckpt, dict) else None
    if not isinstance(section, dict):
        raise _bad_ckpt(
            path, "no 'damage_lightning' section: not a checkpoint written by damage_lightning"
        )
    needed = ("model_class_path", "frontend_settings", "frontend_state", "class_names")
    needed += ("channels", "sample_rate", "window", "hop")
    missing = [k for k in needed if k not in section]
    if missing or "state_dict" not in ckpt:
        raise _bad_ckpt(path, f"incomplete checkpoint, missing {missing or ['state_dict']}")

    cls = _model_class(path, section["model_class_path"])
    # LightningCLI adds bookkeeping entries ("_class_path", "_instantiator") that are not
    # constructor arguments.
    hparams = {
        k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")
    }
    try:
        model = cls(**hparams)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise _bad_ckpt(path, f"the weights do not fit {cls.__name__}: {exc}") from exc

    settings = dict(section["frontend_settings"])
    try:
        frontend = SpectrogramFrontend(**settings)
        # Derived buffers (windows, filter banks) come from the settings; the checkpoint holds
        # the fitted statistics, and nothing it holds may go unused.
        result = frontend.load_state_dict(dict(section["frontend_state"]), strict=False)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise _bad_ckpt(path, f"cannot rebuild the front end: {exc}") from exc
    if result.unexpected_keys:
        raise _bad_ckpt(path, f"unknown front-end state {sorted(result.unexpected_keys)}")

    model = model.to(map_location).eval()
    frontend = frontend.to(map_location).eval()
    info = {
        "class_names": list(section["class_names"]),
        "channels": list(section["channels"]),
        "sample_rate": float(section["sample_rate"]),
        "window": int(section["window"]),
        "hop": int(section["hop"]),
        "model_class_path": section["model_class_path"],
        "frontend_settings": settings,
    }
    return model, frontend, info


def deployable_from_checkpoint(
    ckpt_path: str | os.PathLike,
) -> tuple[DeployableModel, dict[str, Any]]:
    """Build the deployable (front end + network) module from a checkpoint, on CPU.

    Args:
        ckpt_path: a checkpoint written by a damage_lightning run.

    Returns:
        ``(deployable, info)``: ``info`` is :func:`load_from_checkpoint`'s plus ``metadata``
        (from :func:`build_metadata`), ready for :func:`export_all`.
    """
    model, frontend, info = load_from_checkpoint(ckpt_path, map_location="cpu")
    settings_fn = getattr(frontend, "settings", None)
    settings = settings_fn() if callable(settings_fn) else info["frontend_settings"]
    info = dict(info)
    info["metadata"] = build_metadata(
        info["class_names"],
        info["channels"],
        info["sample_rate"],
        info["window"],
        info["hop"],
        settings,
        extra={"model_class_path": info["model_class_path"]},
    )
    return DeployableModel(frontend, model.net).eval(), info
