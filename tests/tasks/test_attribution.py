"""Attribution in hertz: exact on toy networks, and physical on the built-in shear frame."""

from __future__ import annotations

import time
from typing import Any

import lightning
import numpy as np
import pytest
import torch
from lightning import Trainer
from torch import Tensor, nn

from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.data.synthetic import (
    DAMPING_RATIO,
    NOMINAL_MASSES,
    NOMINAL_STIFFNESSES,
    ShearFrame,
    generate_dataset,
)
from damage_lightning.evaluation.attribution import Attribution, AttributionOptions
from damage_lightning.models import CNNClassifier
from damage_lightning.tasks.attribution import (
    attribute,
    integrated_gradients,
    log_odds,
    occlusion,
)

SHAPE = (3, 12, 5)  # channels, rows, frames
BAND = (1, slice(4, 7))  # channel 1, rows 4-6: all the toy network looks at


class OneBand(nn.Module):
    """Logits that depend on one band of one channel only (non-linearly), for three classes."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 3 * SHAPE[2], generator=g))

    def forward(self, x: Tensor) -> Tensor:
        c, rows = BAND
        return torch.tanh(x[:, c, rows, :].flatten(1)) @ self.w.T


def toy_batch(n: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    baseline = torch.randn(1, *SHAPE, generator=g, dtype=torch.float64).expand_as(x)
    return x, torch.arange(n) % 3, baseline


def test_log_odds_is_the_log_odds_of_the_softmax() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    target = torch.tensor([0, 2])
    p = logits.softmax(dim=1)[torch.arange(2), target]
    torch.testing.assert_close(log_odds(logits, target), torch.log(p / (1 - p)))


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_a_network_that_reads_one_band_gets_all_attribution_there(method: str) -> None:
    net = OneBand().double()
    x, target, baseline = toy_batch()
    if method == "integrated_gradients":
        values = integrated_gradients(net, x, target, baseline, steps=8)
        inside = np.zeros((SHAPE[0], SHAPE[1]), bool)
        inside[BAND[0], BAND[1]] = True
    else:
        bands = np.repeat(np.arange(4), 3)  # rows 0-2, 3-5, 6-8, 9-11 -> four bands
        bands[4:7] = 4  # the toy's band is a band of its own
        bands[7:] = [2, 2, 3, 3, 3]
        values = occlusion(net, x, target, baseline, bands)
        inside = np.zeros((SHAPE[0], 5), bool)
        inside[BAND[0], 4] = True
    values = values.numpy()
    evidence = np.abs(values[:, inside]).sum(axis=-1)
    assert np.all(evidence > 0.01)
    # Exactly, up to float64 rounding (a batch of another size may round a sum differently;
    # integrated gradients are exactly 0 there): no other cell moves the logits.
    assert np.abs(values[:, ~inside]).max() <= 1e-12 * evidence.min()


def test_integrated_gradients_add_up_to_the_log_odds_change() -> None:
    net = OneBand().double()
    x, target, baseline = toy_batch()
    values = integrated_gradients(net, x, target, baseline, steps=256)
    change = log_odds(net(x), target) - log_odds(net(baseline), target)
    torch.testing.assert_close(values.sum(dim=(1, 2)), change.detach(), atol=1e-4, rtol=0)


def test_occlusion_with_the_baseline_itself_changes_nothing() -> None:
    x, target, _ = toy_batch()
    values = occlusion(OneBand().double(), x, target, x, np.arange(SHAPE[1]) // 3)
    assert np.abs(values.numpy()).max() <= 1e-12  # (float64 rounding of another batch size)


def test_rows_are_placed_in_hertz_from_the_front_end_settings() -> None:
    stft = SpectrogramFrontend(1024.0, 4, kind="stft", n_fft=512, f_max=300.0)
    centre, low, high = stft.row_frequencies()
    assert len(centre) == stft.n_freqs == 151
    np.testing.assert_allclose(centre, np.arange(151) * 2.0)
    np.testing.assert_allclose(high - low, [1.0, *[2.0] * 150])  # the 0 Hz bin is clipped
    mel = SpectrogramFrontend(1024.0, 1, kind="mel", n_fft=512, n_mels=20, f_min=10.0)
    centre, low, high = mel.row_frequencies()
    # Each mel row's centre is where its triangular filter peaks (within an FFT bin).
    bins = np.arange(257) * 1024.0 / 512
    peaks = bins[mel.mel_fb.numpy().argmax(axis=0)]
    np.testing.assert_allclose(centre, peaks, atol=1.0)
    assert low[0] == pytest.approx(10.0) and high[-1] == pytest.approx(512.0)
    np.testing.assert_allclose(low[1:], centre[:-1])


# ----------------------------------------------------------------------------------------------
# Physics: the shear frame's stiffness-loss classes are explained by its modes.


def healthy_twin(meta: dict[str, str]) -> np.ndarray:
    """Natural frequencies of the recording's frame without its damage (same drift and mass)."""
    masses = np.array(NOMINAL_MASSES, dtype=float)
    masses[int(meta["added_mass_floor"]) - 1] *= 1.0 + float(meta["added_mass_fraction"])
    stiffnesses = np.array(NOMINAL_STIFFNESSES) * (1.0 + float(meta["drift"]))
    return ShearFrame(masses, stiffnesses, DAMPING_RATIO).natural_frequencies()


