"""Training throughput of our ``Trainer.fit`` against a plain PyTorch loop on the same work.

Both train the same network (CNN or the 8-block ResNet at full widths), on the same windows of
the generated dataset, with the same batch, optimiser, precision, memory format and epochs, each
epoch being training plus validation. The two are interleaved in one process: one unmeasured
warm-up pair, then ``size.pairs`` measured pairs (ours, plain, ours, plain, ...), so a change of
the machine's load hits both sides alike. Records: ``train_ours_<model>``, ``train_plain_<model>``
(median windows/s over the runs), ``train_ratio_ours_plain_<model>`` (median over the pairs of
ours / plain in wall-clock time) and ``train_cpu_ratio_ours_plain_<model>`` (the same in this
process's CPU time), each ratio with its min, max and quartiles; ``_compiled`` with
``torch.compile`` on both sides. Targets (issues 7 and 14): ratio >= 0.97 on the CPU, >= 0.90 on
a GPU, >= 0.90 compiled.
"""

from __future__ import annotations

import importlib
import itertools
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    CHANNELS,
    FRONTEND,
    REPO,
    SAMPLE_RATE,
    WINDOW,
    Recorder,
    Size,
    at_least,
    rounded,
    sync,
)
from .frontend import make_frontend

DEFAULT_CONFIG = REPO / "configs" / "cnn.yaml"
TARGET_RATIO_GPU = 0.90
TARGET_RATIO_CPU = 0.97
TARGET_RATIO_COMPILED = 0.90


def hop_for(samples_per_recording: int, n_recordings: int, target_windows: int) -> int:
    """The window hop that gives about ``target_windows`` training windows per epoch."""
    # About 70 % of the recordings train; aim the hop at the wanted number of training windows.
    train_samples = 0.7 * n_recordings * max(0, samples_per_recording - WINDOW)
    hop = int(train_samples / max(1, target_windows))
    # Hops beyond a window skip samples; they keep small sizes' epochs short on big datasets.
    return max(256, min(4 * WINDOW, hop // 256 * 256))


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
                "epochs": self.size.epochs, "warmup_epochs": warmup_epochs(compiled),
                "pairs": self.size.pairs,
                "order": "one warm-up pair, then ours, plain, ours, plain, ... (ABAB)",
                "train_windows_per_epoch": n["train"],
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
                sync(device)
                timer.starts.append((time.perf_counter(), time.process_time()))

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                sync(device)
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
    setup: TrainSetup, kind: str, compiled: bool, extra_callbacks: list[Any] | None = None
) -> tuple[tuple[list[float], list[float]], Any]:
    """``Trainer.fit`` as the CLI runs it (callbacks of configs/cnn.yaml, CSV logger, history).

    ``extra_callbacks`` (a profiler's) come after our own and the timer's.
    """
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
        max_epochs=setup.size.epochs + warmup_epochs(compiled),
        accelerator=setup.device.type,
        devices=1,
        precision=setup.precision,
        default_root_dir=str(run_dir),
        logger=CSVLogger(save_dir=str(run_dir), name="", version=""),
        callbacks=[*callbacks, RunArtifacts(run_dir), timer.callback, *(extra_callbacks or [])],
        **settings,
    )
    trainer.fit(model, datamodule=dm)
    return timer.epoch_seconds(), model


def run_plain(
    setup: TrainSetup, kind: str, compiled: bool, profiler: Any = None
) -> tuple[list[float], list[float]]:
    """A plain PyTorch loop over the same network, windows, batch, precision and epochs.

    On the CPU it runs with the heap setting our ``fit`` uses (freed memory kept for reuse,
    :mod:`damage_lightning.heap`), so the ratio compares the training loops, not the allocator;
    ``bench_heap`` measures what that setting gains. ``profiler`` (a ``cProfile.Profile``) is
    enabled for each epoch, inside its time stamps.
    """
    from damage_lightning import heap

    kept = setup.device.type == "cpu" and heap.keep_freed_memory()
    try:
        return _plain_epochs(setup, kind, compiled, profiler)
    finally:
        if kept:
            heap.release_freed_memory()


def _plain_epochs(
    setup: TrainSetup, kind: str, compiled: bool, profiler: Any
) -> tuple[list[float], list[float]]:
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
    for _ in range(setup.size.epochs + warmup_epochs(compiled)):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
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
        sync(device)
        if profiler is not None:
            profiler.disable()
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
        results[name] = rounded(min(steps[1:]))
    setup.channels_last[kind] = results["channels_last"] < results["contiguous"]
    setup.format_probe[kind] = {"cpu_seconds_per_step": results}


def warmup_epochs(compiled: bool) -> int:
    """Epochs run before the measured ones in each run: one for ``torch.compile``, else none.

    A compiled model compiles in its first step, in every run; eager runs need no warm-up of
    their own once the warm-up pair has run (kernels, allocator and thread pools are warm).
    """
    return 1 if compiled else 0


