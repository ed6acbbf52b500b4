"""What every benchmark shares: the measured input, the sizes of a run and the record writer.

The input is 2 channels x 4096 samples at 12 kHz, turned into a 64-band log-mel of 65 frames;
the models and windows never shrink with the size of a run except at ``tiny``, which only tests
the code paths. Targets live beside the measurement they judge (``ingest.py``, ``training.py``,
``vs_keras.py``, ``inference.py``).
"""

from __future__ import annotations

import json
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Children (an ingest phase, the Keras worker) run the entry point again in a fresh interpreter.
ENTRY_POINT = REPO / "scripts" / "benchmark.py"
CWRU_DIR = REPO.parent / "shared" / "data" / "cwru_0hp_10class"

# The measured input: 2 channels x 4096 samples at 12 kHz -> 64-band log-mel, 65 frames.
SAMPLE_RATE = 12000.0
CHANNELS = ("sensor_a", "sensor_b")
WINDOW = 4096
FRONTEND = {
    "spectrogram": "mel",
    "n_fft": 256,
    "hop_length": 64,
    "n_mels": 64,
    "f_min": 0.0,
    "f_max": 6000.0,
}


@dataclass(frozen=True)
class Size:
    """How much work one configuration does; the models and windows never shrink except tiny.

    Args:
        name: ``tiny``, ``quick`` or ``full``.
        ingest_mb: size of the generated CSV dataset in MB (CSV bytes).
        ingest_repeats: cold and warm runs each (the best one is the figure).
        train_windows: training windows per epoch the window hop aims at.
        epochs: epochs per training run (every one measured: a warm-up pair runs first).
        pairs: measured pairs of interleaved runs, ours then the plain loop.
        batch_size: training batch size.
        frontend_batch: front-end batch size.
        frontend_seconds: how long the front end is timed.
        cnn_widths: CNN widths (4 blocks).
        resnet_stem: ResNet stem width.
        resnet_widths: ResNet stage widths.
        resnet_blocks: residual blocks per stage (8 in all).
        latency_iters: batch-1 inference calls timed per runtime.
        throughput_iters: batch-``throughput_batch`` calls timed per runtime.
        throughput_batch: the throughput batch size.
        e2e: run the default ``fit`` end to end (it takes 15-30 minutes on 2 CPU cores, so
            ``--quick`` on the CPU leaves it out unless ``--e2e`` is given).
        e2e_overrides: CLI options appended to the end-to-end run (only tiny shrinks it, onto
            the generated dataset: ``{data_dir}``).
        gateway_seconds: length of the recording the gateway section predicts (an hour).
    """

    name: str
    ingest_mb: float
    ingest_repeats: int
    train_windows: int
    epochs: int
    batch_size: int
    frontend_batch: int
    frontend_seconds: float
    cnn_widths: tuple[int, ...] = (32, 64, 128, 256)
    resnet_stem: int = 32
    resnet_widths: tuple[int, ...] = (32, 64, 128, 256)
    resnet_blocks: tuple[int, ...] = (2, 2, 2, 2)
    latency_iters: int = 200
    throughput_iters: int = 5
    throughput_batch: int = 256
    e2e_overrides: tuple[str, ...] = field(default_factory=tuple)
    e2e: bool = True
    gateway_seconds: float = 3600.0
    pairs: int = 5


def size_for(name: str, device: str) -> Size:
    """The work of a named size on a device (``tiny`` is the same everywhere).

    Args:
        name: ``tiny``, ``quick`` or ``full``.
        device: ``cpu`` or ``cuda``.
    """
    if name == "tiny":
        return Size(
            name="tiny",
            ingest_mb=3.0,
            ingest_repeats=1,
            train_windows=16,
            epochs=1,
            pairs=2,
            batch_size=16,
            frontend_batch=16,
            frontend_seconds=0.2,
            cnn_widths=(4, 8, 8, 8),
            resnet_stem=4,
            resnet_widths=(4, 8, 8, 8),
            resnet_blocks=(2, 2, 2, 2),
            latency_iters=5,
            throughput_iters=1,
            throughput_batch=8,
            gateway_seconds=60.0,
            e2e_overrides=(
                "--trainer.max_epochs", "1",
                "--data.data_dir", "{data_dir}", "--data.sample_rate", str(SAMPLE_RATE),
                "--data.window", "256", "--data.hop", "1024",
                "--data.n_fft", "64", "--data.hop_length", "16", "--data.f_max", "null",
                "--model.init_args.widths", "[4, 8]",
            ),
        )  # fmt: skip
    if device == "cuda":
        return Size(
            name=name,
            ingest_mb=1000.0,
            ingest_repeats=1 if name == "quick" else 2,
            train_windows=32768,
            epochs=2,
            batch_size=1024,
            frontend_batch=1024,
            frontend_seconds=2.0,
        )
    if name == "quick":
        return Size(
            name="quick",
            ingest_mb=100.0,
            ingest_repeats=2,
            train_windows=384,
            epochs=1,
            batch_size=64,
            frontend_batch=256,
            frontend_seconds=3.0,
            latency_iters=200,
            throughput_iters=3,
            e2e=False,
        )
    return Size(
        name="full",
        ingest_mb=1000.0,
        ingest_repeats=2,
        train_windows=2048,
        epochs=2,
        batch_size=64,
        frontend_batch=256,
        frontend_seconds=5.0,
        latency_iters=500,
        throughput_iters=5,
    )


# ------------------------------------------------------------------------------------ output
class Recorder:
    """Writes one JSON object per line to stdout (kept aside from library prints) and a file.

    Args:
        stdout: the stream that receives the JSON lines.
        output: file that receives them as well (appended), or ``None``.
        device: the device name written into records that do not give one.
    """

    def __init__(self, stdout: Any, output: Path | None, device: str):
        self.stdout = stdout
        self.device = device
        self.records: list[dict[str, Any]] = []
        self._file = None
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            self._file = output.open("w", encoding="utf-8")

    def emit(
        self,
        name: str,
        value: Any,
        unit: str,
        params: dict[str, Any],
        target: float | None = None,
        met: bool | None = None,
        device: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Write one record; ``met`` is computed by the caller (``None`` without a target)."""
        record = {
            "name": name,
            "device": device or self.device,
            "value": value,
            "unit": unit,
            "target": target,
            "met": met,
            **extra,
            "params": params,
            "peak_rss_mb_process": round(peak_rss_mb(), 1),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        }
        line = json.dumps(record, default=str)
        print(line, file=self.stdout, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        self.records.append(record)
        return record

    def skipped(self, name: str, reason: str, params: dict[str, Any] | None = None) -> None:
        """Record a measurement that did not run and why."""
        self.emit(name, None, "", params or {}, skipped=True, reason=reason)

    def close(self) -> None:
        """Close the output file."""
        if self._file is not None:
            self._file.close()


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``ru_maxrss``, in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident memory of one process (``VmHWM``), or ``None`` where /proc lacks it.

    Unlike ``ru_maxrss``, which a child inherits from the parent it was forked from (a child of
    a process holding torch starts at that process's size), ``VmHWM`` starts afresh at ``exec``.
    """
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def at_least(value: float | None, target: float) -> bool | None:
    """Whether ``value`` meets a higher-is-better ``target`` (``None`` without a value)."""
    return None if value is None else bool(value >= target)


def rounded(value: float, digits: int = 4) -> float:
    """``value`` rounded for a record, as a plain float."""
    return float(round(value, digits))


def sync(device: Any) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU), before a time stamp."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
