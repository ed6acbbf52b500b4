"""The spectrogram front end: one ``nn.Module`` from waveform windows to normalised spectrograms.

Training applies it to batches on the accelerator and export puts the very same module in front of
the network, so what a model sees in training and in deployment cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from damage_lightning.data.dft import StftImpl, make_stft
from damage_lightning.data.envelope import (
    DEFAULT_ENVELOPE_F_MAX,
    EnvelopeStage,
    decimation_factor,
    default_bands,
)
from damage_lightning.data.order import NoOrder, OrderResampler

# A channel whose (log) spectrogram does not vary (a flat-lined sensor) has a standard deviation of
# about zero; it is centred but not scaled, instead of being blown up into NaN or huge values.
_MIN_STD = 1e-6


class SpectrogramFrontend(nn.Module):
    """Waveform windows ``(B, C, T)`` to spectrograms ``(B, C, F, frames)``, normalised per channel.

    The transform is torchaudio's own (``torchaudio.functional.spectrogram``, ``melscale_fbanks``
    and ``amplitude_to_DB``, i.e. what ``transforms.Spectrogram``/``MelSpectrogram`` and
    ``AmplitudeToDB`` compute), built on ``torch.stft``: it runs on the GPU through cuFFT, scripts
    with TorchScript and exports with the dynamo ONNX exporter (opset 18 has an ``STFT`` operator).

    The STFT and its power are computed in float64 and then rounded to float32. The logarithm
    magnifies the float32 rounding of weak bins (60 dB below the peak, common in broadband
    vibration) into differences of 1e-3 dB between FFT implementations (pocketfft, cuFFT,
    onnxruntime); in float64 eager, TorchScript and ONNX agree to about 1e-6 after normalisation.
    ``stft="conv"`` computes the same spectrum as a float32 convolution with a DFT basis instead
    (:class:`damage_lightning.data.dft.ConvSTFT`): its export runs where ONNX's ``STFT`` does not
    (OpenVINO, NPUs, TensorRT), and it differs from the float64 path by about 1e-4 after
    normalisation in the weakest bins.

    Frames are centred by default (``center=True``, reflect padding), so a window of ``T`` samples
    gives ``T // hop_length + 1`` frames (``average_frames`` averages them into one). With
    ``log=True`` the output is in decibels and, when ``top_db`` is set, clamped at ``top_db``
    below the maximum of each example (over its channels, frequencies and frames), never of the
    whole batch: an example gives the same spectrogram alone or in any batch.

    Envelope spectrum (``kind="envelope"``): a pre-stage
    (:class:`damage_lightning.data.envelope.EnvelopeStage`) demodulates each channel in each band
    of ``envelope_bands`` (band-pass and Hilbert envelope, mean removed, only where its filters
    lie inside the window), low-passes and decimates the envelopes as far as ``envelope_f_max``
    allows, and the STFT above is taken of those envelopes with the same duration of frames, so
    its bins are those of ``n_fft`` at the full rate; the bins in ``[f_min, envelope_f_max]`` are
    kept. The bands are stacked along frequency: channel ``c``'s rows are band 0's envelope bins,
    then band 1's, ..., so the output keeps ``C`` channels and ``F = n_bands * bins`` rows
    (:meth:`row_frequencies` gives each row's envelope frequency). ``whiten`` (after the
    logarithm) subtracts from each band's log spectrum its moving average along frequency.

    Normalisation: the buffers ``mean`` and ``std`` (one value per channel) are applied as
    ``(spectrogram - mean) / std``. They start as 0 and 1 (the identity) and are set by
    :meth:`fit_normalization` from the training split only; ``fitted`` records that this happened.
    All three travel with ``state_dict()``, checkpoints and exports. With ``instance_norm`` each
    example is then standardised per channel over its own rows and frames, which removes a gain
    of each sensor (or a fault-size amplitude) from the log spectrum; since that undoes any
    per-channel affine map, the training statistics then no longer change the output (they are
    still fitted and recorded).

    Args:
        sample_rate: sample rate of the waveforms in Hz.
        n_channels: number of sensor channels ``C``.
        kind: ``"mel"`` for a mel spectrogram, ``"stft"`` for the linear-frequency spectrogram,
            ``"envelope"`` for the linear-frequency spectrogram of band envelopes.
        n_fft: FFT size; ``n_fft // 2 + 1`` frequency bins before cropping or mel projection.
        hop_length: samples between frames; defaults to ``n_fft // 4``.
        win_length: Hann window length (at most ``n_fft``); defaults to ``n_fft``.
        n_mels: number of mel bands (``kind="mel"`` only).
        f_min: lowest frequency in Hz: the lowest mel band edge, or for ``kind="stft"`` (and of
            the envelope spectrum for ``kind="envelope"``) the lowest frequency bin kept.
        f_max: highest frequency in Hz (default: the Nyquist frequency ``sample_rate / 2``); not
            used by ``kind="envelope"`` (see ``envelope_f_max``).
        power: 2.0 for the power spectrogram, 1.0 for the magnitude.
        log: convert to decibels (``10 log10`` of power, ``20 log10`` of magnitude).
        top_db: with ``log``, clamp each example at this many dB below its maximum; ``None`` to
            keep the full range.
        eps: floor applied before the logarithm (torchaudio's ``amin``).
        stft: ``"torch"`` (``torch.stft`` in float64) or ``"conv"`` (a float32 convolution with a
            fixed DFT basis, for runtimes without an STFT operator).
        center: centre the frames on their sample with reflect padding (torchaudio's default);
            ``False`` takes only frames that lie inside the window (``1 + (T - n_fft) //
            hop_length`` of them), so no frame mixes in a mirrored copy of the window's edge.
        average_frames: average the power over the frames before the logarithm, a Welch estimate
            of the power spectral density: the output has one frame ``(B, C, F, 1)``. For
            stationary vibration the frame-to-frame variation is estimation noise, and the log of
            the mean varies less than the mean of the logs.
        envelope_bands: ``kind="envelope"``: demodulation bands ``[[low, high], ...]`` in Hz
            (``0 < low < high < sample_rate / 2``); ``None``: three octave bands below 0.9 times
            the Nyquist frequency (:func:`damage_lightning.data.envelope.default_bands`).
        envelope_f_max: ``kind="envelope"``: highest envelope frequency kept, Hz. ``None``: 1 kHz
            (or the Nyquist frequency if lower), which holds the first harmonics of bearing
            defect frequencies for shafts up to 3600 rpm
            (:data:`damage_lightning.data.envelope.DEFAULT_ENVELOPE_F_MAX`).
        instance_norm: standardise each example per channel over its own rows and frames, after
            the training-split statistics.
        whiten: with ``log``, subtract from each log spectrum (each band's, for
            ``kind="envelope"``) its moving average over this many rows (odd; edge rows
            repeated): what remains are lines above the smooth background, which is what a
            fault frequency is; ``0`` keeps the spectrum as it is.
        order: resample the rows to shaft orders ``linspace(0, orders_max, n_orders)`` with each
            example's speed (``forward(waveform, rpm)``; :class:`damage_lightning.data.order.
            OrderResampler`), after the training-split normalisation and before
            ``instance_norm``; for ``kind="stft"`` or ``"envelope"`` (each band on its own).
        orders_max: with ``order``, the highest order.
        n_orders: with ``order``, the orders per band (the output's ``F`` is ``bands *
            n_orders``).
    """

    def __init__(
        self,
        sample_rate: float,
        n_channels: int,
        kind: Literal["stft", "mel"] = "mel",
        n_fft: int = 256,
        hop_length: int | None = None,
        win_length: int | None = None,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        power: float = 2.0,
        log: bool = True,
        top_db: float | None = 80.0,
        eps: float = 1e-10,
        stft: StftImpl = "torch",
        center: bool = True,
        average_frames: bool = False,
        envelope_bands: list[list[float]] | None = None,
        envelope_f_max: float | None = None,
        instance_norm: bool = False,
        whiten: int = 0,
        order: bool = False,
        orders_max: float = 50.0,
        n_orders: int = 256,
    ):
        super().__init__()
        hop_length = n_fft // 4 if hop_length is None else int(hop_length)
        win_length = n_fft if win_length is None else int(win_length)
        nyquist = float(sample_rate) / 2.0
        f_max = nyquist if f_max is None else float(f_max)
        _check_settings(
            sample_rate, n_channels, kind, n_fft, hop_length, win_length, n_mels, f_min, f_max,
            nyquist, power, top_db, eps, stft,
        )  # fmt: skip
        self.sample_rate = float(sample_rate)
        self.n_channels = int(n_channels)
        self.kind = kind
        self.n_fft = int(n_fft)
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = int(n_mels)
        self.f_min = float(f_min)
        self.f_max = f_max
        self.power = float(power)
        self.log = bool(log)
        self.top_db = None if top_db is None else float(top_db)
        self.eps = float(eps)
        self.stft_impl = stft
        self.center = bool(center)
        self.average_frames = bool(average_frames)
        self.instance_norm = bool(instance_norm)
        self.whiten = int(whiten)
        if self.whiten < 0 or (self.whiten and (self.whiten % 2 == 0 or not self.log)):
            raise ValueError(
                f"whiten must be 0 (off) or an odd number of rows with log=True, got "
                f"whiten={whiten}, log={log}"
            )
        self._min_std = _MIN_STD  # an attribute: TorchScript does not read module globals
        default_f_max = min(DEFAULT_ENVELOPE_F_MAX, nyquist)
        self.envelope_f_max = default_f_max if envelope_f_max is None else float(envelope_f_max)
        self.envelope_bands = envelope_bands
        # The pre-stage between waveform and STFT; ``_bands`` is how many spectra per channel it
        # stacks along frequency, ``_step`` by what it divides the sample rate (and the STFT's
        # lengths in samples, so the bins stay those of n_fft at the full rate).
        self.pre = nn.Identity()
        self._bands, self._step = 1, 1
        if kind == "envelope":
            _check_envelope(self.envelope_f_max, self.f_min, nyquist)
            bands = default_bands(self.sample_rate) if envelope_bands is None else envelope_bands
            lengths = (self.n_fft, hop_length, win_length)
            self._step = decimation_factor(self.sample_rate, self.envelope_f_max, lengths)
            self.pre = EnvelopeStage(bands, self.sample_rate, self.envelope_f_max, self._step)
            self.envelope_bands = self.pre.bands
            self._bands = self.pre.n_bands
            f_max = self.envelope_f_max
        elif envelope_bands is not None:
            raise ValueError(f"envelope_bands is only used with kind='envelope', not {kind!r}")

        n_stft = self.n_fft // 2 + 1
        # Buffers follow the module's device; the window, DFT basis and mel filters derive from
        # the settings, so only the statistics go into the state_dict.
        if kind == "mel":
            fb = AF.melscale_fbanks(
                n_stft, self.f_min, f_max, self.n_mels, self.sample_rate, norm=None, mel_scale="htk"
            )
            self.register_buffer("mel_fb", fb.to(torch.float32), persistent=False)
            self._bin_lo = 0
            self._bin_hi = self.n_mels
        else:
            self.register_buffer("mel_fb", torch.zeros(0), persistent=False)
            # Bin k is centred on k * sample_rate / n_fft; keep the bins inside [f_min, f_max].
            step = self.sample_rate / self.n_fft
            self._bin_lo = math.ceil(self.f_min / step - 1e-9)
            self._bin_hi = min(self.n_fft // 2, math.floor(f_max / step + 1e-9)) + 1
            if self._bin_hi <= self._bin_lo:
                raise ValueError(
                    f"no frequency bin lies in [{f_min}, {f_max}] Hz with n_fft={n_fft} at "
                    f"{sample_rate} Hz (bins are {step:g} Hz apart); widen the range or raise n_fft"
                )
        self._mel = kind == "mel"
        # The mel filters take every bin; the linear spectrogram only the bins it keeps.
        first, stop = (0, n_stft) if self._mel else (self._bin_lo, self._bin_hi)
        step = self._step
        self.spectrum = make_stft(
            stft, self.n_fft // step, hop_length // step, win_length // step, first, stop,
            self.power, self.center,
        )  # fmt: skip
        self._db_multiplier = 10.0 if self.power == 2.0 else 20.0
        # A float, or -1 for "no clamp": TorchScript types the attribute from its value.
        self._top_db = -1.0 if self.top_db is None else self.top_db

        self.order_settings = {
            "order": bool(order), "orders_max": float(orders_max), "n_orders": int(n_orders)
        }  # fmt: skip
        self._order, self._n_orders = bool(order), int(n_orders)
        self.order: nn.Module = NoOrder()
        if self._order:
            if self._mel:
                raise ValueError(
                    "order spectra need a linear frequency axis: kind 'stft' or 'envelope', not "
                    "'mel' (mel bands are not evenly spaced in hertz)"
                )
            bins = self._bin_hi - self._bin_lo
            self.order = OrderResampler(
                self._bin_lo * self.sample_rate / self.n_fft, self.sample_rate / self.n_fft,
                bins, self._bands, orders_max, n_orders,
            )  # fmt: skip

        self.register_buffer("mean", torch.zeros(self.n_channels))
        self.register_buffer("std", torch.ones(self.n_channels))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def n_freqs(self) -> int:
        """Rows ``F`` of the output (mel bands, kept STFT bins or orders of each band)."""
        if self._order:
            return self._n_orders * self._bands
        return (self._bin_hi - self._bin_lo) * self._bands

    def row_frequencies(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each output row ``F`` lies on the frequency axis, in Hz.

        For ``kind="stft"`` row ``i`` is FFT bin ``k`` centred on ``k * sample_rate / n_fft``,
        one bin wide (clipped at 0 Hz and Nyquist); for ``kind="envelope"`` the same bins of the
        envelope spectrum, repeated for each band. For ``kind="mel"`` it is a triangular mel
        filter: centred on its peak, from the peak of the filter below to the peak of the filter
        above (HTK mel scale, as the filters are built).

        Returns:
            ``(centre, low, high)``: float64 arrays of ``n_freqs`` values each.

        Raises:
            ValueError: with ``order`` the rows are shaft orders, whose frequency depends on the
                speed.
        """
        if self._order:
            raise ValueError(
                "the rows of order spectra are shaft orders, not frequencies (data.order: true)"
            )
        if self._mel:
            mel = 2595.0 * np.log10(1.0 + np.array([self.f_min, self.f_max]) / 700.0)
            points = np.linspace(mel[0], mel[1], self.n_mels + 2)
            hz = 700.0 * (10.0 ** (points / 2595.0) - 1.0)
            return hz[1:-1], hz[:-2], hz[2:]
        step = self.sample_rate / self.n_fft
        centre = np.arange(self._bin_lo, self._bin_hi, dtype=np.float64) * step
        low = np.maximum(centre - step / 2, 0.0)
        high = np.minimum(centre + step / 2, self.sample_rate / 2)
        return tuple(np.tile(edge, self._bands) for edge in (centre, low, high))  # type: ignore[return-value]

    def features(self, waveform: Tensor) -> Tensor:
        """Spectrogram without normalisation.

        Args:
            waveform: float tensor ``(B, C, T)``.

        Returns:
            float32 tensor ``(B, C, F, frames)`` (see :meth:`output_shape`).
        """
        # (Shapes are constants of a trace; checking them there only produces TracerWarnings.)
        if not torch.jit.is_tracing() and (
            waveform.dim() != 3 or waveform.shape[1] != self.n_channels
        ):
            raise ValueError(
                "expected waveforms of shape (batch, "
                + str(self.n_channels)
                + " channels, samples), got "
                + str(list(waveform.shape))
            )
        spec = self.spectrum(self.pre(waveform))
        # (B, C * bands, K, frames) -> (B, C, bands * K, frames); a no-op without a pre-stage.
        spec = spec.reshape(waveform.shape[0], self.n_channels, -1, spec.shape[-1])
        if self.average_frames:
            spec = spec.mean(dim=-1, keepdim=True)
        if self._mel:
            spec = torch.matmul(spec.transpose(-1, -2), self.mel_fb.to(spec.dtype)).transpose(
                -1, -2
            )
        if self.log:
            # 4-D input: amplitude_to_DB takes the top_db reference per example (over C, F, frames).
            top_db: float | None = None if self._top_db < 0 else self._top_db
            spec = AF.amplitude_to_DB(spec, self._db_multiplier, self.eps, 0.0, top_db)
        if self.whiten > 0:
            spec = self._whiten(spec)
        return spec

    def _whiten(self, spec: Tensor) -> Tensor:
        """Subtract from each (band's) log spectrum its moving average over ``whiten`` rows."""
        batch, channels, rows, frames = spec.shape
        half = self.whiten // 2
        # Each band's spectrum is averaged on its own; its edge rows repeat outwards.
        bands = spec.reshape(batch * channels, self._bands, rows // self._bands, frames)
        padded = F.pad(bands, (0, 0, half, half), mode="replicate")
        background = F.avg_pool2d(padded, (self.whiten, 1), stride=1)
        return (bands - background).reshape(batch, channels, rows, frames)

    def forward(self, waveform: Tensor, rpm: Tensor | None = None) -> Tensor:
        """Normalised spectrogram.

        Normalisation is always applied: before :meth:`fit_normalization` the buffers are the
        identity (mean 0, std 1), which keeps a single, branch-free graph for export.

        Args:
            waveform: float tensor ``(B, C, T)``.
            rpm: with ``order``, each example's shaft speed in rpm ``(B,)`` (required);
                otherwise not used.

        Raises:
            ValueError: ``order`` is on and no ``rpm`` is given.

        Returns:
            float32 tensor ``(B, C, F, frames)`` (see :meth:`output_shape`).
        """
        spec = self.features(waveform)
        spec = (spec - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        if self._order:
            if rpm is None:
                raise ValueError(
                    "this model uses order spectra (data.order: true) and needs each window's "
                    "shaft speed: pass rpm, shape (batch,), in rev/min"
                )
            spec = self.order(spec, rpm)
        if self.instance_norm:
            # In float64: the float32 mean of a constant (flat-lined) channel misses it by a
            # rounding error, which divided by its own size would come out as -1 or 1.
            values = spec.to(torch.float64)
            mean = values.mean(dim=(2, 3), keepdim=True)
            std = torch.sqrt(((values - mean) ** 2).mean(dim=(2, 3), keepdim=True))
            std = torch.where(std < self._min_std, torch.ones_like(std), std)
            spec = ((values - mean) / std).to(torch.float32)
        return spec

    def output_shape(self, window: int) -> tuple[int, int, int]:
        """Shape ``(C, F, frames)`` of one example's output for windows of ``window`` samples.

        Args:
            window: samples per window.
        """
        what, n_fft, hop = f"a window of {window} samples", self.n_fft, self.hop_length
        if isinstance(self.pre, EnvelopeStage):
            # The STFT sees the (decimated) envelope: fewer samples, at 1 / step of the rate.
            samples = self.pre.output_length(window)
            what = f"the envelope of a window of {window} samples ({samples * self._step} "
            what += "samples at the full rate)"
            window, n_fft, hop = samples, n_fft // self._step, hop // self._step
        if self.center and window <= n_fft // 2:
            # torch.stft's reflect padding needs more samples than half the FFT size.
            raise ValueError(
                f"{what} is too short for n_fft={self.n_fft}: it needs more than "
                f"{self.n_fft // 2} samples"
            )
        if not self.center and window < n_fft:
            raise ValueError(
                f"{what} is too short for n_fft={self.n_fft} without centred frames: it needs "
                "at least n_fft samples"
            )
        if self.average_frames:
            frames = 1
        elif self.center:
            frames = window // hop + 1
        else:
            frames = 1 + (window - n_fft) // hop
        return self.n_channels, self.n_freqs, frames

    @torch.no_grad()
    def fit_normalization(self, batches: Iterable[Tensor]) -> None:
        """Set ``mean``/``std`` per channel from the spectrograms of ``batches`` (training data).

        The statistics are exact over every time-frequency bin of every window given (population
        standard deviation), accumulated batch by batch in float64 with Chan's parallel update, so
        they do not depend on how the windows are batched. They are computed on the device of this
        module's buffers. A channel with no variation keeps ``std = 1``.

        Args:
            batches: waveform batches ``(B, C, T)`` (tensors, or ``(waveform, label, ...)`` tuples
                whose first item is the waveform).

        Raises:
            ValueError: when ``batches`` holds no window.
        """
        device = self.mean.device
        count = 0
        mean = torch.zeros(self.n_channels, dtype=torch.float64, device=device)
        m2 = torch.zeros(self.n_channels, dtype=torch.float64, device=device)
        for batch in batches:
            waveform = batch[0] if isinstance(batch, list | tuple) else batch
            if waveform.shape[0] == 0:
                continue
            spec = self.features(waveform.to(device)).to(torch.float64)
            values = spec.transpose(0, 1).reshape(self.n_channels, -1)
            n_b = values.shape[1]
            mean_b = values.mean(dim=1)
            m2_b = ((values - mean_b[:, None]) ** 2).sum(dim=1)
            total = count + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (count * n_b / total)
            count = total
        if count == 0:
            raise ValueError("cannot fit the spectrogram normalisation: no training windows given")
        std = torch.sqrt(m2 / count)
        std = torch.where(std < self._min_std, torch.ones_like(std), std)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        self.fitted.fill_(True)

    def settings(self) -> dict[str, Any]:
        """Constructor settings as plain JSON values (defaults resolved).

        ``SpectrogramFrontend(**frontend.settings())`` rebuilds the same transform (without the
        fitted statistics, which live in the buffers).
        """
        return {
            "sample_rate": self.sample_rate,
            "n_channels": self.n_channels,
            "kind": self.kind,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "win_length": self.win_length,
            "n_mels": self.n_mels,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "power": self.power,
            "log": self.log,
            "top_db": self.top_db,
            "eps": self.eps,
            "stft": self.stft_impl,
            "center": self.center,
            "average_frames": self.average_frames,
            "envelope_bands": self.envelope_bands,
            "envelope_f_max": self.envelope_f_max,
            "instance_norm": self.instance_norm,
            "whiten": self.whiten,
            **self.order_settings,
        }

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return ", ".join(f"{k}={v!r}" for k, v in self.settings().items())


def _check_settings(
    sample_rate: float,
    n_channels: int,
    kind: str,
    n_fft: int,
    hop_length: int,
    win_length: int,
    n_mels: int,
    f_min: float,
    f_max: float,
    nyquist: float,
    power: float,
    top_db: float | None,
    eps: float,
    stft: str,
) -> None:
    """Reject settings torchaudio would accept silently but that give a useless transform."""
    problems = []
    if not sample_rate > 0:
        problems.append(f"sample_rate must be positive, got {sample_rate}")
    if n_channels < 1:
        problems.append(f"n_channels must be at least 1, got {n_channels}")
    if kind not in ("stft", "mel", "envelope"):
        problems.append(f"kind must be 'stft', 'mel' or 'envelope', got {kind!r}")
    if n_fft < 2:
        problems.append(f"n_fft must be at least 2, got {n_fft}")
    if hop_length < 1:
        problems.append(f"hop_length must be at least 1, got {hop_length}")
    if not 1 <= win_length <= n_fft:
        problems.append(f"win_length must be between 1 and n_fft={n_fft}, got {win_length}")
    if kind == "mel" and n_mels < 1:
        problems.append(f"n_mels must be at least 1, got {n_mels}")
    if not 0 <= f_min < f_max <= nyquist:
        problems.append(
            f"need 0 <= f_min < f_max <= {nyquist:g} Hz (half the sample rate), "
            f"got f_min={f_min}, f_max={f_max}"
        )
    if power not in (1.0, 2.0):
        problems.append(f"power must be 1.0 (magnitude) or 2.0 (power), got {power}")
    if top_db is not None and not top_db > 0:
        problems.append(f"top_db must be positive or None, got {top_db}")
    if not eps > 0:
        problems.append(f"eps must be positive, got {eps}")
    if stft not in ("torch", "conv"):
        problems.append(f"stft must be 'torch' or 'conv', got {stft!r}")
    if problems:
        raise ValueError("invalid spectrogram settings: " + "; ".join(problems))


def _check_envelope(envelope_f_max: float, f_min: float, nyquist: float) -> None:
    """Reject an envelope spectrum range that keeps nothing."""
    if not (math.isfinite(envelope_f_max) and 0 <= f_min < envelope_f_max <= nyquist):
        raise ValueError(
            f"invalid envelope settings: need 0 <= f_min < envelope_f_max <= {nyquist:g} Hz (half "
            f"the sample rate), got f_min={f_min}, envelope_f_max={envelope_f_max}"
        )
