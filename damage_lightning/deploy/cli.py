"""``python -m damage_lightning.deploy MODEL DATA``: per-recording predictions on a gateway."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from damage_lightning.artifacts import atomic_write_bytes
from damage_lightning.errors import DataValidationError, Problem


def main(argv: list[str] | None = None, prog: str = "python -m damage_lightning.deploy") -> int:
    """Command line entry point; returns the exit code (2 for bad input, one line on stderr)."""
    from damage_lightning.deploy.predict import predict, to_csv_bytes
    from damage_lightning.io.readers.base import ReaderOptions

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Predict damage classes of recordings with an exported ONNX model "
        "(numpy, pandas, pyarrow and onnxruntime only).",
    )
    parser.add_argument("model", type=Path, help="exported model.onnx")
    parser.add_argument("data", type=Path, help="a recording, or a folder searched for recordings")
    parser.add_argument("--output", type=Path, help="per-recording CSV (default: stdout)")
    parser.add_argument("--windows", type=Path, help="also write one row per window here")
    parser.add_argument("--hop", type=int, help="step between windows (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per inference call")
    parser.add_argument(
        "--variables", nargs="+", help=".mat files: glob patterns of the variables to read"
    )
    parser.add_argument("--tdms-group", help=".tdms files: the group to read")
    parser.add_argument(
        "--rpm",
        type=float,
        help="shaft speed in rpm, for a model with order spectra (recordings whose manifest row "
        "gives its speed column use that)",
    )
    parser.add_argument(
        "--no-sensor-check",
        action="store_true",
        help="skip the sensor-health gate (by default windows overlapping a sensor fault are "
        "flagged and left out of the decision)",
    )
    args = parser.parse_args(argv)
    options = ReaderOptions(tuple(args.variables) if args.variables else None, args.tdms_group)
    try:
        result = predict(
            args.model,
            args.data,
            hop=args.hop,
            batch_size=args.batch_size,
            options=options,
            keep_windows=args.windows is not None,
            health=not args.no_sensor_check,
            rpm=args.rpm,
        )
        from damage_lightning.evaluation.health import finding_line

        for finding in result.findings:
            print(f"sensor health: {finding_line(finding)}", file=sys.stderr)
        text = to_csv_bytes(result.recordings)
        if args.windows is not None and result.windows is not None:
            _write(args.windows, to_csv_bytes(result.windows))
        if args.output is None:
            sys.stdout.write(text.decode("utf-8"))
        else:
            _write(args.output, text)
    except (DataValidationError, OSError) as exc:
        message = " ".join(str(exc).split())
        print(f"{Path(prog.split()[-1]).name}: error: {message}", file=sys.stderr)
        return 2
    return 0


def _write(path: Path, data: bytes) -> None:
    """Write an output CSV atomically; a path that cannot be written is named with the reason."""
    if path.is_dir():
        raise DataValidationError(Problem(str(path), "", "is a folder; give a file name"))
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            reason = "a file stands where its folder should be"
        problem = Problem(str(path), "", f"cannot write the CSV ({reason})")
        raise DataValidationError(problem) from exc
