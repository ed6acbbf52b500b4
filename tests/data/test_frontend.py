"""The spectrogram front end: torchaudio numerics, per-example dB clamping, exact normalisation
statistics, and identical output after ONNX and TorchScript export."""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchaudio.transforms as T

from damage_lightning.data.frontend import SpectrogramFrontend

SR = 1024.0

# torch 2.11 marks torch.jit.script/trace deprecated, but TorchScript is a deliverable of this
# package (DESIGN.md, Export), so the warning is expected here.
jit_deprecated = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


def _waves(batch: int, channels: int, window: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, window, generator=g) * 0.1


def _torchaudio_reference(fe: SpectrogramFrontend, x: torch.Tensor) -> torch.Tensor:
    """The transform built from torchaudio directly, one example at a time."""
    if fe.kind == "mel":
        spec_t = T.MelSpectrogram(
            SR, n_fft=fe.n_fft, hop_length=fe.hop_length, f_min=fe.f_min, f_max=fe.f_max,
            n_mels=fe.n_mels, power=fe.power,
        )  # fmt: skip
    else:
        spec_t = T.Spectrogram(n_fft=fe.n_fft, hop_length=fe.hop_length, power=fe.power)
    to_db = T.AmplitudeToDB("power" if fe.power == 2.0 else "magnitude", top_db=fe.top_db)
    out = []
    for item in x:
        spec = spec_t(item)  # (C, F, frames)
        if fe.kind == "stft":
            freqs = torch.arange(spec.shape[1]) * SR / fe.n_fft
            keep = (freqs >= fe.f_min) & (freqs <= fe.f_max)
            spec = spec[:, keep]
        out.append(to_db(spec) if fe.log else spec)
    return torch.stack(out)


@pytest.mark.parametrize(
    ("channels", "window", "kwargs"),
    [
        (2, 1024, {"kind": "mel"}),
        (4, 1024, {"kind": "mel", "f_min": 5.0, "f_max": 400.0, "n_mels": 48}),
        (2, 4096, {"kind": "stft"}),
        (4, 1024, {"kind": "stft", "f_min": 20.0, "f_max": 300.0, "power": 1.0}),
        (2, 1024, {"kind": "mel", "log": False}),
        (2, 1024, {"kind": "stft", "top_db": None}),
    ],
)
def test_shapes_and_torchaudio_numerics(channels: int, window: int, kwargs: dict) -> None:
    fe = SpectrogramFrontend(SR, channels, n_fft=256, **kwargs)
    assert fe.hop_length == 64
    x = _waves(3, channels, window)
    out = fe(x)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (3, *fe.output_shape(window))
    assert fe.output_shape(window)[2] == window // 64 + 1
    if kwargs["kind"] == "mel":
        assert out.shape[2] == kwargs.get("n_mels", 64)
    ref = _torchaudio_reference(fe, x)
    assert ref.shape == out.shape
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-4


def test_stft_crop_keeps_bins_inside_band() -> None:
    fe = SpectrogramFrontend(SR, 2, kind="stft", n_fft=256, f_min=20.0, f_max=300.0)
    # Bins are 4 Hz apart: 20 Hz is bin 5, 300 Hz is bin 75.
    assert fe.n_freqs == 71
    full = SpectrogramFrontend(SR, 2, kind="stft", n_fft=256, top_db=None)
    x = _waves(2, 2, 1024)
    cropped = SpectrogramFrontend(
        SR, 2, kind="stft", n_fft=256, f_min=20.0, f_max=300.0, top_db=None
    )
    torch.testing.assert_close(cropped(x), full(x)[:, :, 5:76])


