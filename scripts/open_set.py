"""Hold one class out of training, in turn: do its recordings come back ``unknown``?

For each class of the built-in dataset (or ``--data DIR``, folder per class) this trains the
default CNN on the other classes (``runner.run_training``, the CLI's ``fit``), then decides
every recording of the held-out class with the exported model (``runner.run_prediction``, the
gateway's code) and reads the known classes' test recordings from the model card. For a range
of abstain floors it prints the share of held-out recordings that come back unknown and the
share of known-class test recordings that do (the false "unknown" rate), and writes both as
JSON. The floor acts on the calibrated recording confidence, so no model is retrained per floor.

    python scripts/open_set.py --out open_set_runs            # every class in turn
    python scripts/open_set.py --out runs --classes undamaged --epochs 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

FLOORS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def _subset(data: Path, keep: list[str], out: Path) -> Path:
    """A view of ``data`` with only the ``keep`` classes: class folders linked, manifest cut."""
    import pandas as pd

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in keep:
        (out / name).symlink_to((data / name).resolve(), target_is_directory=True)
    if (data / "manifest.csv").is_file():
        manifest = pd.read_csv(data / "manifest.csv")
        manifest[manifest["label"].isin(keep)].to_csv(out / "manifest.csv", index=False)
    return out


def hold_out(
    data: Path, held: str, classes: list[str], out: Path, epochs: int | None, gate: bool
) -> dict:
    """Train without ``held``; the recording confidences of held-out and known test recordings."""
    from damage_lightning.card import ModelCard
    from damage_lightning.runner import run_prediction, run_training

    known = [c for c in classes if c != held]
    subset = _subset(data, known, out / f"data_without_{held}")
    overrides = {"report.enabled": False, "model.init_args.abstain_distance": gate}
    if epochs is not None:
        overrides["trainer.max_epochs"] = epochs
    result = run_training(subset, out / "models", run_name=f"without_{held}", **overrides)
    held_pred = run_prediction(result.onnx_path, data / held)  # not one of them was trained on
    card = ModelCard.read(result.model_info_path)
    table = card.test_metrics.recording.table
    threshold = card.test_metrics.recording.recording.distance_threshold
    return {
        "held_out": held,
        "run_dir": str(result.run_dir),
        "temperature": card.test_metrics.calibration.temperature,
        "known_test_accuracy": card.test_metrics.recording.recording.accuracy,
        "held_out_confidence": held_pred.recordings["confidence"].tolist(),
        "held_out_predicted": held_pred.recordings["predicted_label"].tolist(),
        "known_confidence": [r.confidence for r in table],
        "known_correct": [r.correct for r in table],
        "held_out_unknown_by_distance": _far(held_pred.recordings),
        "known_unknown_by_distance": [
            bool(r.distance is not None and r.distance > (threshold or float("inf"))) for r in table
        ],
    }


def _far(frame) -> list[bool]:
    # The gate's own verdict on each held-out recording (without any probability floor).
    if "distance" not in frame:
        return []
    return [bool(d) for d in frame["decision"].eq("unknown") & frame["distance"].notna()]


def summarise(results: list[dict], floors: tuple[float, ...] = FLOORS) -> list[dict]:
    """Per floor: held-out unknown share per class and the known classes' unknown share."""
    rows = []
    for floor in floors:
        row = {"floor": floor}
        known_unknown = []
        for r in results:
            row[r["held_out"]] = float(np.mean(np.asarray(r["held_out_confidence"]) < floor))
            known_unknown += list(np.asarray(r["known_confidence"]) < floor)
        row["known_unknown"] = float(np.mean(known_unknown))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="folder per class (default: built-in)"
    )
    parser.add_argument("--out", type=Path, required=True, help="work folder for runs and results")
    parser.add_argument(
        "--classes", nargs="*", default=None, help="classes to hold out (default: all)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="max epochs (default: the config's)"
    )
    parser.add_argument(
        "--distance", action="store_true", help="also fit the feature-distance gate"
    )
    args = parser.parse_args(argv)
    if args.data is None:
        from damage_lightning.data.synthetic import default_dataset_dir

        data = default_dataset_dir()
    else:
        data = args.data
    classes = sorted(
        p.name for p in Path(data).iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    held = args.classes or classes
    args.out.mkdir(parents=True, exist_ok=True)
    results = [hold_out(Path(data), h, classes, args.out, args.epochs, args.distance) for h in held]
    rows = summarise(results)
    (args.out / "open_set.json").write_text(json.dumps({"runs": results, "floors": rows}, indent=2))
    header = ["floor", *[r["held_out"] for r in results], "known_unknown"]
    print("share of recordings that come back unknown (held-out class; known test classes)")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[h]:.2f}" if h != "floor" else f"{row[h]:g}" for h in header))
    if args.distance:
        print("distance gate alone: share unknown (held-out class; known test classes)")
        for r in results:
            held_share = float(np.mean(r["held_out_unknown_by_distance"]))
            known_share = float(np.mean(r["known_unknown_by_distance"]))
            print(f"  {r['held_out']}: {held_share:.2f}; known {known_share:.2f}")
    for r in results:
        accuracy, t = r["known_test_accuracy"], r["temperature"]
        print(f"without {r['held_out']}: known test recording accuracy {accuracy:.3f}, T {t:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
