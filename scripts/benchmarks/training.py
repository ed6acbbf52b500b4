"""Training throughput of our ``Trainer.fit`` against a plain PyTorch loop on the same work.

Both train the same network (CNN or the 8-block ResNet at full widths), on the same windows of
the generated dataset, with the same batch, optimiser, precision, memory format and epochs, each
epoch being training plus validation; the first epoch is a warm-up and is excluded. Records:
``train_ours_<model>``, ``train_plain_<model>`` (windows/s) and ``train_ratio_ours_plain_<model>``
(ours / plain; ``_compiled`` with ``torch.compile`` on both sides). Targets (issue 7): ratio
>= 0.95 on the CPU, >= 0.90 on a GPU, >= 0.90 compiled.
"""

from __future__ import annotations

import importlib
import itertools
import math
import shutil
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
TARGET_RATIO_CPU = 0.95
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
        sync(device)
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
        sync(device)
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


def throughput(windows: int, epoch_seconds: list[float]) -> float:
    """Windows per second over the epochs after the first (the excluded warm-up)."""
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
            ours = throughput(n_train, ours_times)
            plain = throughput(n_train, plain_times)
            cpu_ratio = throughput(n_train, ours_cpu) / throughput(n_train, plain_cpu)
            tag = f"{kind}{'_compiled' if compiled else ''}"
            if not compiled:
                ours_speed[kind] = ours
                ours_speed[f"{kind}_cpu"] = throughput(n_train, ours_cpu)
                models[kind] = model
            rec.emit(
                f"train_ours_{tag}",
                rounded(ours, 2),
                "windows/s",
                params,
                epoch_seconds=[rounded(t) for t in ours_times],
                epoch_cpu_seconds=[rounded(t) for t in ours_cpu],
                what="Trainer.fit with DamageDataModule, callbacks, logger, progress bar",
            )
            rec.emit(f"train_plain_{tag}", rounded(plain, 2), "windows/s", params,
                     epoch_seconds=[rounded(t) for t in plain_times],
                     epoch_cpu_seconds=[rounded(t) for t in plain_cpu],
                     what="plain PyTorch loop, windows in memory on the device")  # fmt: skip
            target = TARGET_RATIO_COMPILED if compiled else (
                TARGET_RATIO_GPU if setup.device.type == "cuda" else TARGET_RATIO_CPU)  # fmt: skip
            ratio = ours / plain
            rec.emit(f"train_ratio_ours_plain_{tag}", rounded(ratio), "ratio", params,
                     target=target, met=at_least(ratio, target), ratio_cpu_time=rounded(cpu_ratio),
                     ratio_best_epoch=rounded(min(plain_times[1:]) / min(ours_times[1:])),
                     note="value: wall-time ratio over the measured epochs; ratio_cpu_time: "
                          "from this process's CPU seconds; ratio_best_epoch: fastest epoch "
                          "against fastest epoch (both resist other load)")  # fmt: skip
    return ours_speed, models
