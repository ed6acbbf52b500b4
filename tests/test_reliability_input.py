"""Bad-input corpus: each broken dataset is given to `fit`, which must reject or accept it cleanly.

Every case starts from the same valid base dataset (3 classes x 3 recordings x 3000 samples, two
channels and a time column at 1000 Hz) and changes one thing. A bad dataset must end with exit
status 2 and a message naming the file and the reason, without a traceback, before any checkpoint
is written; an unusual but valid one (BOM, semicolons, unicode, a flat channel) must train, with
its warnings printed and recorded in ``model_info.json``. docs/reliability.md lists the cases.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from damage_lightning.cli import main

CNN = str(REPO / "configs" / "cnn.yaml")
LABELS = ("healthy", "cracked", "loose")
N_SAMPLES = 3000
RATE = 1000.0
WINDOW = 256
# Concurrent subprocesses: most of a failing run is importing torch and Lightning (CPU bound).
WORKERS = 2
# A rejected dataset is reported "within seconds"; the bounds are generous for a loaded machine
# (a fresh interpreter needs 5-8 s to import torch and Lightning alone).
MAX_IN_PROCESS_SECONDS = 15.0
MAX_SUBPROCESS_SECONDS = 60.0


def _signal(rng: np.random.Generator, label_index: int, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    f = 50.0 + 40.0 * label_index
    x = np.sin(2 * np.pi * f * t) + 0.3 * rng.standard_normal(n)
    y = np.cos(2 * np.pi * 1.5 * f * t) + 0.3 * rng.standard_normal(n)
    return np.stack([t, x, y], axis=1)


def csv_text(
    rows: np.ndarray, header: str = "time,acc_x,acc_y", delimiter: str = ",", rate: float = RATE
) -> str:
    """A recording as CSV text: the time column (seconds) and the channels, one row per sample."""
    t = np.arange(len(rows)) / rate
    lines = [header.replace(",", delimiter)]
    lines += [
        delimiter.join([f"{t[i]:.5f}", *(f"{v:.5f}" for v in rows[i, 1:])])
        for i in range(len(rows))
    ]
    return "\n".join(lines) + "\n"


def make_base(root: Path) -> dict[str, np.ndarray]:
    """Write the valid base dataset (folder per class) and return its arrays by relative path."""
    rng = np.random.default_rng(7)
    arrays = {}
    for i, label in enumerate(LABELS):
        (root / label).mkdir(parents=True)
        for r in range(3):
            rel = f"{label}/rec{r}.csv"
            arrays[rel] = _signal(rng, i, N_SAMPLES)
            (root / rel).write_text(csv_text(arrays[rel]))
    return arrays


def write_manifest(root: Path, rows: list[tuple[str, str]]) -> None:
    """Write ``root/manifest.csv`` with the given ``(path, label)`` rows."""
    lines = ["path,label", *(f"{p},{lab}" for p, lab in rows)]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")


def base_manifest_rows() -> list[tuple[str, str]]:
    """The manifest that lists the base dataset as it is."""
    return [(f"{lab}/rec{r}.csv", lab) for lab in LABELS for r in range(3)]


def replace_line(path: Path, index: int, new: str) -> None:
    """Replace line ``index`` (0 = header) of a text file."""
    lines = path.read_text().splitlines()
    lines[index] = new
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Case:
    """One dataset defect and what ``fit`` must do with it.

    Args:
        name: the case id (also the test id in docs/reliability.md).
        build: changes the base dataset in ``root`` (gets the base arrays too).
        expect: ``error`` (exit 2) or ``valid`` (trains).
        names: text the message must contain: the file (or folder) and the reason.
        data_dir: the data folder relative to the case folder (``data`` unless the case says).
        warning: for valid cases, text of the warning printed and kept in model_info.json.
        skip: a reason to skip the case here.
    """

    name: str
    build: Callable[[Path, dict[str, np.ndarray]], None]
    expect: str
    names: tuple[str, ...] = ()
    data_dir: str = "data"
    warning: str | None = None
    skip: str | None = None


# ------------------------------------------------------------------------------ case builders
def _no_change(root: Path, arrays: dict) -> None:
    """The base dataset as it is."""


def _empty_file(root: Path, arrays: dict) -> None:
    (root / "cracked/rec1.csv").write_bytes(b"")


def _header_only(root: Path, arrays: dict) -> None:
    (root / "cracked/rec1.csv").write_text("time,acc_x,acc_y\n")


def _no_numeric_column(root: Path, arrays: dict) -> None:
    n = 400
    body = "".join(f"{i / RATE:.5f},ok,fine\n" for i in range(n))
    (root / "cracked/rec1.csv").write_text("time,acc_x,acc_y\n" + body)


def _non_numeric_cell(root: Path, arrays: dict) -> None:
    replace_line(root / "cracked/rec1.csv", 10, "0.00900,oops,0.5")


def _nan_cell(root: Path, arrays: dict) -> None:
    replace_line(root / "cracked/rec1.csv", 10, "0.00900,nan,0.5")


def _inf_cell(root: Path, arrays: dict) -> None:
    replace_line(root / "cracked/rec1.csv", 10, "0.00900,0.1,inf")


def _channel_missing(root: Path, arrays: dict) -> None:
    a = arrays["loose/rec2.csv"]
    (root / "loose/rec2.csv").write_text(csv_text(a[:, :2], header="time,acc_x"))


def _channel_renamed(root: Path, arrays: dict) -> None:
    a = arrays["loose/rec2.csv"]
    (root / "loose/rec2.csv").write_text(csv_text(a, header="time,acc_x,acc_z"))


def _rate_differs(root: Path, arrays: dict) -> None:
    a = arrays["loose/rec2.csv"]
    (root / "loose/rec2.csv").write_text(csv_text(a, rate=2 * RATE))


def _too_short(root: Path, arrays: dict) -> None:
    a = arrays["healthy/rec0.csv"][:100]
    (root / "healthy/rec0.csv").write_text(csv_text(a))


def _one_sample(root: Path, arrays: dict) -> None:
    a = arrays["healthy/rec0.csv"][:1]
    (root / "healthy/rec0.csv").write_text(csv_text(a))


def _class_too_small_to_split(root: Path, arrays: dict) -> None:
    # One recording of just over one window: no room for train, val and test blocks with gaps.
    for r in (1, 2):
        (root / f"loose/rec{r}.csv").unlink()
    a = arrays["loose/rec0.csv"][: WINDOW + 20]
    (root / "loose/rec0.csv").write_text(csv_text(a))


def _single_class(root: Path, arrays: dict) -> None:
    for label in LABELS[1:]:
        shutil.rmtree(root / label)


def _manifest_missing_file(root: Path, arrays: dict) -> None:
    write_manifest(root, [*base_manifest_rows(), ("loose/gone.csv", "loose")])


def _manifest_outside(root: Path, arrays: dict) -> None:
    shutil.copy(root / "loose/rec0.csv", root.parent / "outside.csv")
    write_manifest(root, [*base_manifest_rows(), ("../outside.csv", "loose")])


def _manifest_absolute(root: Path, arrays: dict) -> None:
    outside = root.parent / "elsewhere.csv"
    shutil.copy(root / "loose/rec0.csv", outside)
    write_manifest(root, [*base_manifest_rows(), (str(outside), "loose")])


def _manifest_given_but_missing(root: Path, arrays: dict) -> None:
    """Nothing to change: the case passes --data.manifest naming a file that does not exist."""


def _manifest_zero_bytes(root: Path, arrays: dict) -> None:
    (root / "manifest.csv").write_bytes(b"")


def _manifest_duplicate(root: Path, arrays: dict) -> None:
    write_manifest(root, [*base_manifest_rows(), ("cracked/rec1.csv", "cracked")])


def _bom(root: Path, arrays: dict) -> None:
    for rel in arrays:
        path = root / rel
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


def _semicolon(root: Path, arrays: dict) -> None:
    for rel, a in arrays.items():
        (root / rel).write_text(csv_text(a, delimiter=";"))


def _ragged(root: Path, arrays: dict) -> None:
    replace_line(root / "cracked/rec1.csv", 10, "0.00900,0.1,0.2,0.3")


def _header_repeated(root: Path, arrays: dict) -> None:
    replace_line(root / "cracked/rec1.csv", 1500, "time,acc_x,acc_y")


def _duplicate_columns(root: Path, arrays: dict) -> None:
    a = arrays["cracked/rec1.csv"]
    (root / "cracked/rec1.csv").write_text(csv_text(a, header="time,acc_x,acc_x"))


def _binary(root: Path, arrays: dict) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (root / "cracked/rec1.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + data)


def _comment_lines(root: Path, arrays: dict) -> None:
    path = root / "cracked/rec1.csv"
    path.write_text("# exported by logger v2\n# rate: 1 kHz\n" + path.read_text())


def _separator_hint(root: Path, arrays: dict) -> None:
    path = root / "cracked/rec1.csv"
    path.write_text("sep=,\n" + path.read_text())


def _cr_line_endings(root: Path, arrays: dict) -> None:
    path = root / "cracked/rec1.csv"
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r"))


# Lines before the header: (case id, builder, the reason the message gives).
PREAMBLES = [
    ("comment_lines_before_header", _comment_lines, "metadata line ('# exported by logger v2')"),
    ("separator_hint_line", _separator_hint, "separator hint ('sep=,')"),
    ("cr_only_line_endings", _cr_line_endings, "classic Mac OS line endings"),
]


def _gzip_without_extension(root: Path, arrays: dict) -> None:
    path = root / "cracked/rec1.csv"
    path.write_bytes(gzip.compress(path.read_bytes()))


def _empty_label_folder(root: Path, arrays: dict) -> None:
    (root / "rusted").mkdir()
    (root / "rusted" / "notes.txt").write_text("no recordings yet\n")


def _unreadable(root: Path, arrays: dict) -> None:
    (root / "cracked/rec1.csv").chmod(0)


def _dangling_link(root: Path, arrays: dict) -> None:
    # A recording that cannot be opened at all (what an unreadable file looks like to root).
    (root / "cracked/rec1.csv").unlink()
    (root / "cracked/rec1.csv").symlink_to(root / "cracked/moved_away.csv")


def _flat_channel(root: Path, arrays: dict) -> None:
    a = arrays["healthy/rec1.csv"].copy()
    a[:, 2] = 0.25
    (root / "healthy/rec1.csv").write_text(csv_text(a))


def _clipped_channel(root: Path, arrays: dict) -> None:
    a = arrays["healthy/rec1.csv"].copy()
    a[:, 1] = np.clip(a[:, 1] * 3.0, -1.0, 1.0)
    (root / "healthy/rec1.csv").write_text(csv_text(a))


def _unicode_names(root: Path, arrays: dict) -> None:
    os.rename(root / "cracked", root / "fissuré_裂纹")
    os.rename(root / "fissuré_裂纹/rec0.csv", root / "fissuré_裂纹/messung_ä_0.csv")


CASES = [
    Case(
        "missing_data_folder",
        _no_change,
        "error",
        ("nowhere", "data folder does not exist"),
        data_dir="nowhere",
    ),
    Case("empty_file", _empty_file, "error", ("cracked/rec1.csv", "file is empty")),
    Case("header_only", _header_only, "error", ("cracked/rec1.csv", "header but no data rows")),
    Case(
        "no_numeric_column",
        _no_numeric_column,
        "error",
        ("cracked/rec1.csv", "column 'acc_x'", "not numeric"),
    ),
    Case(
        "non_numeric_cell",
        _non_numeric_cell,
        "error",
        ("cracked/rec1.csv", "row 11", "acc_x", "non-numeric value 'oops'"),
    ),
    Case("nan_cell", _nan_cell, "error", ("cracked/rec1.csv", "row 11", "NaN")),
    Case("inf_cell", _inf_cell, "error", ("cracked/rec1.csv", "row 11", "acc_y", "infinite")),
    Case("channel_missing", _channel_missing, "error", ("loose/rec2.csv", "'acc_y' not found")),
    Case(
        "channel_names_differ",
        _channel_renamed,
        "error",
        ("loose/rec2.csv", "'acc_y' not found", "available: 'acc_x', 'acc_z'"),
    ),
    Case(
        "sample_rate_differs",
        _rate_differs,
        "error",
        ("loose/rec2.csv", "sample rate 2000 Hz differs from 1000 Hz"),
    ),
    Case(
        "shorter_than_window",
        _too_short,
        "error",
        ("healthy/rec0.csv", "100 samples, fewer than the 256"),
    ),
    Case("one_sample_recording", _one_sample, "error", ("healthy/rec0.csv", "1 samples")),
    Case("class_too_small_to_split", _class_too_small_to_split, "error", ("loose",)),
    Case("single_class", _single_class, "error", ("only one class ('healthy')",)),
    Case(
        "manifest_file_not_found",
        _manifest_missing_file,
        "error",
        ("manifest.csv", "loose/gone.csv", "file not found"),
    ),
    Case(
        "manifest_given_but_missing",
        _manifest_given_but_missing,
        "error",
        ("list.csv", "manifest file not found"),
    ),
    Case(
        "manifest_dotdot_path",
        _manifest_outside,
        "error",
        ("manifest.csv", "../outside.csv", "outside the data folder"),
    ),
    Case(
        "manifest_absolute_path",
        _manifest_absolute,
        "error",
        ("manifest.csv", "elsewhere.csv", "outside the data folder"),
    ),
    Case(
        "manifest_zero_bytes", _manifest_zero_bytes, "error", ("manifest.csv", "manifest is empty")
    ),
    Case(
        "manifest_duplicate_path",
        _manifest_duplicate,
        "error",
        ("manifest.csv", "cracked/rec1.csv", "listed twice"),
    ),
    Case(
        "ragged_row",
        _ragged,
        "error",
        ("cracked/rec1.csv", "row 11", "expected 3 fields like the header, found 4"),
    ),
    Case(
        "header_repeated_mid_file",
        _header_repeated,
        "error",
        ("cracked/rec1.csv", "row 1501", "header line repeated"),
    ),
    Case(
        "duplicate_column_names",
        _duplicate_columns,
        "error",
        ("cracked/rec1.csv", "duplicate column names", "'acc_x' in columns 2, 3"),
    ),
    Case("binary_named_csv", _binary, "error", ("cracked/rec1.csv", "binary content")),
    *[Case(n, build, "error", ("cracked/rec1.csv", "row 1", why)) for n, build, why in PREAMBLES],
    Case(
        "unreadable_permissions",
        _unreadable,
        "error",
        ("cracked/rec1.csv", "permission denied"),
        skip="running as root: permission bits do not stop reading (dangling_link covers "
        "an unopenable file)"
        if hasattr(os, "geteuid") and os.geteuid() == 0
        else None,
    ),
    Case("dangling_link", _dangling_link, "error", ("cracked/rec1.csv", "file not found")),
    Case("bom", _bom, "valid"),
    Case("semicolon_delimiter", _semicolon, "valid"),
    Case("gzip_without_extension", _gzip_without_extension, "valid"),
    Case("unicode_names", _unicode_names, "valid"),
    Case(
        "empty_label_folder",
        _empty_label_folder,
        "valid",
        warning="rusted/: label folder contains no recording file",
    ),
    Case(
        "flat_channel",
        _flat_channel,
        "valid",
        warning="healthy/rec1.csv (column 'acc_y'): channel is constant",
    ),
    Case(
        "clipped_channel",
        _clipped_channel,
        "valid",
        warning="healthy/rec1.csv (column 'acc_x'): channel looks clipped",
    ),
]


@dataclass
class Outcome:
    """What one ``fit`` did: exit status, output, seconds, and its models folder."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    root: Path


