"""Spectrogram plots with their axes in hertz and seconds (matplotlib, imported on use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from damage_lightning.data.frontend import SpectrogramFrontend
from damage_lightning.data.windows import WindowBatchLoader

if TYPE_CHECKING:
    from damage_lightning.data.datamodule import DamageDataModule


def _as_frontend(frontend_or_settings: SpectrogramFrontend | dict[str, Any]) -> SpectrogramFrontend:
    if isinstance(frontend_or_settings, SpectrogramFrontend):
        return frontend_or_settings
    # Built from the settings, so defaults (hop_length, f_max) resolve exactly as in training.
    return SpectrogramFrontend(**frontend_or_settings)


def frequencies(frontend_or_settings: SpectrogramFrontend | dict[str, Any]) -> np.ndarray:
    """Frequency in Hz of each spectrogram row: the STFT bins kept, or the mel band centres.

    For an envelope spectrum the envelope frequencies of each band follow one another.

    Args:
        frontend_or_settings: the front end, or its settings (``frontend.settings()`` or
            ``DamageDataModule.frontend_settings()``).
    """
    # The front end's own account of its rows, so plots and attribution cannot disagree.
    return _as_frontend(frontend_or_settings).row_frequencies()[0]


def frame_times(
    frontend_or_settings: SpectrogramFrontend | dict[str, Any], frames: int
) -> np.ndarray:
    """Time in seconds of each frame's centre, from the window's first sample.

    Frames are centred (``center=True``), so frame ``k`` is centred on sample ``k * hop_length``.

    Args:
        frontend_or_settings: the front end, or its settings.
        frames: number of frames.
    """
    fe = _as_frontend(frontend_or_settings)
    return np.arange(frames) * fe.hop_length / fe.sample_rate


def plot_spectrogram(
    spec: torch.Tensor | np.ndarray,
    frontend_or_settings: SpectrogramFrontend | dict[str, Any],
    ax: Any = None,
    channel: int = 0,
    title: str | None = None,
) -> Any:
    """Draw one spectrogram with time in seconds and frequency in hertz.

    Args:
        spec: ``(channels, freq, frames)`` or ``(freq, frames)``, as the front end gives it for
            one window (``dm.spectrogram(waveform)[i]``).
        frontend_or_settings: the front end that made ``spec``, or its settings.
        ax: matplotlib axes to draw into (``None``: a new figure).
        channel: the channel to draw when ``spec`` has a channel axis.
        title: the axes' title.

    Returns:
        The matplotlib axes (the image is ``ax.collections[0]``, for a colour bar).

    Raises:
        ValueError: ``spec`` does not have the front end's frequency rows, or no such channel.
    """
    values = spec.detach().cpu().numpy() if isinstance(spec, torch.Tensor) else np.asarray(spec)
    if values.ndim == 3:
        if not 0 <= channel < values.shape[0]:
            raise ValueError(f"no channel {channel}: the spectrogram has {values.shape[0]}")
        values = values[channel]
    if values.ndim != 2:
        raise ValueError(
            f"expected one spectrogram (channels, freq, frames) or (freq, frames), got shape "
            f"{tuple(values.shape)}; pick one example of a batch"
        )
    freqs = frequencies(frontend_or_settings)
    if values.shape[0] != len(freqs):
        raise ValueError(
            f"the spectrogram has {values.shape[0]} frequency rows, the front end gives "
            f"{len(freqs)}: pass the front end (or settings) that made it"
        )
    times = frame_times(frontend_or_settings, values.shape[1])
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 3))
    fe = _as_frontend(frontend_or_settings)
    if fe.kind == "envelope":
        _draw_bands(ax, times, freqs, values, fe.envelope_bands)
    else:
        ax.pcolormesh(times, freqs, values, shading="nearest")
        ax.set_ylabel("Frequency (Hz)")
    ax.set_xlabel("Time (s)")
    if title:
        ax.set_title(title)
    return ax


def _draw_bands(
    ax: Any, times: np.ndarray, freqs: np.ndarray, values: np.ndarray, bands: list[list[float]]
) -> None:
    """An envelope spectrogram: each demodulation band's rows drawn above the previous band's."""
    rows = len(freqs) // len(bands)
    height = float(freqs[rows - 1] + (freqs[1] - freqs[0] if rows > 1 else 1.0))
    ticks, labels = [], []
    for b, (low, high) in enumerate(bands):
        offset = b * height
        ax.pcolormesh(
            times, freqs[:rows] + offset, values[b * rows : (b + 1) * rows], shading="nearest",
            vmin=float(values.min()), vmax=float(values.max()),
        )  # fmt: skip
        ax.axhline(offset, color="white", linewidth=0.8)
        ax.text(times[0], offset + 0.9 * height, f" band {low:g}-{high:g} Hz", color="white",
                fontsize=7, va="top")  # fmt: skip
        ticks += [offset, offset + height / 2]
        labels += ["0", f"{height / 2:.0f}"]
    ax.set_yticks(ticks, labels)
    ax.set_ylabel("Envelope frequency (Hz)")


def plot_window(
    datamodule: DamageDataModule,
    split: str = "train",
    index: int = 0,
    channel: int = 0,
    ax: Any = None,
) -> Any:
    """Draw the spectrogram of window ``index`` of ``split``, titled with its origin.

    Args:
        datamodule: the data module (set up here when it is not yet).
        split: ``train``, ``val`` or ``test``.
        index: the window's position in the split, in order.
        channel: the sensor channel to draw.
        ax: matplotlib axes to draw into (``None``: a new figure).

    Returns:
        The matplotlib axes.
    """
    dm = datamodule
    if split not in dm.indices:
        dm.setup(split)
    assert dm.dataset is not None
    rows = dm.indices[split]
    if not 0 <= index < len(rows):
        raise IndexError(f"the {split} split has {len(rows)} windows, no window {index}")
    if not 0 <= channel < dm.in_channels:
        raise ValueError(f"no channel {channel}: the data have {dm.in_channels}")
    # The loader's own gather, so the window is exactly what training sees.
    one = WindowBatchLoader(dm.dataset.waveforms, rows[index : index + 1], None, dm.window, 1)
    waveform = next(iter(one))[0]
    recording, start = (int(v) for v in rows[index])
    title = (
        f"{dm.channels[channel]} · {dm.dataset.labels[recording]} · "
        f"{dm.dataset.recordings[recording].relpath} at {start / dm.sample_rate:.2f} s"
    )
    spec = dm.spectrogram(waveform)[0]
    return plot_spectrogram(spec, dm.frontend, ax=ax, channel=channel, title=title)
