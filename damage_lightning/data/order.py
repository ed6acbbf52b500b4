"""Speed-normalised (order) spectra: spectrogram rows resampled from hertz to shaft orders.

A machine's lines (shaft harmonics, gear meshing, bearing defect frequencies) are fixed multiples
of its shaft rate ``f_r = rpm / 60``; on a frequency axis they move with the speed, on an order
axis (``f / f_r``) they stay put, so a model trained at one speed can read another.
:class:`OrderResampler` reads each example's spectrogram at ``f = order * f_r`` for a fixed grid
of orders, each the mean of the frequency rows over its order cell (a cumulative sum read at the
cell's edges with ``gather`` and a lerp: no data-dependent shapes, so it scripts with
TorchScript and exports to ONNX with the speed as a second model input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: The name of the speed input of an exported model (and of the ONNX graph input).
SPEED_INPUT = "rpm"
#: Front ends whose rows lie on a linear frequency axis (mel bands do not).
ORDER_KINDS = ("stft", "envelope")


class OrderResampler(nn.Module):
    """Spectrograms ``(B, C, F, T)`` on a linear frequency axis to ``(B, C, bands * n_orders, T)``.

    The ``F`` rows are ``bands`` stacked spectra (one for ``kind="stft"``, one per demodulation
    band for ``kind="envelope"``), each of ``bins`` rows at ``f_low + k * step`` Hz. Output row
    ``j`` of each band is that band's spectrum around ``orders[j] * rpm / 60`` Hz: the mean of
    the rows over the order cell (the spacing of the orders, at this speed, and at least one row
    wide, which is linear interpolation between the two rows around it where the order grid is
    finer than the rows); an order whose frequency lies outside the band's
    rows (below ``f_low``, above the highest row, i.e. beyond ``f_max`` or the Nyquist frequency)
    is ``0``, which after the front end's normalisation is the training mean: "nothing known".
    The orders are ``linspace(0, orders_max, n_orders)``.

    Args:
        f_low: frequency of each band's first row, Hz.
        step: spacing of the rows, Hz.
        bins: rows per band (at least 2).
        bands: spectra stacked along the rows.
        orders_max: the highest order.
        n_orders: orders per band (at least 2).
    """

    def __init__(
        self, f_low: float, step: float, bins: int, bands: int, orders_max: float, n_orders: int
    ) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(
                f"order spectra need at least 2 frequency rows to interpolate between, got {bins}"
            )
        self.f_low = float(f_low)
        self.step = float(step)
        self.bins = int(bins)
        self.bands = int(bands)
        self.n_orders = int(n_orders)
        orders = torch.linspace(0.0, float(orders_max), int(n_orders), dtype=torch.float32)
        self.register_buffer("orders", orders, persistent=False)
        #: Orders between neighbouring output rows.
        self._spacing = float(orders_max) / (int(n_orders) - 1)

    def full_speed(self) -> float:
        """The rpm at which the highest order reaches the highest frequency row."""
        top = self.f_low + (self.bins - 1) * self.step
        return 60.0 * top / float(self.orders[-1])

    def forward(self, spec: Tensor, rpm: Tensor) -> Tensor:
        """Resample ``spec`` ``(B, C, F, T)`` to orders at each example's speed ``rpm`` ``(B,)``."""
        batch, channels, _, frames = spec.shape
        x = spec.reshape(batch, channels, self.bands, self.bins, frames)
        shaft = rpm.to(torch.float64).reshape(-1, 1) / 60.0  # (B, 1) Hz
        pos = (self.orders[None, :].to(torch.float64) * shaft - self.f_low) / self.step
        inside = (pos >= 0.0) & (pos <= float(self.bins - 1))
        # Each output row is the mean of the rows over its own order cell (the grid spacing at
        # this speed), and at least one row wide: where the grid is finer than the rows this is
        # linear interpolation between the two rows around it; where it is coarser, a line
        # between two grid orders still counts (point samples would skip it).
        half = 0.5 * torch.clamp(self._spacing * shaft / self.step, min=1.0)
        edge = float(self.bins) - 0.5
        low = (pos - half).clamp(-0.5, edge)
        high = (pos + half).clamp(-0.5, edge)
        # Row i covers [i - 0.5, i + 0.5]: ``total[k]`` is the integral up to k - 0.5, so the
        # integral up to u is ``total`` interpolated at u + 0.5. Float64: differences of sums.
        total = torch.cumsum(x.to(torch.float64), dim=3)
        total = torch.cat([torch.zeros_like(total[:, :, :, :1]), total], dim=3)
        area = self._integral(total, high) - self._integral(total, low)
        width = (high - low).clamp(min=1e-9)[:, None, None, :, None]
        out = (area / width).to(spec.dtype)
        out = torch.where(inside[:, None, None, :, None], out, torch.zeros_like(out))
        return out.reshape(batch, channels, self.bands * self.n_orders, frames)

    def _integral(self, total: Tensor, upto: Tensor) -> Tensor:
        """``total`` ``(B, C, bands, bins + 1, T)`` read at ``upto + 0.5`` ``(B, n_orders)``."""
        batch, channels, _, _, frames = total.shape
        where = upto + 0.5  # in [0, bins]
        below = torch.floor(where).clamp(max=float(self.bins - 1))
        weight = (where - below)[:, None, None, :, None]
        index = below.to(torch.int64)[:, None, None, :, None]
        index = index.expand(batch, channels, self.bands, self.n_orders, frames)
        first = torch.gather(total, 3, index)
        second = torch.gather(total, 3, index + 1)
        return first + weight * (second - first)

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return (
            f"f_low={self.f_low}, step={self.step}, bins={self.bins}, bands={self.bands}, "
            f"orders_max={float(self.orders[-1])}, n_orders={self.n_orders}"
        )


