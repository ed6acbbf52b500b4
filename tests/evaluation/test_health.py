"""The sensor-health gate: each fault injected into a clean simulated recording is found on the
right channel with a sample range covering it; clean built-in recordings give no finding; the
window rule; the reference reaches the checkpoint section, the export metadata and the card."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from damage_lightning.card import ModelCard, SensorHealthCard
from damage_lightning.data.synthetic import CHANNELS, CLASS_NAMES, simulate_recording
from damage_lightning.evaluation.health import (
    KINDS,
    METADATA_KEY,
    check_recording,
    finding_line,
    fit_reference,
    index_health,
    reference_from_metadata,
    window_health,
)

RATE = 1024.0
N = 8192


def clean(label: str = "undamaged", seed: int = 0, n: int = N) -> np.ndarray:
    data, _ = simulate_recording(label, np.random.default_rng(seed), n, RATE)
    return data


@pytest.fixture(scope="module")
def corpus() -> list[np.ndarray]:
    """Good built-in recordings: two of every class at the default length."""
    return [clean(label, seed) for label in CLASS_NAMES for seed in (11, 12)]


@pytest.fixture(scope="module")
def reference(corpus):
    return fit_reference(corpus, CHANNELS)


# Each injector changes one channel of a copy in place.
def _burst_clipped(x: np.ndarray, rng: np.random.Generator, sign: int) -> np.ndarray:
    # A burst of excitation four times as strong drives the sensor into one rail, which sits
    # just above everything else the recording reaches.
    a = int(rng.integers(200, len(x) - 1500))
    rail = np.float32(1.05 * np.abs(x).max())
    x[a : a + 1000] *= 4.0
    if sign > 0:
        np.minimum(x, rail, out=x)
    else:
        np.maximum(x, -rail, out=x)
    return x == sign * rail  # the clipped samples (the rest of the burst is vibration)


def clip_top(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _burst_clipped(x, rng, +1)


def clip_bottom(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _burst_clipped(x, rng, -1)


def flat_channel(x: np.ndarray, rng: np.random.Generator) -> None:
    x[:] = np.float32(0.0123)


def flat_stretch(x: np.ndarray, rng: np.random.Generator) -> None:
    # A disconnected sensor: the bias with a trace of electrical noise, 80 dB down.
    a = int(rng.integers(500, len(x) - 2500))
    b = a + 1500
    x[a:b] = 0.2 + 1e-4 * x.std() * rng.standard_normal(b - a).astype(np.float32)


def zeros(x: np.ndarray, rng: np.random.Generator) -> None:
    a = int(rng.integers(100, len(x) - 200))
    x[a : a + 64] = 0.0


def held_value(x: np.ndarray, rng: np.random.Generator) -> None:
    a = int(rng.integers(100, len(x) - 300))
    x[a : a + 200] = x[a]


def spike(x: np.ndarray, rng: np.random.Generator) -> None:
    i = int(rng.integers(50, len(x) - 50))
    x[i] = np.median(x) + rng.choice([-1, 1]) * 25 * x.std()


def dc_offset(x: np.ndarray, rng: np.random.Generator) -> None:
    x += np.float32(3.0 * x.std())


def drift(x: np.ndarray, rng: np.random.Generator) -> None:
    # A baseline that wanders by two standard deviations over the recording (a warming sensor),
    # around zero so that the mean stays small.
    x += (np.linspace(-1.0, 1.0, len(x)) * 2.0 * x.std()).astype(np.float32)


def loud(x: np.ndarray, rng: np.random.Generator) -> None:
    x *= np.float32(1000.0)  # a gain a thousand times too high (wrong sensitivity)


def quiet(x: np.ndarray, rng: np.random.Generator) -> None:
    x *= np.float32(1e-3)  # a sensor that gives only a thousandth of its signal


FAULTS = {
    "clipping_top": ("clipping", clip_top),
    "clipping_bottom": ("clipping", clip_bottom),
    "flat_channel": ("flat_line", flat_channel),
    "flat_stretch": ("flat_line", flat_stretch),
    "dropout_zeros": ("dropout", zeros),
    "dropout_held": ("dropout", held_value),
    "spike": ("spike", spike),
    "dc_offset": ("dc_offset", dc_offset),
    "drift": ("drift", drift),
    "rms_high": ("rms_range", loud),
    "rms_low": ("rms_range", quiet),
}


def inject(data: np.ndarray, fault: str, channel: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``data`` with ``fault`` in ``channel``, and the mask of the faulty samples.

    The faulty samples are those the injector changed, unless it returns its own mask.
    """
    out = data.copy()
    mask = FAULTS[fault][1](out[channel], np.random.default_rng(seed))
    return out, out[channel] != data[channel] if mask is None else mask


