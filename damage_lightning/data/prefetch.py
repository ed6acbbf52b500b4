"""Gather loader batches ahead in a background thread (``DamageDataModule(num_workers=N)``).

A host-memory batch is one numpy gather from the waveforms; on memory-mapped caches larger than
RAM that gather waits on the disk. A thread that gathers the next batches while the training step
runs (torch and numpy release the GIL in their kernels) hides that wait. Batches come in the same
order as without prefetching.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from damage_lightning.data.windows import WindowBatchLoader

# Batches gathered ahead per worker, as DataLoader's default ``prefetch_factor``.
PREFETCH_FACTOR = 2
_ITEM, _END, _ERROR = range(3)


def prefetch(batches: Iterator[Any], depth: int) -> Iterator[Any]:
    """Yield the items of ``batches``, produced by a background thread up to ``depth`` ahead.

    The producing thread stops when ``batches`` ends, raises (the error is raised here, in the
    consumer), or the consumer stops early (``close()`` or garbage collection of this
    generator): it finishes at most the item it is gathering and exits.

    Args:
        batches: the iterator to run in the background thread.
        depth: the most items gathered but not yet consumed (at least 1).
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    items: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                items.put((_ITEM, item))
                if stop.is_set():
                    return
            items.put((_END, None))
        except BaseException as exc:
            items.put((_ERROR, exc))

    thread = threading.Thread(target=produce, name="damage-lightning-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        # After ``stop`` the producer puts at most one more item; emptying the queue leaves room
        # for it, so the join below never waits on a full queue.
        while True:
            try:
                items.get_nowait()
            except queue.Empty:
                break
        thread.join()


class PrefetchingWindowLoader(WindowBatchLoader):
    """A :class:`WindowBatchLoader` whose batches are gathered ahead in a background thread.

    Args:
        *args: :class:`WindowBatchLoader` arguments.
        workers: batches are gathered up to ``PREFETCH_FACTOR * workers`` ahead (at least 1).
        **kwargs: :class:`WindowBatchLoader` arguments.
    """

    def __init__(self, *args: Any, workers: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.depth = PREFETCH_FACTOR * int(workers)

    def __iter__(self) -> Iterator[Any]:
        return prefetch(super().__iter__(), self.depth)
