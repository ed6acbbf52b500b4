"""Where windows start, and window batches of one recording: the one windowing rule.

Training's split segments, ``predict`` and the gateway all cut windows with :func:`window_starts`:
starts ``start, start + hop, ...`` while the window fits before ``stop``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def window_starts(start: int, stop: int, window: int, hop: int) -> np.ndarray:
    """Start samples of the windows that fit in ``[start, stop)``.

    Args:
        start: first sample of the range.
        stop: end of the range (exclusive).
        window: window length in samples.
        hop: samples between window starts.

    Returns:
        int64 array of starts ``s = start + k * hop`` with ``s + window <= stop`` (empty when the
        range is shorter than one window).
    """
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    last = stop - window
    if last < start:
        return np.zeros(0, dtype=np.int64)
    return np.arange(start, last + 1, hop, dtype=np.int64)


def count_windows(n_samples: int, window: int, hop: int) -> int:
    """How many windows :func:`window_starts` gives for ``[0, n_samples)``, without listing them."""
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    return 0 if n_samples < window else (n_samples - window) // hop + 1


def window_batches(
    waveform: np.ndarray, window: int, hop: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches ``(starts, windows)`` of one recording, ``windows`` float32 ``(B, C, window)``.

    Only one batch of windows is materialised at a time, so a recording of any length (a
    memory-mapped hour of data) costs a batch of memory, not all of its overlapping windows.

    Args:
        waveform: ``(channels, samples)``.
        window: window length in samples.
        hop: samples between window starts.
        batch_size: windows per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    starts = window_starts(0, waveform.shape[1], window, hop)
    view = sliding_window_view(waveform, window, axis=1)
    for a in range(0, len(starts), batch_size):
        chunk = starts[a : a + batch_size]
        batch = np.ascontiguousarray(view[:, chunk].transpose(1, 0, 2), dtype=np.float32)
        yield chunk, batch
