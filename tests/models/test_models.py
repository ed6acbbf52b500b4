"""Tests of the LightningModule base and the CNN / ResNet networks on tiny generated data."""

from __future__ import annotations

import copy
import functools
from typing import Any

import lightning
import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from lightning import LightningDataModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from damage_lightning.models import CNNClassifier, DamageClassifier, ResNetClassifier
from damage_lightning.models.resnet import residual_block

SHAPE = (4, 16, 9)
# Names that would break logger keys; the keys use the class index instead.
CLASSES = ["undamaged", "story 1/stiffness loss", "bumper:contact"]
N_TRAIN, N_VAL, N_TEST = 96, 30, 33


def spectrograms(n: int, seed: int, shape: tuple[int, int, int] = SHAPE) -> TensorDataset:
    """Noise plus a raised frequency band whose position depends on the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CLASSES)
    x = torch.randn(n, *shape, generator=g)
    band = shape[1] // len(CLASSES)
    for c in range(len(CLASSES)):
        x[y == c, :, c * band : (c + 1) * band, :] += 2.0
    return TensorDataset(x, y)


def loader(dataset: TensorDataset, shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=16, shuffle=shuffle)


def tiny_cnn(**kwargs: Any) -> CNNClassifier:
    args = dict(
        widths=[8, 16], num_classes=3, in_channels=SHAPE[0], input_shape=SHAPE,
        class_names=CLASSES, lr=1e-2,
    )  # fmt: skip
    return CNNClassifier(**(args | kwargs))


def trainer(**kwargs: Any) -> Trainer:
    args = dict(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    return Trainer(**(args | kwargs))


class EpochLosses(Callback):
    def __init__(self) -> None:
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        self.train_loss.append(float(trainer.callback_metrics["train_loss"]))
        self.val_loss.append(float(trainer.callback_metrics["val_loss"]))


@pytest.fixture(scope="module")
def fitted() -> tuple[Trainer, CNNClassifier, EpochLosses]:
    lightning.seed_everything(0, verbose=False)
    model = tiny_cnn()
    losses = EpochLosses()
    t = trainer(max_epochs=3, callbacks=[losses])
    t.fit(model, loader(spectrograms(N_TRAIN, 0), shuffle=True), loader(spectrograms(N_VAL, 1)))
    return t, model, losses


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("cls", [CNNClassifier, ResNetClassifier])
@pytest.mark.parametrize(
    "shape", [(4, 64, 17), (2, 64, 17), (1, 64, 65), (3, 5, 1), (4, 1, 2), (2, 7, 3)]
)
def test_forward_shapes_default_widths_small_inputs(cls: type, shape: tuple[int, ...]) -> None:
    model = cls(num_classes=5, in_channels=shape[0], input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
        single = model(torch.randn(1, *shape))
    assert out.shape == (3, 5)
    assert single.shape == (1, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", [CNNClassifier, ResNetClassifier])
def test_unknown_input_shape_assumes_a_large_input(cls: type) -> None:
    model = cls(num_classes=2, in_channels=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, 64, 33)).shape == (2, 2)


def test_cnn_pools_only_axes_that_are_long_enough() -> None:
    net = CNNClassifier(in_channels=2, input_shape=(2, 64, 3)).net
    pools = [m for m in net if isinstance(m, nn.MaxPool2d)]
    # 64 frequency bins halve four times; 3 frames halve once, then stay at 1.
    assert [tuple(p.kernel_size) for p in pools] == [(2, 2), (2, 1), (2, 1), (2, 1)]
    avg = CNNClassifier(in_channels=2, input_shape=(2, 64, 3), pool="avg").net
    assert sum(isinstance(m, nn.AvgPool2d) for m in avg) == 4


def test_residual_block_projects_only_when_the_shape_changes() -> None:
    same = residual_block(8, 8)
    assert isinstance(same.shortcut, nn.Identity)
    wider = residual_block(8, 16)
    strided = residual_block(8, 8, stride=2)
    assert not isinstance(wider.shortcut, nn.Identity)
    assert not isinstance(strided.shortcut, nn.Identity)
    x = torch.randn(2, 8, 9, 5)
    assert same(x).shape == (2, 8, 9, 5)
    assert wider(x).shape == (2, 16, 9, 5)
    assert strided(x).shape == (2, 8, 5, 3)
    assert (strided(x) >= 0).all()  # the block ends with a ReLU


def test_parameter_counts_follow_the_widths() -> None:
    kwargs = dict(num_classes=3, in_channels=4, input_shape=(4, 64, 17))

    def cnn_count(widths: list[int]) -> int:
        # 3x3 conv weights (no bias) + batch-norm affine per block, then the linear head
        channels = [4, *widths]
        blocks = sum(a * b * 9 + 2 * b for a, b in zip(channels, widths, strict=False))
        return blocks + widths[-1] * 3 + 3

    small_cnn = n_params(CNNClassifier(widths=[8, 16], **kwargs))
    default_cnn = n_params(CNNClassifier(**kwargs))
    assert small_cnn == cnn_count([8, 16])
    assert default_cnn == cnn_count([32, 64, 128, 256])
    small_resnet = n_params(
        ResNetClassifier(stem_width=8, widths=[8, 16], blocks_per_stage=[1, 1], **kwargs)
    )
    default_resnet = n_params(ResNetClassifier(**kwargs))
    deeper = n_params(ResNetClassifier(blocks_per_stage=[2, 2, 3, 2], **kwargs))
    assert small_resnet < default_cnn < default_resnet < deeper


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (CNNClassifier, {"num_classes": 1}, "num_classes"),
        (CNNClassifier, {"num_classes": 3, "class_names": ["a", "b"]}, "class_names has 2"),
        (CNNClassifier, {"class_names": ["a", "a"]}, "unique"),
        (CNNClassifier, {"in_channels": 2, "input_shape": (4, 64, 17)}, "in_channels is 2"),
        (CNNClassifier, {"widths": []}, "widths"),
        (CNNClassifier, {"kernel_size": 4}, "odd"),
        (CNNClassifier, {"label_smoothing": 1.0}, "label_smoothing"),
        (ResNetClassifier, {"widths": [8, 16], "blocks_per_stage": [1]}, "blocks_per_stage"),
        (ResNetClassifier, {"dropout": 1.0}, "dropout"),
        (ResNetClassifier, {"downsample": "avg"}, "downsample must be one of maxpool, stride"),
    ],
)
def test_bad_arguments_are_named(cls: type, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_base_class_asks_for_build_network() -> None:
    with pytest.raises(TypeError, match="must implement build_network"):
        DamageClassifier()


def test_resnet_downsampling_keeps_weights_and_map_sizes() -> None:
    # The same parameters either way (a checkpoint's tensors fit both), the same output, and
    # max pooling only where a stride-2 block would halve the map.
    kwargs = dict(num_classes=3, in_channels=4, input_shape=(4, 64, 3))
    pooled = ResNetClassifier(downsample="maxpool", **kwargs)
    strided = ResNetClassifier(downsample="stride", **kwargs)
    assert {k: v.shape for k, v in pooled.state_dict().items()} == {
        k: v.shape for k, v in strided.state_dict().items()
    }
    pools = [m for m in pooled.net.modules() if isinstance(m, nn.MaxPool2d)]
    # stem 64x3 -> 32x2, stage 2 -> 16x1, stages 3 and 4 halve frequency only
    assert [p.stride for p in pools] == [(2, 2), (2, 2), (2, 1), (2, 1)]
    strides = [m.stride for m in strided.net.modules() if isinstance(m, nn.Conv2d)]
    assert all(s == (1, 1) for m in pooled.net.modules() if isinstance(m, nn.Conv2d)
               for s in [m.stride])  # fmt: skip
    assert strides.count((2, 1)) == 4  # stages 3 and 4: first convolution and projection
    x = torch.randn(2, 4, 64, 3)
    assert pooled.eval()(x).shape == strided.eval()(x).shape == (2, 3)


def test_resnet_maxpool_features_move_less_than_strided_under_a_one_bin_shift() -> None:
    # Why configs/resnet.yaml max-pools: a mode one frequency bin higher (a small stiffness
    # or speed change) should not look like another input. Same weights in both networks.
    torch.manual_seed(0)
    kwargs = dict(num_classes=3, in_channels=1, input_shape=(1, 64, 16))
    pooled = ResNetClassifier(downsample="maxpool", **kwargs).eval()
    strided = ResNetClassifier(downsample="stride", **kwargs).eval()
    strided.load_state_dict(pooled.state_dict())
    x = torch.randn(16, 1, 64, 16)
    x[:, :, 20:23] += 6.0  # a strong narrow mode
    shifted = torch.roll(x, 1, dims=2)

    def change(model: ResNetClassifier) -> float:
        features = model.net[:-2]  # without dropout and the linear head
        with torch.no_grad():
            a, b = features(x), features(shifted)
        return float(((a - b).norm(dim=1) / a.norm(dim=1)).mean())

    assert change(pooled) < 0.8 * change(strided)


# -------------------------------------------------------------------------------- export
@pytest.mark.parametrize(
    ("cls", "extra"),
    [(CNNClassifier, {}), (ResNetClassifier, {}), (ResNetClassifier, {"downsample": "maxpool"})],
)
def test_networks_export_to_torchscript_and_onnx(cls: type, extra: dict[str, Any]) -> None:
    shape = (4, 64, 17)
    net = cls(num_classes=3, in_channels=4, input_shape=shape, **extra).net.eval()
    example = torch.randn(3, *shape)
    scripted = torch.jit.script(net)
    traced = torch.jit.trace(net, example)
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        opset_version=18,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
    )
    session = onnxruntime.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    for batch in (1, 5):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = net(x)
            torch.testing.assert_close(scripted(x), expected, rtol=0, atol=1e-5)
            torch.testing.assert_close(traced(x), expected, rtol=0, atol=1e-5)
        (onnx_out,) = session.run(None, {name: x.numpy()})
        assert np.abs(onnx_out - expected.numpy()).max() <= 1e-4


# --------------------------------------------------------------------- training, metrics
def test_fit_decreases_the_loss_and_logs_the_monitored_names(fitted) -> None:
    t, model, losses = fitted
    assert len(losses.train_loss) == 3
    assert losses.train_loss[-1] < losses.train_loss[0]
    assert losses.val_loss[-1] < losses.val_loss[0]
    logged = t.callback_metrics
    for key in ("train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1"):
        assert key in logged, key
    for i in range(len(CLASSES)):
        assert f"val_recall_{i}" in logged
        assert f"val_precision_{i}" in logged
    assert not any(k.endswith(("_step", "_epoch")) for k in logged)
    assert float(logged["val_acc"]) > 0.8  # the band position is easy to learn
    # val_results mirror the last validation epoch, keyed by class name.
    assert model.val_results["loss"] == pytest.approx(float(logged["val_loss"]), rel=1e-5)
    assert model.val_results["accuracy"] == pytest.approx(float(logged["val_acc"]))
    assert list(model.val_results["per_class"]) == CLASSES
    assert sum(map(sum, model.val_results["confusion_matrix"])) == N_VAL


def test_test_results_are_consistent_and_reset_between_runs(fitted) -> None:
    t, model, _ = fitted
    test_loader = loader(spectrograms(N_TEST, 2))
    (logged,) = t.test(model, test_loader, verbose=False)
    results = model.test_results
    assert set(results) == {"loss", "accuracy", "f1_macro", "per_class", "confusion_matrix"}
    matrix = np.array(results["confusion_matrix"])
    assert matrix.shape == (3, 3)
    assert matrix.sum() == N_TEST
    assert results["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert results["loss"] == pytest.approx(logged["test_loss"], rel=1e-5)
    assert results["f1_macro"] == pytest.approx(logged["test_f1"], rel=1e-5)
    f1s = []
    for i, name in enumerate(CLASSES):
        stats = results["per_class"][name]
        assert stats["support"] == matrix[i].sum() == 11
        assert stats["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum())
        predicted = matrix[:, i].sum()
        assert stats["precision"] == pytest.approx(matrix[i, i] / predicted if predicted else 0.0)
        assert logged[f"test_precision_{i}"] == pytest.approx(stats["precision"], abs=1e-6)
        assert logged[f"test_recall_{i}"] == pytest.approx(stats["recall"], abs=1e-6)
        f1s.append(stats["f1"])
    assert results["f1_macro"] == pytest.approx(np.mean(f1s), abs=1e-6)
    # Plain Python, ready for JSON.
    assert all(type(v) is int for row in results["confusion_matrix"] for v in row)

    # A second run starts from reset metrics: same numbers, not accumulated ones.
    t.test(model, test_loader, verbose=False)
    assert model.test_results == results


def test_predict_step_returns_cpu_predictions(fitted) -> None:
    t, model, _ = fitted
    data = spectrograms(10, 3)
    recording = torch.arange(10) // 4
    start = torch.arange(10) * 128
    label = torch.full((10,), -1)
    predict_data = TensorDataset(data.tensors[0], label, recording, start)
    batches = t.predict(model, DataLoader(predict_data, batch_size=4))
    assert len(batches) == 3
    out = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    assert set(out) == {"logits", "probabilities", "predicted", "label", "recording", "start"}
    assert out["probabilities"].dtype == torch.float32
    assert out["logits"].shape == out["probabilities"].shape == (10, 3)
    torch.testing.assert_close(out["probabilities"].sum(dim=1), torch.ones(10))
    assert torch.equal(out["predicted"], out["logits"].argmax(dim=1))
    assert torch.equal(out["label"], label)
    assert torch.equal(out["recording"], recording)
    assert torch.equal(out["start"], start)
    assert all(v.device.type == "cpu" for v in out.values())
    # The fitted network separates the classes of fresh data.
    assert (out["predicted"] == data.tensors[1]).float().mean() > 0.8


def test_checkpoint_round_trip_keeps_hyperparameters_and_outputs(fitted, tmp_path) -> None:
    t, model, _ = fitted
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    loaded = CNNClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    assert loaded.hparams.widths == [8, 16]
    assert loaded.class_names == CLASSES
    x = spectrograms(4, 5).tensors[0]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_configure_optimizers_and_plateau_reduction() -> None:
    model = tiny_cnn(
        optimizer="adam", lr=0.01, weight_decay=0.0, lr_factor=0.1, lr_patience=2, min_lr=0.0005
    )
    config = model.configure_optimizers()
    optimizer = config["optimizer"]
    assert type(optimizer) is torch.optim.Adam
    assert type(tiny_cnn().configure_optimizers()["optimizer"]) is torch.optim.AdamW
    scheduler_config = config["lr_scheduler"]
    assert scheduler_config["monitor"] == "val_loss"
    assert scheduler_config["interval"] == "epoch"
    assert scheduler_config["frequency"] == 1
    scheduler = scheduler_config["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def lr() -> float:
        return optimizer.param_groups[0]["lr"]

    scheduler.step(1.0)
    scheduler.step(0.9)  # improving: no reduction
    scheduler.step(0.95)
    scheduler.step(0.95)  # two epochs without improvement: still patient
    assert lr() == pytest.approx(0.01)
    scheduler.step(0.95)  # the third exceeds lr_patience=2
    assert lr() == pytest.approx(0.001)
    for _ in range(4):
        scheduler.step(0.95)
    assert lr() == pytest.approx(0.0005)  # never below min_lr


class WeightedData(LightningDataModule):
    def __init__(self, weights: torch.Tensor | None) -> None:
        super().__init__()
        if weights is not None:
            self.class_weights = weights

    def val_dataloader(self) -> DataLoader:
        return loader(spectrograms(N_VAL, 1))


def test_class_weights_from_the_datamodule_change_the_loss() -> None:
    torch.manual_seed(0)
    plain = tiny_cnn()
    weighted = tiny_cnn(use_class_weights=True, label_smoothing=0.1)
    weighted.load_state_dict(plain.state_dict())
    weights = torch.tensor([0.5, 1.0, 4.0])
    (plain_metrics,) = trainer().validate(plain, datamodule=WeightedData(weights), verbose=False)
    (weighted_metrics,) = trainer().validate(
        weighted, datamodule=WeightedData(weights), verbose=False
    )
    assert weighted_metrics["val_loss"] != pytest.approx(plain_metrics["val_loss"], rel=1e-3)
    assert torch.equal(weighted.class_weights, weights)

    x, y = spectrograms(N_VAL, 1).tensors
    weighted.eval()
    with torch.no_grad():
        logits = weighted(x)
    # val_loss is the batch-size-weighted mean of the per-batch weighted cross-entropy.
    per_batch = [
        (F.cross_entropy(lg, t, weight=weights, label_smoothing=0.1), len(t))
        for lg, t in zip(logits.split(16), y.split(16), strict=True)
    ]
    expected = sum(float(loss) * n for loss, n in per_batch) / N_VAL
    assert weighted_metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    # The weights are not part of the checkpointed state.
    tiny_cnn().load_state_dict(weighted.state_dict())


def test_class_weights_without_a_datamodule_are_a_clear_error() -> None:
    model = tiny_cnn(use_class_weights=True)
    with pytest.raises(
        RuntimeError,
        match=r"needs class weights from the DataModule: with DamageDataModule set data\.class",
    ):
        trainer().validate(model, loader(spectrograms(N_VAL, 1)), verbose=False)
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        trainer().validate(model, datamodule=WeightedData(torch.ones(2)), verbose=False)


def test_non_finite_training_loss_raises() -> None:
    data = spectrograms(32, 0)
    data.tensors[0][:] = float("nan")
    with pytest.raises(RuntimeError, match="NaN/inf at epoch 0 step 0; lower the learning rate"):
        trainer(max_epochs=1).fit(tiny_cnn(), loader(data))


# ------------------------------------------------------------ configuration and options
@pytest.mark.parametrize("cls", [CNNClassifier, ResNetClassifier])
def test_jsonargparse_sees_the_base_arguments_through_kwargs(cls: type) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "model")
    cfg = parser.parse_args(
        ["--model.lr", "0.01", "--model.dropout", "0.2", "--model.optimizer", "adam",
         "--model.widths", "[8, 16]", "--model.num_classes", "3"]
        + (["--model.blocks_per_stage", "[1, 1]"] if cls is ResNetClassifier else [])
    )  # fmt: skip
    model = parser.instantiate(cfg).model
    assert isinstance(model, cls)
    assert model.hparams.lr == 0.01
    assert model.hparams.dropout == 0.2
    assert model.hparams.optimizer == "adam"
    assert model.hparams.widths == [8, 16]
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(Exception, match="optimizer"):
        parser.parse_args(["--model.optimizer", "sgd"])


class TinyClassifier(DamageClassifier):
    """A third-party architecture: only the network.

    Args:
        hidden: channels of the convolution.
        **kwargs: DamageClassifier arguments.
    """

    def __init__(self, hidden: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def build_network(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(self.hparams.in_channels, self.hparams.hidden, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(self.hparams.hidden, self.hparams.num_classes),
        )


def test_custom_subclass_trains_with_the_shared_steps() -> None:
    model = TinyClassifier(hidden=6, num_classes=3, in_channels=SHAPE[0], class_names=CLASSES)
    assert model.hparams.hidden == 6
    t = trainer(max_epochs=1)
    t.fit(model, loader(spectrograms(32, 0)), loader(spectrograms(N_VAL, 1)))
    assert {"train_loss", "val_loss", "val_acc", "val_f1"} <= set(t.callback_metrics)
    assert model.net[0].out_channels == 6
    assert sum(map(sum, model.val_results["confusion_matrix"])) == N_VAL


def test_channels_last_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    plain = tiny_cnn().eval()
    fast = tiny_cnn(channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = spectrograms(5, 0).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


def test_compile_keeps_the_plain_network_in_the_state_dict(monkeypatch) -> None:
    # The eager backend exercises the compiled path without minutes of C++ code generation.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch.manual_seed(0)
    plain = tiny_cnn().eval()
    compiled = tiny_cnn(compile=True).eval()
    compiled.load_state_dict(plain.state_dict())
    compiled.configure_model()
    assert compiled._compiled_net is not None
    assert compiled._compiled_net._orig_mod is compiled.net
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in compiled.named_modules()] == [n for n, _ in plain.named_modules()]
    x = spectrograms(5, 0).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x))
    assert copy.deepcopy(compiled)._compiled_net is None
