"""Build a realistic fake run folder (the files the report reads), following docs/architecture.md.

The history is simulated the way Lightning would produce it: a ReduceLROnPlateau rule on val_loss
halves the learning rate, early stopping ends the run ``patience`` epochs after the best epoch,
and validation loss turns upwards late in training (overfitting). The confusion matrix has one
clearly weak class so the analysis has something to find.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

import yaml

CLASSES = (
    "bumper_contact",
    "story1_stiffness_loss",
    "story2_stiffness_loss",
    "story3_stiffness_loss",
    "undamaged",
)
WEAK_CLASS = "story2_stiffness_loss"
CONFUSED_WITH = "story3_stiffness_loss"
LR_PATIENCE = 3
ES_PATIENCE = 8
STUCK_AT = (6.0, 11.0)


def simulate_history(max_epochs: int = 40, seed: int = 1) -> dict[str, Any]:
    """Per-epoch history with LR reductions and early stopping, in the training_history schema."""
    rng = random.Random(seed)
    lr = 1e-3
    epochs: list[dict[str, Any]] = []
    reductions: list[dict[str, Any]] = []
    best, best_epoch, since_best, since_lr = math.inf, 0, 0, 0
    stopped = None
    progress = 0.0
    for e in range(max_epochs):
        # Training is stuck at two points until the learning rate is reduced, as often happens.
        rate = 1.0
        for k, point in enumerate(STUCK_AT):
            if progress >= point and len(reductions) <= k:
                rate = 0.0
        p = progress
        train_loss = 0.04 + 1.15 * math.exp(-(p + e) / 9.0) + rng.uniform(-0.01, 0.01)
        val_loss = 0.16 + 1.0 * math.exp(-p / 5.0) + 0.0025 * max(0.0, p - 19) ** 1.6
        val_loss += rng.uniform(0.003, 0.015) if rate == 0 else rng.uniform(-0.01, 0.01)
        train_acc = min(0.999, 1.0 - 0.8 * math.exp(-(p + e) / 8.0) - rng.uniform(0, 0.01))
        val_acc = min(0.99, 0.95 - 0.75 * math.exp(-p / 4.0) - 0.002 * max(0.0, p - 19))
        val_acc -= rng.uniform(0, 0.01)
        progress += rate
        epochs.append(
            {
                "epoch": e,
                "train_loss": round(train_loss, 5),
                "train_acc": round(train_acc, 5),
                "val_loss": round(val_loss, 5),
                "val_acc": round(val_acc, 5),
                "val_f1": round(val_acc - 0.01, 5),
                "lr": lr,
                "epoch_time_s": round(3.0 + rng.uniform(-0.3, 0.3), 3),
            }
        )
        if val_loss < best:
            best, best_epoch, since_best, since_lr = val_loss, e, 0, 0
        else:
            since_best += 1
            since_lr += 1
        if since_best >= ES_PATIENCE:
            stopped = e
            break
        if since_lr > LR_PATIENCE:
            reductions.append({"epoch": e + 1, "from": lr, "to": lr / 2})
            lr /= 2
            since_lr = 0
    return {
        "monitor": "val_loss",
        "max_epochs": max_epochs,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "best_val_loss": round(best, 5),
        "early_stopping": {
            "triggered": stopped is not None,
            "stopped_epoch": stopped if stopped is not None else epochs[-1]["epoch"],
            "patience": ES_PATIENCE,
        },
        "lr_reductions": reductions,
    }


def confusion(classes: list[str], per_class: int = 60) -> list[list[int]]:
    """A test confusion matrix: mostly right, one class often mistaken for its neighbour."""
    n = len(classes)
    cm = [[0] * n for _ in range(n)]
    for i in range(n):
        cm[i][i] = per_class
    weak = classes.index(WEAK_CLASS) if WEAK_CLASS in classes else 1 % n
    other = classes.index(CONFUSED_WITH) if CONFUSED_WITH in classes else (weak + 1) % n
    if n > 1:
        cm[weak][weak] -= 11
        cm[weak][other] += 9
        cm[weak][(weak + 2) % n if (weak + 2) % n != weak else other] += 2
        cm[other][other] -= 3
        cm[other][weak] += 3
    return cm


def metrics_from(cm: list[list[int]], classes: list[str]) -> dict[str, Any]:
    """test_metrics with per-class precision/recall/F1 consistent with the matrix."""
    per = {}
    f1s = []
    for i, name in enumerate(classes):
        tp = cm[i][i]
        support = sum(cm[i])
        predicted = sum(row[i] for row in cm)
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        f1s.append(f1)
        per[name] = {
            "precision": round(p, 4),
            "recall": round(r, 4),
            "f1": round(f1, 4),
            "support": support,
        }
    total = sum(map(sum, cm))
    acc = sum(cm[i][i] for i in range(len(cm))) / total
    return {
        "loss": 0.2317,
        "accuracy": round(acc, 4),
        "f1_macro": round(sum(f1s) / len(f1s), 4),
        "per_class": per,
        "confusion_matrix": cm,
    }


def training_log(history: dict[str, Any], classes: list[str], n_lines: int = 200) -> str:
    """A log as captured from a terminal: progress bars with carriage returns, ANSI colours."""
    lines = [
        "Seed set to 42",
        "GPU available: False, used: False",
        "TPU available: False, using: 0 TPU cores",
        "Loading recordings from data/shear_frame ...",
    ]
    header = [
        "  | Name      | Type                | Params | Mode ",
        "---------------------------------------------------------",
        "0 | frontend  | SpectrogramFrontend | 0      | train",
        "1 | net       | Sequential          | 390 K  | train",
        "---------------------------------------------------------",
        "390 K     Trainable params",
    ]
    body = []
    for e in history["epochs"]:
        bar = "".join(
            f"\rEpoch {e['epoch']}:  {p:3d}%|{'█' * (p // 10):<10}| {p * 15 // 100}/15 "
            f"[00:0{p // 40}<00:02]"
            for p in (0, 20, 40, 60, 80, 100)
        )
        body.append(bar + f", \x1b[32mtrain_loss={e['train_loss']:.4f}\x1b[0m")
        body.append(
            f"Metric val_loss improved. New best score: {e['val_loss']:.4f}"
            if e["epoch"] == history["best_epoch"]
            else f"Epoch {e['epoch']}: val_loss={e['val_loss']:.4f} val_acc={e['val_acc']:.4f}"
        )
        for r in history["lr_reductions"]:
            if r["epoch"] == e["epoch"]:
                body.append(f"Epoch {e['epoch']}: reducing learning rate to {r['to']:.4e}.")
    tail = [
        "Monitored metric val_loss did not improve in the last 8 records. Signaling Trainer to "
        "stop.",
        "UserWarning: a very long warning line that goes on and on "
        + "with-a-path/" * 30
        + " to check that the report wraps it instead of running off the page",
        "Testing DataLoader 0: 100%|██████████| 5/5",
        *(f"  test recall {name}: checked" for name in classes),
        "ONNX export verified: max |diff| 2.1e-07 at batch sizes 1 and 5",
        "Checkpoint: checkpoints/best.ckpt",
        "Report: report/training_report.pdf",
    ]
    n_files = max(0, n_lines - len(lines) - len(header) - len(body) - len(tail))
    lines += [
        f"  read {classes[k % len(classes)]}/rec_{k:03d}.csv: 16384 samples x 4 channels"
        for k in range(n_files)
    ]
    lines += header + body + tail
    return "\n".join(lines) + "\n"


def config_dict(run_name: str, classes: list[str], max_epochs: int) -> dict[str, Any]:
    """A LightningCLI resolved config, as written to config.yaml."""
    return {
        "seed_everything": 42,
        "trainer": {
            "accelerator": "auto",
            "strategy": "auto",
            "devices": "auto",
            "num_nodes": 1,
            "precision": None,
            "logger": None,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.EarlyStopping",
                    "init_args": {"monitor": "val_loss", "patience": ES_PATIENCE, "mode": "min"},
                },
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val_loss", "save_last": True, "filename": "best"},
                },
                {
                    "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                    "init_args": {"logging_interval": "epoch"},
                },
                {
                    "class_path": "damage_lightning.callbacks.RunArtifacts",
                    "init_args": {"report": True, "llm": True},
                },
            ],
            "fast_dev_run": False,
            "max_epochs": max_epochs,
            "min_epochs": None,
            "gradient_clip_val": None,
            "log_every_n_steps": 10,
            "deterministic": True,
            "benchmark": None,
        },
        "model": {
            "class_path": "damage_lightning.models.cnn.CNNClassifier",
            "init_args": {
                "num_classes": len(classes),
                "in_channels": 4,
                "widths": [32, 64, 128, 256],
                "dropout": 0.3,
                "lr": 0.001,
                "weight_decay": 0.0001,
                "class_weights": None,
            },
        },
        "data": {
            "class_path": "damage_lightning.data.datamodule.DamageDataModule",
            "init_args": {
                "data_dir": "data/shear_frame",
                "window": 1024,
                "hop": 512,
                "batch_size": 64,
                "split": "recording",
                "frontend": {"kind": "mel", "n_fft": 256, "hop_length": 64, "n_mels": 64},
            },
        },
        "optimizer": {
            "class_path": "torch.optim.AdamW",
            "init_args": {"lr": 0.001, "weight_decay": 0.0001},
        },
        "lr_scheduler": {
            "class_path": "lightning.pytorch.cli.ReduceLROnPlateau",
            "init_args": {"monitor": "val_loss", "factor": 0.5, "patience": LR_PATIENCE},
        },
        "run_name": run_name,
        "save_dir": "runs",
    }


def model_info(
    name: str = "cnn-20261126-101500",
    classes: list[str] | tuple[str, ...] = CLASSES,
    best_epoch: int | None = 10,
    *,
    with_test: bool = True,
) -> dict[str, Any]:
    """The model card of the fake run as a JSON object (without exports), schema as written."""
    classes = list(classes)
    train_windows = {c: 240 for c in classes}
    train_windows[classes[0]] = 120  # one smaller class: data imbalance ratio 2.0
    per_class = {
        c: {
            "train": {"recordings": 16, "windows": train_windows[c]},
            "val": {"recordings": 4, "windows": 60},
            "test": {"recordings": 4, "windows": 60},
        }
        for c in classes
    }
    n_rec = 24 * len(classes)
    info: dict[str, Any] = {
        "run_name": name,
        "created": "2026-11-26T10:15:00+00:00",
        "duration_s": 95.2,
        "seed": 42,
        "model": {
            "class_path": "damage_lightning.models.cnn.CNNClassifier",
            "name": "CNNClassifier",
            "parameters": 390_212,
            "trainable_parameters": 390_212,
            "hyperparameters": {"widths": [32, 64, 128, 256], "dropout": 0.3, "lr": 0.001},
        },
        "input": {
            "channels": ["base", "floor1", "floor2", "floor3"],
            "sample_rate": 1024.0,
            "window_length": 1024,
            "hop": 512,
            "frontend": {"kind": "mel", "n_fft": 256, "hop_length": 64, "n_mels": 64},
        },
        "classes": classes,
        "data": {
            "data_dir": "/data/shear_frame",
            "n_recordings": n_rec,
            "per_class": per_class,
            "warnings": ["floor3.csv (column 'floor1'): channel is constant (flat line)"],
        },
        "splits": {
            "strategy": "recording",
            "gap_samples": 0,
            "summary": {
                "train": {
                    "recordings": 16 * len(classes),
                    "groups": 16 * len(classes),
                    "samples": 16 * len(classes) * 16384,
                },
                "val": {
                    "recordings": 4 * len(classes),
                    "groups": 4 * len(classes),
                    "samples": 4 * len(classes) * 16384,
                },
                "test": {
                    "recordings": 4 * len(classes),
                    "groups": 4 * len(classes),
                    "samples": 4 * len(classes) * 16384,
                },
            },
            "leakage_check": {"passed": True, "overlapping_ranges": 0},
        },
        "best_epoch": best_epoch,
        "best_checkpoint": "checkpoints/best.ckpt",
        "versions": {
            "damage_lightning": "0.1.0",
            "torch": "2.11.0",
            "torchaudio": "2.11.0",
            "lightning": "2.6.6",
            "python": "3.11.7",
        },
    }
    if with_test:
        info["test_metrics"] = metrics_from(confusion(classes), classes)
    return info


def make_run(
    root: str | Path,
    *,
    name: str = "cnn-20261126-101500",
    classes: list[str] | tuple[str, ...] = CLASSES,
    max_epochs: int = 40,
    seed: int = 1,
    with_test: bool = True,
    with_exports: bool = True,
    empty_history: bool = False,
    files: tuple[str, ...] = (
        "model_info.json",
        "training_history.json",
        "splits.json",
        "config.yaml",
        "training_log.txt",
    ),
) -> Path:
    """Write a run folder ``root/name`` and return it.

    Args:
        root: where to create the run folder.
        name: run name (folder name and ``run_name``).
        classes: class names (any text, to test escaping).
        max_epochs: max epochs; early stopping usually ends the run earlier (20-40 epochs).
        seed: noise seed of the simulated curves.
        with_test: include test metrics (confusion matrix, per-class table).
        with_exports: include ONNX/TorchScript exports with checksums.
        empty_history: write a history without epochs.
        files: which of the run folder's files to write.
    """
    classes = list(classes)
    run = Path(root) / name
    run.mkdir(parents=True, exist_ok=True)
    history = simulate_history(max_epochs, seed)
    if empty_history:
        history = {"monitor": "val_loss", "max_epochs": max_epochs, "epochs": []}
    info = model_info(name, classes, history.get("best_epoch"), with_test=with_test)
    if with_exports:
        export = run / "export"
        export.mkdir(exist_ok=True)
        info["exports"] = {}
        for fmt, file in (("onnx", "model.onnx"), ("torchscript", "model.ts.pt")):
            blob = (fmt * 4096).encode()
            (export / file).write_bytes(blob)
            info["exports"][fmt] = {
                "path": f"export/{file}",
                "sha256": hashlib.sha256(blob).hexdigest(),
                "size_bytes": len(blob),
                "export_time_s": 8.1,
                "verification": {
                    "passed": True,
                    "max_abs_diff": 2.1e-7,
                    "batch_sizes": [1, 5],
                    "runtime": "onnxruntime 1.22" if fmt == "onnx" else "torch.jit",
                },
            }
    recordings = []
    for c in classes:
        for k in range(24):
            split = "train" if k < 16 else "val" if k < 20 else "test"
            recordings.append(
                {
                    "path": f"{c}/rec_{k:03d}.csv",
                    "label": c,
                    "group": None,
                    "n_samples": 16384,
                    "segments": [{"split": split, "start": 0, "stop": 16384}],
                }
            )
    splits = {
        "strategy": "recording",
        "seed": 42,
        "fractions": {"train": 0.7, "val": 0.15, "test": 0.15},
        "window": 1024,
        "hop": 512,
        "gap_samples": 0,
        "recordings": recordings,
    }
    contents = {
        "model_info.json": json.dumps(info, indent=2, ensure_ascii=False),
        "training_history.json": json.dumps(history, indent=2),
        "splits.json": json.dumps(splits, indent=2, ensure_ascii=False),
        "config.yaml": yaml.safe_dump(
            config_dict(name, classes, max_epochs), sort_keys=False, allow_unicode=True
        ),
        "training_log.txt": training_log(history, classes) if not empty_history else "",
    }
    for file in files:
        (run / file).write_text(contents[file], encoding="utf-8")
    return run


def write_attribution(run: Path, classes: list[str] | tuple[str, ...] = CLASSES) -> Path:
    """``attribution.json`` of the fake run: 2 Hz rows to 300 Hz, each class's evidence at one
    floor and frequency (class ``k`` at ``floor<k % 3 + 1>``, ``60 + 40 k`` Hz) over a weak floor.
    """
    from damage_lightning.evaluation.attribution import Attribution, ClassAttribution

    channels = ["base", "floor1", "floor2", "floor3"]
    freq = [2.0 * i for i in range(151)]
    records = []
    for k, name in enumerate(classes):
        values = [[0.001 * ((i * 7 + c) % 5 - 1) for i in range(151)] for c in range(4)]
        peak = (60 + 40 * k) // 2 % 151
        for i in range(peak - 2, peak + 3):
            values[k % 3 + 1][i % 151] = 0.5
        records.append(
            ClassAttribution(
                name=name,
                windows=8,
                recordings=[f"{name}/rec_016.csv", f"{name}/rec_020.csv"],
                log_odds=4.0,
                baseline_log_odds=-2.0,
                values=values,
            )
        )
    result = Attribution(
        method="integrated_gradients",
        target="log-odds of the true class: logit - logsumexp(other logits)",
        baseline=f"the mean training spectrogram of {classes[-1]!r}",
        reference_class=classes[-1],
        split="test",
        windows_per_class=8,
        steps=16,
        band_hz=10.0,
        channels=channels,
        freq_hz=freq,
        freq_low_hz=[max(f - 1, 0.0) for f in freq],
        freq_high_hz=[f + 1 for f in freq],
        classes=records,
        wall_time_s=2.5,
    )
    return result.write(run / "attribution.json")
