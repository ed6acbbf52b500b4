"""The CSV reader parses a long file a block at a time: many blocks read exactly as the whole text
in one piece, and a problem in a late block is named by the row where it is in the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from damage_lightning.errors import DataValidationError
from damage_lightning.io.dataset import read_recording
from damage_lightning.io.readers import base, csv_blocks
from damage_lightning.io.readers.csv_blocks import BatchColumns, GrowingRows

ROWS = 3000
RATE = 500.0
# Blocks of this many bytes hold about 25 rows of the files below: over 100 blocks a file.
TINY_BLOCK = 1024


def lines(rows: int = ROWS, status: bool = False, stamps: bool = False) -> list[str]:
    """A header and ``rows`` data lines: time, three channels (and a text column)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((rows, 3))
    out = ["Timestamp,x,y,z" if stamps else "time,x,y,z"]
    for i in range(rows):
        if stamps:
            t = f"2024-05-01T10:{i // 30000:02d}:{i // RATE % 60:02.0f}.{i * 2 % 1000:03d}"
        else:
            t = f"{i / RATE:.4f}"
        out.append(f"{t},{x[i, 0]:.7g},{x[i, 1]:.9g},{x[i, 2]:.5f}")
    if status:
        cells = [f"{line},{'ok' if i % 9 else 'warm-up'}" for i, line in enumerate(out[1:])]
        out = [out[0] + ",status", *cells]
    return out


