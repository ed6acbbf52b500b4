"""The spectrum backbone: a window's log spectrum, centred per channel, as its embedding.

No weights. A spectrogram ``(B, C, F, T)`` is averaged over its frames (a no-op for the one
frame of a Welch front end, ``average_frames``) and each channel's mean over frequency is
subtracted, so a change of gain (excitation level, sensor sensitivity) leaves the embedding
unchanged; the result is flattened to ``C * F`` values. The novelty task models these embeddings
of healthy windows with a Gaussian; learned backbones (``cnn``, ``resnet``) can be used there
too (see ``tasks/novelty.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SpectrumBackbone(nn.Module):
    """Frame-averaged, per-channel centred spectrum ``(B, C * F)`` of spectrograms ``(B, C, F, T)``.

    Args:
        in_channels: channels of the input spectrogram.
        input_shape: ``(channels, freq, frames)`` of the input; needed for ``out_features``.
    """

    def __init__(self, in_channels: int, input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if input_shape is None:
            raise ValueError(
                "the spectrum backbone needs input_shape (channels, freq, frames) to know the "
                "size of its embedding"
            )
        channels, freqs = int(input_shape[0]), int(input_shape[1])
        if channels != in_channels:
            raise ValueError(
                f"input_shape {tuple(input_shape)} does not have {in_channels} channels"
            )
        self.out_features = channels * freqs

    def forward(self, x: Tensor) -> Tensor:
        """The embedding of a batch of spectrograms.

        Args:
            x: ``(B, C, F, T)`` normalised log spectrograms.
        """
        spectrum = x.mean(dim=-1)
        spectrum = spectrum - spectrum.mean(dim=-1, keepdim=True)
        return spectrum.flatten(1)
