"""Measure damage_lightning's speed against its targets: CSV ingest, front end, training, inference.

One command, one JSON object per measurement on stdout (and in ``--output``). Every record has
``name``, ``device``, ``value``, ``unit``, ``target``, ``met`` and ``params``. Ratios are measured
in the same process and run, so they compare like with like. Figures and their meaning:
``docs/benchmarks.md``.

    python scripts/benchmark.py --quick --output cpu.jsonl        # CPU, a few minutes
    python scripts/benchmark.py --quick --vs-keras                # and the Keras stack we replace
    python scripts/benchmark.py --device cuda --output gpu.jsonl  # GPU, under 6 minutes
    python scripts/benchmark.py --device cpu --size tiny          # every code path, in seconds

The Keras comparison runs in a subprocess of ``--keras-python`` (an interpreter with
``tensorflow``; default: this one when it can import tensorflow), so torch and TensorFlow never
share a process. This file imports only the standard library at the top for that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CWRU_DIR = REPO.parent / "shared" / "data" / "cwru_0hp_10class"
DEFAULT_CONFIG = REPO / "configs" / "cnn.yaml"
SECTIONS = ("ingest", "frontend", "train", "keras", "inference", "e2e")

# Targets from issue 7.
TARGET_RATIO_GPU = 0.90
TARGET_RATIO_CPU = 0.95
TARGET_RATIO_COMPILED = 0.90
TARGET_INGEST_COLD_MBS = 250.0
TARGET_INGEST_WARM_MBS = 1000.0
TARGET_KERAS_RATIO = {"cnn": 1.2, "resnet": 1.0}

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
# The generated dataset: 4 classes x 8 recordings, split by recording like a user's data
# (about 6 train, 1 validation and 1 test recording per class).
GEN_CLASSES = 4
GEN_RECORDINGS_PER_CLASS = 8
# CSV bytes per row of the generated data (two float32 columns, six decimals, about unit scale).
ROW_BYTES = 20.0


@dataclass(frozen=True)
class Size:
    """How much work one configuration does; the models and windows never shrink except tiny.

    Args:
        name: ``tiny``, ``quick`` or ``full``.
        ingest_mb: size of the generated CSV dataset in MB (CSV bytes).
        ingest_repeats: cold and warm runs each (the best one is the figure).
        train_windows: training windows per epoch the window hop aims at.
        epochs: epochs per training run, the first being the excluded warm-up.
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
            epochs=2,
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
            epochs=4,
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
            epochs=3,
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
        epochs=4,
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
            "peak_rss_mb_process": round(_peak_rss_mb(), 1),
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


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _vm_hwm_mb(pid: int | str = "self") -> float | None:
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


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else bool(value >= target)


def _r(value: float, digits: int = 4) -> float:
    return float(round(value, digits))


# -------------------------------------------------------------------------- generated data
def generate_dataset(root: Path, total_mb: float, seed: int = 0) -> Path:
    """Write (once) a folder-per-class CSV dataset of about ``total_mb`` MB of 2-channel vibration.

    Each class has its own resonances; every recording adds noise, a slow amplitude modulation
    and a second channel that is a delayed, scaled copy plus its own noise. Values are float32
    with six decimals (like real accelerometer exports). A ``complete.json`` marker makes the
    folder reusable; an incomplete folder is rewritten.

    Args:
        root: the dataset folder (``root/<class>/<recording>.csv``).
        total_mb: target CSV size in MB (1e6 bytes).
        seed: seed of the signals.

    Returns:
        ``root``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    marker = root / "complete.json"
    spec = {"total_mb": total_mb, "seed": seed, "classes": GEN_CLASSES,
            "recordings_per_class": GEN_RECORDINGS_PER_CLASS, "channels": list(CHANNELS),
            "sample_rate": SAMPLE_RATE, "version": 1}  # fmt: skip
    if marker.is_file():
        try:
            if json.loads(marker.read_text())["spec"] == spec:
                return root
        except (ValueError, KeyError):
            pass
    if root.exists():
        shutil.rmtree(root)
    n_files = GEN_CLASSES * GEN_RECORDINGS_PER_CLASS
    # About 19 bytes per row for two float32 columns with six decimals.
    rows = max(WINDOW * 4, int(total_mb * 1e6 / n_files / ROW_BYTES))

    def write(i: int) -> None:
        label, rec = divmod(i, GEN_RECORDINGS_PER_CLASS)
        rng = np.random.default_rng([seed, i])
        t = np.arange(rows, dtype=np.float64) / SAMPLE_RATE
        x = np.zeros(rows)
        for k in range(3):
            f = 300.0 * (label + 1) * (k + 1) + rng.uniform(-20, 20)
            x += rng.uniform(0.2, 1.0) / (k + 1) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
        x *= 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
        x += 0.3 * rng.standard_normal(rows)
        y = 0.6 * np.roll(x, 7) + 0.2 * rng.standard_normal(rows)
        table = pa.table(
            {
                CHANNELS[0]: np.round(x, 6).astype(np.float32),
                CHANNELS[1]: np.round(y, 6).astype(np.float32),
            }
        )
        out = root / f"class_{label}" / f"rec_{rec:02d}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".csv.tmp")
        with tmp.open("wb") as fh:
            fh.write((",".join(CHANNELS) + "\n").encode())
            pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False))
        tmp.replace(out)

    from concurrent.futures import ThreadPoolExecutor

    # pyarrow's writer releases the GIL, so files are written in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(write, range(n_files)))
    marker.write_text(json.dumps({"spec": spec}))
    return root


def csv_bytes(folder: Path) -> int:
    """Bytes of all CSV files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*.csv"))


