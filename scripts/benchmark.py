"""Measure damage_lightning's speed against its targets: CSV ingest, front end, training, inference.

One command, one JSON object per measurement on stdout (and in ``--output``). Every record has
``name``, ``device``, ``value``, ``unit``, ``target``, ``met`` and ``params``. Ratios are measured
in the same process and run, so they compare like with like. Each benchmark is a module of
``scripts/benchmarks/`` (its docstring says what it measures and its targets); this file is the
command line that runs them. Figures and their meaning: ``docs/benchmarks.md``.

    python scripts/benchmark.py --quick --output cpu.jsonl        # CPU, a few minutes
    python scripts/benchmark.py --quick --vs-keras                # and the Keras stack we replace
    python scripts/benchmark.py --device cuda --output gpu.jsonl  # GPU, under 6 minutes
    python scripts/benchmark.py --device cpu --size tiny          # every code path, in seconds
    python scripts/benchmark.py --only ingest_in_process --ingest-repeats 3  # CWRU, one process
    python scripts/benchmark.py --quick --only train --profile prof/   # + one profiled epoch each
    python scripts/benchmark.py --only gateway                      # the predictor over 1 h of data
    python scripts/benchmark.py --only novelty --output novelty.jsonl  # issue 11, ~10 min CPU
    python scripts/benchmark.py --only generalisation --output cv.jsonl  # issue 10, cv on 3 sets
    python scripts/benchmark.py --only options       # issue 10, each option's training-step cost
    python scripts/benchmark.py --quick --only heap  # what keeping freed memory gains a CPU step

The Keras comparison runs in a subprocess of ``--keras-python`` (an interpreter with
``tensorflow``; default: this one when it can import tensorflow), so torch and TensorFlow never
share a process. This file and the benchmarks import only the standard library at their top for
that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# The benchmarks package beside this file, also when this file is loaded from elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import ingest
from benchmarks.common import (
    CHANNELS,
    CWRU_DIR,
    REPO,
    SAMPLE_RATE,
    WINDOW,
    Recorder,
    Size,
    rounded,
    size_for,
)
from benchmarks.dataset import N_RECORDINGS, generate_dataset, recording_rows
from benchmarks.e2e import bench_e2e
from benchmarks.frontend import bench_frontend
from benchmarks.gateway import bench_gateway
from benchmarks.gateway import child_main as gateway_child
from benchmarks.generalisation import PROTOCOLS, bench_generalisation
from benchmarks.heap import bench_heap
from benchmarks.inference import bench_inference
from benchmarks.novelty import bench_novelty
from benchmarks.options import bench_options
from benchmarks.profiling import profile_train
from benchmarks.training import (
    TrainSetup,
    bench_train,
    choose_memory_format,
    hop_for,
    prepare_training,
)
from benchmarks.vs_keras import bench_keras, keras_worker

SECTIONS = ("ingest", "frontend", "train", "keras", "inference", "gateway", "e2e")
# Sections that run only when ``--only`` names them.
OPTIONAL_SECTIONS = ("ingest_in_process", "novelty", "generalisation", "options", "heap")


def _environment(args: argparse.Namespace, size: Size, device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "argv": sys.argv[1:],
        "size": asdict(size),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Benchmark damage_lightning; prints one JSON object per measurement."
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", choices=("tiny", "quick", "full"), default=None,
                        help="amount of work (default: full; --quick is --size quick)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a CPU run of a few minutes")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="generated data, caches and runs (default: a folder under the "
                             "system temp dir, reused between runs)")  # fmt: skip
    parser.add_argument(
        "--ingest-gb",
        type=float,
        default=None,
        help="size of the generated CSV dataset in GB (default 1; quick 0.1)",
    )
    parser.add_argument(
        "--ingest-repeats",
        type=int,
        default=None,
        help="loads per ingest phase, the best being the figure (default: the size's; "
        f"ingest_in_process: {ingest.IN_PROCESS_REPEATS})",
    )
    parser.add_argument(
        "--ingest-folder",
        type=Path,
        default=None,
        help=f"ingest_in_process: the CSV folder (default: {CWRU_DIR})",
    )
    parser.add_argument(
        "--ingest-manifest", default=None, help="ingest_in_process: the folder's manifest, if any"
    )
    parser.add_argument(
        "--ingest-channels",
        default=None,
        help="ingest_in_process: comma list of channels (default: all)",
    )
    parser.add_argument(
        "--ingest-sample-rate",
        type=float,
        default=SAMPLE_RATE,
        help="ingest_in_process: sample rate in Hz (default: %(default)g)",
    )
    parser.add_argument(
        "--vs-keras", action="store_true", help="also train the same layers in Keras on the CPU"
    )
    parser.add_argument(
        "--keras-python",
        default=None,
        help="interpreter with tensorflow for --vs-keras (default: this one)",
    )
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="also measure torch.compile (default on for cuda and tiny)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default inductor; tiny: eager, which traces "
        "with dynamo but skips code generation, to test the code path fast)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds after which the remaining sections are skipped (and the "
        "end-to-end run stopped); default 330 for --device cuda, else none",
    )
    parser.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="memory format of ours and the plain loop: auto takes channels_last "
        "on a GPU and the faster one of a short probe on the CPU",
    )
    parser.add_argument(
        "--e2e",
        dest="e2e",
        action="store_true",
        default=None,
        help="run the default fit end to end (default: on, except --quick on cpu)",
    )
    parser.add_argument("--no-e2e", dest="e2e", action="store_false")
    parser.add_argument("--models", default="cnn,resnet", help="comma list of cnn, resnet")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="with the train section: also profile one epoch of ours and of the plain loop "
        "(cProfile) per model, writing the top entries to this folder",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma list of sections to run: {','.join(SECTIONS)} (the default), and "
        f"{','.join(OPTIONAL_SECTIONS)} (repeated loads in one process; novelty detection on "
        "the monitoring scenario, CWRU and UESTC; the cv protocols of issue 10; the training-step "
        "cost of each issue-10 option; what keeping freed memory gains a CPU training step)",
    )
    # Internal: an ingest measurement in a fresh process, and the Keras worker.
    parser.add_argument(
        "--cv-protocols",
        default=",".join(PROTOCOLS),
        help="generalisation: comma list of " + ", ".join(PROTOCOLS),
    )
    parser.add_argument(
        "--cv-config",
        default=None,
        help="generalisation: model config instead of each protocol's own (configs/bearing.yaml "
        "for the bearing sets, configs/cnn.yaml for the frame)",
    )
    parser.add_argument("--ingest-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keras-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gateway-child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _default_compile_backend(torch: Any, backend: str) -> None:
    """Make ``torch.compile`` (as called by the model's ``compile=True``) use ``backend``."""
    original = torch.compile

    def compile_with_backend(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("backend", backend)
        return original(*args, **kwargs)

    torch.compile = compile_with_backend


@contextlib.contextmanager
def _section(rec: Recorder, name: str, errors: list[str]) -> Iterator[None]:
    """Turn a failing section into an ``error`` record; the other sections still run."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:  # one broken measurement must not hide the others
        errors.append(name)
        rec.emit(f"{name}_error", None, "", {}, error=f"{type(exc).__name__}: {exc}")
    finally:
        print(f"[benchmark] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _run_ingest(rec: Recorder, args: argparse.Namespace, only: list[str], size: Size,
                workdir: Path, data_dir: Path, dm_cache: Path,
                errors: list[str]) -> None:  # fmt: skip
    """The ingest sections that ``only`` names; the generated data's cache feeds training."""
    if "ingest" in only:
        with _section(rec, "ingest_generated", errors):
            ingest.bench_ingest(rec, data_dir, "generated", dm_cache, size.ingest_repeats,
                                list(CHANNELS))  # fmt: skip
        if CWRU_DIR.is_dir():
            with _section(rec, "ingest_cwru", errors):
                ingest.bench_ingest(rec, CWRU_DIR, "cwru_0hp_10class", workdir / "cache-cwru",
                                    size.ingest_repeats, ["DE_accel", "FE_accel"])  # fmt: skip
        else:
            rec.skipped("ingest_cwru", f"{CWRU_DIR} is absent", {"path": str(CWRU_DIR)})
    if "ingest_in_process" in only:
        folder = (args.ingest_folder or CWRU_DIR).resolve()
        if not folder.is_dir():
            rec.skipped("ingest_in_process", f"{folder} is absent; give --ingest-folder",
                        {"path": str(folder)})  # fmt: skip
            return
        channels = args.ingest_channels.split(",") if args.ingest_channels else None
        repeats = ingest.IN_PROCESS_REPEATS if args.ingest_repeats is None else args.ingest_repeats
        with _section(rec, "ingest_in_process", errors):
            ingest.bench_ingest_in_process(rec, folder, folder.name, repeats,
                                           args.ingest_sample_rate, channels,
                                           args.ingest_manifest)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, 1 when a measurement failed, 2 on unusable arguments."""
    args = parse_args(argv)
    if args.keras_worker:
        return keras_worker(args.keras_worker)
    # The damage_lightning of this checkout, not an installed one.
    sys.path.insert(0, str(REPO))
    if args.ingest_child:
        return ingest.child_main(args.ingest_child)
    if args.gateway_child:
        return gateway_child(args.gateway_child)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"error: --device cuda: no CUDA GPU is usable here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}); run with --device cpu",
            file=sys.stderr,
        )
        return 2
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    protocols = [n.strip() for n in args.cv_protocols.split(",") if n.strip()]
    unknown = [s for s in only if s not in SECTIONS + OPTIONAL_SECTIONS] + [
        k for k in kinds if k not in ("cnn", "resnet")
    ]
    unknown += [n for n in protocols if n not in PROTOCOLS]
    if unknown:
        print(f"error: unknown section or model: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.ingest_folder is not None and not args.ingest_folder.is_dir():
        print(f"error: --ingest-folder {args.ingest_folder}: no such folder", file=sys.stderr)
        return 2
    if args.ingest_repeats is not None and args.ingest_repeats < 1:
        print(f"error: --ingest-repeats {args.ingest_repeats}: give 1 or more", file=sys.stderr)
        return 2
    size = size_for(args.size or ("quick" if args.quick else "full"), args.device)
    if args.ingest_gb is not None:
        size = replace(size, ingest_mb=args.ingest_gb * 1000.0)
    if args.ingest_repeats is not None:
        size = replace(size, ingest_repeats=args.ingest_repeats)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    tiny = size.name == "tiny"
    # The GPU's settings (bf16 autocast, channels_last, torch.compile) also run at size tiny, so
    # the test exercises the GPU code path on a CPU.
    gpu_like = args.device == "cuda" or tiny
    compile_modes = [False] + (
        [True] if (gpu_like if args.compile is None else args.compile) else []
    )
    backend = args.compile_backend or ("eager" if tiny else "inductor")
    if backend != "inductor" and True in compile_modes:
        _default_compile_backend(torch, backend)
    workdir = (args.workdir or Path(tempfile.gettempdir()) / "damage_lightning_bench").resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    real_stdout = sys.stdout
    rec = Recorder(real_stdout, args.output, args.device)
    errors: list[str] = []
    started = time.perf_counter()
    budget = args.time_budget or (330.0 if args.device == "cuda" else math.inf)
    deadline = started + budget

    def out_of_time(name: str) -> bool:
        if time.perf_counter() < deadline:
            return False
        rec.skipped(name, f"the time budget of {budget:g} s is spent (--time-budget)")
        return True

    # Library prints (Lightning's summaries) go to stderr; stdout carries only JSON lines.
    with contextlib.redirect_stdout(sys.stderr):
        rec.emit("environment", None, "", _environment(args, size, device))
        data_dir = workdir / f"generated-{size.ingest_mb:g}MB"
        dm_cache = workdir / f"cache-generated-{size.ingest_mb:g}MB"
        # The sections of the default run read the generated dataset; the optional ones and the
        # gateway (its own recording) do not.
        if not set(only) <= {*OPTIONAL_SECTIONS, "gateway"}:
            with _section(rec, "generate", errors):
                t0 = time.perf_counter()
                generate_dataset(data_dir, size.ingest_mb)
                print(f"[benchmark] dataset {data_dir} ready in {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)  # fmt: skip
        _run_ingest(rec, args, only, size, workdir, data_dir, dm_cache, errors)
        if "novelty" in only and not out_of_time("novelty"):
            with _section(rec, "novelty", errors):
                bench_novelty(rec, workdir, size)
        if "frontend" in only and not out_of_time("frontend_windows_per_s"):
            with _section(rec, "frontend", errors):
                bench_frontend(rec, device, size)

        setup = TrainSetup(
            data_dir=data_dir,
            cache_dir=dm_cache,
            hop=WINDOW,
            device=device,
            precision="bf16-mixed" if gpu_like else "32-true",
            channels_last={},
            size=size,
            run_root=workdir / "runs",
            compile_backend=backend,
        )
        ours: dict[str, float] = {}
        models: dict[str, Any] = {}
        needs_training = any(s in only for s in ("train", "keras", "inference"))
        if needs_training and not out_of_time("train"):
            with _section(rec, "train", errors):
                rows = recording_rows(size.ingest_mb)
                setup.hop = hop_for(rows, N_RECORDINGS, size.train_windows)
                prepare_training(setup)
                for kind in kinds:
                    mode = "on" if tiny and args.channels_last == "auto" else args.channels_last
                    choose_memory_format(setup, kind, mode)
                train_modes = compile_modes if "train" in only else [False]
                ours, models = bench_train(rec, setup, kinds, train_modes, deadline)
                if args.profile is not None and "train" in only:
                    profile_train(rec, setup, kinds, args.profile.resolve())
        if "keras" in only and not out_of_time("train_keras"):
            if not args.vs_keras:
                rec.skipped("train_keras", "not requested (--vs-keras)")
            elif args.device != "cpu":
                rec.skipped("train_keras", "the Keras comparison runs on the CPU: --device cpu")
            elif not ours:
                rec.skipped("train_keras", "needs our training figures, which did not run")
            else:
                with _section(rec, "keras", errors):
                    bench_keras(rec, setup, kinds, ours, args.keras_python)
        if "inference" in only and not out_of_time("inference"):
            if models:
                with _section(rec, "inference", errors):
                    bench_inference(rec, setup, models, workdir, size)
            else:
                rec.skipped("inference", "needs the trained models, which did not train")
        if "gateway" in only and not out_of_time("gateway"):
            with _section(rec, "gateway", errors):
                bench_gateway(rec, workdir, size.gateway_seconds)
        if "heap" in only and args.device == "cpu":
            with _section(rec, "heap", errors):
                bench_heap(rec, size, kinds, rounds=2 if tiny else 5, steps=1 if tiny else 4)
        elif "heap" in only:
            rec.skipped("train_step_heap_speedup", "the heap setting is for the CPU: --device cpu")
        if "options" in only:
            with _section(rec, "options", errors):
                bench_options(rec, rounds=1 if tiny else 5, steps=1 if tiny else 6)
        if "generalisation" in only:
            with _section(rec, "generalisation", errors):
                extra = ["--trainer.max_epochs", "2"] if tiny else []
                bench_generalisation(rec, workdir / "cv", protocols, args.cv_config, extra)
        run_e2e = size.e2e if args.e2e is None else args.e2e
        if "e2e" in only and not run_e2e:
            rec.skipped("e2e_fit_wall", "left out of --quick on the CPU (15-30 min); add --e2e")
        elif "e2e" in only and not out_of_time("e2e_fit_wall"):
            with _section(rec, "e2e", errors):
                bench_e2e(rec, workdir, size, args.device, data_dir, deadline)
        rec.emit("total_wall", rounded(time.perf_counter() - started, 1), "s",
                 {"failed_sections": errors})  # fmt: skip
    rec.close()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