def _fit_args(case: Case, case_dir: Path, cache: Path) -> list[str]:
    args = [
        "fit", "--config", CNN,
        "--data.data_dir", str(case_dir / case.data_dir),
        "--data.cache_dir", str(cache),
        "--data.window", str(WINDOW), "--data.hop", "128",
        "--data.n_fft", "64", "--data.hop_length", "16", "--data.f_max", "null",
        "--data.batch_size", "32",
        "--model.init_args.widths", "[4, 8]",
        "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(case_dir / "models"),
        "--report.enabled", "false",
        "--run_name", "run",
    ]  # fmt: skip
    if case.name == "manifest_given_but_missing":
        args += ["--data.manifest", "list.csv"]
    return args


def _prepare(case: Case, tmp: Path) -> Path:
    case_dir = tmp / case.name
    data = case_dir / "data"
    arrays = make_base(data)
    case.build(data, arrays)
    return case_dir


def run_in_process(case: Case, tmp: Path, cache: Path) -> Outcome:
    """Build the case's dataset and run ``main(["fit", ...])`` on it, capturing the output."""
    case_dir = _prepare(case, tmp)
    out, err = StringIO(), StringIO()
    code = 0
    start = time.perf_counter()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(_fit_args(case, case_dir, cache))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Outcome(
        code, out.getvalue(), err.getvalue(), time.perf_counter() - start, case_dir / "models"
    )


