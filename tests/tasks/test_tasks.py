"""Tests of the backbones, their registry and the tasks built on them, on tiny generated data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, tiny_overrides
from lightning import LightningDataModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from damage_lightning import networks
from damage_lightning.models import CNNClassifier, ResNetClassifier
from damage_lightning.networks import backbone_names, build_backbone, register_backbone
from damage_lightning.tasks import BaseTask, ClassificationTask

SHAPE = (2, 16, 9)
N_CLASSES = 3
# Small arguments per registered backbone; a new backbone adds its entry here.
TINY = {
    "cnn": {"widths": [4, 8]},
    "resnet": {"stem_width": 4, "widths": [4, 8], "blocks_per_stage": [1, 1]},
}


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *SHAPE, generator=g), torch.arange(n) % N_CLASSES)


def loader(n: int = 24, seed: int = 0) -> DataLoader:
    return DataLoader(data(n, seed), batch_size=8)


def trainer(**kwargs: Any) -> Trainer:
    args = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    return Trainer(**(args | kwargs))


def task(cls: type = ClassificationTask, **kwargs: Any) -> Any:
    args = dict(num_classes=N_CLASSES, in_channels=SHAPE[0], input_shape=SHAPE, lr=1e-2)
    return cls(**(args | kwargs))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------ networks, registry
def test_networks_import_without_lightning() -> None:
    code = (
        "import sys, damage_lightning.networks\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'lightning_fabric', 'torchmetrics'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_registry_names_the_backbones_and_refuses_unknown_ones() -> None:
    # "spectrum" (no weights) is the novelty task's embedding; tests/tasks/test_novelty.py.
    assert set(backbone_names()) == {*TINY, "spectrum"}
    with pytest.raises(
        ValueError, match=r"unknown backbone 'vgg'; registered: cnn, resnet, spectrum"
    ):
        build_backbone("vgg", in_channels=1)
    with pytest.raises(ValueError, match=r"backbone 'cnn' takes the arguments .*'widths'"):
        build_backbone("cnn", in_channels=1, widthz=[4])
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("cnn", networks.ResNetBackbone)
    # The task names the bad backbone too.
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        task(backbone="vgg")


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shape", [(2, 16, 9), (1, 64, 33), (3, 5, 1), (2, 1, 2)])
def test_backbone_embedding_has_out_features(name: str, shape: tuple[int, int, int]) -> None:
    backbone = build_backbone(name, shape[0], shape, **TINY[name]).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        embedding = backbone(x)
        scripted = torch.jit.script(backbone)
        torch.testing.assert_close(scripted(x), embedding)
    assert embedding.shape == (3, backbone.out_features)
    assert backbone.out_features == TINY[name]["widths"][-1]


def test_backbone_arguments_are_checked_by_the_backbone() -> None:
    with pytest.raises(ValueError, match="odd"):
        build_backbone("cnn", 1, kernel_size=4)
    with pytest.raises(ValueError, match="blocks_per_stage"):
        task(backbone="resnet", backbone_args={"widths": [4, 8], "blocks_per_stage": [1]})


class LinearBackbone(nn.Module):
    """A third-party backbone: mean over time, then a linear map of the frequency profile."""

    def __init__(self, in_channels: int, input_shape: Any = None, features: int = 5) -> None:
        super().__init__()
        self.out_features = features
        self.proj = nn.Linear(in_channels * input_shape[1], features)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.mean(dim=-1).flatten(1))


def test_a_registered_backbone_trains_in_the_classification_task(monkeypatch) -> None:
    monkeypatch.setattr(networks, "_BACKBONES", dict(networks._BACKBONES))
    register_backbone("linear", LinearBackbone)
    model = task(backbone="linear", backbone_args={"features": 6})
    assert isinstance(model.net[0], LinearBackbone)  # not a Sequential: kept whole
    assert model.net[-1].in_features == 6
    t = trainer(fast_dev_run=1)
    t.fit(model, loader(), loader(seed=1))
    assert {"train_loss", "val_loss", "val_acc"} <= set(t.callback_metrics)


# ----------------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("name", sorted(TINY))
def test_classification_task_trains_one_step_with_each_backbone(name: str) -> None:
    torch.manual_seed(0)
    model = task(backbone=name, backbone_args=TINY[name])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = trainer(fast_dev_run=1)
    t.fit(model, loader(), loader(seed=1))
    assert {"train_loss", "train_acc", "val_loss", "val_f1", "val_recall_2"} <= set(
        t.callback_metrics
    )
    assert torch.isfinite(t.callback_metrics["train_loss"])
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert model.hparams.backbone == name
    assert model.hparams.backbone_args == TINY[name]


@pytest.mark.parametrize(
    ("cls", "name"), [(CNNClassifier, "cnn"), (ResNetClassifier, "resnet")], ids=["cnn", "resnet"]
)
def test_named_classifiers_equal_the_task_with_their_backbone(cls: type, name: str) -> None:
    torch.manual_seed(0)
    named = task(cls, dropout=0.1, **TINY[name]).eval()
    generic = task(backbone=name, backbone_args=TINY[name], dropout=0.1).eval()
    assert isinstance(named, ClassificationTask)
    assert n_params(named) == n_params(generic)
    assert list(named.state_dict()) == list(generic.state_dict())
    # The network's keys as before calibration existed, plus the calibration temperature.
    assert all(k.startswith("net.") or k == "temperature" for k in named.state_dict())
    generic.load_state_dict(named.state_dict())
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(generic(x), named(x))
    # The named class keeps its own arguments as hyperparameters, as checkpoints hold them.
    assert "backbone" not in named.hparams and "backbone_args" not in named.hparams
    assert named.hparams.widths == TINY[name]["widths"]


def test_classification_task_checkpoint_rebuilds_the_backbone(tmp_path: Path) -> None:
    args = TINY["resnet"]
    model = task(backbone="resnet", backbone_args=args, class_names=["a", "b", "c"])
    t = trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    t.fit(model, loader(), loader(seed=1))
    path = tmp_path / "task.ckpt"
    t.save_checkpoint(path)
    loaded = ClassificationTask.load_from_checkpoint(path, map_location="cpu").eval()
    assert loaded.hparams.backbone == "resnet"
    assert loaded.hparams.backbone_args == args
    assert loaded.class_names == ["a", "b", "c"]
    model.eval()
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


class DoubledLoss(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return 2 * self.inner(logits, target)


class DoubledLossTask(ClassificationTask):
    """Overrides only the loss; the steps use whatever configure_losses set up."""

    def configure_losses(self) -> None:
        super().configure_losses()
        self.criterion = DoubledLoss(self.criterion)


def test_overriding_configure_losses_changes_the_loss() -> None:
    torch.manual_seed(0)
    plain = task(backbone="cnn", backbone_args=TINY["cnn"])
    doubled = task(DoubledLossTask, backbone="cnn", backbone_args=TINY["cnn"])
    doubled.load_state_dict(plain.state_dict())
    (p,) = trainer().validate(plain, loader(seed=1), verbose=False)
    (d,) = trainer().validate(doubled, loader(seed=1), verbose=False)
    assert d["val_loss"] == pytest.approx(2 * p["val_loss"], rel=1e-6)
    assert d["val_acc"] == pytest.approx(p["val_acc"])


class MaxF1Task(ClassificationTask):
    """Schedules on validation F1, which should go up."""

    monitor = "val_f1"
    mode = "max"


def test_monitor_and_mode_class_attributes_drive_the_scheduler() -> None:
    default = task().configure_optimizers()["lr_scheduler"]
    assert default["monitor"] == BaseTask.monitor == "val_loss"
    assert default["scheduler"].mode == BaseTask.mode == "min"
    custom = task(MaxF1Task).configure_optimizers()["lr_scheduler"]
    assert custom["monitor"] == "val_f1"
    assert custom["scheduler"].mode == "max"


class OwnNetworkTask(ClassificationTask):
    """Builds its own network through the configure_models override point."""

    def configure_models(self) -> None:
        hp = self.hparams
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(hp.in_channels * 16 * 9, hp.num_classes))


def test_overriding_configure_models_replaces_the_network() -> None:
    model = task(OwnNetworkTask)
    assert n_params(model) == SHAPE[0] * 16 * 9 * N_CLASSES + N_CLASSES
    t = trainer(fast_dev_run=1)
    t.fit(model, loader(), loader(seed=1))
    assert "val_loss" in t.callback_metrics


def test_base_task_needs_configure_models() -> None:
    with pytest.raises(TypeError, match="abstract"):
        BaseTask()


class MethodWeights(LightningDataModule):
    """A DataModule whose weights come from a method; ``class_weights`` is only its option."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.class_weights = True
        self.weights = weights

    def class_weight_tensor(self) -> Tensor:
        return self.weights

    def val_dataloader(self) -> DataLoader:
        return loader(seed=1)


