"""Test-only classes that the CLI loads by class_path (a model and a probe callback)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn

from damage_lightning.models.base import DamageClassifier


class TinyNet(DamageClassifier):
    """A model defined outside the package: one convolution and a linear head.

    Args:
        hidden: channels of the convolution.
        **kwargs: DamageClassifier arguments.
    """

    def __init__(self, hidden: int = 4, **kwargs):
        self.hidden = hidden
        super().__init__(**kwargs)

    def build_network(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(self.hparams.in_channels, self.hidden, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(self.hidden, self.hparams.num_classes),
        )


class ResumeProbe(Callback):
    """Writes the state a resumed run starts from, to compare it with the checkpoint.

    Args:
        path: JSON file to write at the start of training.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module) -> None:
        es = next(cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping))
        sched = trainer.lr_scheduler_configs[0].scheduler
        opt = trainer.optimizers[0]
        steps = [float(s["step"]) for s in opt.state.values() if "step" in s]
        state = {
            "current_epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "es_wait_count": es.wait_count,
            "es_best_score": float(es.best_score),
            "sched_num_bad_epochs": sched.num_bad_epochs,
            "sched_best": float(sched.best),
            "lr": float(opt.param_groups[0]["lr"]),
            "optimizer_step": max(steps) if steps else 0.0,
        }
        self.path.write_text(json.dumps(state))


def checkpoint_state(path: Path) -> dict:
    """The same facts read straight from a checkpoint file."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    es = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EarlyStopping"))
    sched = ckpt["lr_schedulers"][0]
    opt = ckpt["optimizer_states"][0]
    steps = [float(s["step"]) for s in opt["state"].values() if "step" in s]
    return {
        "current_epoch": ckpt["epoch"] + 1,
        "global_step": ckpt["global_step"],
        "es_wait_count": es["wait_count"],
        "es_best_score": float(es["best_score"]),
        "sched_num_bad_epochs": sched["num_bad_epochs"],
        "sched_best": float(sched["best"]),
        "lr": float(opt["param_groups"][0]["lr"]),
        "optimizer_step": max(steps) if steps else 0.0,
    }
