"""Waveform augmentations: each does what it says, draws are seeded, and only training batches
(never validation, test or predict) are augmented by the DataModule."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from conftest import REPO, tiny_model, tiny_overrides
from torch import nn

from damage_lightning.cli import main
from damage_lightning.data.augment import (
    AugmentSettings,
    augment,
    batch_seed,
    change_speed,
)
from damage_lightning.data.datamodule import DamageDataModule

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
ALL = AugmentSettings(gain_db=(-6.0, 6.0), snr_db=(10.0, 30.0), shift=0.5, speed=0.05)


def _windows(batch: int = 8, channels: int = 2, length: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_batch_other_epoch_or_batch_other_draws(device):
    x = _windows().to(device)
    first = augment(x, ALL, batch_seed(42, epoch=0, batch=3))
    again = augment(x, ALL, batch_seed(42, epoch=0, batch=3))
    assert torch.equal(first.waveform, again.waveform) and torch.equal(first.speed, again.speed)
    for other in (batch_seed(42, 1, 3), batch_seed(42, 0, 4), batch_seed(7, 0, 3)):
        assert not torch.allclose(augment(x, ALL, other).waveform, first.waveform)
    # The input is left as it was, and the output stays where the batch is.
    assert torch.equal(x, _windows().to(device))
    assert first.waveform.device == x.device and first.waveform.dtype == x.dtype
    assert first.speed.device == x.device


def test_each_augmentation_draws_from_its_own_stream():
    x = _windows()
    seed = batch_seed(0, 0, 0)
    shifted = augment(x, AugmentSettings(shift=0.5), seed).waveform
    with_gain = augment(x, AugmentSettings(shift=0.5, gain_db=(3.0, 3.0)), seed).waveform
    torch.testing.assert_close(with_gain, shifted * 10 ** (3.0 / 20))


def test_gain_multiplies_by_the_drawn_decibels():
    x = _windows()
    out = augment(x, AugmentSettings(gain_db=(-6.0, 6.0)), seed=1).waveform
    ratio_db = 20 * torch.log10(out.norm(dim=(1, 2)) / x.norm(dim=(1, 2)))
    assert ((ratio_db >= -6.0 - 1e-4) & (ratio_db <= 6.0 + 1e-4)).all()
    assert ratio_db.std() > 1.0  # drawn per window, not one gain for the batch
    # All channels of a window alike.
    per_channel = out.norm(dim=2) / x.norm(dim=2)
    torch.testing.assert_close(per_channel[:, 0], per_channel[:, 1])


def test_noise_is_added_at_the_requested_snr():
    x = _windows(batch=16) + 3.0  # an offset too: the SNR is of the whole signal's energy
    out = augment(x, AugmentSettings(snr_db=(20.0, 20.0)), seed=2).waveform
    noise = out - x
    snr = 10 * torch.log10(x.pow(2).sum(-1) / noise.pow(2).sum(-1))
    torch.testing.assert_close(snr, torch.full_like(snr, 20.0), atol=1e-3, rtol=0)
    ranged = augment(x, AugmentSettings(snr_db=(5.0, 15.0)), seed=2).waveform
    snr = 10 * torch.log10(x.pow(2).sum(-1) / (ranged - x).pow(2).sum(-1))
    assert ((snr > 5.0 - 1e-3) & (snr < 15.0 + 1e-3)).all() and snr.std() > 1.0
    # Roughly white: the noise of one window is uncorrelated with its neighbour sample.
    n = noise[:, 0]
    lag1 = (n[:, 1:] * n[:, :-1]).mean() / n.pow(2).mean()
    assert abs(float(lag1)) < 0.05


def test_shift_rolls_each_window_by_at_most_the_share():
    x = _windows(batch=32, length=200)
    out = augment(x, AugmentSettings(shift=0.1), seed=3).waveform
    shifts = []
    for i in range(len(x)):
        found = [k for k in range(-20, 21) if torch.equal(torch.roll(x[i], -k, dims=-1), out[i])]
        assert len(found) == 1, f"window {i} is not a roll of at most 20 samples"
        shifts.append(found[0])
    assert len(set(shifts)) > 5 and min(shifts) < 0 < max(shifts)


def test_speed_moves_a_tones_frequency_by_the_drawn_factor():
    fs, length, tone = 4096.0, 4096, 400.0  # 1 Hz bins
    t = torch.arange(length) / fs
    x = torch.sin(2 * math.pi * tone * t).expand(16, 1, length).contiguous()
    result = augment(x, AugmentSettings(speed=0.05), seed=4)
    peaks = torch.fft.rfft(result.waveform[:, 0]).abs().argmax(dim=-1).float()
    torch.testing.assert_close(peaks, tone * result.speed, atol=1.0, rtol=0)
    assert ((result.speed >= 0.95) & (result.speed <= 1.05)).all() and result.speed.std() > 0.01
    # A factor of one changes nothing (up to float32 rounding of the sample positions).
    torch.testing.assert_close(change_speed(x[:2], torch.ones(2)), x[:2], atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("settings", "option"),
    [
        ({"gain_db": (6.0, -6.0)}, "augment_gain_db"),
        ({"snr_db": (30.0, 10.0)}, "augment_snr_db"),
        ({"shift": 1.5}, "augment_shift"),
        ({"speed": -0.1}, "augment_speed"),
    ],
)
def test_bad_settings_are_refused_by_option_name(settings, option):
    with pytest.raises(ValueError, match=option):
        AugmentSettings(**settings)


class _Recorder(pl.LightningModule):
    """Keeps every spectrogram batch each stage sees; learns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": [], "pred": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].clone())
        return self.w * batch[0].mean()

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].clone())

    def test_step(self, batch, batch_idx):
        self.seen["test"].append(batch[0].clone())

    def predict_step(self, batch, batch_idx):
        self.seen["pred"].append(batch[0].clone())
        return batch[0].shape[0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _run(tiny_data, cache_dir, **augment_options) -> tuple[_Recorder, DamageDataModule]:
    dm = DamageDataModule(
        data_dir=str(tiny_data),
        cache_dir=str(cache_dir),
        window=256,
        hop=128,
        n_fft=64,
        hop_length=16,
        f_max=None,
        batch_size=8,
        **augment_options,
    )
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        limit_predict_batches=2,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    trainer.predict(model, datamodule=dm)
    return model, dm


def test_only_training_batches_are_augmented_and_reproducibly(tiny_data, cache_dir):
    options = {
        "augment_gain_db": (-6.0, 6.0),
        "augment_snr_db": (10.0, 30.0),
        "augment_shift": 0.5,
        "augment_speed": 0.05,
    }
    plain, _ = _run(tiny_data, cache_dir)
    first, dm = _run(tiny_data, cache_dir, **options)
    again, _ = _run(tiny_data, cache_dir, **options)
    assert len(first.seen["train"]) == 6  # two epochs of three batches
    for a, b in zip(first.seen["train"], again.seen["train"], strict=True):
        assert torch.equal(a, b)  # same seed, same augmented batches
    for a, b in zip(first.seen["train"], plain.seen["train"], strict=True):
        assert a.shape == b.shape and not torch.allclose(a, b)  # and they are augmented
    for stage in ("val", "test", "pred"):
        assert first.seen[stage], stage
        for a, b in zip(first.seen[stage], plain.seen[stage], strict=True):
            assert torch.equal(a, b), f"{stage} batches must not be augmented"
    # The notebook view is plain too.
    spec, _ = dm.spectrogram_batch("val")
    assert torch.equal(spec, first.seen["val"][0])


def test_augmentation_is_off_by_default():
    assert not DamageDataModule().augment.enabled


def test_augment_options_from_yaml_reach_the_data_and_the_checkpoint(
    tiny_data, cache_dir, tmp_path
):
    config = tmp_path / "augment.yaml"
    config.write_text(
        "data:\n"
        "  augment_gain_db: [-6, 6]\n"
        "  augment_snr_db: [10, 30]\n"
        "  augment_shift: 0.5\n"
        "  augment_speed: 0.05\n"
    )
    root = tmp_path / "models"
    cnn = str(REPO / "configs" / "cnn.yaml")
    args = [*tiny_overrides(tiny_data, root, cache_dir, epochs=1), *tiny_model(cnn)]
    main(["fit", "--config", cnn, "--config", str(config), *args, "--report.enabled", "false"])
    (run,) = root.iterdir()
    # Loadable without unpickling (the options are plain values), and rerunnable from its config.
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    hp = checkpoint["datamodule_hyper_parameters"]
    assert tuple(hp["augment_gain_db"]) == (-6.0, 6.0) and hp["augment_speed"] == 0.05
    saved = (run / "config.yaml").read_text()
    assert "augment_snr_db:" in saved and "augment_shift: 0.5" in saved
