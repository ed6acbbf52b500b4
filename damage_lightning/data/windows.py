"""Window indices inside split segments, and a loader that cuts batches without per-window work.

Windows are cut after the split and only inside a segment, so a window never crosses into another
split. The loader gathers a whole batch with one indexing operation, from waveforms kept on the
accelerator (device mode) or from host memory and memory-mapped arrays (host mode).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import Tensor

from damage_lightning.data.splits import SplitPlan
from damage_lightning.io.windows import window_starts


def build_window_index(plan: SplitPlan, split: str, window: int, hop: int) -> np.ndarray:
    """All windows of one split, as ``(recording, start)`` rows.

    Each segment of the split is windowed on its own (starts at the segment start, then every
    ``hop``), so no window reaches outside its segment.

    Args:
        plan: the split plan.
        split: ``"train"``, ``"val"`` or ``"test"``.
        window: window length in samples.
        hop: samples between window starts.

    Returns:
        int64 array ``(n, 2)``, sorted by recording and start.
    """
    parts = []
    for seg in plan.segments_for(split):
        starts = window_starts(seg.start, seg.stop, window, hop)
        if len(starts):
            parts.append(np.stack([np.full_like(starts, seg.recording), starts], axis=1))
    if not parts:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(parts).astype(np.int64, copy=False)


class _EpochSetter:
    """What Lightning finds as ``loader.sampler``: it calls ``set_epoch`` at every epoch start."""

    def __init__(self, loader: WindowBatchLoader):
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class WindowBatchLoader:
    """Iterable of batches cut from waveforms without per-window Python work.

    Batches are ``(waveform, label)``: float32 ``(B, C, window)`` and int64 ``(B,)``; with
    ``with_positions`` also the recording index and start sample of each window (int64 ``(B,)``);
    with ``speeds`` last each window's shaft speed (float32 ``(B,)``, its recording's).

    Storage modes:

    * device mode (``device`` given, e.g. ``"cuda"`` or ``"cpu"``): the sample span each recording
      needs (first to last window) is copied once into one ``(C, total)`` tensor on that device;
      a batch is a single gather from it, and every tensor yielded lives on that device.
    * host mode (``device=None``): a batch is gathered with numpy from the arrays as given (they
      may be memory-mapped and larger than RAM; nothing is copied up front), one fancy-indexing
      operation per recording the batch touches; tensors are on the CPU, pinned when
      ``pin_memory`` is set and CUDA is available.

    Both modes yield identical batches for the same seed and epoch.

    Order: without ``shuffle`` windows come in index order. With ``shuffle`` the order is a
    permutation drawn from ``(seed, epoch)``: ``set_epoch`` fixes the epoch of the following
    iterations; if it is never called, each iteration advances the epoch by one (0, 1, 2, ...).
    Lightning calls ``loader.sampler.set_epoch(epoch)`` at every epoch start (with the epoch count
    that survives a resume); ``sampler`` is there for that.

    Distributed sharding (``world_size > 1``): every rank draws the same global order and takes
    every ``world_size``-th window from position ``rank``, so ranks see disjoint windows, and every
    rank yields the same number of batches (collective operations would hang otherwise):

    * with ``shuffle`` (training) each rank takes ``num_windows // world_size`` windows; the
      remainder (fewer than ``world_size`` windows) is left out of that epoch, a different one
      each epoch;
    * without ``shuffle`` (validation, test, prediction) every window is covered exactly once as
      long as that gives every rank the same number of batches. Otherwise (only when
      ``num_windows`` is not a multiple of ``world_size`` and the shorter shares fill whole
      batches, or there are fewer windows than ranks) each rank one window short repeats its own
      first window (or, with fewer windows than ranks, another rank's), so at most
      ``world_size - 1`` windows are counted twice in distributed metrics. With ``drop_last``
      every rank yields ``(num_windows // world_size) // batch_size`` full batches instead.

    Args:
        waveforms: one float array ``(C, samples)`` per recording (numpy, possibly memory-mapped).
        index: int64 ``(n, 2)`` rows ``(recording, start)`` (see :func:`build_window_index`).
        labels: label index per recording (``-1`` when unknown), or ``None`` for all unknown.
        window: window length in samples.
        batch_size: windows per batch (per rank).
        shuffle: draw a new order every epoch.
        drop_last: leave out the last, incomplete batch.
        seed: seed of the shuffling.
        device: keep the data on this device and gather there; ``None`` for host mode.
        with_positions: also yield the recording index and start of every window.
        rank: this process's rank.
        world_size: number of processes sharing the windows.
        pin_memory: in host mode, pin the batch tensors (only when CUDA is available).
        speeds: one shaft speed (rpm) per recording, yielded last with every window (order
            spectra); ``None``: no speeds in the batches.
    """

    def __init__(
        self,
        waveforms: list[np.ndarray],
        index: np.ndarray,
        labels: np.ndarray | None,
        window: int,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        with_positions: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        speeds: np.ndarray | None = None,
    ):
        if window < 1 or batch_size < 1:
            raise ValueError(f"window and batch_size must be positive, got {window}, {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        n_rec = len(waveforms)
        if labels is None:
            labels = np.full(n_rec, -1, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n_rec,):
            raise ValueError(f"need one label per recording ({n_rec}), got shape {labels.shape}")
        if len(index):
            recs, starts = index[:, 0], index[:, 1]
            if recs.min() < 0 or recs.max() >= n_rec:
                raise ValueError(f"window index names recordings outside 0..{n_rec - 1}")
            lengths = np.array([w.shape[-1] for w in waveforms], dtype=np.int64)
            bad = (starts < 0) | (starts + window > lengths[recs])
            if bad.any():
                r, s = index[np.flatnonzero(bad)[0]]
                raise ValueError(
                    f"window at sample {s} of recording {r} ({lengths[r]} samples) does not fit "
                    f"a window of {window}"
                )
            channels = {waveforms[r].shape[0] for r in np.unique(recs)}
            if len(channels) != 1:
                raise ValueError(f"recordings have different channel counts: {sorted(channels)}")

        self.waveforms = waveforms
        self.index = index
        self.labels = labels
        self.speeds = None if speeds is None else np.asarray(speeds, dtype=np.float32)
        if self.speeds is not None and self.speeds.shape != (n_rec,):
            raise ValueError(f"need one speed per recording ({n_rec}), got {self.speeds.shape}")
        self.window = int(window)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.with_positions = bool(with_positions)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pin_memory = bool(pin_memory)
        self.device = torch.device(device) if device is not None else None
        self._epoch = 0
        self._epoch_fixed = False
        self.sampler = _EpochSetter(self)
        # Lightning reads ``batch_sampler`` next to ``sampler`` to decide whether a loader shuffles.
        self.batch_sampler = None
        if self.device is not None:
            self._to_device()

    # ------------------------------------------------------------------------------ storage
    def _to_device(self) -> None:
        """Copy the span of every recording the index uses into one tensor on ``self.device``."""
        recs, starts = self.index[:, 0], self.index[:, 1]
        needed = np.unique(recs)
        n_ch = self.waveforms[needed[0]].shape[0] if len(needed) else 0
        lo = np.zeros(len(self.waveforms), dtype=np.int64)
        offset = np.zeros(len(self.waveforms), dtype=np.int64)
        spans = []
        total = 0
        for r in needed:
            mine = starts[recs == r]
            lo[r] = mine.min()
            hi = mine.max() + self.window
            offset[r] = total
            spans.append((int(r), int(lo[r]), int(hi), total))
            total += int(hi - lo[r])
        data = torch.empty((n_ch, total), dtype=torch.float32, device=self.device)
        for r, a, b, at in spans:
            # One recording at a time: memory-mapped data never needs a full host copy. (A copy
            # also because torch refuses to wrap read-only memory maps without a warning.)
            chunk = np.array(self.waveforms[r][:, a:b], dtype=np.float32)
            data[:, at : at + b - a] = torch.from_numpy(chunk).to(self.device)
        self._data = data
        self._gstart = torch.from_numpy(offset[recs] - lo[recs] + starts).to(self.device)
        self._dev_labels = torch.from_numpy(self.labels[recs]).to(self.device)
        self._dev_recs = torch.from_numpy(recs.copy()).to(self.device)
        self._dev_starts = torch.from_numpy(starts.copy()).to(self.device)
        if self.speeds is not None:
            self._dev_speeds = torch.from_numpy(self.speeds[recs]).to(self.device)

    # -------------------------------------------------------------------------------- order
    @property
    def num_windows(self) -> int:
        """Windows in the index (all ranks together)."""
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch that sets the shuffle order of the following iterations.

        Args:
            epoch: epoch number.
        """
        self._epoch = int(epoch)
        self._epoch_fixed = True

    def _rank_count(self) -> int:
        """Windows this rank yields per epoch."""
        n, ws, b = len(self.index), self.world_size, self.batch_size
        if self.shuffle:
            return n // ws
        if self.drop_last:
            return (n // ws) // b * b
        mine = len(range(self.rank, n, ws))
        n_batches = math.ceil(math.ceil(n / ws) / b)
        return max(mine, (n_batches - 1) * b + 1) if n_batches else 0

    def __len__(self) -> int:
        count = self._rank_count()
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def _positions(self, epoch: int) -> np.ndarray:
        """Positions in ``index`` of this rank's windows for ``epoch``, in yield order."""
        n = len(self.index)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        count = self._rank_count()
        mine = order[self.rank :: self.world_size][:count]
        if len(mine) < count:
            pad = (np.arange(count - len(mine)) + self.rank) % n
            mine = np.concatenate([mine, order[pad]])
        if self.drop_last:
            mine = mine[: len(mine) // self.batch_size * self.batch_size]
        return mine.astype(np.int64, copy=False)

    # ---------------------------------------------------------------------------- batches
    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        epoch = self._epoch
        if not self._epoch_fixed:
            self._epoch += 1
        positions = self._positions(epoch)
        if self.device is not None:
            yield from self._device_batches(positions)
        else:
            yield from self._host_batches(positions)

    def _device_batches(self, positions: np.ndarray) -> Iterator[tuple[Tensor, ...]]:
        if not len(positions):
            return
        pos_all = torch.from_numpy(positions).to(self.device)
        # A (C, total - window + 1, window) view of every possible window, nothing copied; one
        # advanced-indexing gather per batch reads exactly the batch's samples.
        frames = self._data.unfold(1, self.window, 1)
        for a in range(0, len(positions), self.batch_size):
            pos = pos_all[a : a + self.batch_size]
            wave = frames[:, self._gstart[pos]].permute(1, 0, 2).contiguous()
            out: tuple[Tensor, ...] = (wave, self._dev_labels[pos])
            if self.with_positions:
                out = (*out, self._dev_recs[pos], self._dev_starts[pos])
            if self.speeds is not None:
                out = (*out, self._dev_speeds[pos])
            yield out

    def _host_batches(self, positions: np.ndarray) -> Iterator[tuple[Tensor, ...]]:
        pin = self.pin_memory and torch.cuda.is_available()
        for a in range(0, len(positions), self.batch_size):
            pos = positions[a : a + self.batch_size]
            recs, starts = self.index[pos, 0], self.index[pos, 1]
            n_ch = self.waveforms[recs[0]].shape[0]
            wave = np.empty((len(pos), n_ch, self.window), dtype=np.float32)
            for r in np.unique(recs):
                rows = np.flatnonzero(recs == r)
                view = sliding_window_view(self.waveforms[r], self.window, axis=1)
                wave[rows] = view[:, starts[rows]].transpose(1, 0, 2)
            out = [torch.from_numpy(wave), torch.from_numpy(self.labels[recs])]
            if self.with_positions:
                out += [torch.from_numpy(recs.copy()), torch.from_numpy(starts.copy())]
            if self.speeds is not None:
                out.append(torch.from_numpy(self.speeds[recs]))
            if pin:
                out = [t.pin_memory() for t in out]
            yield tuple(out)
