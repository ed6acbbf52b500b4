"""Tests for the .mat, .tdms, .wav and Parquet readers, on files the tests write."""

from __future__ import annotations

import struct
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from damage_lightning.errors import DataValidationError
from damage_lightning.io.readers import RawRecording, ReaderOptions, reader_for
from damage_lightning.io.readers.mat import channel_name

RNG = np.random.default_rng(7)
NONE = ReaderOptions()


def noise(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def read(path: Path, options: ReaderOptions = NONE, channels=None) -> RawRecording:
    return reader_for(path).read(path, path.name, options, channels)


def problem_of(path: Path, options: ReaderOptions = NONE, channels=None):
    with pytest.raises(DataValidationError) as info:
        read(path, options, channels)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.file == path.name
    return problem


# --------------------------------------------------------------------------------- writers


def write_v5(path: Path, variables: dict) -> Path:
    import scipy.io

    scipy.io.savemat(path, variables)
    return path


def write_v73(path: Path, variables: dict) -> Path:
    """An HDF5 file laid out as MATLAB's ``save -v7.3`` writes one."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as h5:
        for name, value in variables.items():
            value = np.asarray(value)
            value = value.reshape(1, 1) if value.ndim == 0 else value
            # MATLAB is column-major: HDF5 holds the transpose of what MATLAB shows.
            h5[name] = value.T
            cls = {"float64": "double", "float32": "single"}.get(value.dtype.name, value.dtype.name)
            h5[name].attrs["MATLAB_class"] = np.bytes_(cls)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")
    return path


MAT_WRITERS = {"v5": write_v5, "v7.3": write_v73}


def write_tdms(path: Path, groups: dict[str, dict[str, np.ndarray]], increment=None) -> Path:
    from nptdms import ChannelObject, GroupObject, TdmsWriter

    objects = []
    for group, channels in groups.items():
        objects.append(GroupObject(group))
        for name, values in channels.items():
            props = {} if increment is None else {"wf_increment": increment[name]}
            objects.append(ChannelObject(group, name, values, properties=props))
    with TdmsWriter(path) as writer:
        writer.write_segment(objects)
    return path


def wav_bytes(
    frames: bytes, channels: int, rate: int, bits: int, tag: int = 1, sub: int = 1
) -> bytes:
    """A WAV file written by hand; ``tag`` 0xFFFE: WAVE_FORMAT_EXTENSIBLE of format ``sub``."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if tag == 0xFFFE:
        guid = struct.pack("<H", sub) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 5) + b"INFOx\x00"  # an odd-sized chunk to skip
    body += b"data" + struct.pack("<I", len(frames)) + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_wav(path: Path, samples: np.ndarray, rate: int, bits: int, tag: int, sub=1) -> Path:
    """``samples``: (frames, channels) of the stored dtype."""
    path.write_bytes(wav_bytes(samples.tobytes(), samples.shape[1], rate, bits, tag, sub))
    return path


def write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# --------------------------------------------------------------------------------- .mat


@pytest.mark.parametrize("version", MAT_WRITERS)
def test_mat_single_array_is_the_recording_with_values_and_rate(tmp_path, version):
    x = noise(500)
    path = MAT_WRITERS[version](tmp_path / "rec.mat", {"X123_DE_time": x[:, None], "fs": 12000.0})
    raw = read(path)
    assert raw.channels == ["ch1"]
    assert raw.sample_rate == 12000.0
    assert raw.data.dtype == np.float32 and raw.data.flags.c_contiguous
    np.testing.assert_array_equal(raw.data, x[None, :])


@pytest.mark.parametrize("version", MAT_WRITERS)
def test_mat_matrix_has_samples_on_its_longer_side(tmp_path, version):
    x = noise(300, 3)  # MATLAB's usual samples x channels
    path = MAT_WRITERS[version](tmp_path / "m.mat", {"acc": x})
    raw = read(path)
    assert raw.channels == ["ch1", "ch2", "ch3"]
    np.testing.assert_array_equal(raw.data, x.T)
    assert reader_for(path).channel_names(path, "m.mat", NONE) == ["ch1", "ch2", "ch3"]
    np.testing.assert_array_equal(read(path, channels=["ch3", "ch1"]).data, x.T[[2, 0]])