def windows_per_s(windows: int, epoch_seconds: list[float], compiled: bool = False) -> float:
    """Windows per second over the measured epochs of a run."""
    measured = epoch_seconds[warmup_epochs(compiled) :]
    return windows * len(measured) / sum(measured)


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and quartiles of per-pair figures, rounded for a record."""
    q1, _, q3 = (
        statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    )
    return {"median": rounded(statistics.median(values)), "min": rounded(min(values)),
            "max": rounded(max(values)), "iqr": [rounded(q1), rounded(q3)],
            "pairs": [rounded(v) for v in values]}  # fmt: skip


def noise_floor(ours: list[float], plain: list[float]) -> dict[str, Any]:
    """How much a ratio moves with no change of code: consecutive runs of the same side.

    ``ratios`` are run ``k+1`` / run ``k`` of ours and of plain (an A/A comparison two runs apart,
    from the same interleaved runs); ``median_abs_dev`` is the median of ``|ratio - 1|``, the
    size a pair's ours/plain ratio moves by from the machine alone.
    """
    ratios = [b / a for side in (ours, plain) for a, b in itertools.pairwise(side)]
    if not ratios:
        return {"ratios": [], "median_abs_dev": None}
    return {"ratios": [rounded(r) for r in ratios],
            "median_abs_dev": rounded(statistics.median(abs(r - 1.0) for r in ratios))}  # fmt: skip


@dataclass
class Pairs:
    """Interleaved runs of one comparison: ours, plain, ours, plain, ... (ABAB).

    Args:
        ours: ``(wall, cpu)`` epoch seconds of each of our runs.
        plain: the same for each plain run.
        model: our last trained model (the inference section exports it).
    """

    ours: list[tuple[list[float], list[float]]] = field(default_factory=list)
    plain: list[tuple[list[float], list[float]]] = field(default_factory=list)
    model: Any = None


def run_pairs(setup: TrainSetup, kind: str, compiled: bool, deadline: float) -> Pairs:
    """One unmeasured warm-up pair, then ``size.pairs`` measured pairs, ours first in each.

    Stops early (after at least one measured pair) when the time budget is spent.
    """
    run_ours(setup, kind, compiled)
    run_plain(setup, kind, compiled)
    pairs = Pairs()
    for _ in range(setup.size.pairs):
        if pairs.ours and time.perf_counter() > deadline:
            break
        times, pairs.model = run_ours(setup, kind, compiled)
        pairs.ours.append(times)
        pairs.plain.append(run_plain(setup, kind, compiled))
    return pairs


def bench_train(rec: Recorder, setup: TrainSetup, kinds: list[str], compile_modes: list[bool],
                deadline: float = math.inf) -> tuple[dict[str, float], dict[str, Any]]:  # fmt: skip
    """Ours vs the plain loop for every model and compile mode; returns ours' windows/s."""
    ours_speed: dict[str, float] = {}
    models: dict[str, Any] = {}
    n_train = len(setup.windows["train"][0])
    for compiled in compile_modes:
        for kind in kinds:
            params = setup.params(kind, compiled)
            tag = f"{kind}{'_compiled' if compiled else ''}"
            if time.perf_counter() > deadline:
                rec.skipped(f"train_ratio_ours_plain_{tag}",
                            "the time budget is spent (--time-budget)", params)  # fmt: skip
                continue
            pairs = run_pairs(setup, kind, compiled, deadline)
            params = {**params, "pairs_measured": len(pairs.ours)}
            speeds = {}
            for side, runs, what in (
                ("ours", pairs.ours, "Trainer.fit with DamageDataModule, callbacks, logger, "
                                     "progress bar"),
                ("plain", pairs.plain, "plain PyTorch loop, windows in memory on the device, "
                                       "heap kept on the CPU as in ours"),
            ):  # fmt: skip
                wall = [windows_per_s(n_train, w, compiled) for w, _ in runs]
                cpu = [windows_per_s(n_train, c, compiled) for _, c in runs]
                speeds[side] = (wall, cpu)
                rec.emit(f"train_{side}_{tag}", rounded(statistics.median(wall), 2), "windows/s",
                         params, runs_windows_per_s=[rounded(v, 2) for v in wall],
                         epoch_seconds=[[rounded(t) for t in w] for w, _ in runs],
                         epoch_cpu_seconds=[[rounded(t) for t in c] for _, c in runs],
                         what=what)  # fmt: skip
            if not compiled:
                ours_speed[kind] = statistics.median(speeds["ours"][0])
                ours_speed[f"{kind}_cpu"] = statistics.median(speeds["ours"][1])
                models[kind] = pairs.model
            target = TARGET_RATIO_COMPILED if compiled else (
                TARGET_RATIO_GPU if setup.device.type == "cuda" else TARGET_RATIO_CPU)  # fmt: skip
            for name, i, clock in (("train_ratio_ours_plain", 0, "wall-clock"),
                                   ("train_cpu_ratio_ours_plain", 1, "CPU-time")):  # fmt: skip
                ratios = [o / p for o, p in zip(speeds["ours"][i], speeds["plain"][i], strict=True)]
                stats = spread(ratios)
                rec.emit(f"{name}_{tag}", stats["median"], "ratio", params, target=target,
                         met=at_least(stats["median"], target), **stats,
                         noise_floor=noise_floor(speeds["ours"][i], speeds["plain"][i]),
                         note=f"value: median over the pairs of ours / plain windows per "
                              f"{clock} second (this process's CPU seconds for CPU time); "
                              "min, max, iqr (quartiles) and pairs give the spread; "
                              "noise_floor: how two runs of the same code differ here")  # fmt: skip
    return ours_speed, models
