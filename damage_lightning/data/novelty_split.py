"""The split of a novelty detector's data: healthy recordings to train/val/test, the rest to test.

The healthy recordings are split by :func:`~damage_lightning.data.splits.plan_splits` exactly as
a classifier's data would be (by explicit split, group or recording, or by block when there are
fewer than three), so the validation split, on which the threshold is calibrated, never shares a
recording, group or sample range with training. Every other recording (damaged, faulty, unknown
condition) is kept whole for the test: the detector never sees it before.

Torch-free, like the split module itself.
"""

from __future__ import annotations

from typing import Literal

from damage_lightning.data.splits import Segment, SplitPlan, plan_splits


def plan_novelty_splits(
    labels: list[str],
    healthy: str,
    lengths: list[int],
    window: int,
    hop: int,
    groups: list[str | None] | None = None,
    explicit: list[str | None] | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    strategy: Literal["auto", "explicit", "group", "recording", "block"] = "auto",
    relpaths: list[str] | None = None,
) -> SplitPlan:
    """Split the ``healthy`` recordings three ways and put every other recording in the test.

    Args:
        labels: class label of each recording.
        healthy: the label of the healthy recordings (the only ones trained and calibrated on).
        lengths: samples in each recording.
        window: window length in samples.
        hop: hop between windows in samples.
        groups: group of each recording, or ``None``.
        explicit: the manifest's split of each recording, or ``None``; only the healthy
            recordings' entries are used (the others are always test recordings).
        fractions: train, val (calibration) and test fractions of the healthy data.
        seed: seed of the random assignment.
        strategy: as for :func:`plan_splits`, applied to the healthy recordings.
        relpaths: recording paths for error messages.

    Returns:
        A plan over all recordings (indices as given).

    Raises:
        DataValidationError: when the healthy recordings cannot be split as asked.
    """
    own = [i for i, label in enumerate(labels) if label == healthy]

    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in own]

    plan = plan_splits(
        labels=[healthy] * len(own),
        lengths=[lengths[i] for i in own],
        window=window,
        hop=hop,
        groups=pick(groups),
        explicit=pick(explicit),
        fractions=fractions,
        seed=seed,
        strategy=strategy,
        relpaths=pick(relpaths),
        min_classes=1,
    )
    segments = [Segment(own[s.recording], s.split, s.start, s.stop) for s in plan.segments]
    held = set(own)
    segments += [Segment(i, "test", 0, lengths[i]) for i in range(len(labels)) if i not in held]
    segments.sort(key=lambda s: (s.recording, s.start))
    plan.segments = segments
    return plan