def cwru_like(folder: Path, writer, number: int, samples: int) -> tuple[Path, np.ndarray]:
    """A file as the CWRU bearing data ships it: names carry the file's number, RPM a scalar."""
    de, fe = noise(samples), noise(samples)
    variables = {f"X{number:03d}_DE_time": de[:, None], f"X{number:03d}_FE_time": fe[:, None]}
    variables[f"X{number:03d}RPM"] = 1797.0
    return writer(folder / f"{number}.mat", variables), de


@pytest.mark.parametrize("version", MAT_WRITERS)
def test_mat_folder_with_differing_names_reads_with_one_pattern(tmp_path, version):
    writer = MAT_WRITERS[version]
    first, de1 = cwru_like(tmp_path, writer, 97, 400)
    second, de2 = cwru_like(tmp_path, writer, 105, 400)
    options = ReaderOptions(variables=["*_DE_time"])
    a, b = read(first, options), read(second, options)
    assert a.channels == b.channels == ["DE_time"]
    np.testing.assert_array_equal(a.data[0], de1)
    np.testing.assert_array_equal(b.data[0], de2)
    assert reader_for(first).channel_names(first, first.name, options) == ["DE_time"]


@pytest.mark.parametrize("version", MAT_WRITERS)
def test_mat_several_arrays_without_setting_say_how_to_choose(tmp_path, version):
    path, _ = cwru_like(tmp_path, MAT_WRITERS[version], 97, 100)
    problem = problem_of(path)
    assert "X097_DE_time" in problem.reason and "X097_FE_time" in problem.reason
    assert "X097RPM" not in problem.reason  # scalars are never channels
    assert "--data.variables '[\"*_DE_time\"]'" in problem.reason


def test_mat_pattern_errors_name_pattern_and_variables(tmp_path):
    path, _ = cwru_like(tmp_path, write_v5, 97, 100)
    none = problem_of(path, ReaderOptions(variables=("*_BA_time",)))
    assert "'*_BA_time'" in none.reason and "no numeric array" in none.reason
    assert "'X097_DE_time' (100x1 single)" in none.reason
    two = problem_of(path, ReaderOptions(variables=("X097_*",)))
    assert "'X097_DE_time', 'X097_FE_time'" in two.reason and "exactly one" in two.reason
    write_v5(tmp_path / "uneven.mat", {"a_x": noise(50)[:, None], "b_y": noise(60)[:, None]})
    uneven = problem_of(tmp_path / "uneven.mat", ReaderOptions(variables=("a*", "b*")))
    assert "differ in length" in uneven.reason and "'a_x' 50" in uneven.reason


def test_mat_two_patterns_give_two_channels_in_pattern_order(tmp_path):
    path, de = cwru_like(tmp_path, write_v5, 97, 100)
    raw = read(path, ReaderOptions(variables=("*FE_time", "*_DE_time")))
    assert raw.channels == ["FE_time", "DE_time"]
    np.testing.assert_array_equal(raw.data[1], de)


def test_channel_name_drops_glob_characters():
    assert channel_name("*_DE_time", 1) == "DE_time"
    assert channel_name("X???_FE_time*", 1) == "X_FE_time"
    assert channel_name("*", 2) == "ch2"


def test_mat_ignores_structs_cells_text_and_uses_time_vector(tmp_path):
    x = noise(200)
    t = np.arange(200) / 500.0
    path = write_v5(
        tmp_path / "mixed.mat",
        {
            "signal": x,
            "t": t,
            "info": {"rig": "A", "gain": 2},
            "notes": np.array(["a", 1], dtype=object),
            "operator": "someone",
        },
    )
    raw = read(path)
    assert raw.channels == ["ch1"] and raw.sample_rate == 500.0
    np.testing.assert_array_equal(raw.data[0], x)