def write(path: Path, rows: list[str], newline: str = "\n") -> Path:
    data = (newline.join(rows) + newline).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Parse blocks of ~25 rows and check the time column 7 samples at a time; count the
    record batches (one per block) read."""
    monkeypatch.setattr(csv_blocks, "BLOCK_SIZE", TINY_BLOCK)
    monkeypatch.setattr(base, "_TIME_SLICE", 7)
    blocks = []
    add = BatchColumns.add

    def counting_add(self, batch):
        blocks.append(batch.num_rows)
        add(self, batch)

    monkeypatch.setattr(BatchColumns, "add", counting_add)
    return blocks


VARIANTS = {
    "plain.csv": lambda p: write(p, lines()),
    "crlf_blank_lines.csv": lambda p: write(p, [*lines()[:900], "", *lines()[900:]], "\r\n"),
    "gzip.csv.gz": lambda p: write(p, lines()),
    # A text column: the typed stream fails at once, the stream with inferred types drops it.
    "status.csv": lambda p: write(p, lines(status=True)),
    "timestamps.csv": lambda p: write(p, lines(stamps=True)),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("margin", [0.2, 1.1, 4.0], ids=["grows", "default", "shrinks"])
def test_many_blocks_read_exactly_as_one(tmp_path, monkeypatch, tiny_blocks, name, margin):
    path = VARIANTS[name](tmp_path / name)
    with monkeypatch.context() as whole:
        # One block for the whole file: the small-file read.
        whole.setattr(csv_blocks, "BLOCK_SIZE", 1 << 22)
        one = read_recording(path)
    assert len(tiny_blocks) == 1
    tiny_blocks.clear()
    # The sample buffers sized too small (they grow), or too large (the rows move together).
    monkeypatch.setattr(csv_blocks, "_CAPACITY_MARGIN", margin)
    many = read_recording(path)
    assert len(tiny_blocks) > 50 and sum(tiny_blocks) == ROWS
    assert many.channels == one.channels == ["x", "y", "z"]
    assert many.data.dtype == np.float32 and many.data.flags.c_contiguous
    assert many.data.shape == (3, ROWS)
    np.testing.assert_array_equal(many.data, one.data)
    assert many.data.tobytes() == one.data.tobytes()
    assert many.sample_rate == one.sample_rate == RATE
    # The values themselves: what numpy parses from the text, as float32.
    expected = np.array([line.split(",")[1:4] for line in lines()[1:]], dtype=np.float64).T
    np.testing.assert_array_equal(one.data, expected.astype(np.float32))


def test_a_column_inferred_otherwise_in_a_later_block_reads_as_one(tmp_path, tiny_blocks):
    # Timestamps with fractions in the first block only: pyarrow infers nanoseconds there and
    # whole seconds after; the later blocks are parsed again as the first block's type.
    start = np.datetime64("2024-05-01T10:00:00", "s")
    stamps = [str(start + i) + (".000" if i < 40 else "") for i in range(ROWS)]
    rows = ["Timestamp,x"] + [f"{t},{i % 17}" for i, t in enumerate(stamps)]
    path = write(tmp_path / "stamps.csv", rows)
    many = read_recording(path)
    assert len(tiny_blocks) > 50
    assert many.sample_rate == 1.0
    np.testing.assert_array_equal(many.data[0], np.arange(ROWS) % 17)


def test_a_bom_at_the_start_of_a_block_is_kept(tmp_path, monkeypatch, tiny_blocks):
    # A BOM inside the file (files joined together) at the start of the line that crosses a
    # block boundary: pyarrow drops a BOM at the start of a buffer, the whole-file read does not.
    rows = lines()
    offset, j = 0, 0
    while offset + len(rows[j]) + 1 <= 20 * TINY_BLOCK:
        offset += len(rows[j]) + 1
        j += 1
    assert offset < 20 * TINY_BLOCK < offset + len(rows[j]) + 1  # row j crosses the boundary
    rows[j] = "\ufeff" + rows[j]
    path = write(tmp_path / "joined.csv", rows)
    errors = []
    for block in (TINY_BLOCK, 1 << 22):
        monkeypatch.setattr(csv_blocks, "BLOCK_SIZE", block)
        with pytest.raises(DataValidationError) as info:
            read_recording(path)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert "time column is not numeric" in errors[0]


def _late(rows: list[str], index: int, column: int, value: str) -> list[str]:
    """``rows`` with the cell of data row ``index`` (0-based) in ``column`` replaced."""
    cells = rows[index + 1].split(",")
    cells[column] = value
    return [*rows[: index + 1], ",".join(cells), *rows[index + 2 :]]


LATE = 2500  # data row 2500: file row 2502, or 2503 after the blank line below
CASES = {
    "text": (lambda r: _late(r, LATE, 2, "oops"), "column 'y'", "non-numeric value 'oops'"),
    "nan": (lambda r: _late(r, LATE, 3, "NaN"), "column 'z'", "empty or NaN value"),
    "empty": (lambda r: _late(r, LATE, 1, ""), "column 'x'", "empty or NaN value"),
    "too_large": (lambda r: _late(r, LATE, 1, "3e39"), "column 'x'", "too large for float32"),
    "decimal_comma": (lambda r: _late(r, LATE, 2, '"1,5"'), "column 'y'", "decimal comma"),
    "header_again": (
        lambda r: [*r[: LATE + 1], r[0], *r[LATE + 1 :]],
        "column 'x'",
        "header line repeated",
    ),
    "ragged": (
        lambda r: [*r[: LATE + 1], r[LATE + 1] + ",7", *r[LATE + 2 :]],
        "",
        "expected 4 fields like the header, found 5",
    ),
    "time_gap": (lambda r: [*r[: LATE + 1], *r[LATE + 2 :]], "column 'time'", "irregular time"),
    "time_empty": (lambda r: _late(r, LATE, 0, ""), "column 'time'", "empty time value"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("blank", [False, True], ids=["", "after_blank_line"])
def test_problem_in_a_late_block_names_its_file_row(tmp_path, tiny_blocks, case, blank):
    edit, column, reason = CASES[case]
    rows = edit(lines())
    if blank:
        # The parser skips blank lines; the row named is still the file's.
        rows = [*rows[:1000], "", *rows[1000:]]
    path = write(tmp_path / "late.csv", rows)
    with pytest.raises(DataValidationError) as info:
        read_recording(path, display="late.csv")
    (problem,) = info.value.problems
    row = LATE + 2 + blank
    assert problem.location == f"row {row}, {column}" if column else f"row {row}"
    assert reason in problem.reason


def test_truncated_gzip_is_named_when_the_parser_reads_it(tmp_path, tiny_blocks):
    # The header and first blocks decompress; the damage is found mid-stream, inside pyarrow.
    data = gzip.compress(("\n".join(lines(20000)) + "\n").encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(DataValidationError) as info:
        read_recording(path, display="cut.csv.gz")
    assert str(info.value).startswith("cut.csv.gz: gzip content is corrupt or truncated")
    assert tiny_blocks  # blocks were parsed before the damage was reached


@pytest.mark.parametrize("capacity", [1, 7, 100, 1000])
def test_growing_rows_give_the_rows_written_contiguous(capacity):
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((3, k)).astype(np.float32) for k in (5, 1, 40, 0, 17, 60)]
    rows = GrowingRows(3, capacity, np.float32)
    for part in parts:
        rows.extend(part.shape[1])[:] = part
    out = rows.finish()
    assert out.flags.c_contiguous and out.shape == (3, 123)
    np.testing.assert_array_equal(out, np.concatenate(parts, axis=1))
