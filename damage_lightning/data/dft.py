"""The front end's short-time spectrum, computed by ``torch.stft`` or by a convolution.

Both modules map waveform windows ``(B, C, T)`` to the power (or magnitude) of the centred,
Hann-windowed STFT ``(B, C, K, frames)`` in float32, for the bins ``[first_bin, stop_bin)``.
:class:`TorchSTFT` is torchaudio's spectrogram in float64 (cuFFT on a GPU, the ONNX ``STFT``
operator in an export). :class:`ConvSTFT` computes the same sums as a strided ``conv1d`` with a
fixed DFT basis (the approach of nnAudio): an export of it holds only ``Pad``, ``Conv``,
``Mul`` and ``Add``, which runtimes without an ``STFT`` operator (OpenVINO, many NPUs,
TensorRT) run, and which onnxruntime can quantise around.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

StftImpl = Literal["torch", "conv"]


def hann_window(n_fft: int, win_length: int) -> Tensor:
    """The periodic Hann window of ``win_length`` samples, zero-padded to ``n_fft`` (float64).

    The padding is torch.stft's: centred, the odd sample on the right.
    """
    window = torch.hann_window(win_length, dtype=torch.float64)
    left = (n_fft - win_length) // 2
    return F.pad(window, (left, n_fft - win_length - left))


class TorchSTFT(nn.Module):
    """``torchaudio.functional.spectrogram`` in float64, rounded to float32, then cropped.

    The STFT and its power are computed in float64: the logarithm that follows magnifies the
    float32 rounding of weak bins (60 dB below the peak) into differences of 1e-3 dB between FFT
    implementations (pocketfft, cuFFT, onnxruntime); in float64 eager, TorchScript and ONNX
    agree to about 1e-6 after normalisation.

    Args:
        n_fft: FFT size.
        hop_length: samples between frames.
        win_length: Hann window length (at most ``n_fft``).
        first_bin: first frequency bin kept.
        stop_bin: one past the last bin kept (at most ``n_fft // 2 + 1``).
        power: 2.0 for power, 1.0 for magnitude.
        center: reflect-pad half an FFT on each side (centred frames); ``False``: frames inside
            the waveform only.
    """

    def __init__(
        self, n_fft: int, hop_length: int, win_length: int, first_bin: int, stop_bin: int,
        power: float, center: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.center = center
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.first_bin, self.stop_bin, self.power = first_bin, stop_bin, power
        # The crop is skipped when it keeps every bin, which keeps the exported graph minimal.
        self._crop = first_bin > 0 or stop_bin < n_fft // 2 + 1
        self.register_buffer(
            "window", torch.hann_window(win_length, dtype=torch.float64), persistent=False
        )

    def forward(self, waveform: Tensor) -> Tensor:
        """Spectrum ``(B, C, K, frames)`` float32 of waveforms ``(B, C, T)``."""
        spec = AF.spectrogram(
            waveform.to(torch.float64),
            pad=0,
            window=self.window.to(torch.float64),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            power=self.power,
            normalized=False,
            center=self.center,
        ).to(torch.float32)
        if self._crop:
            spec = spec[:, :, self.first_bin : self.stop_bin, :]
        return spec


# ConvSTFT repeats TorchSTFT's constructor and Args on purpose: both are built by make_stft
# from the same settings and must stay interchangeable, argument for argument.
class ConvSTFT(nn.Module):
    """The same spectrum as :class:`TorchSTFT`, as a strided convolution with a DFT basis.

    Each frame of the reflect-padded waveform (``center=True``) is correlated with the rows
    ``w[n] cos(2 pi k n / n_fft)`` and ``-w[n] sin(2 pi k n / n_fft)`` of the kept bins ``k``
    (``w`` the Hann window): one ``conv1d`` with stride ``hop_length`` gives the real and the
    imaginary parts. It runs in float32 (the runtimes it is for have no float64 convolution).
    Each window's mean (a sensor's offset, often its strongest component) is taken out before
    the convolution and its exact contribution, the mean times the sum of each basis row, added
    after it, so a large offset does not drown the weak bins in float32 rounding. After the
    logarithm and the normalisation the result differs from the float64 :class:`TorchSTFT` by
    about 1e-4 in the weakest bins of a window (5e-4 without a ``top_db`` floor) and 1e-7 on
    average. Only the kept bins are
    computed, so a band-limited STFT costs less than the full one.

    Args:
        n_fft: FFT size (the kernel length).
        hop_length: samples between frames (the stride).
        win_length: Hann window length (at most ``n_fft``).
        first_bin: first frequency bin computed.
        stop_bin: one past the last bin computed (at most ``n_fft // 2 + 1``).
        power: 2.0 for power, 1.0 for magnitude.
        center: reflect-pad half an FFT on each side (centred frames); ``False``: frames inside
            the waveform only.
    """

    def __init__(
        self, n_fft: int, hop_length: int, win_length: int, first_bin: int, stop_bin: int,
        power: float, center: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.center = center
        self.n_fft, self.hop_length, self.power = n_fft, hop_length, power
        self.n_bins = stop_bin - first_bin
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(first_bin, stop_bin, dtype=torch.float64)[:, None]
        # k * n reduced modulo n_fft before the multiplication by 2 pi keeps the angles exact.
        angle = (2.0 * math.pi / n_fft) * torch.remainder(k * n, n_fft)
        window = hann_window(n_fft, win_length)
        basis = torch.cat([window * torch.cos(angle), -window * torch.sin(angle)])
        # Derived from the settings, so not part of the state_dict.
        self.register_buffer("basis", basis.to(torch.float32)[:, None, :], persistent=False)
        self.register_buffer("basis_sum", basis.sum(dim=1).to(torch.float32), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        """Spectrum ``(B, C, K, frames)`` float32 of waveforms ``(B, C, T)``."""
        batch, channels, samples = waveform.shape
        x = waveform.to(torch.float32).reshape(batch * channels, 1, samples)
        offset = x.mean(dim=-1, keepdim=True)
        half = self.n_fft // 2
        # Reflect padding of (x - offset) is the padding of x, less the offset.
        x = F.pad(x - offset, (half, half), mode="reflect") if self.center else x - offset
        parts = conv1d_float32(x, self.basis, self.hop_length)
        parts = parts + offset * self.basis_sum.view(1, -1, 1)
        real, imag = parts[:, : self.n_bins], parts[:, self.n_bins :]
        spec = real * real + imag * imag
        if self.power == 1.0:
            spec = torch.sqrt(spec)
        return spec.reshape(batch, channels, self.n_bins, spec.shape[-1])


def conv1d_float32(x: Tensor, weight: Tensor, stride: int) -> Tensor:
    """``F.conv1d(x, weight, stride=stride)`` in full float32, also on a GPU.

    cuDNN computes float32 convolutions in TF32 by default (10-bit mantissa) and autocast would
    run them in bf16; either rounds weak spectral bins away, and training would then see another
    spectrum than the exported model (which runs on the CPU, whose float32 convolution is exact
    float32).
    """
    if x.is_cuda and not torch.jit.is_scripting():
        return _conv1d_ieee(x, weight, stride)
    return F.conv1d(x, weight, stride=stride)


@torch.jit.unused
def _conv1d_ieee(x: Tensor, weight: Tensor, stride: int) -> Tensor:
    cudnn = torch.backends.cudnn
    with (
        torch.autocast(x.device.type, enabled=False),
        cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                    deterministic=cudnn.deterministic, allow_tf32=False),
    ):  # fmt: skip
        return F.conv1d(x, weight, stride=stride)


def make_stft(
    impl: str, n_fft: int, hop_length: int, win_length: int, first_bin: int, stop_bin: int,
    power: float, center: bool = True,
) -> nn.Module:  # fmt: skip
    """The spectrum module of ``impl`` (``"torch"`` or ``"conv"``)."""
    cls = ConvSTFT if impl == "conv" else TorchSTFT
    return cls(n_fft, hop_length, win_length, first_bin, stop_bin, power, center)