def test_mat_without_numeric_array_is_an_error(tmp_path):
    path = write_v5(tmp_path / "text.mat", {"operator": "someone", "RPM": 1797})
    assert "no numeric array" in problem_of(path).reason


# --------------------------------------------------------------------------------- .tdms


def test_tdms_channels_values_and_rate(tmp_path):
    a, b = noise(300), (RNG.integers(-100, 100, 300)).astype(np.int16)
    path = write_tdms(
        tmp_path / "r.tdms",
        {"Vibration": {"a": a, "b": b, "note": np.array(["x", "y"])}},
        increment={"a": 1 / 2048, "b": 1 / 2048, "note": 1.0},
    )
    raw = read(path, channels=None)
    assert raw.channels == ["a", "b"]
    assert raw.sample_rate == 2048.0
    np.testing.assert_array_equal(raw.data, np.stack([a, b.astype(np.float32)]))
    assert read(path, channels=["b"]).channels == ["b"]
    assert reader_for(path).channel_names(path, "r.tdms", NONE) == ["a", "b"]


def test_tdms_groups_are_chosen_by_setting(tmp_path):
    groups = {"run1": {"x": noise(50)}, "run2": {"x": noise(50)}}
    path = write_tdms(tmp_path / "g.tdms", groups)
    problem = problem_of(path)
    assert "'run1', 'run2'" in problem.reason and "data.tdms_group" in problem.reason
    raw = read(path, ReaderOptions(group="run2"))
    np.testing.assert_array_equal(raw.data[0], groups["run2"]["x"])
    assert raw.sample_rate is None
    assert "no group 'run3'" in problem_of(path, ReaderOptions(group="run3")).reason


def test_tdms_unequal_lengths_and_increments_are_errors(tmp_path):
    short = write_tdms(tmp_path / "s.tdms", {"g": {"a": noise(50), "b": noise(40)}})
    assert "'a' 50, 'b' 40" in problem_of(short).reason
    mixed = write_tdms(
        tmp_path / "m.tdms",
        {"g": {"a": noise(50), "b": noise(50)}},
        increment={"a": 0.001, "b": 0.002},
    )
    assert "different sample intervals" in problem_of(mixed).reason


@pytest.mark.parametrize("keep", [10, 100, 300, -10])
def test_a_cut_tdms_file_is_named_as_cut_short_and_nothing_is_printed(tmp_path, capfd, keep):
    # An acquisition or copy that stopped early: before the first segment's metadata is whole
    # (10, 100 bytes) nothing can be read; inside the data (300, all but 10 bytes) the channels
    # are left with unequal lengths (one of them empty at 300).
    whole = write_tdms(tmp_path / "whole.tdms", {"g": {"a": noise(2000), "b": noise(2000)}})
    data = whole.read_bytes()
    cut = tmp_path / "cut.tdms"
    cut.write_bytes(data[:keep])
    reason = problem_of(cut).reason
    assert "the file is cut short (its last segment is incomplete)" in reason
    if keep > 100 or keep < 0:
        assert "differ in length" in reason and "'a'" in reason and "'b'" in reason
    else:
        assert "not one complete data segment" in reason
    # npTDMS's own warnings about it do not reach the console (the gateway prints one line).
    assert "nptdms" not in capfd.readouterr().err
    assert reader_for(whole).read(whole, "whole.tdms", NONE).data.shape == (2, 2000)


# --------------------------------------------------------------------------------- .wav


def test_wav_pcm16_from_stdlib_wave(tmp_path):
    ints = RNG.integers(-32768, 32767, (400, 2)).astype("<i2")
    path = tmp_path / "r.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(ints.tobytes())
    raw = read(path)
    assert raw.channels == ["ch1", "ch2"] and raw.sample_rate == 8000.0
    np.testing.assert_array_equal(raw.data, ints.T / np.float32(32768))


