"""Predict damage classes for CSV recordings with an exported ONNX model, without PyTorch.

Standalone on purpose: it needs only numpy, pandas and onnxruntime (what a gateway carries) and
reads everything else (channels, window length, hop, sample rate, class names) from the model's
metadata. Windows are cut exactly as the training pipeline's prediction does (starts 0, hop,
2*hop, ... while start + window <= samples); the per-recording probability is the mean over its
windows.

    python scripts/onnx_predict.py export/model.onnx DATA_DIR_OR_CSV [--output preds.csv]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

TIME_COLUMNS = ("time", "t")
# The suffixes the training pipeline reads (case-insensitive); pandas decompresses .gz itself.
CSV_SUFFIXES = (".csv", ".csv.gz")
# Relative difference in sample rate that a time column may show before the file is refused.
SAMPLE_RATE_TOLERANCE = 0.01
MAX_PROBLEMS_SHOWN = 5


class InputError(Exception):
    """Bad input: reported as one line, exit code 2."""


@dataclass(frozen=True)
class ModelInfo:
    """What the script needs from the model's metadata."""

    class_names: list[str]
    channels: list[str]
    sample_rate: float
    window: int
    hop: int
    input_name: str


def load_model(path: Path) -> tuple[ort.InferenceSession, ModelInfo]:
    """Open the model and decode its metadata."""
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"{path}: onnxruntime cannot load the model ({exc})") from exc
    meta = session.get_modelmeta().custom_metadata_map
    keys = ("class_names", "channels", "sample_rate", "window_length", "hop")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise InputError(f"{path}: model metadata lacks {missing}; export it with damage_lightning")
    try:
        info = ModelInfo(
            class_names=[str(c) for c in json.loads(meta["class_names"])],
            channels=[str(c) for c in json.loads(meta["channels"])],
            sample_rate=float(meta["sample_rate"]),
            window=int(meta["window_length"]),
            hop=int(meta["hop"]),
            input_name=session.get_inputs()[0].name,
        )
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: malformed model metadata ({exc})") from exc
    outputs = [o.name for o in session.get_outputs()]
    if "probabilities" not in outputs:
        raise InputError(f"{path}: the model has no 'probabilities' output (outputs: {outputs})")
    return session, info


def find_csvs(data: Path) -> tuple[Path, list[Path]]:
    """Return (root for relative paths, sorted CSV files): one file, or all under a folder.

    Like the training pipeline, ``*.csv`` and ``*.csv.gz`` count (any case); ``manifest.csv`` and
    hidden files and folders do not.
    """
    if data.is_file():
        return data.parent, [data]
    if not data.is_dir():
        raise InputError(f"{data}: no such file or folder")
    files = sorted(
        p
        for p in data.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(CSV_SUFFIXES)
        and p.name.lower() != "manifest.csv"
        # Hidden files and folders hold caches and half-written temporaries, not recordings.
        and not any(part.startswith(".") for part in p.relative_to(data).parts)
    )
    if not files:
        raise InputError(f"{data}: no CSV recordings found")
    return data, files


def _line(index: int) -> str:
    # Line numbers as an editor shows them: the header is line 1.
    return f"line {int(index) + 2}"


def read_recording(path: Path, info: ModelInfo) -> np.ndarray:
    """Read one CSV into float32 ``(channels, samples)``, in the model's channel order."""
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in info.channels if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: missing channel column(s) {missing}; the model needs {info.channels}"
        )
    columns = []
    for name in info.channels:
        raw = frame[name]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna()
        if bad.any():
            row = bad.to_numpy().argmax()
            raise InputError(
                f"{path} ({_line(row)}, column '{name}'): non-numeric value {raw.iloc[row]!r}"
            )
        finite = np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
        if not finite.all():
            row = (~finite).argmax()
            raise InputError(f"{path} ({_line(row)}, column '{name}'): missing, NaN or inf value")
        columns.append(values.to_numpy(dtype=np.float64))
    _check_sample_rate(path, frame, info)
    waveform = np.stack(columns).astype(np.float32)
    if waveform.shape[1] < info.window:
        raise InputError(
            f"{path}: {waveform.shape[1]} samples, shorter than one window of {info.window}"
        )
    return waveform


