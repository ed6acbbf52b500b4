"""Window indices stay inside split segments; the batch loader yields exactly those windows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from damage_lightning.data.splits import SPLITS, plan_splits
from damage_lightning.data.windows import WindowBatchLoader, build_window_index, window_starts


def test_window_starts_at_edges() -> None:
    assert window_starts(0, 10, 4, 2).tolist() == [0, 2, 4, 6]
    assert window_starts(0, 9, 4, 2).tolist() == [0, 2, 4]
    assert window_starts(5, 9, 4, 3).tolist() == [5]
    assert window_starts(5, 8, 4, 1).tolist() == []
    assert window_starts(3, 20, 5, 100).tolist() == [3]
    assert window_starts(0, 10, 4, 2).dtype == np.int64
    with pytest.raises(ValueError):
        window_starts(0, 10, 0, 1)


def test_index_stays_inside_segments_for_every_strategy() -> None:
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"] * 4
    lengths = [int(rng.integers(700, 2000)) for _ in labels]
    groups = [f"u{i % 4}" for i in range(len(labels))]
    for strategy, kw in [("recording", {}), ("block", {}), ("group", {"groups": groups})]:
        plan = plan_splits(labels, lengths, window=128, hop=48, strategy=strategy, **kw)
        owner = [np.full(n, "", dtype=object) for n in lengths]
        for seg in plan.segments:
            owner[seg.recording][seg.start : seg.stop] = seg.split
        for split in SPLITS:
            index = build_window_index(plan, split, 128, 48)
            assert index.dtype == np.int64 and index.shape[1] == 2 and len(index) > 0
            for r, s in index:
                # Every sample of every window belongs to this split: no window crosses a segment.
                assert (owner[r][s : s + 128] == split).all()
            expected = sum(
                len(window_starts(seg.start, seg.stop, 128, 48)) for seg in plan.segments_for(split)
            )
            assert len(index) == expected
            assert (np.diff(index[:, 0] * 10**6 + index[:, 1]) > 0).all()


def _dataset(n_rec: int = 5, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    waves = [
        rng.standard_normal((channels, int(rng.integers(300, 900)))).astype(np.float32)
        for _ in range(n_rec)
    ]
    index = np.array(
        [[r, s] for r, w in enumerate(waves) for s in window_starts(0, w.shape[1], 64, 40)],
        dtype=np.int64,
    )
    labels = np.arange(n_rec, dtype=np.int64) % 3
    return waves, index, labels


def _by_hand(waves, index, labels, positions):
    wave = np.stack([waves[r][:, s : s + 64] for r, s in index[positions]])
    return wave, labels[index[positions, 0]]


@pytest.mark.parametrize("device", [None, "cpu"])
def test_loader_yields_exactly_the_indexed_windows(device) -> None:
    waves, index, labels = _dataset()
    loader = WindowBatchLoader(waves, index, labels, 64, batch_size=7, device=device)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(index) // 7)
    assert loader.num_windows == len(index)
    wave = torch.cat([b[0] for b in batches]).numpy()
    lab = torch.cat([b[1] for b in batches]).numpy()
    want_wave, want_lab = _by_hand(waves, index, labels, np.arange(len(index)))
    np.testing.assert_array_equal(wave, want_wave)
    np.testing.assert_array_equal(lab, want_lab)
    assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64
    assert batches[0][0].shape == (7, 3, 64)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_positions_and_unknown_labels(device) -> None:
    waves, index, _ = _dataset()
    loader = WindowBatchLoader(
        waves, index, None, 64, batch_size=16, shuffle=True, device=device, with_positions=True
    )
    for wave, label, rec, start in loader:
        assert (label == -1).all()
        for w, r, s in zip(wave, rec.tolist(), start.tolist(), strict=True):
            np.testing.assert_array_equal(w.numpy(), waves[r][:, s : s + 64])


def test_shuffle_follows_seed_and_epoch() -> None:
    waves, index, labels = _dataset()

    def order(loader):
        return torch.cat([b[3] * 10**6 + b[2] for b in loader]).tolist()

    kw = {"batch_size": 8, "shuffle": True, "with_positions": True}
    a = WindowBatchLoader(waves, index, labels, 64, seed=3, **kw)
    b = WindowBatchLoader(waves, index, labels, 64, seed=3, **kw)
    first, second = order(a), order(a)  # each pass advances the epoch
    assert first != second
    assert sorted(first) == sorted(second)
    assert order(b) == first and order(b) == second
    b.set_epoch(1)
    assert order(b) == second and order(b) == second  # a fixed epoch repeats
    a.sampler.set_epoch(0)  # what Lightning calls at an epoch start
    assert order(a) == first
    other_seed = WindowBatchLoader(waves, index, labels, 64, seed=4, **kw)
    assert order(other_seed) != first
    plain = WindowBatchLoader(waves, index, labels, 64, batch_size=8, with_positions=True)
    assert order(plain) == order(plain) == sorted(first, key=lambda v: (v % 10**6, v))


def test_device_mode_equals_host_mode() -> None:
    waves, index, labels = _dataset(channels=2)
    subset = index[::3]  # device mode copies only the spans this index uses
    kw = {"batch_size": 9, "shuffle": True, "seed": 11, "with_positions": True}
    host = WindowBatchLoader(waves, subset, labels, 64, **kw)
    dev = WindowBatchLoader(waves, subset, labels, 64, device="cpu", **kw)
    for _ in range(2):
        for hb, db in zip(host, dev, strict=True):
            for h, d in zip(hb, db, strict=True):
                assert h.dtype == d.dtype and torch.equal(h, d)


def test_host_mode_reads_memory_mapped_arrays(tmp_path) -> None:
    waves, index, labels = _dataset()
    mapped = []
    for i, w in enumerate(waves):
        np.save(tmp_path / f"{i}.npy", w)
        mapped.append(np.load(tmp_path / f"{i}.npy", mmap_mode="r"))
    loader = WindowBatchLoader(mapped, index, labels, 64, batch_size=32, shuffle=True)
    assert loader.waveforms[0] is mapped[0]  # no up-front copy
    plain = WindowBatchLoader(waves, index, labels, 64, batch_size=32, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only maps must not trigger torch's warning
        on_device = WindowBatchLoader(mapped, index, labels, 64, 32, shuffle=True, device="cpu")
        for a, b, c in zip(loader, plain, on_device, strict=True):
            assert torch.equal(a[0], b[0]) and torch.equal(c[0], b[0])


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("n_windows", [1, 2, 10, 11, 12, 13, 25])
def test_rank_sharding(shuffle: bool, world_size: int, n_windows: int) -> None:
    waves = [np.arange(3 * 200, dtype=np.float32).reshape(3, 200)]
    index = np.stack([np.zeros(n_windows, dtype=np.int64), np.arange(n_windows)], axis=1)
    seen = []
    lengths = set()
    for rank in range(world_size):
        loader = WindowBatchLoader(
            waves,
            index,
            None,
            8,
            batch_size=3,
            shuffle=shuffle,
            seed=5,
            rank=rank,
            world_size=world_size,
            with_positions=True,
        )
        loader.set_epoch(2)
        batches = list(loader)
        assert len(batches) == len(loader)
        lengths.add(len(batches))
        seen.append(torch.cat([b[3] for b in batches]).tolist() if batches else [])
    assert len(lengths) == 1, "every rank must yield the same number of batches"
    flat = [s for rank_starts in seen for s in rank_starts]
    if shuffle:
        assert all(len(s) == n_windows // world_size for s in seen)
        assert len(set(flat)) == len(flat)  # disjoint
    else:
        assert set(flat) == set(range(n_windows))  # every window covered
        assert len(flat) - n_windows <= world_size - 1  # at most a few repeats
        if n_windows % world_size == 0:
            assert len(flat) == n_windows


def test_exact_coverage_without_repeats_when_batches_allow() -> None:
    waves = [np.zeros((1, 100), dtype=np.float32)]
    index = np.stack([np.zeros(11, dtype=np.int64), np.arange(11)], axis=1)
    counts = [
        len(torch.cat([b[3] for b in WindowBatchLoader(waves, index, None, 4, 4, rank=r,
                                                       world_size=2, with_positions=True)]))
        for r in range(2)
    ]  # fmt: skip
    assert counts == [6, 5]


def test_drop_last() -> None:
    waves, index, labels = _dataset()
    loader = WindowBatchLoader(waves, index, labels, 64, batch_size=10, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == len(index) // 10
    assert all(len(b[0]) == 10 for b in batches)
    ranks = [
        list(WindowBatchLoader(waves, index, labels, 64, 4, drop_last=True, rank=r, world_size=3))
        for r in range(3)
    ]
    assert len({len(r) for r in ranks}) == 1
    assert all(len(b[0]) == 4 for r in ranks for b in r)


def test_empty_index_yields_nothing() -> None:
    waves, _, labels = _dataset()
    for device in (None, "cpu"):
        loader = WindowBatchLoader(waves, np.zeros((0, 2)), labels, 64, 4, device=device)
        assert len(loader) == 0 and list(loader) == []


def test_bad_index_is_rejected() -> None:
    waves, index, labels = _dataset()
    bad = index.copy()
    bad[-1, 1] = waves[bad[-1, 0]].shape[1] - 10
    with pytest.raises(ValueError, match="does not fit"):
        WindowBatchLoader(waves, bad, labels, 64, 4)
    with pytest.raises(ValueError, match="outside"):
        WindowBatchLoader(waves, np.array([[9, 0]]), labels, 64, 4)
    with pytest.raises(ValueError, match="one label per recording"):
        WindowBatchLoader(waves, index, labels[:2], 64, 4)
