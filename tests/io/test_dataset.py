"""Tests for discovering, reading and validating recordings (damage_lightning.io) on tiny files."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from damage_lightning.errors import DataValidationError
from damage_lightning.io import checks, dataset
from damage_lightning.io.dataset import load_dataset
from damage_lightning.io.dataset import read_channel_names as read_header
from damage_lightning.io.discovery import discover, discover_with_warnings
from damage_lightning.io.readers import text as csv_text


def read_recording(path, channels=None, display=None):
    """``(data, channel names, rate)`` of one file, as the package reads it."""
    raw = dataset.read_recording(path, channels, display)
    return raw.data, raw.channels, raw.sample_rate


CWRU = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cwru_0hp_10class"
RNG = np.random.default_rng(1234)


def write_csv(
    path: Path,
    data: np.ndarray,
    names: list[str],
    rate: float | None = None,
    delimiter: str = ",",
    newline: str = "\n",
) -> Path:
    """Write (channels, samples) with a header; a time column first when ``rate`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (["time"] if rate else []) + names
    lines = [delimiter.join(header)]
    for i in range(data.shape[1]):
        cols = ([f"{i / rate:.9f}"] if rate else []) + [f"{v:.6f}" for v in data[:, i]]
        lines.append(delimiter.join(cols))
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


def noise(channels: int = 2, samples: int = 200) -> np.ndarray:
    return RNG.standard_normal((channels, samples)).astype(np.float32)


def make_folder(root: Path, per_class: int = 2, rate: float | None = 100.0, samples=200) -> Path:
    for label in ("healthy", "damaged"):
        for i in range(per_class):
            write_csv(root / label / f"r{i}.csv", noise(2, samples), ["x", "y"], rate)
    return root


def error_of(fn, *args, **kwargs) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------------- discovery


def test_discover_folder_per_class(tmp_path):
    write_csv(tmp_path / "b_class" / "one.csv", noise(), ["x", "y"])
    write_csv(tmp_path / "a_class" / "sub" / "two.csv", noise(), ["x", "y"])
    gz = tmp_path / "a_class" / "three.CSV.gz"
    gz.write_bytes(gzip.compress(b"x,y\n1,2\n"))
    (tmp_path / "a_class" / "notes.txt").write_text("not a recording")
    write_csv(tmp_path / ".ipynb_checkpoints" / "x.csv", noise(), ["x", "y"])
    (tmp_path / "empty_class").mkdir()
    write_csv(tmp_path / "loose.csv", noise(), ["x", "y"])

    specs, warnings = discover_with_warnings(tmp_path)
    assert [(s.label, s.relpath) for s in specs] == [
        ("a_class", "a_class/sub/two.csv"),
        ("a_class", "a_class/three.CSV.gz"),
        ("b_class", "b_class/one.csv"),
    ]
    assert all(s.path.is_absolute() and s.path.exists() for s in specs)
    assert all(s.group is None and s.split is None and s.sample_rate is None for s in specs)
    text = "\n".join(map(str, warnings))
    assert "empty_class/" in text and "no recording file" in text
    assert "loose.csv" in text and "ignored" in text
    assert discover(tmp_path) == specs


def test_discover_manifest_with_optional_columns(tmp_path):
    write_csv(tmp_path / "files" / "a.csv", noise(), ["x", "y"])
    write_csv(tmp_path / "files" / "b.csv", noise(), ["x", "y"])
    (tmp_path / "manifest.csv").write_text(
        "path,label,group,split,sample_rate,site\n"
        "files/b.csv,damaged,unit2,TEST,2048,north\n"
        "files/a.csv,healthy,unit1,train,,south\n"
        "\n"
    )
    specs = discover(tmp_path)
    assert [s.relpath for s in specs] == ["files/b.csv", "files/a.csv"]  # sorted by label
    b, a = specs
    assert (b.label, b.group, b.split, b.sample_rate) == ("damaged", "unit2", "test", 2048.0)
    assert b.metadata == {"site": "north"}
    assert (a.group, a.split, a.sample_rate, a.metadata) == (
        "unit1",
        "train",
        None,
        {"site": "south"},
    )


def test_discover_explicit_manifest_relative_and_absolute(tmp_path):
    write_csv(tmp_path / "a.csv", noise(), ["x", "y"])
    write_csv(tmp_path / "b.csv", noise(), ["x", "y"])
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "list.tsv").write_text("path\tlabel\na.csv\tone\nb.csv\ttwo\n")
    rel = discover(tmp_path, "meta/list.tsv")
    absolute = discover(tmp_path, meta / "list.tsv")
    assert [s.label for s in rel] == ["one", "two"] == [s.label for s in absolute]


def _bad_manifest(tmp_path: Path, text: str | bytes) -> Path:
    write_csv(tmp_path / "d" / "a.csv", noise(), ["x", "y"])
    write_csv(tmp_path / "d" / "b.csv", noise(), ["x", "y"])
    write_csv(tmp_path / "elsewhere.csv", noise(), ["x", "y"])
    m = tmp_path / "d" / "manifest.csv"
    m.write_bytes(text if isinstance(text, bytes) else text.encode())
    return tmp_path / "d"


@pytest.mark.parametrize(
    ("text", "location", "reason"),
    [
        (b"", "manifest.csv", "manifest is empty"),
        ("path,label\n", "manifest.csv", "header but no rows"),
        ("path,class\na.csv,x\n", "header", "lacks column(s) 'label'"),
        ("path,label\nmissing.csv,x\n", "row 2, 'missing.csv'", "file not found"),
        ("path,label\n../elsewhere.csv,x\n", "row 2", "outside the data folder"),
        ("path,label\nABS,x\n", "row 2", "outside the data folder"),
        ("path,label\na.csv,x\nb.csv,y\na.csv,z\n", "row 4", "listed twice (rows 2 and 4)"),
        ("path,label,split\na.csv,x,training\n", "row 2, column 'split'", "not one of train"),
        ("path,label,sample_rate\na.csv,x,fast\n", "row 2, column 'sample_rate'", "positive"),
        ("path,label\na.csv,\n", "row 2", "empty 'label'"),
        ("path,label\na.csv,x,extra\n", "row 2", "expected 2 fields"),
    ],
)
def test_discover_manifest_errors(tmp_path, text, location, reason):
    if isinstance(text, str):
        text = text.replace("ABS", str(tmp_path / "elsewhere.csv"))
    root = _bad_manifest(tmp_path, text)
    err = error_of(discover, root)
    message = str(err)
    assert "manifest.csv" in message
    assert location in message
    assert reason in message


def test_discover_reports_all_manifest_problems_together(tmp_path):
    root = _bad_manifest(tmp_path, "path,label,split\nmissing.csv,x,\na.csv,x,bogus\nb.csv,y,val\n")
    err = error_of(discover, root)
    assert len(err.problems) == 2
    assert "missing.csv" in str(err) and "bogus" in str(err)


def _file_instead_of_folder(root: Path) -> Path:
    (root / "f.txt").write_text("x")
    return root / "f.txt"


@pytest.mark.parametrize(
    ("make_target", "reason"),
    [
        (lambda root: root / "nope", "data folder does not exist"),
        (_file_instead_of_folder, "not a folder"),
        (lambda root: root, "no recordings found"),
    ],
)
def test_discover_folder_errors(tmp_path, make_target, reason):
    target = make_target(tmp_path)
    err = error_of(discover, target)
    assert str(target) in str(err) and reason in str(err)


def test_discover_named_manifest_missing(tmp_path):
    err = error_of(discover, tmp_path, "lists/m.csv")
    assert "lists/m.csv" in str(err) and "manifest file not found" in str(err)


# --------------------------------------------------------------------------------- reading


def test_read_recording_formats_give_identical_arrays(tmp_path):
    data = noise(3, 120)
    names = ["floor1", "étage_2", "传感器3"]
    ref = write_csv(tmp_path / "plain.csv", data, names)
    expected, got_names, rate = read_recording(ref)
    assert got_names == names and rate is None
    assert expected.dtype == np.float32 and expected.flags.c_contiguous
    assert expected.shape == (3, 120)
    np.testing.assert_allclose(expected, data, atol=1e-6)

    variants = {
        "semicolon.csv": write_csv(tmp_path / "s.csv", data, names, delimiter=";").read_bytes(),
        "tab.csv": write_csv(tmp_path / "t.csv", data, names, delimiter="\t").read_bytes(),
        "crlf.csv": write_csv(tmp_path / "c.csv", data, names, newline="\r\n").read_bytes(),
        "bom.csv": b"\xef\xbb\xbf" + ref.read_bytes(),
        "gz.csv.gz": gzip.compress(ref.read_bytes()),
        "gz_without_extension.csv": gzip.compress(ref.read_bytes()),
        "no_final_newline.csv": ref.read_bytes().rstrip(b"\n"),
        "blank_lines.csv": ref.read_bytes().replace(b"\n", b"\n\n", 3) + b"\n\n",
    }
    for name, raw in variants.items():
        path = tmp_path / name
        path.write_bytes(raw)
        arr, got, _ = read_recording(path)
        assert got == names, name
        np.testing.assert_array_equal(arr, expected, err_msg=name)
        assert read_header(path) == names, name


def test_latin1_header_is_accepted(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("Temp °C;Druck\r\n1;2\r\n3;4\r\n".encode("cp1252"))
    arr, names, _ = read_recording(path)
    assert names == ["Temp °C", "Druck"]
    np.testing.assert_array_equal(arr, [[1, 3], [2, 4]])


def test_channel_selection_and_ordering(tmp_path):
    data = noise(3, 50)
    path = write_csv(tmp_path / "r.csv", data, ["a", "b", "c"])
    arr, names, _ = read_recording(path, channels=["c", "a"])
    assert names == ["c", "a"]
    np.testing.assert_allclose(arr, data[[2, 0]], atol=1e-6)


def test_time_column_gives_sample_rate_and_is_not_a_channel(tmp_path):
    path = write_csv(tmp_path / "r.csv", noise(2, 64), ["x", "y"], rate=512.0)
    arr, names, rate = read_recording(path)
    assert names == ["x", "y"] and arr.shape == (2, 64)
    assert rate == pytest.approx(512.0)
    assert read_header(path) == ["x", "y"]

    stamps = tmp_path / "stamps.csv"
    stamps.write_text(
        "Timestamp,x\n" + "".join(f"2024-01-01T00:00:00.{i * 4:03d},{i}\n" for i in range(100))
    )
    assert read_recording(stamps)[2] == pytest.approx(250.0)


def test_text_column_is_not_a_channel(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("x,status,y,\n1,ok,2,\n3,ok,4,\n")
    arr, names, _ = read_recording(path)
    assert names == ["x", "y"]
    np.testing.assert_array_equal(arr, [[1, 3], [2, 4]])
    err = error_of(read_recording, path, channels=["status"])
    assert "column 'status'" in str(err) and "not numeric" in str(err)


GOOD = "time,a,b\n0.0,1,2\n0.1,3,4\n0.2,5,6\n0.3,7,8\n"


@pytest.mark.parametrize(
    ("content", "location", "reason"),
    [
        (b"", "", "file is empty"),
        (b"  \n\n", "", "file is empty"),
        (b"a,b\n", "", "header but no data rows"),
        (b"a,b\r\n\r\n", "", "header but no data rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "", "binary"),
        ("a,b\n1,2\n".encode("utf-16"), "", "UTF-16"),
        (gzip.compress(b"a,b\n1,2\n")[:-6], "", "gzip content is corrupt"),
        (b"name,comment\nfoo,bar\nbaz,qux\n", "", "no numeric column"),
        (b"time,label\n0,x\n1,y\n", "", "no numeric column besides the time column"),
        (b"1.0,2.0\n3.0,4.0\n", "row 1", "looks like data, not a header"),
        (b"a,b\n1,2\n3,4\n5,oops\n", "row 4, column 'b'", "non-numeric value 'oops'"),
        (b"a,b\n1,2\n3,4\na,b\n5,6\n", "row 4, column 'a'", "header line repeated"),
        (b"a;b\n1,5;2\n2,5;3\n", "row 2, column 'a'", "decimal comma"),
        (b"a,b\n1,2\n3,4,5\n6,7\n", "row 3", "expected 2 fields like the header, found 3"),
        (b"a,b\n1,2\n3\n", "row 3", "expected 2 fields like the header, found 1"),
        (b"a,b,a\n1,2,3\n", "row 1", "duplicate column names: 'a' in columns 1, 3"),
        (b"a,b\n1,2\n3,\n", "row 3, column 'b'", "empty or NaN value"),
        (b"a,b\n1,2\n3,4\nNaN,4\n", "row 4, column 'a'", "empty or NaN value"),
        (b"a,b\n1,2\n\n3,inf\n", "row 4, column 'b'", "infinite value"),
        (b"a,b\n1,2\n3,1e40\n", "row 3, column 'b'", "too large for float32"),
        (b"a,,b\n1,9,2\n", "column 2", "no name in the header"),
        (b"t,a\n0,1\n0.1,2\n0.3,3\n0.4,4\n", "row 4, column 't'", "irregular time column"),
        (b"t,a\n0,1\n0.1,2\n0.1,3\n", "row 4, column 't'", "does not increase"),
        (b"t,a\n0,1\n,2\n", "row 3, column 't'", "empty time value"),
    ],
)
def test_read_recording_errors_name_file_location_and_reason(tmp_path, content, location, reason):
    path = tmp_path / "bad_file.csv"
    path.write_bytes(content)
    err = error_of(read_recording, path, display="cls/bad_file.csv")
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.file == "cls/bad_file.csv"
    assert location in problem.location
    assert reason in problem.reason
    assert str(err).startswith("cls/bad_file.csv")


def test_missing_channel_names_it_and_lists_available(tmp_path):
    path = write_csv(tmp_path / "r.csv", noise(2, 10), ["acc_x", "acc_y"], rate=10.0)
    err = error_of(read_recording, path, channels=["acc_x", "acc_z"])
    msg = str(err)
    assert "r.csv" in msg and "'acc_z' not found" in msg and "available: 'acc_x', 'acc_y'" in msg
    assert "'acc_x' not found" not in msg


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "locked.csv", noise(2, 10), ["x", "y"])
    if os.geteuid() == 0:
        # root reads anything: simulate what open() raises for other users.
        def deny(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(csv_text, "open", deny, raising=False)
    else:
        path.chmod(0)
    err = error_of(read_recording, path)
    assert "locked.csv" in str(err) and "permission denied" in str(err)


def test_folder_in_place_of_file(tmp_path):
    (tmp_path / "d.csv").mkdir()
    assert "is a folder" in str(error_of(read_recording, tmp_path / "d.csv"))


# --------------------------------------------------------------------------------- load_dataset


def test_load_dataset_folder_format(tmp_path):
    root = make_folder(tmp_path / "data", rate=100.0)
    ds = load_dataset(root, min_samples=200)
    assert ds.class_names == ["damaged", "healthy"]
    assert ds.labels == ["damaged", "damaged", "healthy", "healthy"]
    assert ds.channels == ["x", "y"] and ds.sample_rate == pytest.approx(100.0)
    assert all(w.shape == (2, 200) and w.dtype == np.float32 for w in ds.waveforms)
    assert ds.warnings == []


def test_load_dataset_manifest_format_and_manifest_rate(tmp_path):
    for i in range(3):
        write_csv(tmp_path / f"rec{i}.csv", noise(2, 80), ["x", "y"])
    (tmp_path / "manifest.csv").write_text(
        "path,label,group,sample_rate\nrec0.csv,a,g1,400\nrec1.csv,b,g2,400\nrec2.csv,a,g1,400\n"
    )
    ds = load_dataset(tmp_path)
    assert ds.sample_rate == 400.0
    assert [r.group for r in ds.recordings] == ["g1", "g1", "g2"]


def test_manifest_rate_conflicting_with_time_column(tmp_path):
    write_csv(tmp_path / "r0.csv", noise(2, 50), ["x", "y"], rate=100.0)
    write_csv(tmp_path / "r1.csv", noise(2, 50), ["x", "y"], rate=100.0)
    (tmp_path / "manifest.csv").write_text("path,label,sample_rate\nr0.csv,a,200\nr1.csv,b,\n")
    err = error_of(load_dataset, tmp_path)
    assert "r0.csv" in str(err) and "time column gives 100 Hz" in str(err)
    assert "200 Hz" in str(err) and len(err.problems) == 1


def test_all_bad_files_reported_together(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "healthy" / "r0.csv").write_text("time,x,y\n0,1,2\n0.01,oops,3\n")
    (root / "damaged" / "r1.csv").write_text("")
    err = error_of(load_dataset, root)
    msg = str(err)
    assert "2 problems" in msg
    assert "healthy/r0.csv (row 3, column 'x'): non-numeric value 'oops'" in msg
    assert "damaged/r1.csv: file is empty" in msg


def test_channels_differ_between_files(tmp_path):
    root = make_folder(tmp_path / "data", per_class=2)
    write_csv(root / "healthy" / "r1.csv", noise(2, 200), ["x", "z"], rate=100.0)
    err = error_of(load_dataset, root)
    assert len(err.problems) == 1
    p = err.problems[0]
    assert p.file == "healthy/r1.csv"
    assert "missing 'y'" in p.reason and "extra 'z'" in p.reason
    # Selecting the shared channel makes the set consistent.
    ds = load_dataset(root, channels=["x"])
    assert ds.channels == ["x"] and all(w.shape[0] == 1 for w in ds.waveforms)
    # A selected channel missing in one file names that file.
    err = error_of(load_dataset, root, channels=["y", "x"])
    assert [p.file for p in err.problems] == ["healthy/r1.csv"]
    assert "'y' not found" in str(err)


def test_channel_order_differs_between_files(tmp_path):
    root = make_folder(tmp_path / "data", per_class=2)
    write_csv(root / "damaged" / "r0.csv", noise(2, 200), ["y", "x"], rate=100.0)
    err = error_of(load_dataset, root)
    assert "damaged/r0.csv" in str(err) and "another order" in str(err)
    assert load_dataset(root, channels=["y", "x"]).channels == ["y", "x"]


def test_sample_rates_differ_between_files(tmp_path):
    root = make_folder(tmp_path / "data", per_class=2, rate=100.0)
    write_csv(root / "damaged" / "r1.csv", noise(2, 200), ["x", "y"], rate=50.0)
    err = error_of(load_dataset, root)
    assert [p.file for p in err.problems] == ["damaged/r1.csv"]
    assert "50 Hz differs from 100 Hz" in str(err) and "data.sample_rate" in str(err)


def test_sample_rate_unknown(tmp_path):
    root = make_folder(tmp_path / "data", rate=None)
    err = error_of(load_dataset, root)
    assert "sample rate unknown" in str(err) and "data.sample_rate" in str(err)
    assert load_dataset(root, sample_rate=64.0).sample_rate == 64.0
    # One file with a rate, the others without: the unknown ones are named.
    write_csv(root / "healthy" / "r0.csv", noise(2, 200), ["x", "y"], rate=100.0)
    err = error_of(load_dataset, root)
    assert sorted(p.file for p in err.problems) == [
        "damaged/r0.csv",
        "damaged/r1.csv",
        "healthy/r1.csv",
    ]
    assert "while healthy/r0.csv has 100 Hz" in str(err)


def test_resampling_to_configured_rate(tmp_path):
    t = np.arange(2000) / 2000.0
    tone = np.sin(2 * np.pi * 50.0 * t).astype(np.float32)
    write_csv(tmp_path / "fast" / "a.csv", np.stack([tone, tone]), ["x", "y"], rate=2000.0)
    t2 = np.arange(1000) / 1000.0
    slow = np.sin(2 * np.pi * 50.0 * t2).astype(np.float32)
    write_csv(tmp_path / "slow" / "b.csv", np.stack([slow, slow]), ["x", "y"], rate=1000.0)
    ds = load_dataset(tmp_path, sample_rate=1000.0, cache_dir=tmp_path / "cache")
    fast, slow_w = ds.waveforms
    assert fast.shape == (2, 1000) and slow_w.shape == (2, 1000)
    spectrum = np.abs(np.fft.rfft(fast[0]))
    assert np.argmax(spectrum) == 50  # 50 Hz at 1 Hz per bin
    # Away from the edges the resampled tone matches the tone sampled at 1 kHz.
    np.testing.assert_allclose(fast[0, 100:-100], slow[100:-100], atol=2e-3)
    # Cached under the target rate: a different target is a different entry.
    ds2 = load_dataset(tmp_path, sample_rate=500.0, cache_dir=tmp_path / "cache")
    assert ds2.waveforms[0].shape == (2, 500) and ds2.waveforms[1].shape == (2, 500)


def test_resample_rational_approximation():
    x = np.zeros((1, 12000), np.float32)
    y, rate = checks.resample(x, 12000.0, 1024.0)
    assert y.shape == (1, 1024) and rate == pytest.approx(1024.0)


def test_short_recording_and_single_class(tmp_path):
    root = make_folder(tmp_path / "data", samples=100)
    write_csv(root / "healthy" / "r1.csv", noise(2, 20), ["x", "y"], rate=100.0)
    err = error_of(load_dataset, root, min_samples=64)
    assert [p.file for p in err.problems] == ["healthy/r1.csv"]
    assert "20 samples, fewer than the 64 required" in str(err)

    single = tmp_path / "single"
    write_csv(single / "only" / "a.csv", noise(), ["x", "y"], rate=100.0)
    err = error_of(load_dataset, single)
    assert "only one class ('only')" in str(err)


def test_warnings_flat_and_clipped_channels(tmp_path):
    root = make_folder(tmp_path / "data", samples=2000)
    t = np.arange(2000) / 100.0
    clipped = np.clip(np.sin(2 * np.pi * 1.5 * t) + 0.05 * noise(1, 2000)[0], -0.9, 0.9)
    flat = np.full(2000, 1.25, np.float32)
    write_csv(root / "healthy" / "r0.csv", np.stack([clipped, flat]), ["x", "y"], rate=100.0)
    (root / "empty").mkdir()
    ds = load_dataset(root)
    text = [str(w) for w in ds.warnings]
    assert any("healthy/r0.csv (column 'y')" in w and "constant (flat line" in w for w in text)
    assert any("healthy/r0.csv (column 'x')" in w and "clipped" in w for w in text)
    assert any("empty/" in w and "no recording file" in w for w in text)
    assert len(text) == 3  # the clean noise recordings raise nothing


def test_clipping_rule_ignores_single_peaks():
    x = np.sin(np.linspace(0, 20 * np.pi, 5000)).astype(np.float32)[None]
    assert checks.channel_warnings(x, ["s"]) == []
    y = x.copy()
    y[0, 100:103] = y.max()  # one short run at the max: 3 of 5000 samples, below 0.1 %
    assert checks.channel_warnings(y, ["s"]) == []
    y[0, 200:210] = y.max()
    assert "runs of 3 or more" in checks.channel_warnings(y, ["s"])[0][1]
    # Broadband noise through a saturating sensor: isolated samples at the rail.
    z = np.clip(np.random.default_rng(0).standard_normal((1, 5000)), -2.0, 2.0)
    assert "sit exactly at its" in checks.channel_warnings(z.astype(np.float32), ["z"])[0][1]


def test_cache_hit_skips_parsing(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    first = load_dataset(root, cache_dir=cache)
    assert all(isinstance(w, np.memmap) for w in first.waveforms)

    def boom(*args, **kwargs):
        raise AssertionError("parsed although cached")

    monkeypatch.setattr(dataset, "read_recording", boom)
    second = load_dataset(root, cache_dir=cache)
    assert second.channels == first.channels and second.sample_rate == first.sample_rate
    for a, b in zip(first.waveforms, second.waveforms, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cache_keeps_warnings_and_rebuilds_after_edit(tmp_path):
    root = make_folder(tmp_path / "data")
    target = root / "healthy" / "r0.csv"
    write_csv(target, np.stack([np.zeros(200), noise(1)[0]]), ["x", "y"], rate=100.0)
    cache = tmp_path / "cache"
    assert len(load_dataset(root, cache_dir=cache).warnings) == 1
    cached = load_dataset(root, cache_dir=cache)
    assert [str(w) for w in cached.warnings] == [
        "healthy/r0.csv (column 'x'): channel is constant (flat line at 0)"
    ]
    new = noise(2, 300)
    write_csv(target, new, ["x", "y"], rate=100.0)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    ds = load_dataset(root, cache_dir=cache)
    idx = [r.relpath for r in ds.recordings].index("healthy/r0.csv")
    np.testing.assert_allclose(ds.waveforms[idx], new, atol=1e-6)
    assert ds.warnings == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar"])
def test_corrupt_cache_entry_is_rebuilt(tmp_path, damage):
    root = make_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    expected = [np.array(w) for w in load_dataset(root, cache_dir=cache).waveforms]
    npy = sorted((cache / "waveforms").rglob("*.f32"))[0]
    side = npy.with_suffix(".json")
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif damage == "flip":
        raw = bytearray(npy.read_bytes())
        raw[-1] ^= 0x55
        npy.write_bytes(bytes(raw))
    else:
        side.write_text("{garbage")
    ds = load_dataset(root, cache_dir=cache)
    for a, b in zip(expected, ds.waveforms, strict=True):
        np.testing.assert_array_equal(a, b)
    assert npy.exists() and side.exists()  # rebuilt
    assert len(list((cache / "waveforms").rglob("*.f32"))) == 4


def test_unwritable_cache_warns_and_continues(tmp_path):
    root = make_folder(tmp_path / "data")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    ds = load_dataset(root, cache_dir=blocker)
    assert len(ds.waveforms) == 4
    assert any("cannot write the waveform cache" in str(w) for w in ds.warnings)


def test_progress_goes_to_stderr(tmp_path, capsys):
    load_dataset(make_folder(tmp_path / "data"), progress=True)
    captured = capsys.readouterr()
    assert "Reading recordings: 4/4" in captured.err and captured.out == ""


def test_invalid_configured_sample_rate(tmp_path):
    err = error_of(load_dataset, make_folder(tmp_path / "data"), sample_rate=-5.0)
    assert "positive" in str(err)


def test_io_imports_without_torch():
    code = (
        "import sys, damage_lightning.io.dataset, damage_lightning.io.cache; "
        "sys.exit(int(any(m == 'torch' or m.startswith('torch.') for m in sys.modules)))"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=False)
    assert result.returncode == 0, "damage_lightning.io must not import torch"


# --------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def cwru() -> Path:
    if not CWRU.is_dir():
        pytest.skip(f"CWRU data not present at {CWRU.resolve()} (shared/data beside the repo)")
    return CWRU


def test_cwru_loads_with_configured_rate(cwru, tmp_path):
    ds = load_dataset(cwru, sample_rate=12000, cache_dir=tmp_path / "cache")
    assert len(ds.class_names) == 10 and "normal" in ds.class_names
    assert ds.channels == ["DE_accel", "FE_accel"]
    assert ds.sample_rate == 12000.0
    n_samples = {r.relpath: int(r.metadata["n_samples"]) for r in ds.recordings}
    for rec, wave in zip(ds.recordings, ds.waveforms, strict=True):
        assert wave.shape == (2, n_samples[rec.relpath])
        assert np.isfinite(wave).all()
    assert ds.recordings[0].metadata["cwru_file"].startswith("X")
    assert read_header(ds.recordings[0].path) == ["DE_accel", "FE_accel"]


def test_cwru_without_rate_says_rate_unknown(cwru):
    err = error_of(load_dataset, cwru)
    assert len(err.problems) == 1
    assert "sample rate unknown" in str(err)