def _check_sample_rate(path: Path, frame: pd.DataFrame, info: ModelInfo) -> None:
    # The model only understands its own sample rate; a different one gives confident nonsense.
    column = next((c for c in frame.columns if c.lower() in TIME_COLUMNS), None)
    if column is None or len(frame) < 2:
        return
    times = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    steps = np.diff(times)
    steps = steps[np.isfinite(steps)]
    if steps.size == 0 or np.median(steps) <= 0:
        return
    rate = 1.0 / float(np.median(steps))
    if abs(rate - info.sample_rate) > SAMPLE_RATE_TOLERANCE * info.sample_rate:
        raise InputError(
            f"{path} (column '{column}'): sampled at {rate:.6g} Hz but the model expects "
            f"{info.sample_rate:.6g} Hz; resample the recording first"
        )


def window_view(waveform: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Windows ``(n_windows, channels, window)`` starting at 0, hop, 2*hop, ... (a view)."""
    view = np.lib.stride_tricks.sliding_window_view(waveform, window, axis=1)[:, ::hop]
    return view.transpose(1, 0, 2)


def predict_recording(
    session: ort.InferenceSession, info: ModelInfo, waveform: np.ndarray, hop: int, batch: int
) -> np.ndarray:
    """Window probabilities ``(n_windows, n_classes)`` for one recording."""
    windows = window_view(waveform, info.window, hop)
    probs = []
    for start in range(0, len(windows), batch):
        chunk = np.ascontiguousarray(windows[start : start + batch], dtype=np.float32)
        (p,) = session.run(["probabilities"], {info.input_name: chunk})
        probs.append(np.asarray(p, dtype=np.float64))
    return np.concatenate(probs)


def predict(model: Path, data: Path, hop: int | None = None, batch_size: int = 64) -> pd.DataFrame:
    """Per-recording predictions: ``path``, ``predicted_label``, ``n_windows``, ``p_<class>``."""
    session, info = load_model(model)
    hop = info.hop if hop is None else hop
    if hop <= 0 or batch_size <= 0:
        raise InputError("--hop and --batch-size must be positive integers")
    root, files = find_csvs(data)
    rows, problems = [], []
    for path in files:
        try:
            waveform = read_recording(path, info)
        except InputError as exc:
            problems.append(str(exc))
            continue
        if problems:
            # Keep validating so every bad file is named, but skip the inference.
            continue
        probs = predict_recording(session, info, waveform, hop, batch_size)
        mean = probs.mean(axis=0)
        row = {
            "path": path.relative_to(root).as_posix(),
            "predicted_label": info.class_names[int(np.argmax(mean))],
            "n_windows": len(probs),
        }
        row.update({f"p_{name}": float(p) for name, p in zip(info.class_names, mean, strict=True)})
        rows.append(row)
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        raise InputError(shown + (f"; and {more} more bad file(s)" if more > 0 else ""))
    columns = ["path", "predicted_label", "n_windows", *(f"p_{c}" for c in info.class_names)]
    return pd.DataFrame(rows, columns=columns).sort_values("path", kind="stable")


def to_csv_text(frame: pd.DataFrame) -> str:
    """The predictions as CSV text (probabilities with 8 decimals)."""
    return frame.to_csv(index=False, float_format="%.8f", lineterminator="\n")


def write_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="exported model.onnx")
    parser.add_argument("data", type=Path, help="a CSV recording, or a folder searched for *.csv")
    parser.add_argument("--output", type=Path, help="write predictions here (default: stdout)")
    parser.add_argument("--hop", type=int, help="step between windows (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per inference call")
    args = parser.parse_args(argv)
    try:
        frame = predict(args.model, args.data, hop=args.hop, batch_size=args.batch_size)
        text = to_csv_text(frame)
        if args.output is None:
            sys.stdout.write(text)
        else:
            write_atomic(args.output, text)
    except (InputError, OSError) as exc:
        message = " ".join(str(exc).split("\n"))
        print(f"onnx_predict: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