class NoOrder(nn.Module):
    """The front end's order stage when ``order`` is off: the spectrogram as it is."""

    def forward(self, spec: Tensor, rpm: Tensor) -> Tensor:
        """``spec`` unchanged."""
        return spec


def check_order_options(
    order: bool,
    orders_max: float,
    n_orders: int,
    rpm_column: str,
    predict_rpm: float | None,
    spectrogram: str,
) -> None:
    """Reject order options that cannot work, naming the ``data.`` option.

    Raises:
        ValueError: every bad option, in one message.
    """
    problems = []
    if not (isinstance(orders_max, int | float) and math.isfinite(orders_max) and orders_max > 0):
        problems.append(f"data.orders_max must be a positive number of orders, got {orders_max!r}")
    if isinstance(n_orders, bool) or not isinstance(n_orders, int) or n_orders < 2:
        problems.append(f"data.n_orders must be an integer of at least 2, got {n_orders!r}")
    if not isinstance(rpm_column, str) or not rpm_column.strip():
        problems.append(f"data.rpm_column must name a manifest column, got {rpm_column!r}")
    if predict_rpm is not None and not (
        isinstance(predict_rpm, int | float) and math.isfinite(predict_rpm) and predict_rpm > 0
    ):
        problems.append(f"data.predict_rpm must be a positive speed in rpm, got {predict_rpm!r}")
    if order and spectrogram not in ORDER_KINDS:
        problems.append(
            f"data.order needs a linear frequency axis: data.spectrogram 'stft' or 'envelope', "
            f"not {spectrogram!r} (mel bands are not evenly spaced in hertz)"
        )
    if problems:
        raise ValueError("invalid order settings: " + "; ".join(problems))


def split_speed(batch: Sequence[Tensor], order: bool) -> tuple[list[Tensor], Tensor | None]:
    """A loader batch without its speeds, and the speeds (``None`` when ``order`` is off).

    With ``order`` the loaders put each window's rpm last in the batch, after the label (and the
    recording and start, where the batch has them), so code that reads ``batch[0]``,
    ``batch[1]``, ... finds what it always found.
    """
    items = list(batch)
    return (items[:-1], items[-1]) if order else (items, None)


def has_order(frontend: nn.Module | None) -> bool:
    """Whether a spectrogram front end resamples to orders (and so needs the shaft speed)."""
    return isinstance(getattr(frontend, "order", None), OrderResampler)


def takes_speed(model: nn.Module) -> bool:
    """Whether a deployable model (front end + network) needs the shaft speed as an input."""
    return has_order(getattr(model, "frontend", None))


def refuse_order(model_or_frontend: nn.Module, what: str) -> None:
    """Raise a clear error when ``what`` is asked of a model that needs the shaft speed.

    Raises:
        ValueError: the model (or front end) has order spectra.
    """
    if takes_speed(model_or_frontend) or has_order(model_or_frontend):
        raise ValueError(
            f"{what} has no shaft speed to give the model, and this model was trained with "
            "order spectra (data.order: true), which need it; train without data.order for it"
        )
