"""Order spectra: lines land on their shaft order whatever the speed, options are checked, every
recording's speed is read from the manifest (a missing one is named), and the loaders carry it."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from damage_lightning.data.augment import AugmentedBatch
from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.errors import DataValidationError

SR = 2000.0
WINDOW = 2048
ORDERS = {"order": True, "orders_max": 10.0, "n_orders": 101}  # rows every 0.1 order


def _tone(freq: float, batch: int = 1, channels: int = 1) -> torch.Tensor:
    t = torch.arange(WINDOW, dtype=torch.float64) / SR
    return torch.sin(2 * math.pi * freq * t).expand(batch, channels, WINDOW).to(torch.float32)


def _peak_order(fe: SpectrogramFrontend, spec: torch.Tensor) -> np.ndarray:
    """The order of each example's strongest row (channel 0, averaged over frames)."""
    return fe.order.orders[spec[:, 0].mean(dim=-1).argmax(dim=-1)].numpy()


def write_machine(root: Path, rpms: dict[str, list[str]], samples: int = WINDOW * 2) -> Path:
    """Recordings of two classes whose lines are shaft orders (2 and 3), a manifest with rpm."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,rpm,sample_rate"]
    rng = np.random.default_rng(0)
    t = np.arange(samples) / SR
    for label, speeds in rpms.items():
        order = 2.0 if label == "healthy" else 3.0
        for i, rpm in enumerate(speeds):
            f_r = float(rpm) / 60.0 if rpm.replace(".", "").isdigit() else 20.0
            x = np.sin(2 * np.pi * order * f_r * t) + 0.1 * rng.standard_normal((2, samples))
            name = f"{label}_{i}.csv"
            lines = ["a,b", *(f"{u:.5f},{v:.5f}" for u, v in x.T)]
            (root / name).write_text("\n".join(lines) + "\n")
            rows.append(f"{name},{label},{rpm},{SR:g}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def _dm(data: Path, cache: Path, **kwargs) -> DamageDataModule:
    settings = {"window": 1024, "hop": 512, "n_fft": 512, "hop_length": 128, "f_max": None}
    return DamageDataModule(str(data), cache_dir=str(cache), **{**settings, **ORDERS, **kwargs})


# ------------------------------------------------------------------------------------ physics
@pytest.mark.parametrize("rpm", [1200.0, 1900.0])
def test_a_tone_at_three_times_the_shaft_rate_peaks_at_order_three(rpm: float) -> None:
    fe = SpectrogramFrontend(SR, 1, kind="stft", n_fft=512, **ORDERS)
    spec = fe(_tone(3 * rpm / 60.0), torch.tensor([rpm]))
    assert spec.shape == (1, 1, 101, WINDOW // 128 + 1) == (1, *fe.output_shape(WINDOW))
    assert _peak_order(fe, spec) == pytest.approx([3.0], abs=0.051)


def test_each_example_is_read_at_its_own_speed_alone_or_in_a_batch() -> None:
    fe = SpectrogramFrontend(SR, 2, kind="stft", n_fft=512, **ORDERS)
    rpm = torch.tensor([1500.0, 2100.0, 2400.0])
    waves = torch.cat([_tone(4 * r / 60.0, channels=2) for r in rpm.tolist()])
    batch = fe(waves, rpm)
    # Within half an FFT bin (3.9 Hz, at most 0.08 orders here) plus half an order step.
    assert _peak_order(fe, batch) == pytest.approx([4.0, 4.0, 4.0], abs=0.13)
    alone = torch.cat([fe(waves[i : i + 1], rpm[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, alone)


def _cell_mean(rows: np.ndarray, low: float, high: float) -> float:
    """Mean of piecewise-constant rows (row i covers [i - 0.5, i + 0.5]) over [low, high]."""
    edges = np.arange(len(rows) + 1) - 0.5
    overlap = np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0.0, None)
    return float((rows * overlap).sum() / (high - low))


def test_orders_beyond_the_spectrum_are_zero_and_inside_it_interpolate_the_rows() -> None:
    # 0.05 orders are 2 Hz at a 40 Hz shaft, finer than the 3.9 Hz rows: linear interpolation.
    fine = {**ORDERS, "n_orders": 201}
    fe = SpectrogramFrontend(SR, 1, kind="stft", n_fft=512, f_max=200.0, **fine)
    freq = fe.features(_tone(50.0))
    spec = fe(_tone(50.0), torch.tensor([2400.0]))  # 40 Hz shaft: the spectrum ends at order 5
    orders = fe.order.orders
    assert torch.all(spec[0, 0, orders > 5.0 + 1e-6] == 0)
    # Order 2.5 is 100 Hz, exactly row 100 / (2000 / 512) = 25.6: between rows 25 and 26.
    j = int(torch.argmin((orders - 2.5).abs()))
    want = freq[0, 0, 25] + 0.6 * (freq[0, 0, 26] - freq[0, 0, 25])
    torch.testing.assert_close(spec[0, 0, j], want, atol=1e-4, rtol=1e-4)


def test_a_coarse_order_grid_averages_the_rows_of_each_order_cell() -> None:
    # Whole orders at a 40 Hz shaft are 10.24 rows apart: each output row is the mean over its
    # cell, so a line between two grid orders is not skipped. The 50 Hz tone (order 1.25, row
    # 12.8) lies in the cell of order 1: [5.12, 15.36] rows.
    coarse = {"order": True, "orders_max": 10.0, "n_orders": 11}
    fe = SpectrogramFrontend(SR, 1, kind="stft", n_fft=512, f_max=200.0, **coarse)
    rows = fe.features(_tone(50.0))[0, 0, :, 0].numpy().astype(np.float64)
    spec = fe(_tone(50.0), torch.tensor([2400.0]))[0, 0, :, 0]
    per_order = 40.0 / (SR / 512)
    for order in (1, 2, 3):
        centre = order * per_order
        want = _cell_mean(rows, centre - per_order / 2, centre + per_order / 2)
        assert float(spec[order]) == pytest.approx(want, abs=1e-4)
    assert int(spec[1:5].argmax()) + 1 == 1  # the tone's cell holds the strongest row


def test_envelope_bands_are_resampled_to_orders_each_on_its_own() -> None:
    """A bearing-like burst rate at 3.5 orders peaks at order 3.5 in the envelope spectrum."""
    rpm = 1200.0
    t = torch.arange(WINDOW, dtype=torch.float64) / SR
    burst_rate = 3.5 * rpm / 60.0
    am = (1 + 0.5 * torch.cos(2 * math.pi * burst_rate * t)) * torch.cos(2 * math.pi * 600 * t)
    fe = SpectrogramFrontend(
        SR, 1, kind="envelope", n_fft=512, hop_length=128, average_frames=True,
        envelope_bands=[[450.0, 750.0], [100.0, 300.0]], envelope_f_max=200.0, **ORDERS,
    )  # fmt: skip
    spec = fe(am[None, None].float(), torch.tensor([rpm]))
    assert spec.shape == (1, 1, 2 * 101, 1)
    band = spec[0, 0, :101, 0]
    assert float(fe.order.orders[band[5:].argmax() + 5]) == pytest.approx(3.5, abs=0.051)


def test_settings_round_trip_and_rows_are_not_hertz() -> None:
    fe = SpectrogramFrontend(SR, 1, kind="stft", n_fft=256, **ORDERS)
    again = SpectrogramFrontend(**fe.settings())
    assert again.settings() == fe.settings() and again.n_freqs == 101
    with pytest.raises(ValueError, match="shaft orders, not frequencies"):
        fe.row_frequencies()
    with pytest.raises(ValueError, match="needs each window's shaft speed"):
        fe(_tone(50.0))
    with pytest.raises(ValueError, match="not 'mel'"):
        SpectrogramFrontend(SR, 1, kind="mel", order=True)


# ------------------------------------------------------------------------------ data module
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spectrogram": "mel"}, "data.order needs a linear frequency axis"),
        ({"orders_max": 0.0}, "data.orders_max"),
        ({"n_orders": 1}, "data.n_orders"),
        ({"rpm_column": " "}, "data.rpm_column"),
        ({"predict_rpm": -100.0}, "data.predict_rpm"),
    ],
)
def test_bad_order_options_are_refused_naming_the_option(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DamageDataModule(**{**ORDERS, **kwargs})


def test_a_recording_without_a_usable_speed_is_named_with_the_column(tmp_path: Path) -> None:
    data = write_machine(
        tmp_path / "bad", {"healthy": ["1200", "", "1500"], "fault": ["fast", "-30", "1300"]}
    )
    dm = _dm(data, tmp_path / "cache")
    with pytest.raises(DataValidationError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "3 problems" in message and message.count("(column 'rpm')") == 3
    assert "healthy_1.csv" in message and "no shaft speed" in message
    assert "fault_0.csv" in message and "'fast' is not a positive rpm" in message
    assert "fault_1.csv" in message and "'-30'" in message


def test_loaders_carry_each_window_s_speed_last_and_the_front_end_consumes_it(
    tmp_path: Path,
) -> None:
    speeds = {"healthy": ["1200", "1500", "1800"], "fault": ["1300", "1600", "1900"]}
    data = write_machine(tmp_path / "ok", speeds)
    dm = _dm(data, tmp_path / "cache", val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    rpm_of = {r.relpath: float(r.metadata["rpm"]) for r in dm.dataset.recordings}
    want = np.array([rpm_of[r.relpath] for r in dm.dataset.recordings], dtype=np.float32)
    for batch in dm.test_dataloader():
        rec, rpm = batch[2], batch[4]
        assert len(batch) == 5 and rpm.dtype == torch.float32
        assert np.array_equal(rpm.numpy(), want[rec.numpy()])
    spec, *rest = dm.on_after_batch_transfer(batch, 0)
    assert len(rest) == 3 and spec.shape[1:] == dm.input_shape and dm.input_shape[1] == 101
    # The lines are orders 2 (healthy) and 3 (fault) whatever each recording's speed.
    names = dm.class_names
    x, y = dm.spectrogram_batch("train")
    peaks = dm.frontend.order.orders[x[:, 0].mean(dim=-1).argmax(dim=-1)]
    expected = torch.tensor([2.0 if names[i] == "healthy" else 3.0 for i in y.tolist()])
    # Within half an FFT bin (3.9 Hz: 0.1 orders at 1200 rpm) plus half an order step.
    torch.testing.assert_close(peaks, expected, atol=0.16, rtol=0)


def test_speed_jitter_scales_the_rpm_with_each_window_s_factor(tmp_path: Path) -> None:
    data = write_machine(tmp_path / "ok", {"healthy": ["1200"] * 3, "fault": ["1500"] * 3})
    dm = _dm(data, tmp_path / "cache", augment_speed=0.2)
    seen = {}
    dm.trainer = SimpleNamespace(training=True)  # what the hook reads to know it is training
    factor = torch.tensor([0.9, 1.1])
    dm.augment_batch = lambda w: AugmentedBatch(w, factor)
    dm.spectrogram = lambda w, rpm: seen.setdefault("rpm", rpm)
    wave = torch.zeros(2, 2, 512)
    dm.on_after_batch_transfer((wave, torch.zeros(2), torch.tensor([1200.0, 1500.0])), 0)
    torch.testing.assert_close(seen["rpm"], torch.tensor([1080.0, 1650.0]))