def run_subprocess(case: Case, tmp: Path, cache: Path) -> Outcome:
    """The same through ``python -m damage_lightning fit`` in a fresh interpreter."""
    case_dir = _prepare(case, tmp)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "damage_lightning", *_fit_args(case, case_dir, cache)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    return Outcome(
        res.returncode, res.stdout, res.stderr, time.perf_counter() - start, case_dir / "models"
    )


def check_rejected(case: Case, out: Outcome, max_seconds: float) -> None:
    """Exit status 2, one message naming the file and the reason, nothing trained or saved."""
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout
    message = out.stderr[out.stderr.index("error: ") :]
    for text in case.names:
        assert text in message, message
    assert out.seconds < max_seconds
    if out.root.exists():
        assert not list(out.root.rglob("*.ckpt"))
        assert not list(out.root.rglob("training_history.json"))


def test_corpus_is_large_enough():
    kinds = {c.name for c in CASES}
    assert len(kinds) >= 30
    assert sum(c.expect == "error" for c in CASES) >= 20


ERRORS = [
    pytest.param(c, id=c.name, marks=[pytest.mark.skip(reason=c.skip)] if c.skip else [])
    for c in CASES
    if c.expect == "error"
]
VALID = [pytest.param(c, id=c.name) for c in CASES if c.expect == "valid"]
CASE = {c.name: c for c in CASES}