def test_class_weights_come_from_the_datamodule_method() -> None:
    weights = torch.tensor([0.5, 1.0, 4.0])
    model = task(use_class_weights=True)
    trainer().validate(model, datamodule=MethodWeights(weights), verbose=False)
    assert torch.equal(model.class_weights, weights)
    assert "criterion.weight" not in model.state_dict()


# --------------------------------------------------------------------------------- the CLI
def test_cli_trains_the_task_by_class_path_and_backbone(
    tiny_data: Path, cache_dir: Path, tmp_path: Path, capsys
) -> None:
    from damage_lightning.cli import main
    from damage_lightning.export import load_from_checkpoint
    from damage_lightning.networks.resnet import ResidualBlock

    config = tmp_path / "task.yaml"
    config.write_text(
        "model:\n"
        "  class_path: damage_lightning.tasks.ClassificationTask\n"
        "  init_args:\n"
        "    backbone: resnet\n"
        "    backbone_args: {stem_width: 4, widths: [4, 8], blocks_per_stage: [1, 1]}\n"
        "    dropout: 0.1\n"
    )
    root = tmp_path / "models"
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "cnn.yaml"),
            "--config",
            str(config),
            *tiny_overrides(tiny_data, root, cache_dir, epochs=1),
            "--run_name",
            "task",
        ]
    )
    assert (root / "task" / "export" / "model.onnx").is_file()
    info = json.loads((root / "task" / "model_info.json").read_text())
    assert info["model"]["class_path"] == "damage_lightning.tasks.classification.ClassificationTask"
    assert info["model"]["hyperparameters"]["backbone"] == "resnet"
    assert info["model"]["hyperparameters"]["backbone_args"]["widths"] == [4, 8]
    model, _, _ = load_from_checkpoint(root / "task" / "checkpoints" / "best.ckpt")
    assert isinstance(model, ClassificationTask)
    assert sum(isinstance(m, ResidualBlock) for m in model.net) == 2
    assert model.hparams.dropout == 0.1
