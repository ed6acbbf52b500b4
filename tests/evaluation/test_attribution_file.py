"""attribution.json: bins summed into Hz bands, the record's JSON round trip, top bands, options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from damage_lightning.card import AttributionCard
from damage_lightning.errors import DataValidationError
from damage_lightning.evaluation.attribution import (
    Attribution,
    AttributionOptions,
    ClassAttribution,
    auto_band_hz,
    band_edges,
    band_index,
    band_sum,
    reading,
    reference_class,
)


def record() -> Attribution:
    """Two channels, six 2 Hz rows at 0-10 Hz, two classes; bands of 4 Hz."""
    return Attribution(
        method="integrated_gradients",
        target="log-odds of the true class",
        baseline="the mean training spectrogram of 'healthy'",
        reference_class="healthy",
        split="test",
        windows_per_class=8,
        steps=16,
        band_hz=4.0,
        channels=["base", "floor1"],
        freq_hz=[0.0, 2.0, 4.0, 6.0, 8.0, 10.0],
        freq_low_hz=[0.0, 1.0, 3.0, 5.0, 7.0, 9.0],
        freq_high_hz=[1.0, 3.0, 5.0, 7.0, 9.0, 11.0],
        classes=[
            ClassAttribution(
                name="healthy",
                windows=8,
                recordings=["healthy/a.csv"],
                log_odds=2.0,
                baseline_log_odds=-1.0,
                values=[[0.5, 0.5, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]],
            ),
            ClassAttribution(
                name="loose bolt",
                windows=3,
                recordings=["loose/b.csv", "loose/c.csv"],
                log_odds=1.5,
                baseline_log_odds=-0.5,
                values=[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0, 3.0, -1.0]],
            ),
        ],
        wall_time_s=1.25,
    )


def test_rows_are_summed_into_bands_by_their_centre() -> None:
    centres = np.array([0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    edges = band_edges(centres, 4.0)
    np.testing.assert_array_equal(edges, [0.0, 4.0, 8.0, 12.0])
    # 0 and 2 Hz in [0, 4); 4 and 6 Hz in [4, 8) (a centre on an edge goes to the band above);
    # 8 and 10 Hz in [8, 12].
    np.testing.assert_array_equal(band_index(centres, edges), [0, 0, 1, 1, 2, 2])
    values = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0, -1.0, 0.0, 0.0, 2.0, 0.5]])
    np.testing.assert_array_equal(band_sum(values, centres, edges), [[3, 7, 11], [-1, 0, 2.5]])
    # A centre on the top edge belongs to the top band; a band without rows sums to 0.
    np.testing.assert_array_equal(band_index([12.0], edges), [2])
    np.testing.assert_array_equal(band_sum([[1.0, 1.0]], [1.0, 9.0], edges), [[1, 0, 1]])
    with pytest.raises(ValueError, match="outside the bands"):
        band_index([13.0], edges)


def test_mel_rows_of_uneven_width_fall_into_hz_bands() -> None:
    # Mel centres crowd at low frequencies: several rows share a band, high bands hold one row.
    centres = np.array([12.0, 25.0, 41.0, 60.0, 95.0, 150.0])
    edges = band_edges(centres, 50.0)
    np.testing.assert_array_equal(edges, [0.0, 50.0, 100.0, 150.0])
    np.testing.assert_array_equal(band_sum(np.ones(6), centres, edges), [3, 2, 1])


@pytest.mark.parametrize(
    ("low", "high", "width"), [(0, 300, 10), (0, 512, 20), (0, 12000, 500), (10, 30, 1)]
)
def test_the_automatic_band_width_is_round_and_gives_at_most_32_bands(low, high, width) -> None:
    assert auto_band_hz(low, high) == width


def test_the_record_survives_a_json_round_trip(tmp_path) -> None:
    path = record().write(tmp_path / "attribution.json")
    back = Attribution.read(path)
    assert back == record()
    assert json.loads(path.read_text()) == record().to_json()
    np.testing.assert_array_equal(back.values("loose bolt"), record().values("loose bolt"))


def test_a_damaged_file_is_named_with_the_field(tmp_path) -> None:
    doc = record().to_json()
    doc["classes"][1]["values"] = "none"
    path = tmp_path / "attribution.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataValidationError, match=r"attribution\.json.*classes\[1\]\.values"):
        Attribution.read(path)


def test_evidence_shares_and_top_bands() -> None:
    result = record()
    shares, _ = result.evidence("loose bolt")
    # floor1 bands: -2 (0-4 Hz), 0 (4-8), 3 - 1 = 2 (8-12): all evidence in floor1 8-12 Hz.
    np.testing.assert_array_equal(shares, [[0, 0, 0], [0, 0, 1]])
    (top,) = result.top_bands("loose bolt")
    assert (top.channel, top.low_hz, top.high_hz, top.share) == ("floor1", 8.0, 12.0, 1.0)
    healthy = result.top_bands("healthy")
    # base 0-4 Hz: 0.5 + 0.5 = 1; floor1 4-8 Hz: 1 + 1 = 2; largest first, shares of 3.
    assert [(t.channel, t.low_hz, t.share) for t in healthy] == [
        ("floor1", 4.0, 0.6667),
        ("base", 0.0, 0.3333),
    ]
    assert reading("loose bolt", [top]) == "loose bolt: floor1 8-12 Hz (100 %)"
    assert reading("x", []) == "x: no frequency band adds evidence for this class"
    with pytest.raises(KeyError):
        result.values("nope")


def test_the_card_summary_round_trips_inside_the_model_card() -> None:
    summary = record().card()
    assert summary.top_bands["loose bolt"][0].channel == "floor1"
    assert summary.wall_time_s == 1.25
    assert AttributionCard.from_json(summary.to_json()) == summary


def test_options_and_the_reference_class() -> None:
    assert AttributionOptions().method == "integrated_gradients"
    for bad in (
        {"method": "saliency"},
        {"windows_per_class": 0},
        {"steps": 0},
        {"band_hz": 0.0},
        {"band_hz": float("nan")},
    ):
        with pytest.raises(ValueError):
            AttributionOptions(**bad)
    assert reference_class(["bumper", "Undamaged", "story1"]) == "Undamaged"
    assert reference_class(["inner race", "normal"]) == "normal"
    assert reference_class(["a", "b"]) is None
    assert reference_class(["a", "b"], "b") == "b"
    with pytest.raises(ValueError, match="not a class"):
        reference_class(["a", "b"], "c")