@pytest.mark.parametrize("case", ERRORS)
def test_bad_input_is_rejected(case: Case, tmp_path: Path, cache_dir: Path):
    check_rejected(case, run_in_process(case, tmp_path, cache_dir), MAX_IN_PROCESS_SECONDS)


@pytest.mark.slow
def test_bad_input_rejected_by_the_command_line(tmp_path: Path, cache_dir: Path):
    # The in-process checks above, confirmed through the real entry point for a sample of kinds
    # (a fresh interpreter spends most of its time importing torch and Lightning).
    sample = [CASE[n] for n in ("binary_named_csv", "manifest_dotdot_path")]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        outcomes = list(pool.map(lambda c: run_subprocess(c, tmp_path, cache_dir), sample))
    for case, out in zip(sample, outcomes, strict=True):
        check_rejected(case, out, MAX_SUBPROCESS_SECONDS)


@pytest.mark.slow
@pytest.mark.parametrize("case", VALID)
def test_unusual_but_valid_input_trains(case: Case, tmp_path: Path, cache_dir: Path):
    out = run_in_process(case, tmp_path, cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    run = out.root / "run"
    info = json.loads((run / "model_info.json").read_text(encoding="utf-8"))
    assert info["data"]["n_recordings"] == 9
    assert (run / "checkpoints" / "best.ckpt").is_file()
    warnings = info["data"]["warnings"]
    if case.warning is None:
        assert warnings == []
    else:
        assert any(w.startswith(case.warning) for w in warnings), warnings
        # Printed too, so the user sees it without opening model_info.json.
        assert f"data warning: {case.warning}" in out.stderr
    if case.name == "unicode_names":
        assert "fissuré_裂纹" in info["classes"]
        splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
        assert "fissuré_裂纹/messung_ä_0.csv" in {r["path"] for r in splits["recordings"]}
    if case.name == "empty_label_folder":
        assert "rusted" not in info["classes"]