def test_top_db_is_per_example_so_batch_equals_single_items() -> None:
    fe = SpectrogramFrontend(SR, 2, kind="mel", top_db=40.0)
    # A tone over faint noise spans far more than 40 dB, so the clamp is active in every example.
    tone = torch.sin(2 * torch.pi * 100.0 * torch.arange(1024) / SR)
    x = tone + _waves(4, 2, 1024) * 1e-3
    x[0] *= 1e-3  # a quiet example next to loud ones: a batch-wide clamp would flatten it
    x[2] *= 30.0
    batch = fe(x)
    singles = torch.cat([fe(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)
    for item in batch:
        assert item.min().item() == pytest.approx(item.max().item() - 40.0, abs=1e-3)


def test_normalisation_statistics_match_numpy() -> None:
    fe = SpectrogramFrontend(SR, 3, kind="mel")
    train = _waves(11, 3, 1024, seed=1)
    train[:, 1] *= 10.0  # channels at different levels get different statistics
    fe.fit_normalization([train[:4], (train[4:5], torch.zeros(1)), train[5:]])
    feats = fe.features(train).double().numpy()  # (B, C, F, frames)
    per_channel = feats.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(fe.mean.numpy(), per_channel.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(fe.std.numpy(), per_channel.std(axis=1), rtol=1e-6)
    assert bool(fe.fitted)
    assert not np.allclose(fe.mean[0].item(), fe.mean[1].item())
    normed = fe(train).double()
    assert normed.mean(dim=(0, 2, 3)).abs().max().item() < 1e-4
    assert (normed.std(dim=(0, 2, 3), correction=0) - 1).abs().max().item() < 1e-4

    # The statistics do not depend on how the windows are batched.
    other = SpectrogramFrontend(SR, 3, kind="mel")
    other.fit_normalization([train[i : i + 1] for i in range(11)])
    torch.testing.assert_close(other.mean, fe.mean)
    torch.testing.assert_close(other.std, fe.std)


def test_flat_channel_keeps_unit_std_and_empty_fit_fails() -> None:
    # Without top_db a dead channel is the constant 10 log10(eps) dB; with it, its level would
    # follow each example's maximum over the other channels.
    fe = SpectrogramFrontend(SR, 2, kind="stft", top_db=None)
    x = _waves(3, 2, 1024)
    x[:, 1] = 0.0
    fe.fit_normalization([x])
    assert fe.std[1].item() == 1.0
    assert torch.isfinite(fe(x)).all()
    with pytest.raises(ValueError, match="no training windows"):
        SpectrogramFrontend(SR, 2).fit_normalization([])


def test_state_dict_round_trip_carries_statistics() -> None:
    fe = SpectrogramFrontend(SR, 4, kind="mel")
    fe.fit_normalization([_waves(6, 4, 1024)])
    # The window and mel filters follow from the settings; only the statistics are state.
    assert set(fe.state_dict()) == {"mean", "std", "fitted"}
    fresh = SpectrogramFrontend(**fe.settings())
    assert not bool(fresh.fitted)
    fresh.load_state_dict(fe.state_dict())
    assert bool(fresh.fitted)
    x = _waves(2, 4, 1024, seed=9)
    torch.testing.assert_close(fresh(x), fe(x), rtol=0, atol=0)


def test_settings_are_json_and_rebuild_the_transform() -> None:
    fe = SpectrogramFrontend(SR, 2, kind="stft", n_fft=128, f_max=256.0, power=1.0, top_db=60.0)
    settings = json.loads(json.dumps(fe.settings()))
    assert settings["hop_length"] == 32 and settings["win_length"] == 128
    assert settings["f_max"] == 256.0 and settings["kind"] == "stft"
    x = _waves(2, 2, 512)
    torch.testing.assert_close(SpectrogramFrontend(**settings)(x), fe(x))


def test_bad_settings_and_inputs() -> None:
    with pytest.raises(ValueError, match="f_max"):
        SpectrogramFrontend(SR, 2, f_max=2000.0)
    with pytest.raises(ValueError, match="power"):
        SpectrogramFrontend(SR, 2, power=3.0)
    with pytest.raises(ValueError, match="no frequency bin"):
        SpectrogramFrontend(SR, 2, kind="stft", n_fft=16, f_min=10.0, f_max=20.0)
    fe = SpectrogramFrontend(SR, 2)
    with pytest.raises(ValueError, match="2 channels"):
        fe(torch.zeros(1, 3, 1024))
    with pytest.raises(ValueError, match="too short"):
        fe.output_shape(100)


def _fitted(channels: int, window: int, **kwargs) -> SpectrogramFrontend:
    fe = SpectrogramFrontend(SR, channels, n_fft=256, hop_length=64, **kwargs).eval()
    train = _waves(16, channels, window, seed=3)
    train[:, 0] *= 3.0
    fe.fit_normalization([train])
    return fe


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export internals (pytree) in 2.11
@pytest.mark.parametrize(
    ("channels", "window", "kwargs"),
    [(4, 1024, {"kind": "mel", "n_mels": 64}), (2, 4096, {"kind": "stft", "f_min": 10.0})],
)
def test_onnx_export_matches_eager(tmp_path, channels: int, window: int, kwargs: dict) -> None:
    fe = _fitted(channels, window, **kwargs)
    path = tmp_path / "frontend.onnx"
    started = time.perf_counter()
    torch.onnx.export(
        fe,
        (_waves(2, channels, window),),
        str(path),
        dynamo=True,
        opset_version=18,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
    )
    print(f"ONNX export C={channels} window={window}: {time.perf_counter() - started:.1f} s")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 5):
        x = _waves(batch, channels, window, seed=100 + batch)
        got = session.run(None, {name: x.numpy()})[0]
        want = fe(x).detach().numpy()
        assert got.shape == want.shape
        diff = float(np.abs(got - want).max())
        print(f"  batch {batch}: max abs diff {diff:.2e}")
        assert diff <= 1e-4


@jit_deprecated
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_round_trip_matches_eager(tmp_path, how: str) -> None:
    fe = _fitted(2, 1024, kind="mel")
    example = _waves(3, 2, 1024)
    ts = torch.jit.script(fe) if how == "script" else torch.jit.trace(fe, (example,))
    ts.save(str(tmp_path / "frontend.ts.pt"))
    loaded = torch.jit.load(str(tmp_path / "frontend.ts.pt"))
    for batch in (1, 5):
        x = _waves(batch, 2, 1024, seed=200 + batch)
        assert (loaded(x) - fe(x)).abs().max().item() <= 1e-5
    torch.testing.assert_close(loaded.mean, fe.mean)
