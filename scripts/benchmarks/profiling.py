"""Where one training epoch's time goes: ours and the plain loop under ``cProfile``.

``--profile DIR`` (with the ``train`` section): after the measurements, one epoch of our
``Trainer.fit`` (from the epoch's start to the end of training: training, validation, checkpoint
and history writes) and one epoch of the plain loop run under ``cProfile``; each writes
``DIR/profile_<side>_<model>.txt`` (the top functions by own time and by cumulative time), and the
record ``train_profile_<model>`` lists the top entries of both by own time. cProfile slows
Python-heavy code more than the C++ kernels, so it shows where ours spends time the plain loop
does not, not exact shares; ``py-spy`` samples without that bias (docs/benchmarks.md).
"""

from __future__ import annotations

import cProfile
import io
import pstats
from dataclasses import replace
from pathlib import Path
from typing import Any

from .common import Recorder, rounded
from .training import TrainSetup, run_ours, run_plain

TOP = 25


def _epoch_profiler() -> tuple[Any, cProfile.Profile]:
    """A Lightning callback that profiles from the epoch's start to the end of training."""
    from lightning.pytorch.callbacks import Callback

    profile = cProfile.Profile()

    class _Profile(Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            profile.enable()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            profile.disable()

    return _Profile(), profile


def _top(profile: cProfile.Profile, path: Path) -> tuple[float, list[list[Any]]]:
    """Write the report to ``path``; return the total and the top entries by own time."""
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    for key in ("tottime", "cumulative"):
        text.write(f"==== sorted by {key} ====\n")
        stats.sort_stats(key).print_stats(TOP)
    path.write_text(text.getvalue())
    total = stats.total_tt
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP]
    top = [[f"{Path(file).name}:{line}({func})", rounded(tt, 4), rounded(tt / total, 4), calls]
           for (file, line, func), (_, calls, tt, _, _) in entries]  # fmt: skip
    return total, top


def profile_train(rec: Recorder, setup: TrainSetup, kinds: list[str], out_dir: Path) -> None:
    """One profiled epoch of ours and of the plain loop per model (eager)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    one = replace(setup, size=replace(setup.size, epochs=1))
    for kind in kinds:
        callback, ours_profile = _epoch_profiler()
        (ours_wall, _), _ = run_ours(one, kind, False, extra_callbacks=[callback])
        plain_profile = cProfile.Profile()
        plain_wall, _ = run_plain(one, kind, False, profiler=plain_profile)
        sides = {}
        for side, profile, wall in (("ours", ours_profile, ours_wall),
                                    ("plain", plain_profile, plain_wall)):  # fmt: skip
            path = out_dir / f"profile_{side}_{kind}.txt"
            total, top = _top(profile, path)
            sides[side] = {"file": str(path), "epoch_s_profiled": rounded(wall[0], 3),
                           "profiled_s": rounded(total, 3), "top_by_own_time": top}  # fmt: skip
        rec.emit(f"train_profile_{kind}", None, "", setup.params(kind, False), **sides,
                 columns=["function", "own_s", "share_of_profiled", "calls"])  # fmt: skip
