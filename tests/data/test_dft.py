"""The portable front end (``stft="conv"``): the same spectrogram as ``torch.stft``, an export
without an STFT operator that onnxruntime, TorchScript and OpenVINO run alike."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from damage_lightning.data.dft import _conv1d_ieee
from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.export import DeployableModel, ModelMetadata, export_all
from damage_lightning.export.deployable import example_waveforms
from damage_lightning.models import CNNClassifier

SR = 1024.0
CHANNELS, WINDOW = 3, 1024

jit_deprecated = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


def _pair(**kwargs) -> tuple[SpectrogramFrontend, SpectrogramFrontend, torch.Tensor]:
    """The torch and conv front ends of the same settings and statistics, and test windows."""
    ref = SpectrogramFrontend(SR, CHANNELS, stft="torch", **kwargs)
    conv = SpectrogramFrontend(SR, CHANNELS, stft="conv", **kwargs)
    x = example_waveforms(CHANNELS, WINDOW, 24, seed=1)
    # An accelerometer's offset (gravity, a bias) makes the DC bin the strongest of all.
    x[:8] += 3.0 * x[:8].std()
    ref.fit_normalization([x])
    conv.load_state_dict(ref.state_dict())
    return ref, conv, x


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "stft", "n_fft": 512, "hop_length": 64, "f_max": 300.0},
        {"kind": "stft", "n_fft": 256, "hop_length": 64, "f_min": 20.0, "power": 1.0},
        {"kind": "stft", "n_fft": 256, "win_length": 200, "top_db": None},
        {"kind": "mel", "n_fft": 256, "hop_length": 64, "n_mels": 48, "f_max": 400.0},
        {"kind": "mel", "n_fft": 128, "log": False},
    ],
)
def test_conv_spectrogram_equals_the_float64_torch_stft(kwargs: dict) -> None:
    ref, conv, x = _pair(**kwargs)
    with torch.no_grad():
        want, got = ref(x), conv(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert got.shape[1:] == ref.output_shape(WINDOW)
    diff = (got - want).abs()
    if ref.log:
        # float32 sums against float64 ones: the weakest bins of a window differ by ~1e-4 of a
        # standard deviation after the logarithm (the offset taken out first keeps it so with
        # a strong DC component), the spectrogram as a whole by far less.
        assert diff.max() < 2e-3 and diff.mean() < 1e-5
    else:
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # Batching does not change an example's spectrogram.
    with torch.no_grad():
        single = torch.cat([conv(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(single, got[:3], atol=1e-5)


def test_full_precision_gpu_path_computes_the_same_convolution() -> None:
    # The GPU branch (TF32 and autocast off) is the same convolution; checked here on the CPU.
    _, conv, x = _pair(kind="stft", n_fft=256, hop_length=64)
    stft = conv.spectrum
    padded = torch.nn.functional.pad(x.reshape(-1, 1, WINDOW), (128, 128), mode="reflect")
    want = torch.nn.functional.conv1d(padded, stft.basis, stride=64)
    assert torch.equal(_conv1d_ieee(padded, stft.basis, 64), want)


def test_conv_setting_travels_with_the_settings_and_is_checked() -> None:
    conv = SpectrogramFrontend(SR, CHANNELS, stft="conv")
    assert conv.settings()["stft"] == "conv"
    assert SpectrogramFrontend(**conv.settings()).stft_impl == "conv"
    # Settings written before the option existed mean the torch STFT.
    old = {k: v for k, v in conv.settings().items() if k != "stft"}
    assert SpectrogramFrontend(**old).stft_impl == "torch"
    assert set(conv.state_dict()) == {"mean", "std", "fitted"}
    with pytest.raises(ValueError, match="stft must be"):
        SpectrogramFrontend(SR, CHANNELS, stft="fft")


@pytest.fixture(scope="module")
def conv_export(tmp_path_factory) -> tuple[DeployableModel, object, dict]:
    """A small CNN behind the conv front end, exported and verified by ``export_all``."""
    _, frontend, _ = _pair(kind="stft", n_fft=512, hop_length=64, f_max=300.0)
    torch.manual_seed(0)
    task = CNNClassifier(
        num_classes=3,
        in_channels=CHANNELS,
        input_shape=frontend.output_shape(WINDOW),
        widths=[8, 16],
    )
    model = DeployableModel(frontend, task.net).eval()
    meta = ModelMetadata(
        ["a", "b", "c"], ["x", "y", "z"], SR, WINDOW, WINDOW // 2, frontend.settings()
    )
    out = tmp_path_factory.mktemp("conv-export")
    return model, out, export_all(model, out, meta)


@jit_deprecated
def test_conv_frontend_exports_without_stft_and_verifies(conv_export) -> None:
    model, out, result = conv_export
    # export_all checked eager against onnxruntime and TorchScript at batch sizes 1 and 5.
    for kind in ("onnx", "torchscript"):
        verification = result[kind]["verification"]
        assert verification["passed"] and verification["batch_sizes"] == [1, 5]
        assert verification["max_abs_diff"] <= 1e-4
    ops = {node.op_type for node in onnx.load(out / "model.onnx").graph.node}
    assert "STFT" not in ops and "DFT" not in ops and "Conv" in ops
    torch.jit.script(model.frontend)  # scripted, not traced: no shape is frozen
    scripted = torch.jit.load(str(out / "model.ts.pt"))
    x = example_waveforms(CHANNELS, WINDOW, 2, seed=9)
    with torch.no_grad():
        assert torch.allclose(scripted(x)[1], model(x)[1], atol=1e-6)


def test_conv_export_runs_in_openvino(conv_export) -> None:
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    model, out, _ = conv_export
    core = ov.Core()
    # f32: on CPUs with bf16 units OpenVINO computes in bf16 by default (differences ~1e-4).
    compiled = core.compile_model(
        str(out / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    for batch in (1, 5):
        x = example_waveforms(CHANNELS, WINDOW, batch, seed=20 + batch)
        with torch.no_grad():
            want = model(x)[1].numpy()
        got = compiled(x.numpy())[compiled.output("probabilities")]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4
