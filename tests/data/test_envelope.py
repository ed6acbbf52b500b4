"""The envelope-spectrum front end and instance normalisation: the physics of demodulation,
gain invariance, settings that round-trip, clear errors, and the same output after ONNX and
TorchScript export."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from damage_lightning.data.datamodule import DamageDataModule
from damage_lightning.data.envelope import EnvelopeStage, default_bands
from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.export import DeployableModel, ModelMetadata, export_all
from damage_lightning.export.deployable import example_waveforms
from damage_lightning.models import CNNClassifier

SR = 12000.0
WINDOW = 4096
# The Welch envelope spectrum: 11.7 Hz bins up to the default 1 kHz.
WELCH = {"kind": "envelope", "n_fft": 1024, "hop_length": 256, "average_frames": True}

jit_deprecated = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


def _am(carrier: float, modulation: float, batch: int = 2, channels: int = 1) -> torch.Tensor:
    """An amplitude-modulated carrier, ``(1 + 0.5 cos(2 pi f_m t)) cos(2 pi f_c t)``, plus noise."""
    g = torch.Generator().manual_seed(int(carrier + modulation))
    t = torch.arange(WINDOW, dtype=torch.float64) / SR
    x = (1 + 0.5 * torch.cos(2 * math.pi * modulation * t)) * torch.cos(2 * math.pi * carrier * t)
    noise = 0.05 * torch.randn(batch, channels, WINDOW, generator=g, dtype=torch.float64)
    return (x + noise).to(torch.float32)


def _band_rows(fe: SpectrogramFrontend, spec: torch.Tensor, band: int) -> torch.Tensor:
    per_band = fe.n_freqs // len(fe.envelope_bands)
    return spec[..., band * per_band : (band + 1) * per_band, :]


# ------------------------------------------------------------------------------------ physics
@pytest.mark.parametrize("modulation", [107.0, 162.0])
@pytest.mark.parametrize("carrier", [1000.0, 2000.0, 4200.0])
def test_envelope_spectrum_peaks_at_the_modulation_frequency_whatever_the_carrier(
    carrier: float, modulation: float
) -> None:
    fe = SpectrogramFrontend(SR, 1, **WELCH)
    band = next(i for i, (lo, hi) in enumerate(fe.envelope_bands) if lo < carrier < hi)
    spec = _band_rows(fe, fe.features(_am(carrier, modulation)), band)[:, 0, :, 0]
    centre = fe.row_frequencies()[0][: spec.shape[-1]]
    peak = spec[:, 1:].argmax(dim=-1) + 1  # past the envelope's (removed) mean
    step = SR / fe.n_fft
    assert np.all(np.abs(centre[peak.numpy()] - modulation) <= step / 2 + 1e-9)
    # A clear line: far above the band's median level.
    assert torch.all(spec.max(dim=-1).values - spec.median(dim=-1).values > 20.0)


@pytest.mark.parametrize("decimation", [1, 4])
def test_the_envelope_of_a_modulated_tone_has_its_modulation_amplitude(decimation: int) -> None:
    stage = EnvelopeStage([[1500.0, 2500.0]], SR, 1000.0, decimation)
    envelope = stage(_am(2000.0, 107.0, batch=1))[0, 0]
    # 0.5 cos(...) times a unit carrier: an envelope fluctuation of RMS 0.5 / sqrt(2).
    assert envelope.pow(2).mean().sqrt().item() == pytest.approx(0.5 / math.sqrt(2), rel=0.03)
    assert abs(envelope.mean().item()) < 1e-3
    full_rate = WINDOW - stage.taps + 1
    assert envelope.shape[-1] == stage.output_length(WINDOW)
    assert envelope.shape[-1] == (full_rate - stage.lowpass_taps) // decimation + 1


def test_the_envelope_is_decimated_only_as_far_as_its_bins_allow() -> None:
    fe = SpectrogramFrontend(SR, 1, **WELCH)
    assert fe.pre.decimation == 4  # 1.5 kHz Nyquist after decimation: room above 1 kHz
    # hop_length 250 is not a multiple of 4: the largest factor dividing every length is 2.
    assert SpectrogramFrontend(SR, 1, **{**WELCH, "hop_length": 250}).pre.decimation == 2
    # The bins are those of n_fft at the full rate, whatever the decimation.
    full = SpectrogramFrontend(SR, 1, **WELCH, envelope_f_max=5000.0)
    assert full.pre.decimation == 1
    np.testing.assert_allclose(
        full.row_frequencies()[0][: fe.n_freqs // 3], fe.row_frequencies()[0][: fe.n_freqs // 3]
    )


def test_default_bands_are_octaves_relative_to_the_sample_rate() -> None:
    assert default_bands(12000.0) == [[2700.0, 5400.0], [1350.0, 2700.0], [675.0, 1350.0]]
    assert default_bands(24000.0) == [[2 * lo, 2 * hi] for lo, hi in default_bands(12000.0)]


# ------------------------------------------------------------------------- shapes and settings
def test_rows_frequencies_and_shapes_describe_the_stacked_band_spectra() -> None:
    fe = SpectrogramFrontend(SR, 2, **{**WELCH, "average_frames": False}, f_min=20.0)
    out = fe(_am(3000.0, 107.0, channels=2))
    assert tuple(out.shape[1:]) == fe.output_shape(WINDOW)
    bins = int(1000.0 // (SR / 1024)) - 1  # 23.4 Hz (bin 2) .. 996 Hz (bin 85)
    assert fe.n_freqs == out.shape[2] == 3 * bins
    centre, low, high = fe.row_frequencies()
    assert len(centre) == fe.n_freqs
    np.testing.assert_allclose(centre[:bins], np.arange(2, 86) * SR / 1024)
    np.testing.assert_allclose(centre[bins : 2 * bins], centre[:bins])
    assert np.all(low < centre) and np.all(centre < high)
    # The demodulation filters shorten the window before the STFT's frames are counted.
    assert out.shape[3] == (WINDOW - fe.pre.taps + 1) // 256 + 1


def test_settings_are_json_and_rebuild_the_same_front_end() -> None:
    fe = SpectrogramFrontend(
        SR, 2, **WELCH, envelope_bands=[[3000, 5000], [1000, 2000]], envelope_f_max=500.0,
        instance_norm=True,
    )  # fmt: skip
    settings = json.loads(json.dumps(fe.settings()))
    assert settings["envelope_bands"] == [[3000.0, 5000.0], [1000.0, 2000.0]]
    assert settings["envelope_f_max"] == 500.0 and settings["instance_norm"] is True
    again = SpectrogramFrontend(**settings)
    assert again.settings() == fe.settings()
    assert again.output_shape(WINDOW) == fe.output_shape(WINDOW)
    x = _am(3500.0, 107.0, channels=2)
    torch.testing.assert_close(again(x), fe(x))
    # The default bank and f_max are resolved into the settings, so they survive a round trip.
    default = SpectrogramFrontend(SR, 1, **WELCH).settings()
    assert default["envelope_bands"] == default_bands(SR) and default["envelope_f_max"] == 1000.0
    # Settings written before these options existed rebuild the front end they described.
    old = {k: v for k, v in SpectrogramFrontend(SR, 1).settings().items() if "envelope" not in k}
    del old["instance_norm"]
    assert SpectrogramFrontend(**old).settings() == SpectrogramFrontend(SR, 1).settings()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"envelope_bands": [[2000, 3000], [3000, 7000]]}, r"envelope_bands\[1\] = \[3000, 7000\]"),
        ({"envelope_bands": [[2000, 1000]]}, r"envelope_bands\[0\].*0 < low < high < 6000"),
        ({"envelope_bands": [[2000]]}, r"envelope_bands\[0\] = \[2000\] is not a \[low, high\]"),
        ({"envelope_bands": [["a", 1000]]}, r"not a pair of numbers"),
        ({"envelope_bands": []}, r"non-empty list"),
        ({"envelope_f_max": 7000.0}, r"envelope_f_max=7000"),
        ({"kind": "stft", "envelope_bands": [[1000, 2000]]}, r"only used with kind='envelope'"),
        ({"whiten": 4}, r"whiten must be 0 \(off\) or an odd number"),
        ({"whiten": 5, "log": False}, r"with log=True"),
    ],
)
def test_bad_envelope_settings_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SpectrogramFrontend(SR, 1, **{**WELCH, **kwargs})


def test_a_window_shorter_than_the_demodulation_filters_is_refused() -> None:
    fe = SpectrogramFrontend(SR, 1, **WELCH, envelope_bands=[[1000.0, 1100.0]])
    taps = fe.pre.taps + fe.pre.lowpass_taps - 1
    with pytest.raises(ValueError, match=f"too short for the envelope's filters of {taps} taps"):
        fe.output_shape(taps)


# -------------------------------------------------------------------------------- whitening
def test_whitening_keeps_lines_and_removes_a_smooth_background_of_each_band() -> None:
    fe = SpectrogramFrontend(SR, 1, **WELCH, whiten=7)
    rows = fe.n_freqs // 3
    # Each band: a straight background (another slope per band) with a 12 dB line at row 40.
    slope = torch.arange(rows, dtype=torch.float32)
    spec = torch.stack([k * 0.3 * slope - 20.0 * k for k in range(3)])
    spec[:, 40] += 12.0
    out = fe._whiten(spec.reshape(1, 1, 3 * rows, 1)).reshape(3, rows)
    inside = torch.cat([torch.arange(3, 36), torch.arange(45, rows - 3)])
    torch.testing.assert_close(out[:, inside], torch.zeros(3, len(inside)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 40], torch.full((3,), 12.0 * 6 / 7))
    # The lines of a real envelope spectrum survive: the AM line is the whitened maximum.
    whitened = _band_rows(fe, fe.features(_am(4200.0, 107.0)), 0)[0, 0, :, 0]
    assert abs(fe.row_frequencies()[0][int(whitened.argmax())] - 107.0) <= SR / 1024 / 2


# ---------------------------------------------------------------------------- instance norm
@pytest.mark.parametrize("kind", ["stft", "envelope"])
def test_instance_norm_removes_a_gain_on_the_input(kind: str) -> None:
    options = WELCH if kind == "envelope" else {"kind": "stft", "n_fft": 256}
    fe = SpectrogramFrontend(SR, 2, **options, instance_norm=True).eval()
    plain = SpectrogramFrontend(SR, 2, **options).eval()
    for module in (fe, plain):
        module.fit_normalization([example_waveforms(2, WINDOW, 8, seed=1)])
    x = example_waveforms(2, WINDOW, 3, seed=2)
    for gain in (0.1, 250.0):  # (quieter, bins would reach the eps floor of -100 dB)
        torch.testing.assert_close(fe(x * gain), fe(x), atol=1e-4, rtol=0)
        assert (plain(x * gain) - plain(x)).abs().max() > 1.0
    out = fe(x).double()
    zeros, ones = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)
    torch.testing.assert_close(out.mean(dim=(2, 3)), zeros, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), ones, atol=1e-6, rtol=0)


def test_instance_norm_removes_a_gain_of_each_sensor_within_the_top_db_range() -> None:
    # top_db clamps each example at its peak over all sensors: a sensor 60 dB weaker than another
    # loses bins to the floor. Without the clamp each sensor's gain goes (above the eps floor).
    fe = SpectrogramFrontend(SR, 2, kind="stft", n_fft=256, top_db=None, instance_norm=True)
    x = example_waveforms(2, WINDOW, 3, seed=2)
    gain = torch.tensor([0.3, 40.0]).view(1, 2, 1)
    torch.testing.assert_close(fe(x * gain), fe(x), atol=1e-4, rtol=0)


def test_instance_norm_centres_a_flat_channel_without_blowing_it_up() -> None:
    fe = SpectrogramFrontend(SR, 2, kind="stft", n_fft=256, instance_norm=True)
    x = example_waveforms(2, 2048, 2, seed=3)
    x[:, 1] = 0.0
    out = fe(x)
    assert torch.isfinite(out).all() and out[:, 1].abs().max() < 1e-5


# --------------------------------------------------------------------------- export parity
PARITY = [
    pytest.param(WELCH, id="envelope-welch"),
    pytest.param(
        {**WELCH, "average_frames": False, "n_fft": 512, "hop_length": 128}, id="envelope"
    ),
    pytest.param({"kind": "stft", "n_fft": 256, "instance_norm": True}, id="stft-instance-norm"),
    pytest.param({**WELCH, "instance_norm": True, "stft": "conv"}, id="conv-instance-norm"),
    pytest.param({**WELCH, "instance_norm": True, "whiten": 7}, id="whiten-instance-norm"),
    # configs/bearing.yaml's front end: a whitened Welch spectrum of the raw waveform.
    pytest.param(
        {"kind": "stft", "n_fft": 256, "hop_length": 64, "average_frames": True, "whiten": 7},
        id="stft-whiten-welch",
    ),
]


def _fitted(channels: int, **kwargs) -> SpectrogramFrontend:
    fe = SpectrogramFrontend(SR, channels, **kwargs).eval()
    fe.fit_normalization([example_waveforms(channels, WINDOW, 8, seed=1)])
    return fe


@jit_deprecated
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export internals (pytree) in 2.11
@pytest.mark.parametrize("kwargs", PARITY)
def test_front_end_onnx_and_torchscript_match_eager(tmp_path, kwargs: dict) -> None:
    fe = _fitted(2, **kwargs)
    path = tmp_path / "frontend.onnx"
    torch.onnx.export(
        fe, (example_waveforms(2, WINDOW, 2),), str(path), dynamo=True, opset_version=18,
        dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.script(fe)
    scripted.save(str(tmp_path / "frontend.ts.pt"))
    loaded = torch.jit.load(str(tmp_path / "frontend.ts.pt"))
    for batch in (1, 5):
        x = example_waveforms(2, WINDOW, batch, seed=100 + batch)
        want = fe(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == want.shape == (batch, *fe.output_shape(WINDOW))
        assert float(np.abs(got - want).max()) <= 1e-4
        assert float(np.abs(loaded(x).numpy() - want).max()) <= 1e-5


@jit_deprecated
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_envelope_model_with_instance_norm_exports_and_verifies(tmp_path) -> None:
    """The deployable model (front end + CNN) through the export pipeline's own verification."""
    fe = _fitted(2, **WELCH, instance_norm=True, whiten=7)
    torch.manual_seed(0)
    net = CNNClassifier(num_classes=3, in_channels=2, input_shape=fe.output_shape(WINDOW)).net
    model = DeployableModel(fe, net).eval()
    meta = ModelMetadata(["a", "b", "c"], ["de", "fe"], SR, WINDOW, WINDOW // 2, fe.settings())
    result = export_all(model, tmp_path, meta)
    for target in ("onnx", "torchscript"):
        verification = result[target]["verification"]
        assert verification["passed"] and len(verification["batch_sizes"]) == 2
        assert verification["max_abs_diff"] <= 1e-4


# ------------------------------------------------------------------------------ data module
def test_the_data_module_builds_the_envelope_front_end_it_is_told(tiny_data, cache_dir) -> None:
    dm = DamageDataModule(
        data_dir=str(tiny_data), cache_dir=str(cache_dir), window=1024, hop=512,
        spectrogram="envelope", n_fft=256, hop_length=64, average_frames=True,
        instance_norm=True,
    )  # fmt: skip
    settings = dm.frontend_settings()
    assert settings["kind"] == "envelope" and settings["instance_norm"] is True
    dm.setup("fit")
    spec, _ = dm.spectrogram_batch("train")
    assert tuple(spec.shape[1:]) == dm.input_shape
    assert dm.frontend.settings()["envelope_bands"] == default_bands(dm.sample_rate)


@pytest.mark.filterwarnings("error")
def test_an_envelope_spectrogram_plots_one_band_above_the_other() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from damage_lightning.data.plotting import plot_spectrogram

    fe = SpectrogramFrontend(SR, 1, kind="envelope", n_fft=1024, hop_length=256)
    ax = plot_spectrogram(fe(_am(4200.0, 107.0, batch=1))[0], fe)
    assert len(ax.collections) == len(fe.envelope_bands)
    assert ax.get_ylabel() == "Envelope frequency (Hz)"