@pytest.mark.parametrize("tag", [1, 0xFFFE])
@pytest.mark.parametrize("bits", [8, 24, 32])
def test_wav_integer_encodings_scale_to_unit_range(tmp_path, bits, tag):
    full = 1 << (bits - 1)
    values = np.array([[-full, 0], [full - 1, 1], [-1, full // 2]], dtype=np.int64)
    if bits == 8:
        stored = (values + 128).astype(np.uint8)
        frames = stored.tobytes()
    elif bits == 24:
        frames = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values.ravel())
    else:
        frames = values.astype("<i4").tobytes()
    path = tmp_path / "r.wav"
    path.write_bytes(wav_bytes(frames, 2, 1000, bits, tag))
    raw = read(path)
    np.testing.assert_allclose(raw.data, values.T / full, rtol=0, atol=1e-7)
    assert raw.data.min() == -1 and raw.data.max() <= 1


@pytest.mark.parametrize(("dtype", "bits"), [("<f4", 32), ("<f8", 64)])
def test_wav_float_round_trips_exactly(tmp_path, dtype, bits):
    x = noise(250, 3)
    path = write_wav(tmp_path / "f.wav", x.astype(dtype), 25600, bits, tag=3)
    raw = read(path)
    assert raw.channels == ["ch1", "ch2", "ch3"] and raw.sample_rate == 25600.0
    np.testing.assert_array_equal(raw.data, x.T)
    mono = read(write_wav(tmp_path / "mono.wav", x[:, :1].astype(dtype), 100, bits, tag=3))
    assert mono.data.flags.writeable and mono.data.flags.c_contiguous


def test_wav_extensible_float(tmp_path):
    x = noise(100, 1).astype("<f8")
    path = write_wav(tmp_path / "e.wav", x, 48000, 64, tag=0xFFFE, sub=3)
    np.testing.assert_array_equal(read(path).data, x.T.astype(np.float32))


def test_wav_damaged_or_unsupported_files_say_why(tmp_path):
    good = wav_bytes(np.zeros((100, 1), "<i2").tobytes(), 1, 1000, 16)
    (tmp_path / "cut.wav").write_bytes(good[:-50])
    assert "truncated" in problem_of(tmp_path / "cut.wav").reason
    (tmp_path / "mp3.wav").write_bytes(wav_bytes(b"\x00" * 8, 1, 1000, 16, tag=0x55))
    assert "unsupported WAV encoding MP3" in problem_of(tmp_path / "mp3.wav").reason
    (tmp_path / "head.wav").write_bytes(good[:30])
    assert "ends inside the 'fmt ' chunk" in problem_of(tmp_path / "head.wav").reason
    (tmp_path / "nodata.wav").write_bytes(good[:44])
    assert "no 'data' chunk" in problem_of(tmp_path / "nodata.wav").reason


# --------------------------------------------------------------------------------- Parquet


def test_parquet_numeric_columns_time_and_text(tmp_path):
    import pyarrow as pa

    a, b = noise(200), RNG.integers(-5, 5, 200).astype(np.int16)
    path = write_parquet(
        tmp_path / "r.parquet",
        {
            "time": np.arange(200) / 1000.0,
            "a": pa.array(a),
            "status": ["ok"] * 200,
            "b": pa.array(b),
        },
    )
    raw = read(path)
    assert raw.channels == ["a", "b"] and raw.sample_rate == 1000.0
    np.testing.assert_array_equal(raw.data, np.stack([a, b.astype(np.float32)]))
    np.testing.assert_array_equal(read(path, channels=["b", "a"]).data[0], b)
    assert "not numeric" in problem_of(path, channels=["status"]).reason
    assert reader_for(path).channel_names(path, "r.parquet", NONE) == ["a", "b"]


def test_parquet_timestamp_time_and_pandas_index(tmp_path):
    import pandas as pd

    start = pd.Timestamp("2024-05-01 12:00:00")
    frame = pd.DataFrame(
        {"timestamp": start + pd.to_timedelta(np.arange(100) * 2, unit="ms"), "x": noise(100)},
        index=pd.Index(np.arange(100) + 7, name="row"),
    )
    path = tmp_path / "ts.pq"
    frame.to_parquet(path)
    raw = read(path)
    assert raw.channels == ["x"] and raw.sample_rate == 500.0


@pytest.mark.parametrize("typ", ["float32", "int32"])
def test_parquet_null_names_row_and_column(tmp_path, typ):
    import pyarrow as pa

    path = write_parquet(tmp_path / "n.parquet", {"x": pa.array([1, 2, None, 4], type=typ)})
    problem = problem_of(path)
    assert problem.location == "row 3, column 'x'" and "empty" in problem.reason


# --------------------------------------------------------------------------------- every format


def nan_file(tmp_path: Path, kind: str) -> Path:
    x = noise(2, 40)
    x[0, 5] = x[1, 9] = np.nan
    if kind == "mat":
        return write_v5(tmp_path / "nan.mat", {"v": x.T})
    if kind == "tdms":
        return write_tdms(tmp_path / "nan.tdms", {"g": {"ch1": x[0], "ch2": x[1]}})
    if kind == "wav":
        return write_wav(tmp_path / "nan.wav", x.T.copy(), 1000, 32, tag=3)
    return write_parquet(tmp_path / "nan.parquet", {"ch1": x[0], "ch2": x[1]})


@pytest.mark.parametrize("kind", ["mat", "tdms", "wav", "parquet"])
def test_nan_is_named_with_sample_channel_and_count(tmp_path, kind):
    problem = problem_of(nan_file(tmp_path, kind))
    assert "NaN" in problem.reason and "2 such values" in problem.reason
    where = "row 6, column 'ch1'" if kind == "parquet" else "sample 6, channel 'ch1'"
    assert problem.location == where


@pytest.mark.parametrize("suffix", [".mat", ".tdms", ".wav", ".parquet"])
def test_bad_files_of_every_format_name_the_file(tmp_path, suffix):
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"this is not a recording\n" * 40)
    reason = problem_of(garbage).reason
    assert reason.startswith(("cannot read the", "not a WAV file")), reason
    (tmp_path / f"empty{suffix}").write_bytes(b"")
    assert problem_of(tmp_path / f"empty{suffix}").reason == "file is empty"
    assert problem_of(tmp_path / f"missing{suffix}").reason == "file not found"


def test_mat_v73_truncated_is_named(tmp_path):
    path = write_v73(tmp_path / "big.mat", {"x": noise(5000)})
    path.write_bytes(path.read_bytes()[:2000])
    assert "cannot read the MATLAB v7.3" in problem_of(path).reason


def test_missing_library_says_what_to_install(tmp_path, monkeypatch):
    path = write_v73(tmp_path / "r.mat", {"x": noise(50)})
    monkeypatch.setitem(sys.modules, "h5py", None)
    assert "pip install h5py" in problem_of(path).reason


def test_a_header_starting_with_a_comment_mark_is_still_a_header(tmp_path):
    # "#time,a,b" has as many fields as the rows under it: a header, not a comment line.
    path = tmp_path / "hash.csv"
    path.write_text("#time,a,b\n0,1,2\n0.001,1,2\n0.002,3,4\n")
    raw = reader_for(path, path.name).read(path, path.name, ReaderOptions())
    assert raw.channels == ["#time", "a", "b"]
    path.write_text("% logger 2\n#time,a,b\n0,1,2\n")
    with pytest.raises(DataValidationError, match=r"hash.csv \(row 1\).*'% logger 2'"):
        reader_for(path, path.name).read(path, path.name, ReaderOptions())