# ---------------------------------------------------------------------------------- ingest
def _ingest_child(args: argparse.Namespace) -> int:
    """One ingest phase in this fresh process: prints one JSON line with time and peak RSS."""
    sys.path.insert(0, str(REPO))
    from damage_lightning.data import csv_io

    channels = args.ingest_channels.split(",") if args.ingest_channels else None
    wall, cpu = time.perf_counter(), time.process_time()
    ds = csv_io.load_dataset(
        args.ingest_child,
        channels=channels,
        sample_rate=args.ingest_rate,
        cache_dir=args.ingest_cache or None,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    samples = int(sum(w.shape[1] for w in ds.waveforms))
    print(
        json.dumps(
            {
                "seconds": wall,
                "cpu_seconds": cpu,
                "peak_rss_mb": _vm_hwm_mb() or _peak_rss_mb(),
                "ru_maxrss_mb": _peak_rss_mb(),
                "files": len(ds.waveforms),
                "samples_per_channel": samples,
            }
        ),
        flush=True,
    )
    return 0


def _run_ingest_phase(folder: Path, cache: Path | None, channels: list[str] | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ingest-child", str(folder),
           "--ingest-rate", str(SAMPLE_RATE)]  # fmt: skip
    if cache is not None:
        cmd += ["--ingest-cache", str(cache)]
    if channels:
        cmd += ["--ingest-channels", ",".join(channels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest of {folder} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_ingest(rec: Recorder, folder: Path, label: str, cache_root: Path, repeats: int,
                 channels: list[str] | None) -> Path:  # fmt: skip
    """Cold (empty cache) and warm (filled cache) ingest, each phase in a fresh process.

    Returns the filled cache folder (``<cache_root>/waveforms``), for the DataModule to reuse.
    """
    nbytes = csv_bytes(folder)
    warm_cache = cache_root / "waveforms"
    params = {"dataset": label, "path": str(folder), "csv_mb": _r(nbytes / 1e6, 2),
              "files": len(list(folder.rglob("*.csv"))), "sample_rate": SAMPLE_RATE,
              "channels": channels, "repeats": repeats, "fresh_process_per_phase": True,
              "csv_in_os_page_cache": "likely (files were just written or read)"}  # fmt: skip
    cold_runs, warm_runs = [], []
    for i in range(repeats):
        if i == repeats - 1:
            # The last cold run fills the cache that the warm runs and the DataModule read.
            shutil.rmtree(warm_cache, ignore_errors=True)
            cold_runs.append(_run_ingest_phase(folder, warm_cache, channels))
        else:
            with tempfile.TemporaryDirectory(dir=cache_root.parent) as tmp:
                cold_runs.append(_run_ingest_phase(folder, Path(tmp) / "waveforms", channels))
    for _ in range(repeats):
        warm_runs.append(_run_ingest_phase(folder, warm_cache, channels))
    for phase, runs, target in (
        ("cold", cold_runs, TARGET_INGEST_COLD_MBS),
        ("warm", warm_runs, TARGET_INGEST_WARM_MBS),
    ):
        best = min(runs, key=lambda r: r["seconds"])
        mbs = nbytes / best["seconds"] / 1e6
        rec.emit(
            f"ingest_{phase}", _r(mbs, 1), "MB/s", params, target=target,
            met=_at_least(mbs, target), device="cpu", seconds=_r(best["seconds"]),
            cpu_seconds=_r(best["cpu_seconds"]), peak_rss_mb=_r(best["peak_rss_mb"], 1),
            ru_maxrss_mb=_r(best["ru_maxrss_mb"], 1),
            all_mb_per_s=[_r(nbytes / r["seconds"] / 1e6, 1) for r in runs],
            what=("load_dataset with an empty cache folder: parse, validate, write the cache"
                  if phase == "cold" else "load_dataset with the cache filled: read the cache"),
        )  # fmt: skip
    return warm_cache


# ----------------------------------------------------------------------------- front end
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_frontend(n_channels: int = len(CHANNELS)) -> Any:
    """The measured front end: 2 channels x 4096 samples at 12 kHz -> 64-band log-mel."""
    from damage_lightning.data.frontend import SpectrogramFrontend

    fe = dict(FRONTEND)
    kind = fe.pop("spectrogram")
    return SpectrogramFrontend(sample_rate=SAMPLE_RATE, n_channels=n_channels, kind=kind, **fe)


def bench_frontend(rec: Recorder, device: Any, size: Size) -> None:
    """Spectrogram windows per second of the front end alone (no gradient)."""
    import torch

    frontend = make_frontend().to(device)
    x = torch.randn(size.frontend_batch, len(CHANNELS), WINDOW, device=device)
    with torch.inference_mode():
        for _ in range(3):
            frontend(x)
        _sync(device)
        n, start = 0, time.perf_counter()
        while True:
            frontend(x)
            n += 1
            if n % 4 == 0:
                _sync(device)
                if time.perf_counter() - start >= size.frontend_seconds:
                    break
        _sync(device)
        elapsed = time.perf_counter() - start
    params = {"batch": size.frontend_batch, "channels": len(CHANNELS), "window": WINDOW,
              "sample_rate": SAMPLE_RATE, **FRONTEND, "output_shape": list(frontend(x[:1]).shape),
              "calls": n, "threads": torch.get_num_threads()}  # fmt: skip
    rec.emit("frontend_windows_per_s", _r(n * size.frontend_batch / elapsed, 1), "windows/s",
             params)  # fmt: skip


# ------------------------------------------------------------------------------ training
@dataclass
class TrainSetup:
    """What ours, the plain loop and Keras share: data, precision, batch, epochs."""

    data_dir: Path
    cache_dir: Path
    hop: int
    device: Any
    precision: str
    channels_last: dict[str, bool]
    size: Size
    run_root: Path
    windows: dict[str, Any] = field(default_factory=dict)
    frontend_state: dict[str, Any] = field(default_factory=dict)
    datamodule: Any = None
    format_probe: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0
    input_shape: tuple[int, int, int] = (0, 0, 0)

    def dm_kwargs(self) -> dict[str, Any]:
        """The DamageDataModule's arguments."""
        return {"data_dir": str(self.data_dir), "channels": list(CHANNELS),
                "sample_rate": SAMPLE_RATE, "window": WINDOW, "hop": self.hop,
                "batch_size": self.size.batch_size, "cache_dir": str(self.cache_dir),
                "device_data": "auto", **FRONTEND}  # fmt: skip

    compile_backend: str = "inductor"

    def params(self, kind: str, compiled: bool) -> dict[str, Any]:
        """The exact parameters of one training comparison."""
        n = {s: int(v[0].shape[0]) for s, v in self.windows.items()}
        return {"model": kind, **model_params(kind, self.size), "compile": compiled,
                "compile_backend": self.compile_backend if compiled else None,
                "batch_size": self.size.batch_size, "precision": self.precision,
                "channels_last": self.channels_last[kind],
                "memory_format_probe": self.format_probe.get(kind),
                "epochs": self.size.epochs,
                "measured_epochs": self.size.epochs - 1, "train_windows_per_epoch": n["train"],
                "val_windows_per_epoch": n["val"], "window": WINDOW, "hop": self.hop,
                "channels": len(CHANNELS), "sample_rate": SAMPLE_RATE, **FRONTEND,
                "input_shape": list(self.input_shape), "dataset": str(self.data_dir),
                "epoch": "train + validation, as Trainer.fit does"}  # fmt: skip


def model_params(kind: str, size: Size) -> dict[str, Any]:
    """Architecture arguments of the measured CNN or ResNet."""
    if kind == "cnn":
        return {"widths": list(size.cnn_widths), "dropout": 0.3}
    return {"stem_width": size.resnet_stem, "widths": list(size.resnet_widths),
            "blocks_per_stage": list(size.resnet_blocks), "dropout": 0.2}  # fmt: skip


def make_model(setup: TrainSetup, kind: str, compiled: bool) -> Any:
    """The LightningModule of ``kind`` with the optimiser settings of configs/cnn.yaml."""
    from damage_lightning.models import CNNClassifier, ResNetClassifier

    cls = CNNClassifier if kind == "cnn" else ResNetClassifier
    return cls(
        num_classes=setup.num_classes,
        in_channels=len(CHANNELS),
        input_shape=setup.input_shape,
        optimizer="adamw",
        lr=0.002,
        weight_decay=1e-4,
        channels_last=setup.channels_last[kind],
        compile=compiled,
        **model_params(kind, setup.size),
    )


def prepare_training(setup: TrainSetup) -> None:
    """Read the windows the DataModule trains on into memory (on the device) for the plain loop."""
    import numpy as np
    import torch
    from numpy.lib.stride_tricks import sliding_window_view

    from damage_lightning.data.datamodule import DamageDataModule

    dm = DamageDataModule(**setup.dm_kwargs())
    dm.setup("fit")
    setup.num_classes = dm.num_classes
    setup.input_shape = tuple(dm.input_shape)
    names = dm.class_names
    rec_labels = np.array([names.index(lab) for lab in dm.dataset.labels], dtype=np.int64)
    for split in ("train", "val"):
        index = dm.indices[split]
        x = np.empty((len(index), len(CHANNELS), WINDOW), dtype=np.float32)
        for r in np.unique(index[:, 0]):
            rows = np.flatnonzero(index[:, 0] == r)
            view = sliding_window_view(dm.dataset.waveforms[r], WINDOW, axis=1)
            x[rows] = view[:, index[rows, 1]].transpose(1, 0, 2)
        y = rec_labels[index[:, 0]]
        setup.windows[split] = (x, y)
    setup.frontend_state = {k: v.clone() for k, v in dm.frontend.state_dict().items()}
    # Every Trainer.fit reuses this DataModule, as a notebook would: the normalisation is fitted
    # once (that setup cost is outside the timed epochs either way).
    setup.datamodule = dm
    torch.manual_seed(0)


class EpochTimer:
    """A Lightning callback timing whole epochs (training and validation) of ``Trainer.fit``.

    Args:
        device: synchronised before every time stamp, so queued GPU work is counted.
    """

    def __init__(self, device: Any):
        from lightning.pytorch.callbacks import Callback

        timer = self

        class _Callback(Callback):
            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                _sync(device)
                timer.starts.append((time.perf_counter(), time.process_time()))

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                _sync(device)
                timer.end = (time.perf_counter(), time.process_time())

        self.callback = _Callback()
        self.starts: list[tuple[float, float]] = []
        self.end = (0.0, 0.0)

    def epoch_seconds(self) -> tuple[list[float], list[float]]:
        """Wall and CPU (this process) seconds of every epoch, in order."""
        bounds = [*self.starts, self.end]
        pairs = list(itertools.pairwise(bounds))
        return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


def yaml_callbacks(config: Path, run_dir: Path) -> tuple[list[Any], dict[str, Any]]:
    """The trainer callbacks and settings of ``config`` (configs/cnn.yaml), instantiated."""
    import yaml

    cfg = yaml.safe_load(config.read_text())["trainer"]
    callbacks = []
    for entry in cfg.get("callbacks", []):
        module, _, name = entry["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        kwargs = dict(entry.get("init_args") or {})
        if name == "ModelCheckpoint":
            kwargs.setdefault("dirpath", str(run_dir / "checkpoints"))
        callbacks.append(cls(**kwargs))
    return callbacks, {"log_every_n_steps": cfg.get("log_every_n_steps", 50)}


def run_ours(
    setup: TrainSetup, kind: str, compiled: bool
) -> tuple[tuple[list[float], list[float]], Any]:
    """``Trainer.fit`` as the CLI runs it (callbacks of configs/cnn.yaml, CSV logger, history)."""
    import torch
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from damage_lightning.callbacks import RunArtifacts
    from damage_lightning.data.datamodule import DamageDataModule

    run_dir = setup.run_root / f"ours-{kind}-{'compiled' if compiled else 'eager'}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    torch.manual_seed(0)
    dm = setup.datamodule or DamageDataModule(**setup.dm_kwargs())
    model = make_model(setup, kind, compiled)
    callbacks, settings = yaml_callbacks(DEFAULT_CONFIG, run_dir)
    timer = EpochTimer(setup.device)
    trainer = Trainer(
        max_epochs=setup.size.epochs,
        accelerator=setup.device.type,
        devices=1,
        precision=setup.precision,
        default_root_dir=str(run_dir),
        logger=CSVLogger(save_dir=str(run_dir), name="", version=""),
        callbacks=[*callbacks, RunArtifacts(run_dir), timer.callback],
        **settings,
    )
    trainer.fit(model, datamodule=dm)
    return timer.epoch_seconds(), model


def run_plain(setup: TrainSetup, kind: str, compiled: bool) -> tuple[list[float], list[float]]:
    """A plain PyTorch loop over the same network, windows, batch, precision and epochs."""
    import torch
    import torch.nn.functional as F

    device = setup.device
    torch.manual_seed(0)
    net = make_model(setup, kind, compiled=False).net.to(device)
    frontend = make_frontend()
    frontend.load_state_dict(setup.frontend_state)
    frontend.to(device)
    step_net = torch.compile(net) if compiled else net
    opt = torch.optim.AdamW(net.parameters(), lr=0.002, weight_decay=1e-4)
    x_train = torch.from_numpy(setup.windows["train"][0]).to(device)
    y_train = torch.from_numpy(setup.windows["train"][1]).to(device)
    x_val = torch.from_numpy(setup.windows["val"][0]).to(device)
    y_val = torch.from_numpy(setup.windows["val"][1]).to(device)
    bf16 = setup.precision.startswith("bf16")
    fmt = torch.channels_last if setup.channels_last[kind] else torch.contiguous_format
    batch = setup.size.batch_size

    def features(x: Any) -> Any:
        return frontend(x).contiguous(memory_format=fmt)

    times, cpu_times = [], []
    for _ in range(setup.size.epochs):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        net.train()
        order = torch.randperm(len(x_train), device=device)
        for a in range(0, len(x_train), batch):
            idx = order[a : a + batch]
            spec = features(x_train[idx])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = step_net(spec)
            loss = F.cross_entropy(logits.float(), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for a in range(0, len(x_val), batch):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = step_net(features(x_val[a : a + batch]))
                F.cross_entropy(logits.float(), y_val[a : a + batch])
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def choose_memory_format(setup: TrainSetup, kind: str, mode: str) -> None:
    """Pick channels_last or contiguous for ``kind``: given, or the faster of a short probe.

    The probe times a few training steps of the plain network in each format on the device
    (CPU seconds of this process on the CPU, so other load on the machine does not decide it).
    """
    import torch
    import torch.nn.functional as F

    if mode != "auto":
        setup.channels_last[kind] = mode == "on"
        return
    if setup.device.type == "cuda":
        # Tensor-core convolutions (bf16) are fastest in NHWC.
        setup.channels_last[kind] = True
        return
    results = {}
    setup.channels_last[kind] = False  # the probe sets each format itself
    x0 = torch.randn(setup.size.batch_size, *setup.input_shape, device=setup.device)
    y = torch.randint(0, setup.num_classes, (setup.size.batch_size,), device=setup.device)
    for name, fmt in (
        ("contiguous", torch.contiguous_format),
        ("channels_last", torch.channels_last),
    ):
        torch.manual_seed(0)
        net = make_model(setup, kind, compiled=False).net.to(setup.device, memory_format=fmt)
        opt = torch.optim.AdamW(net.parameters(), lr=0.002)
        x = x0.contiguous(memory_format=fmt)
        steps = []
        for _ in range(4):
            start = time.process_time()
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps.append(time.process_time() - start)
        results[name] = _r(min(steps[1:]))
    setup.channels_last[kind] = results["channels_last"] < results["contiguous"]
    setup.format_probe[kind] = {"cpu_seconds_per_step": results}


def _throughput(windows: int, epoch_seconds: list[float]) -> float:
    # The first (warm-up) epoch is excluded.
    measured = epoch_seconds[1:]
    return windows * len(measured) / sum(measured)


def bench_train(rec: Recorder, setup: TrainSetup, kinds: list[str], compile_modes: list[bool],
                deadline: float = math.inf) -> tuple[dict[str, float], dict[str, Any]]:  # fmt: skip
    """Ours vs the plain loop for every model and compile mode; returns ours' windows/s."""
    ours_speed: dict[str, float] = {}
    models: dict[str, Any] = {}
    n_train = len(setup.windows["train"][0])
    for compiled in compile_modes:
        for kind in kinds:
            params = setup.params(kind, compiled)
            if time.perf_counter() > deadline:
                tag = f"{kind}{'_compiled' if compiled else ''}"
                rec.skipped(f"train_ratio_ours_plain_{tag}",
                            "the time budget is spent (--time-budget)", params)  # fmt: skip
                continue
            (ours_times, ours_cpu), model = run_ours(setup, kind, compiled)
            plain_times, plain_cpu = run_plain(setup, kind, compiled)
            ours = _throughput(n_train, ours_times)
            plain = _throughput(n_train, plain_times)
            cpu_ratio = _throughput(n_train, ours_cpu) / _throughput(n_train, plain_cpu)
            tag = f"{kind}{'_compiled' if compiled else ''}"
            if not compiled:
                ours_speed[kind] = ours
                ours_speed[f"{kind}_cpu"] = _throughput(n_train, ours_cpu)
                models[kind] = model
            rec.emit(
                f"train_ours_{tag}",
                _r(ours, 2),
                "windows/s",
                params,
                epoch_seconds=[_r(t) for t in ours_times],
                epoch_cpu_seconds=[_r(t) for t in ours_cpu],
                what="Trainer.fit with DamageDataModule, callbacks, logger, progress bar",
            )
            rec.emit(f"train_plain_{tag}", _r(plain, 2), "windows/s", params,
                     epoch_seconds=[_r(t) for t in plain_times],
                     epoch_cpu_seconds=[_r(t) for t in plain_cpu],
                     what="plain PyTorch loop, windows in memory on the device")  # fmt: skip
            target = TARGET_RATIO_COMPILED if compiled else (
                TARGET_RATIO_GPU if setup.device.type == "cuda" else TARGET_RATIO_CPU)  # fmt: skip
            ratio = ours / plain
            rec.emit(f"train_ratio_ours_plain_{tag}", _r(ratio), "ratio", params, target=target,
                     met=_at_least(ratio, target), ratio_cpu_time=_r(cpu_ratio),
                     ratio_best_epoch=_r(min(plain_times[1:]) / min(ours_times[1:])),
                     note="value: wall-time ratio over the measured epochs; ratio_cpu_time: "
                          "from this process's CPU seconds; ratio_best_epoch: fastest epoch "
                          "against fastest epoch (both resist other load)")  # fmt: skip
    return ours_speed, models


# --------------------------------------------------------------------------------- keras
def _keras_worker(args: argparse.Namespace) -> int:
    """Train the Keras CNN or ResNet on the saved windows; print one JSON line of epoch times."""
    spec = json.loads(Path(args.keras_worker).read_text())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    data = np.load(spec["data"])
    fe = spec["frontend"]
    pad = fe["n_fft"] // 2
    mel = tf.signal.linear_to_mel_weight_matrix(
        fe["n_mels"], fe["n_fft"] // 2 + 1, fe["sample_rate"], fe["f_min"], fe["f_max"]
    )
    mean = tf.constant(data["mean"].reshape(1, -1, 1, 1), tf.float32)
    std = tf.constant(data["std"].reshape(1, -1, 1, 1), tf.float32)

    class LogMel(keras.layers.Layer):
        """Reflect-padded STFT power, mel projection, dB with top_db, per-channel normalisation."""

        def call(self, x: Any) -> Any:
            x = tf.pad(x, [[0, 0], [0, 0], [pad, pad]], mode="REFLECT")
            stft = tf.signal.stft(x, fe["n_fft"], fe["hop_length"], fe["n_fft"])
            power = tf.math.square(tf.math.abs(stft))  # (B, C, frames, bins)
            db = 10.0 * tf.math.log(tf.maximum(tf.tensordot(power, mel, 1), 1e-10)) / math.log(10)
            db = tf.maximum(db, tf.reduce_max(db, axis=[1, 2, 3], keepdims=True) - fe["top_db"])
            db = (tf.transpose(db, [0, 1, 3, 2]) - mean) / std  # (B, C, mels, frames)
            return tf.transpose(db, [0, 2, 3, 1])  # channels last: (B, mels, frames, C)

    layers = keras.layers

    def conv_bn_relu(x: Any, width: int, stride: int = 1, relu: bool = True) -> Any:
        x = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    arch = spec["arch"]
    inputs = keras.Input((spec["channels"], spec["window"]))
    x = LogMel()(inputs)
    if spec["kind"] == "cnn":
        for width in arch["widths"]:
            x = layers.MaxPool2D(2)(conv_bn_relu(x, width))
    else:
        x = layers.MaxPool2D(3, strides=2, padding="same")(conv_bn_relu(x, arch["stem_width"]))
        channels = arch["stem_width"]
        for stage, (width, blocks) in enumerate(
            zip(arch["widths"], arch["blocks_per_stage"], strict=True)
        ):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                body = conv_bn_relu(conv_bn_relu(x, width, stride), width, relu=False)
                shortcut = x
                if stride != 1 or channels != width:
                    shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False)(x)
                    shortcut = layers.BatchNormalization()(shortcut)
                x = layers.ReLU()(layers.Add()([body, shortcut]))
                channels = width
    x = layers.Dropout(arch["dropout"])(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, layers.Dense(spec["num_classes"])(x))
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=0.002, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

            self.cpu_times: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter() - self._start[0])
            self.cpu_times.append(time.process_time() - self._start[1])

    timer = Timer()
    model.fit(
        data["train_x"],
        data["train_y"],
        batch_size=spec["batch_size"],
        epochs=spec["epochs"],
        validation_data=(data["val_x"], data["val_y"]),
        validation_batch_size=spec["batch_size"],
        shuffle=True,
        verbose=0,
        callbacks=[timer],
    )
    print(json.dumps({"epoch_seconds": timer.times, "epoch_cpu_seconds": timer.cpu_times,
                      "tensorflow": tf.__version__,
                      "keras": keras.__version__, "jit_compile": str(model.jit_compile),
                      "parameters": int(model.count_params())}), flush=True)  # fmt: skip
    return 0


def find_keras_python(requested: str | None) -> tuple[str | None, str]:
    """The interpreter that runs Keras, or ``None`` and the reason none is usable."""
    candidates = [requested] if requested else [sys.executable]
    for exe in candidates:
        probe = subprocess.run(
            [exe, "-c", "import tensorflow, keras"], capture_output=True, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
        if probe.returncode == 0:
            return exe, ""
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "failed"
        return None, (
            f"{exe} cannot import tensorflow ({reason}); install the 'bench' extra "
            "(pip install -e '.[bench]') or pass --keras-python of an environment with "
            "tensorflow-cpu"
        )
    return None, "no interpreter given"


def bench_keras(rec: Recorder, setup: TrainSetup, kinds: list[str], ours: dict[str, float],
                keras_python: str | None) -> None:  # fmt: skip
    """Ours vs the same layers in Keras ``model.fit`` on the same windows (CPU)."""
    import numpy as np

    exe, why = find_keras_python(keras_python)
    if exe is None:
        raise RuntimeError(why)
    state = setup.frontend_state
    data = setup.run_root / "keras-windows.npz"
    np.savez(data, train_x=setup.windows["train"][0], train_y=setup.windows["train"][1],
             val_x=setup.windows["val"][0], val_y=setup.windows["val"][1],
             mean=state["mean"].numpy(), std=state["std"].numpy())  # fmt: skip
    n_train = len(setup.windows["train"][0])
    for kind in kinds:
        spec = {"data": str(data), "kind": kind, "arch": model_params(kind, setup.size),
                "frontend": {**FRONTEND, "sample_rate": SAMPLE_RATE, "top_db": 80.0},
                "channels": len(CHANNELS), "window": WINDOW, "num_classes": setup.num_classes,
                "batch_size": setup.size.batch_size, "epochs": setup.size.epochs}  # fmt: skip
        spec_file = setup.run_root / f"keras-{kind}.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run(
            [exe, str(Path(__file__).resolve()), "--keras-worker", str(spec_file)],
            capture_output=True, text=True, cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"the Keras {kind} run failed:\n{proc.stderr.strip()[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        keras_speed = _throughput(n_train, out["epoch_seconds"])
        versions = {k: out[k] for k in ("tensorflow", "keras", "jit_compile", "parameters")}
        params = {**setup.params(kind, False), "keras_python": exe, **versions}
        rec.emit(f"train_keras_{kind}", _r(keras_speed, 2), "windows/s", params, device="cpu",
                 epoch_seconds=[_r(t) for t in out["epoch_seconds"]],
                 epoch_cpu_seconds=[_r(t) for t in out["epoch_cpu_seconds"]],
                 what="Keras model.fit: tf.signal log-mel + the same layers")  # fmt: skip
        ratio = ours[kind] / keras_speed
        target = TARGET_KERAS_RATIO[kind]
        cpu_ratio = ours[f"{kind}_cpu"] / _throughput(n_train, out["epoch_cpu_seconds"])
        rec.emit(f"train_ratio_ours_keras_{kind}", _r(ratio), "ratio", params, target=target,
                 met=_at_least(ratio, target), device="cpu",
                 ratio_cpu_time=_r(cpu_ratio))  # fmt: skip


# ----------------------------------------------------------------------------- inference
def _latencies(fn: Callable[[Any], Any], x: Any, iters: int) -> list[float]:
    for _ in range(max(3, iters // 20)):
        fn(x)
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def bench_inference(rec: Recorder, setup: TrainSetup, models: dict[str, Any], workdir: Path,
                    size: Size) -> None:  # fmt: skip
    """Eager vs TorchScript vs onnxruntime of the exported waveform-in model on the CPU."""
    import copy

    import numpy as np
    import onnxruntime as ort
    import torch

    from damage_lightning.export import DeployableModel, export_onnx, export_torchscript

    for kind, model in models.items():
        frontend = make_frontend()
        frontend.load_state_dict(setup.frontend_state)
        net = copy.deepcopy(model.net).cpu().float().to(memory_format=torch.contiguous_format)
        deploy = DeployableModel(frontend, net).eval()
        out = workdir / "export" / kind
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        onnx_path = export_onnx(deploy, out / "model.onnx", len(CHANNELS), WINDOW, {})
        onnx_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ts_path = export_torchscript(deploy, out / "model.ts.pt", len(CHANNELS), WINDOW)
        ts_s = time.perf_counter() - t0
        scripted = torch.jit.load(str(ts_path)).eval()
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def eager(x: Any, deploy: Any = deploy) -> Any:
            with torch.inference_mode():
                return deploy(torch.from_numpy(x))

        def torchscript(x: Any, scripted: Any = scripted) -> Any:
            with torch.inference_mode():
                return scripted(torch.from_numpy(x))

        def onnxruntime(x: Any, session: Any = session, input_name: str = input_name) -> Any:
            return session.run(None, {input_name: x})

        runtimes = {"eager": eager, "torchscript": torchscript, "onnxruntime": onnxruntime}
        rng = np.random.default_rng(0)
        one = rng.standard_normal((1, len(CHANNELS), WINDOW)).astype(np.float32)
        many = rng.standard_normal((size.throughput_batch, len(CHANNELS), WINDOW))
        many = many.astype(np.float32)
        params = {"model": kind, **model_params(kind, setup.size), "channels": len(CHANNELS),
                  "window": WINDOW, **FRONTEND, "torch_threads": torch.get_num_threads(),
                  "onnxruntime": ort.__version__, "onnx_export_s": _r(onnx_s, 2),
                  "torchscript_export_s": _r(ts_s, 2), "latency_iters": size.latency_iters,
                  "throughput_batch": size.throughput_batch,
                  "throughput_iters": size.throughput_iters}  # fmt: skip
        p50 = {}
        for name, fn in runtimes.items():
            lat = _latencies(fn, one, size.latency_iters)
            p50[name] = _percentile(lat, 50)
            extra = {}
            if name == "onnxruntime":
                extra = {"target": "<= eager p50", "met": bool(p50[name] <= p50["eager"])}
            rec.emit(f"inference_{kind}_{name}_batch1_latency", _r(p50[name], 3), "ms", params,
                     device="cpu", p50_ms=_r(p50[name], 3), p99_ms=_r(_percentile(lat, 99), 3),
                     **extra)  # fmt: skip
            fn(many)
            start = time.perf_counter()
            for _ in range(size.throughput_iters):
                fn(many)
            elapsed = time.perf_counter() - start
            speed = size.throughput_iters * size.throughput_batch / elapsed
            rec.emit(f"inference_{kind}_{name}_batch{size.throughput_batch}_throughput",
                     _r(speed, 1), "windows/s", params, device="cpu")  # fmt: skip


# --------------------------------------------------------------------------- end to end
def bench_e2e(
    rec: Recorder, workdir: Path, size: Size, device: str, data_dir: Path, deadline: float
) -> None:
    """Wall time and peak RSS of the default ``fit --config configs/cnn.yaml`` (a subprocess).

    The run is stopped at ``deadline`` (a ``time.perf_counter()`` value), and recorded as such.
    """
    root = workdir / "e2e-runs"
    shutil.rmtree(root, ignore_errors=True)
    cmd = [sys.executable, "-m", "damage_lightning", "fit", "--config", "configs/cnn.yaml",
           "--trainer.default_root_dir", str(root), "--data.cache_dir", str(workdir / "e2e-cache"),
           "--report.llm", "false",
           *(o.replace("{data_dir}", str(data_dir)) for o in size.e2e_overrides)]  # fmt: skip
    log = workdir / "e2e.log"
    start = time.perf_counter()
    peak = 0.0
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        # The child's own VmHWM, polled: its ru_maxrss would start at this (large) process's size.
        while proc.poll() is None:
            peak = max(peak, _vm_hwm_mb(proc.pid) or 0.0)
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                rec.skipped("e2e_fit_wall", "stopped: the --time-budget ran out during the run",
                            {"command": " ".join(cmd), "ran_s": _r(time.perf_counter() - start, 1),
                             "peak_rss_mb_so_far": _r(peak, 1)})  # fmt: skip
                return
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the default fit run failed (exit {proc.returncode}):\n{tail}")
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    epochs = None
    if runs and (runs[-1] / "training_history.json").is_file():
        epochs = len(json.loads((runs[-1] / "training_history.json").read_text())["epochs"])
    params = {"command": " ".join(cmd), "log": str(log), "epochs_run": epochs,
              "note": "includes the built-in dataset (generated once into --data.cache_dir), "
                      "training, test, exports and the PDF report"}  # fmt: skip
    params["peak_rss_source"] = "VmHWM of the child, polled every 0.1 s"
    rec.emit("e2e_fit_wall", _r(wall, 2), "s", params, device=device, peak_rss_mb=_r(peak, 1))
    rec.emit("e2e_fit_peak_rss", _r(peak, 1), "MB", params, device=device)


# ---------------------------------------------------------------------------------- main
def _hop_for(samples_per_recording: int, n_recordings: int, target_windows: int) -> int:
    # About 70 % of the recordings train; aim the hop at the wanted number of training windows.
    train_samples = 0.7 * n_recordings * max(0, samples_per_recording - WINDOW)
    hop = int(train_samples / max(1, target_windows))
    # Hops beyond a window skip samples; they keep small sizes' epochs short on big datasets.
    return max(256, min(4 * WINDOW, hop // 256 * 256))


def _environment(args: argparse.Namespace, size: Size, device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "argv": sys.argv[1:],
        "size": asdict(size),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Benchmark damage_lightning; prints one JSON object per measurement."
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", choices=("tiny", "quick", "full"), default=None,
                        help="amount of work (default: full; --quick is --size quick)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a CPU run of a few minutes")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="generated data, caches and runs (default: a folder under the "
                             "system temp dir, reused between runs)")  # fmt: skip
    parser.add_argument(
        "--ingest-gb",
        type=float,
        default=None,
        help="size of the generated CSV dataset in GB (default 1; quick 0.1)",
    )
    parser.add_argument(
        "--vs-keras", action="store_true", help="also train the same layers in Keras on the CPU"
    )
    parser.add_argument(
        "--keras-python",
        default=None,
        help="interpreter with tensorflow for --vs-keras (default: this one)",
    )
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="also measure torch.compile (default on for cuda and tiny)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default inductor; tiny: eager, which traces "
        "with dynamo but skips code generation, to test the code path fast)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds after which the remaining sections are skipped (and the "
        "end-to-end run stopped); default 330 for --device cuda, else none",
    )
    parser.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="memory format of ours and the plain loop: auto takes channels_last "
        "on a GPU and the faster one of a short probe on the CPU",
    )
    parser.add_argument(
        "--e2e",
        dest="e2e",
        action="store_true",
        default=None,
        help="run the default fit end to end (default: on, except --quick on cpu)",
    )
    parser.add_argument("--no-e2e", dest="e2e", action="store_false")
    parser.add_argument("--models", default="cnn,resnet", help="comma list of cnn, resnet")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma list of sections to run: {','.join(SECTIONS)}",
    )
    # Internal: one ingest phase in a fresh process, and the Keras worker.
    parser.add_argument("--ingest-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ingest-cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ingest-rate", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ingest-channels", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keras-worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _default_compile_backend(torch: Any, backend: str) -> None:
    """Make ``torch.compile`` (as called by the model's ``compile=True``) use ``backend``."""
    original = torch.compile

    def compile_with_backend(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("backend", backend)
        return original(*args, **kwargs)

    torch.compile = compile_with_backend


@contextlib.contextmanager
def _section(rec: Recorder, name: str, errors: list[str]) -> Iterator[None]:
    """Turn a failing section into an ``error`` record; the other sections still run."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:  # one broken measurement must not hide the others
        errors.append(name)
        rec.emit(f"{name}_error", None, "", {}, error=f"{type(exc).__name__}: {exc}")
    finally:
        print(f"[benchmark] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, 1 when a measurement failed, 2 on unusable arguments."""
    args = parse_args(argv)
    if args.ingest_child:
        return _ingest_child(args)
    if args.keras_worker:
        return _keras_worker(args)

    sys.path.insert(0, str(REPO))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"error: --device cuda: no CUDA GPU is usable here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}); run with --device cpu",
            file=sys.stderr,
        )
        return 2
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [s for s in only if s not in SECTIONS] + [
        k for k in kinds if k not in ("cnn", "resnet")
    ]
    if unknown:
        print(f"error: unknown section or model: {', '.join(unknown)}", file=sys.stderr)
        return 2
    size = size_for(args.size or ("quick" if args.quick else "full"), args.device)
    if args.ingest_gb is not None:
        size = replace(size, ingest_mb=args.ingest_gb * 1000.0)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    tiny = size.name == "tiny"
    # The GPU's settings (bf16 autocast, channels_last, torch.compile) also run at size tiny, so
    # the test exercises the GPU code path on a CPU.
    gpu_like = args.device == "cuda" or tiny
    compile_modes = [False] + (
        [True] if (gpu_like if args.compile is None else args.compile) else []
    )
    backend = args.compile_backend or ("eager" if tiny else "inductor")
    if backend != "inductor" and True in compile_modes:
        _default_compile_backend(torch, backend)
    workdir = (args.workdir or Path(tempfile.gettempdir()) / "damage_lightning_bench").resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    real_stdout = sys.stdout
    rec = Recorder(real_stdout, args.output, args.device)
    errors: list[str] = []
    started = time.perf_counter()
    budget = args.time_budget or (330.0 if args.device == "cuda" else math.inf)
    deadline = started + budget

    def out_of_time(name: str) -> bool:
        if time.perf_counter() < deadline:
            return False
        rec.skipped(name, f"the time budget of {budget:g} s is spent (--time-budget)")
        return True

    # Library prints (Lightning's summaries) go to stderr; stdout carries only JSON lines.
    with contextlib.redirect_stdout(sys.stderr):
        rec.emit("environment", None, "", _environment(args, size, device))
        data_dir = workdir / f"generated-{size.ingest_mb:g}MB"
        dm_cache = workdir / f"cache-generated-{size.ingest_mb:g}MB"
        with _section(rec, "generate", errors):
            t0 = time.perf_counter()
            generate_dataset(data_dir, size.ingest_mb)
            print(f"[benchmark] dataset {data_dir} ready in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)  # fmt: skip
        if "ingest" in only:
            with _section(rec, "ingest_generated", errors):
                bench_ingest(rec, data_dir, "generated", dm_cache, size.ingest_repeats,
                             list(CHANNELS))  # fmt: skip
            if CWRU_DIR.is_dir():
                with _section(rec, "ingest_cwru", errors):
                    bench_ingest(rec, CWRU_DIR, "cwru_0hp_10class", workdir / "cache-cwru",
                                 size.ingest_repeats, ["DE_accel", "FE_accel"])  # fmt: skip
            else:
                rec.skipped("ingest_cwru", f"{CWRU_DIR} is absent", {"path": str(CWRU_DIR)})
        if "frontend" in only and not out_of_time("frontend_windows_per_s"):
            with _section(rec, "frontend", errors):
                bench_frontend(rec, device, size)

        setup = TrainSetup(
            data_dir=data_dir,
            cache_dir=dm_cache,
            hop=WINDOW,
            device=device,
            precision="bf16-mixed" if gpu_like else "32-true",
            channels_last={},
            size=size,
            run_root=workdir / "runs",
            compile_backend=backend,
        )
        ours: dict[str, float] = {}
        models: dict[str, Any] = {}
        needs_training = any(s in only for s in ("train", "keras", "inference"))
        if needs_training and not out_of_time("train"):
            with _section(rec, "train", errors):
                n_files = GEN_CLASSES * GEN_RECORDINGS_PER_CLASS
                rows = max(WINDOW * 4, int(size.ingest_mb * 1e6 / n_files / ROW_BYTES))
                setup.hop = _hop_for(rows, n_files, size.train_windows)
                prepare_training(setup)
                for kind in kinds:
                    mode = "on" if tiny and args.channels_last == "auto" else args.channels_last
                    choose_memory_format(setup, kind, mode)
                train_modes = compile_modes if "train" in only else [False]
                ours, models = bench_train(rec, setup, kinds, train_modes, deadline)
        if "keras" in only and not out_of_time("train_keras"):
            if not args.vs_keras:
                rec.skipped("train_keras", "not requested (--vs-keras)")
            elif args.device != "cpu":
                rec.skipped("train_keras", "the Keras comparison runs on the CPU: --device cpu")
            elif not ours:
                rec.skipped("train_keras", "needs our training figures, which did not run")
            else:
                with _section(rec, "keras", errors):
                    bench_keras(rec, setup, kinds, ours, args.keras_python)
        if "inference" in only and not out_of_time("inference"):
            if models:
                with _section(rec, "inference", errors):
                    bench_inference(rec, setup, models, workdir, size)
            else:
                rec.skipped("inference", "needs the trained models, which did not train")
        run_e2e = size.e2e if args.e2e is None else args.e2e
        if "e2e" in only and not run_e2e:
            rec.skipped("e2e_fit_wall", "left out of --quick on the CPU (15-30 min); add --e2e")
        elif "e2e" in only and not out_of_time("e2e_fit_wall"):
            with _section(rec, "e2e", errors):
                bench_e2e(rec, workdir, size, args.device, data_dir, deadline)
        rec.emit("total_wall", _r(time.perf_counter() - started, 1), "s",
                 {"failed_sections": errors})  # fmt: skip
    rec.close()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
