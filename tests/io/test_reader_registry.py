"""Tests for the reader registry and the checks every reader shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from damage_lightning.errors import DataValidationError
from damage_lightning.io import readers
from damage_lightning.io.readers import (
    RawRecording,
    Reader,
    ReaderOptions,
    get_reader,
    is_recording,
    reader_for,
    recording_suffixes,
    register,
)
from damage_lightning.io.readers.base import check_raw, rate_from_times, select_channels

ROOT = Path(__file__).resolve().parents[2]


def test_common_checks():
    with pytest.raises(DataValidationError, match="too large for float32"):
        check_raw(RawRecording(np.array([[1.0, 1e300]]), ["a"], None), "f")
    with pytest.raises(DataValidationError, match="has no samples"):
        check_raw(RawRecording(np.zeros((1, 0)), ["a"], None), "f")
    with pytest.raises(DataValidationError, match=r"sample rate of 0\.0 Hz"):
        check_raw(RawRecording(np.zeros((1, 3)), ["a"], 0.0), "f")
    two = RawRecording(np.zeros((2, 3), np.float32), ["a", "b"], None)
    with pytest.raises(DataValidationError, match="requested twice: 'a'"):
        select_channels(two, ["a", "a"], "f")
    with pytest.raises(DataValidationError, match="'x' not found; available: 'a', 'b'"):
        select_channels(two, ["x"], "f")
    t = np.arange(20) * 0.1
    t[10:] += 0.1
    with pytest.raises(DataValidationError, match="irregular time column") as info:
        rate_from_times(t, "f", "time", lambda i: f"row {i + 2}")
    assert info.value.problems[0].location == "row 12, column 'time'"
    assert rate_from_times(np.arange(5) / 250.0, "f", "t", str) == 250.0


def test_reader_options_json_round_trip():
    options = ReaderOptions(variables=["*_DE_time", "*_FE_time"], group="g")
    assert options.variables == ("*_DE_time", "*_FE_time")
    assert ReaderOptions.from_json(options.to_json()) == options
    assert ReaderOptions.from_json(None) == ReaderOptions()
    assert ReaderOptions(variables="*_DE_time").variables == ("*_DE_time",)


def test_registry_finds_readers_by_suffix_case_insensitively():
    assert reader_for("a/B.MAT").name == "mat"
    assert reader_for("x.Tdms").name == "tdms"
    assert reader_for("x.WAV").name == "wav"
    assert reader_for("x.parquet").name == reader_for("x.PQ").name == "parquet"
    for name in ("mat", "tdms", "wav", "parquet"):
        reader = get_reader(name)
        assert reader.name == name
        assert all(s in recording_suffixes() for s in reader.suffixes)
    with pytest.raises(DataValidationError) as info:
        reader_for("notes.xlsx")
    assert "unsupported file type '.xlsx'; readable: .csv, .csv.gz, .mat" in str(info.value)


def test_is_recording_knows_suffixes_without_importing_readers():
    assert is_recording("r.CSV.GZ") and is_recording("r.csv") and is_recording("x/y.mat")
    assert not is_recording("manifest.csv") and not is_recording("sub/Manifest.CSV")
    assert not is_recording("readme.txt") and not is_recording("data.gz")


def test_register_a_reader_longest_suffix_wins(monkeypatch):
    for attr in ("_targets", "_suffix_owner", "_instances"):
        monkeypatch.setattr(readers, attr, dict(getattr(readers, attr)))

    class Short(Reader):
        name = "short"
        suffixes = (".c",)

        def read(self, path, display, options, channels=None):
            return RawRecording(np.zeros((1, 1), np.float32), ["x"], None)

    class Long(Short):
        name = "long"
        suffixes = (".b.c",)

    register("short", Short, Short.suffixes)
    register("long", Long, (".B.C",))
    assert isinstance(reader_for("x.c"), Short) and isinstance(reader_for("x.b.C"), Long)
    with pytest.raises(ValueError):
        register("bad", Short, ("c",))


def test_importing_the_readers_does_not_import_torch_or_format_libraries():
    code = (
        "import sys\n"
        "import damage_lightning.io.readers as r\n"
        "assert r.is_recording('a.csv.gz') and r.is_recording('a.mat')\n"
        "assert 'damage_lightning.io.readers.csv' not in sys.modules\n"
        "heavy = [m for m in ('torch', 'lightning', 'scipy', 'h5py', 'nptdms', 'pyarrow')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import damage_lightning.io.readers.mat, damage_lightning.io.readers.tdms\n"
        "import damage_lightning.io.readers.wav, damage_lightning.io.readers.parquet\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