def modal_window(freq_hz: np.ndarray, meta: dict[str, str], bin_hz: float) -> np.ndarray:
    """Rows within reach of a mode of the recording: its own or its healthy twin's.

    A stiffness loss moves mode ``i`` from the healthy ``h_i`` down to ``f_i`` (the manifest's
    ``f<i>_hz``); the evidence of the loss is the peak at ``f_i`` and the missing peak at
    ``h_i``. Each peak is one half-power bandwidth ``2 zeta f`` wide, so the window runs from one
    bandwidth below the lower of the two to one above the higher, plus half a bin for the grid.
    """
    own = np.array([float(meta[f"f{i}_hz"]) for i in (1, 2, 3)])
    inside = np.zeros(len(freq_hz), dtype=bool)
    for f, h in zip(own, healthy_twin(meta), strict=True):
        reach = 2.0 * DAMPING_RATIO * f + bin_hz / 2
        inside |= (freq_hz >= min(f, h) - reach) & (freq_hz <= max(f, h) + reach)
    return inside


def modal_share(result: Attribution, name: str, metadata: dict[str, dict]) -> tuple[float, float]:
    """Share of the class's positive evidence in the modal windows, and the axis share they hold.

    Both are averaged over the class's attributed recordings (each has its own modes).
    """
    evidence = np.clip(result.values(name), 0.0, None).sum(axis=0)
    freq = np.asarray(result.freq_hz)
    bin_hz = float(np.median(np.diff(freq)))
    (record,) = [c for c in result.classes if c.name == name]
    windows = [modal_window(freq, metadata[r], bin_hz) for r in record.recordings]
    share = float(np.mean([evidence[w].sum() / evidence.sum() for w in windows]))
    return share, float(np.mean([w.mean() for w in windows]))


@pytest.fixture(scope="module")
def trained_frame(tmp_path_factory: pytest.TempPathFactory) -> tuple[CNNClassifier, Any]:
    """A small CNN trained for a few epochs on a small built-in frame dataset, default front end."""
    root = tmp_path_factory.mktemp("frame")
    data = generate_dataset(root / "data", seed=3, recordings_per_class=8)
    lightning.seed_everything(0, verbose=False)
    dm = DamageDataModule(data_dir=str(data), cache_dir=str(root / "cache"), hop=512)
    model = CNNClassifier(
        widths=[16, 32, 64],
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        in_channels=dm.in_channels,
        input_shape=dm.input_shape,
        lr=3e-3,
    )
    trainer = Trainer(
        max_epochs=12, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    return model, dm


@pytest.mark.slow
def test_stiffness_loss_evidence_gathers_at_the_natural_frequencies(trained_frame) -> None:
    """More of the evidence lies near the modes than the Hz axis share there; not most of it.

    What the issue asked for ("most attribution within a few Hz of the natural frequencies")
    does not hold, and the data say why: the class difference of the normalised log spectrum is
    itself spread out (a mode shift changes the dB level far down the flanks of a peak, and each
    floor's antiresonances move or stay depending on the damaged story). On the default model
    (configs/cnn.yaml, full built-in data) 23, 32 and 51 % of the evidence of stories 1, 2 and 3
    lie in windows covering 19-20 % of the axis; from a zero baseline story 1 gets 11 %, less
    than its window's share. This test asserts what holds on a small model: pooled over the
    three classes the share in the windows is at least 1.2 times the share of the axis they
    cover (an attribution blind to frequency gives 1.0), and for story 3, the most concentrated
    class on the default model too, 1.5 times.
    """
    model, dm = trained_frame
    assert model.test_results["accuracy"] > 0.8  # an explanation of a guess would mean nothing
    started = time.perf_counter()
    result = attribute(model, dm, AttributionOptions())
    print(f"attribution wall time {time.perf_counter() - started:.2f} s")
    metadata = {r.relpath: r.metadata for r in dm.dataset.recordings}
    shares, covers = {}, {}
    for name in ("story1_stiffness_loss", "story2_stiffness_loss", "story3_stiffness_loss"):
        shares[name], covers[name] = modal_share(result, name, metadata)
        print(f"{name}: {shares[name]:.3f} of the evidence in {covers[name]:.3f} of the Hz axis")
    pooled = np.mean(list(shares.values())) / np.mean(list(covers.values()))
    assert pooled >= 1.2, (shares, covers)
    story3 = "story3_stiffness_loss"
    assert shares[story3] >= 1.5 * covers[story3], (shares, covers)
