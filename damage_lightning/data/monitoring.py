"""The built-in monitoring scenario: many healthy recordings, a few damaged ones of graded severity.

What a structure's owner has: months of healthy recordings under changing conditions, and no
labelled damage. The recordings are those of the simulated shear frame
(:func:`damage_lightning.data.synthetic.simulate_recording`), with the same variation that is not
damage in every recording (stiffness drift as from temperature, added mass at one floor,
excitation level, sensor noise). The damaged recordings, kept for testing a novelty detector,
lose 5, 10 or 20 % of the stiffness of one story (drawn per recording) or have a bumper contact
between floors 2 and 3. Written by ``data synth --scenario monitoring`` and used by
``configs/novelty.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

MONITORING_VERSION = "monitoring_v1"
HEALTHY = "healthy"
#: Damage classes with their stiffness loss of one story.
STIFFNESS_LOSSES: dict[str, float] = {
    "stiffness_loss_05": 0.05,
    "stiffness_loss_10": 0.10,
    "stiffness_loss_20": 0.20,
}
BUMPER = "bumper_contact"
CLASS_NAMES: tuple[str, ...] = (HEALTHY, *STIFFNESS_LOSSES, BUMPER)
#: Enough for about 100 calibration and 100 test recordings besides the training ones, so the
#: recording-level threshold can be calibrated at a 1 % false-alarm rate.
HEALTHY_RECORDINGS = 340


def monitoring_parameters(healthy_recordings: int | None) -> dict[str, Any]:
    """The marker parameters that set this scenario apart from the five-class dataset.

    Args:
        healthy_recordings: healthy recordings to write (``None``: :data:`HEALTHY_RECORDINGS`).

    Raises:
        ValueError: fewer than 3 healthy recordings (train, calibration and test need one each).
    """
    count = HEALTHY_RECORDINGS if healthy_recordings is None else int(healthy_recordings)
    if count < 3:
        raise ValueError(f"healthy_recordings must be at least 3, got {count}")
    return {"version": MONITORING_VERSION, "scenario": "monitoring", "healthy_recordings": count}


def monitoring_recordings(params: dict[str, Any]) -> Iterator[tuple[str, str, np.ndarray, dict]]:
    """``(label, relpath, data, metadata)`` of every recording of the scenario, in order.

    Every recording has its own child seed (class index, recording index), so it does not
    depend on how many recordings the other classes have.

    Args:
        params: the dataset parameters (``synthetic._parameters``): ``seed``,
            ``healthy_recordings``, ``recordings_per_class`` (per damage class), ``n_samples``,
            ``sample_rate``.
    """
    from damage_lightning.data.shear_frame import simulate_recording

    counts = {HEALTHY: params["healthy_recordings"]}
    counts.update(dict.fromkeys((*STIFFNESS_LOSSES, BUMPER), params["recordings_per_class"]))
    root = np.random.SeedSequence(params["seed"])
    n, rate = params["n_samples"], params["sample_rate"]
    for class_seq, label in zip(root.spawn(len(CLASS_NAMES)), CLASS_NAMES, strict=True):
        for index, seq in enumerate(class_seq.spawn(counts[label])):
            rng = np.random.default_rng(seq)
            if label in STIFFNESS_LOSSES:
                story = int(rng.integers(1, 4))
                kind = f"story{story}_stiffness_loss"
                data, metadata = simulate_recording(kind, rng, n, rate, STIFFNESS_LOSSES[label])
            else:
                kind = "undamaged" if label == HEALTHY else BUMPER
                data, metadata = simulate_recording(kind, rng, n, rate)
            yield label, f"{label}/{label}_{index:03d}.csv", data, metadata