def covered(findings, kind: str, channel: str, changed: np.ndarray) -> bool:
    """Whether findings of ``kind`` on ``channel`` cover every changed sample."""
    mask = np.zeros(len(changed), dtype=bool)
    for f in findings:
        if f.kind == kind and f.channel == channel:
            mask[f.start : f.stop] = True
    return bool(mask[changed].all())


def test_every_kind_has_an_injected_fault():
    assert {kind for kind, _ in FAULTS.values()} == set(KINDS)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_injected_fault_is_found_on_its_channel_covering_its_samples(fault, reference):
    kind = FAULTS[fault][0]
    data, changed = inject(clean("story2_stiffness_loss", 3), fault, 2, seed=5)
    findings = check_recording(data, CHANNELS, "frame/rec.csv", RATE, reference)
    assert covered(findings, kind, "floor2", changed), [finding_line(f) for f in findings]
    assert {f.channel for f in findings} == {"floor2"}, "the other channels stay clean"
    hit = next(f for f in findings if f.kind == kind)
    assert hit.file == "frame/rec.csv" and hit.reason
    # A local fault gets a local range, not the whole recording.
    where = np.flatnonzero(changed)
    if where[-1] - where[0] < N / 4:
        flagged = sum(f.stop - f.start for f in findings)
        assert flagged <= where[-1] - where[0] + 1 + 2 * 256, (flagged, where[0], where[-1])


def test_clean_built_in_recordings_of_every_class_give_no_finding(corpus, reference):
    for data in corpus:
        assert check_recording(data, CHANNELS, "r.csv", RATE, reference) == []
    # Unseen recordings too (other seeds: other excitation levels, masses, damage).
    for label in CLASS_NAMES:
        for seed in (21, 22, 23):
            found = check_recording(clean(label, seed), CHANNELS, "r.csv", RATE, reference)
            assert found == [], [finding_line(f) for f in found]


def test_tiny_built_in_dataset_gives_no_finding(tiny_data):
    from damage_lightning.io.dataset import load_dataset

    ds = load_dataset(tiny_data)
    ref = fit_reference(ds.waveforms, ds.channels)
    for rec, w in zip(ds.recordings, ds.waveforms, strict=True):
        assert check_recording(w, ds.channels, rec.relpath, ds.sample_rate, ref) == []


def test_generated_corpus_every_injected_fault_is_found(corpus, reference):
    # Each fault into each class's good recording, on a channel and at a place of its own.
    missed = []
    for r, data in enumerate(corpus[::2]):
        for k, fault in enumerate(FAULTS):
            channel = (r + k) % len(CHANNELS)
            faulty, changed = inject(data, fault, channel, seed=100 * r + k)
            found = check_recording(faulty, CHANNELS, f"rec{r}.csv", RATE, reference)
            if not covered(found, FAULTS[fault][0], CHANNELS[channel], changed):
                missed.append((r, fault, CHANNELS[channel]))
    assert missed == []


def test_impact_ringing_is_not_a_spike(reference):
    # A structure struck hard rings: a large peak whose neighbours are of similar size. That is
    # vibration (the bumper class), not a sensor fault.
    data = clean("undamaged", 4)
    t = np.arange(200) / RATE
    ring = 40 * data[3].std() * np.exp(-t * 2 * np.pi * 240 * 0.02) * np.sin(2 * np.pi * 240 * t)
    data[3, 3000:3200] += ring.astype(np.float32)
    found = check_recording(data, CHANNELS, "r.csv", RATE, reference)
    assert [f.kind for f in found if f.kind == "spike"] == []


def test_dc_coupled_channel_in_the_training_data_is_not_an_offset():
    # A DC-coupled sensor sees gravity in every recording: the reference says so.
    recs = [clean("undamaged", s) for s in range(4)]
    for r in recs:
        r[0] += np.float32(9.81)
    ref = fit_reference(recs, CHANNELS)
    assert ref.dc_coupled == [True, False, False, False]
    assert check_recording(recs[0], CHANNELS, "r.csv", RATE, ref) == []
    assert [f.kind for f in check_recording(recs[0], CHANNELS, "r.csv", RATE)] == ["dc_offset"]


