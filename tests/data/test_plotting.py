"""Spectrogram plots have their axes in hertz and seconds, matching the front end's rows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.data.plotting import frame_times, frequencies, plot_spectrogram


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _spec(fe: SpectrogramFrontend, samples: int = 500) -> torch.Tensor:
    return fe(torch.randn(1, fe.n_channels, samples, generator=torch.Generator().manual_seed(0)))[0]


def test_stft_axes_are_the_kept_bins_in_hz_and_frame_centres_in_s():
    fe = SpectrogramFrontend(1000.0, 2, kind="stft", n_fft=100, hop_length=25, f_min=50.0,
                             f_max=300.0)  # fmt: skip
    spec = _spec(fe)  # (2, 26 bins of 10 Hz from 50 to 300 Hz, 21 frames)
    np.testing.assert_allclose(frequencies(fe), np.arange(50.0, 301.0, 10.0))
    np.testing.assert_allclose(frame_times(fe, spec.shape[-1]), np.arange(21) * 0.025)
    ax = plot_spectrogram(spec, fe, channel=1, title="floor 2")
    assert ax.get_xlabel() == "Time (s)" and ax.get_ylabel() == "Frequency (Hz)"
    assert ax.get_title() == "floor 2"
    # pcolormesh cells are centred on the bins and frames: limits half a cell beyond.
    assert ax.get_ylim() == pytest.approx((45.0, 305.0))
    assert ax.get_xlim() == pytest.approx((-0.0125, 0.5125))
    drawn = np.asarray(ax.collections[0].get_array()).reshape(spec.shape[1:])
    np.testing.assert_allclose(drawn, spec[1].numpy())


def test_settings_give_the_same_axes_as_the_front_end():
    settings = {"sample_rate": 1024.0, "n_channels": 1, "kind": "stft", "n_fft": 512,
                "hop_length": None, "f_max": 300.0}  # fmt: skip
    fe = SpectrogramFrontend(**settings)
    spec = _spec(fe, 1024)
    a = plot_spectrogram(spec, fe)
    b = plot_spectrogram(spec[0].numpy(), settings)
    assert a.get_xlim() == b.get_xlim() and a.get_ylim() == b.get_ylim()
    # hop_length None is n_fft // 4 = 128 samples: 0.125 s between frames at 1024 Hz.
    assert frame_times(settings, 3)[1] == pytest.approx(0.125)
    assert frequencies(settings)[-1] == pytest.approx(300.0)


def test_mel_axis_is_the_band_centres_in_hz():
    fe = SpectrogramFrontend(12000.0, 1, kind="mel", n_fft=256, hop_length=64, n_mels=16,
                             f_min=100.0, f_max=6000.0)  # fmt: skip
    centres = frequencies(fe)
    assert centres.shape == (16,) and 100.0 < centres[0] < centres[-1] < 6000.0
    # Each band's triangle, as torchaudio builds it, peaks at the centre given.
    fine = AF.melscale_fbanks(4097, 100.0, 6000.0, 16, 12000.0, norm=None, mel_scale="htk")
    peaks = fine.argmax(dim=0).numpy() * 12000.0 / 8192
    np.testing.assert_allclose(centres, peaks, atol=12000.0 / 8192)
    spec = _spec(fe, 2048)
    ax = plot_spectrogram(spec, fe)
    low, high = ax.get_ylim()
    assert low < centres[0] and high > centres[-1] and high < 6000.0 + (centres[-1] - centres[-2])
    assert ax.get_ylabel() == "Frequency (Hz)"
    assert ax.get_xlim()[1] == pytest.approx((2048 // 64) * 64 / 12000.0 + 32 / 12000.0)


def test_a_spectrogram_of_another_front_end_is_refused():
    fe = SpectrogramFrontend(1000.0, 1, kind="stft", n_fft=100, hop_length=25)
    other = SpectrogramFrontend(1000.0, 1, kind="stft", n_fft=64, hop_length=16)
    with pytest.raises(ValueError, match="frequency rows"):
        plot_spectrogram(_spec(other), fe)
    with pytest.raises(ValueError, match="pick one example"):
        plot_spectrogram(_spec(fe)[None], fe)
    with pytest.raises(ValueError, match="no channel 3"):
        plot_spectrogram(_spec(fe), fe, channel=3)


def test_datamodule_plots_one_window_of_a_split(tiny_data, cache_dir):
    dm = DamageDataModule(data_dir=str(tiny_data), cache_dir=str(cache_dir), window=256, hop=128,
                          n_fft=64, hop_length=16, f_max=None)  # fmt: skip
    _, ax = plt.subplots()
    assert dm.plot_spectrogram("val", index=1, channel=2, ax=ax) is ax
    recording, start = dm.indices["val"][1]
    title = ax.get_title()
    assert title.startswith(f"{dm.channels[2]} · {dm.dataset.labels[recording]} · ")
    assert f"at {start / dm.sample_rate:.2f} s" in title
    assert ax.get_ylim() == pytest.approx((-8.0, 512.0 + 8.0))  # 16 Hz bins up to Nyquist
    assert ax.get_xlim()[1] == pytest.approx(256 / 1024 + 8 / 1024)
    with pytest.raises(IndexError, match="val split has"):
        dm.plot_spectrogram("val", index=len(dm.indices["val"]))