def test_reference_is_robust_to_a_faulty_training_recording(corpus):
    faulty = [c.copy() for c in corpus]
    faulty[0][1] *= 1e4
    ref = fit_reference(faulty, CHANNELS)
    found = check_recording(faulty[0], CHANNELS, "bad.csv", RATE, ref)
    assert [(f.kind, f.channel) for f in found] == [("rms_range", "floor1")]
    assert "above the training range" in found[0].reason


def test_window_rule_flags_exactly_the_windows_that_overlap():
    data, changed = inject(clean(), "dropout_zeros", 1, seed=2)
    a, b = int(np.flatnonzero(changed)[0]), int(np.flatnonzero(changed)[-1]) + 1
    findings = check_recording(data, CHANNELS, "r.csv", RATE)
    assert [(f.start, f.stop) for f in findings] == [(a, b)]
    starts = np.arange(0, N - 1024 + 1, 512)
    health = window_health(findings, starts, 1024)
    expected = (starts < b) & (starts + 1024 > a)
    np.testing.assert_array_equal(~health.ok, expected)
    assert health.n_flagged == int(expected.sum())
    assert all(r == "dropout floor1" for r, e in zip(health.reasons, expected, strict=True) if e)
    assert all(r == "" for r, e in zip(health.reasons, expected, strict=True) if not e)
    # The same rule over several recordings at once (training's and predict's window index).
    rec = np.array([0, 1, 1, 0])
    start = np.array([0, a, 0, a])
    many = index_health(rec, start, [[], findings], 1024)
    assert list(many.ok) == [True, False, a >= 1024, True]


def test_gate_is_fast_on_a_long_recording():
    # About the size of a 166 MB CSV: 4 channels x 4 million samples.
    rng = np.random.default_rng(0)
    big = rng.standard_normal((4, 4_000_000)).astype(np.float32)
    big[2, 1_000_000:1_000_100] = 0.0
    start = time.perf_counter()
    found = check_recording(big, list(CHANNELS), "big.csv", 10_000.0)
    elapsed = time.perf_counter() - start
    assert [(f.kind, f.channel, f.start) for f in found] == [("dropout", "floor2", 1_000_000)]
    assert elapsed < 5.0, f"{elapsed:.1f} s"


def test_reference_travels_in_checkpoint_section_metadata_and_card(corpus, reference):
    import torch

    from damage_lightning.export.spec import ExportSpec

    spec = ExportSpec(
        model_class_path="m.Task",
        frontend_settings={"kind": "stft"},
        frontend_state={"mean": torch.zeros(4)},
        class_names=["a", "b"],
        channels=list(CHANNELS),
        sample_rate=RATE,
        window=1024,
        hop=512,
        health_reference=reference.to_json(),
    )
    section = spec.to_checkpoint()
    again = ExportSpec.from_checkpoint(section)
    assert again.health_reference == reference.to_json()
    props = again.metadata().to_props()
    from damage_lightning.deploy.metadata import ModelMetadata

    meta = ModelMetadata.from_props(props)
    assert reference_from_metadata(meta.extra) == reference
    # A checkpoint from before the gate has no entry: it loads, its model has no reference.
    del section["health_reference"]
    old = ExportSpec.from_checkpoint(section)
    assert old.health_reference is None
    assert reference_from_metadata(old.metadata().extra) is None
    assert METADATA_KEY not in old.metadata().to_props()


def test_health_card_round_trips_in_model_info(reference):
    data, _ = inject(clean(), "spike", 0, seed=1)
    findings = check_recording(data, CHANNELS, "r.csv", RATE, reference)
    card = SensorHealthCard(
        action="warn",
        recordings_checked=1,
        recordings_with_findings=1,
        findings=findings,
        findings_total=len(findings),
        flagged_windows={"train": 2, "val": 0, "test": 0},
        reference=reference,
        options={"spike_factor": 10.0},
    )
    text = json.dumps(card.to_json())
    back = SensorHealthCard.from_json(json.loads(text))
    assert back.findings == findings and back.reference == reference
    assert "sensor_health" in ModelCard.__dataclass_fields__
