"""scripts/benchmark.py: the tiny configuration runs every code path and writes valid records."""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark.py"
REQUIRED = {"name", "device", "value", "unit", "target", "met", "params"}


def _bench_module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A module of the benchmarks package beside the script (``scripts/benchmarks/<name>.py``)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module(f"benchmarks.{name}")


def _by_name(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["name"], []).append(r)
    return out


@pytest.mark.slow
def test_tiny_run_measures_every_section(tmp_path: Path) -> None:
    out_file = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--models", "cnn",
         "--workdir", str(tmp_path / "work"), "--output", str(out_file)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # stdout is JSON lines only (library prints go to stderr), identical to --output.
    lines = proc.stdout.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert out_file.read_text().strip().splitlines() == lines
    for r in records:
        assert REQUIRED <= r.keys(), r
        assert "error" not in r, r
    names = _by_name(records)

    # Ingest: cold and warm for the generated data, in MB/s against the targets.
    cold = [r for r in names["ingest_cold"] if r["params"]["dataset"] == "generated"]
    warm = [r for r in names["ingest_warm"] if r["params"]["dataset"] == "generated"]
    assert cold[0]["target"] == 250.0 and warm[0]["target"] == 1000.0
    for r in (*cold, *warm):
        assert r["unit"] == "MB/s" and r["value"] > 0 and r["peak_rss_mb"] > 0
        assert r["met"] == (r["value"] >= r["target"])
    cwru = REPO.parent / "shared" / "data" / "cwru_0hp_10class"
    if cwru.is_dir():
        assert any(r["params"]["dataset"] == "cwru_0hp_10class" for r in names["ingest_cold"])
    else:
        assert names["ingest_cwru"][0]["skipped"] is True

    assert names["frontend_windows_per_s"][0]["value"] > 0
    assert names["frontend_windows_per_s"][0]["params"]["output_shape"] == [1, 2, 64, 65]

    # Training: ours vs plain interleaved in pairs, eager and compiled, with the GPU's settings
    # at size tiny.
    for tag, target in (("cnn", 0.97), ("cnn_compiled", 0.90)):
        ours = names[f"train_ours_{tag}"][0]
        plain = names[f"train_plain_{tag}"][0]
        params = ours["params"]
        pairs = params["pairs_measured"]
        assert pairs == params["pairs"] == 2
        # Both sides train the same windows for the same epochs in every run (a compiled run
        # has one more, excluded: it compiles in its first step).
        epochs = params["epochs"] + params["warmup_epochs"]
        assert params["warmup_epochs"] == (1 if tag.endswith("compiled") else 0)
        for side in (ours, plain):
            assert len(side["runs_windows_per_s"]) == len(side["epoch_seconds"]) == pairs
            assert [len(e) for e in side["epoch_seconds"]] == [epochs] * pairs
            assert [len(e) for e in side["epoch_cpu_seconds"]] == [epochs] * pairs
        for name in ("train_ratio_ours_plain", "train_cpu_ratio_ours_plain"):
            ratio = names[f"{name}_{tag}"][0]
            assert ratio["target"] == target and ratio["met"] == (ratio["value"] >= target)
            assert len(ratio["pairs"]) == pairs
            assert ratio["min"] <= ratio["iqr"][0] <= ratio["value"] <= ratio["iqr"][1]
            assert ratio["iqr"][1] <= ratio["max"] and ratio["value"] == ratio["median"]
        wall = names[f"train_ratio_ours_plain_{tag}"][0]["pairs"]
        runs = zip(ours["runs_windows_per_s"], plain["runs_windows_per_s"], strict=True)
        got = [o / p for o, p in runs]
        assert wall == pytest.approx(got, rel=1e-2)
        # The A/A noise floor: each side's second run against its first.
        noise = names[f"train_ratio_ours_plain_{tag}"][0]["noise_floor"]
        same = [s["runs_windows_per_s"][1] / s["runs_windows_per_s"][0] for s in (ours, plain)]
        assert noise["ratios"] == pytest.approx(same, rel=1e-2)
        assert noise["median_abs_dev"] == pytest.approx(
            sorted(abs(r - 1) for r in same)[0] / 2 + sorted(abs(r - 1) for r in same)[1] / 2,
            abs=2e-3,
        )
        assert params["precision"] == "bf16-mixed" and params["channels_last"] is True
        assert params["compile"] == tag.endswith("compiled")
        assert params["train_windows_per_epoch"] > 0 and params["input_shape"] == [2, 64, 65]

    # Keras was not requested: a clear skip, not a silent gap.
    assert names["train_keras"][0]["skipped"] is True

    # Inference: three runtimes, batch-1 percentiles and batch throughput.
    for runtime in ("eager", "torchscript", "onnxruntime"):
        lat = names[f"inference_cnn_{runtime}_batch1_latency"][0]
        assert 0 < lat["p50_ms"] <= lat["p99_ms"]
        assert names[f"inference_cnn_{runtime}_batch8_throughput"][0]["value"] > 0
    ort_lat = names["inference_cnn_onnxruntime_batch1_latency"][0]
    eager_lat = names["inference_cnn_eager_batch1_latency"][0]
    assert ort_lat["met"] == (ort_lat["p50_ms"] <= eager_lat["p50_ms"])

    # The gateway: the torch-free predictor in fresh processes, float and int8.
    for model in ("float_torch_stft", "float_conv", "int8_conv"):
        speed = names[f"gateway_{model}_windows_per_s"][0]
        assert speed["value"] > 0 and speed["torch_imported"] is False
        assert speed["params"]["windows"] == (60_000 - 1024) // 512 + 1
        memory = names[f"gateway_{model}_peak_memory"][0]
        assert memory["value"] >= memory["baseline_mb"] > 50
        assert names[f"gateway_{model}_scoring_memory"][0]["met"] in (True, False)
    speedup = names["gateway_int8_speedup"][0]
    assert speedup["target"] == 1.0 and speedup["met"] == (speedup["value"] >= 1.0)

    # End to end: the CLI's fit ran in a subprocess; wall time and the child's own peak RSS.
    e2e = names["e2e_fit_wall"][0]
    assert e2e["value"] > 0 and e2e["params"]["epochs_run"] == 1
    assert "fit --config configs/cnn.yaml" in e2e["params"]["command"]
    assert names["e2e_fit_peak_rss"][0]["value"] > 50
    assert names["total_wall"][0]["params"]["failed_sections"] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_fails_clearly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cuda", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and "--device cuda" in message[0] and "--device cpu" in message[0]
    # Nothing was generated before the check.
    assert not any(tmp_path.iterdir())


def test_keras_without_tensorflow_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    vs_keras = _bench_module("vs_keras", monkeypatch)
    exe, reason = vs_keras.find_keras_python(sys.executable)
    if exe is not None:
        pytest.skip("this interpreter has tensorflow")
    assert "tensorflow" in reason and "--keras-python" in reason and "bench" in reason


def test_sizes_keep_the_measured_models_and_input(monkeypatch: pytest.MonkeyPatch) -> None:
    common = _bench_module("common", monkeypatch)
    training = _bench_module("training", monkeypatch)
    for device in ("cpu", "cuda"):
        for name in ("quick", "full"):
            size = common.size_for(name, device)
            # Targets are never met by shrinking the work: real widths, an 8-block ResNet.
            assert size.cnn_widths == (32, 64, 128, 256)
            assert size.resnet_widths == (32, 64, 128, 256)
            assert sum(size.resnet_blocks) == 8
            # At least five measured pairs of interleaved runs, every epoch measured.
            assert size.pairs >= 5 and size.epochs >= 1
            assert size.gateway_seconds == 3600.0
    assert common.size_for("full", "cuda").batch_size == 1024
    assert common.size_for("quick", "cpu").frontend_batch == 256
    assert common.size_for("full", "cuda").frontend_batch == 1024
    # The hop aims at the wanted number of training windows, within one window's reach.
    hop = training.hop_for(1_000_000, 32, 2048)
    assert 256 <= hop <= 4 * common.WINDOW and hop % 256 == 0


def test_spent_time_budget_skips_sections_with_a_reason(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--only", "frontend,train,e2e",
         "--time-budget", "0.001", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = _by_name([json.loads(line) for line in proc.stdout.strip().splitlines()])
    for name in ("frontend_windows_per_s", "train", "e2e_fit_wall"):
        assert names[name][0]["skipped"] is True
        assert "--time-budget" in names[name][0]["reason"]
    assert "train_ours_cnn" not in names


@pytest.mark.slow
def test_ingest_in_process_times_every_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = _bench_module("dataset", monkeypatch)
    folder = dataset.generate_dataset(tmp_path / "csv", 1.0)
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "ingest_in_process", "--ingest-folder", str(folder),
         "--ingest-repeats", "2", "--ingest-channels", "sensor_a,sensor_b", "--workdir", str(work)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    ingest = [r for r in records if r["name"].startswith("ingest")]
    phases = ("first_cold", "cold", "warm", "no_cache")
    assert [r["name"] for r in ingest] == [f"ingest_in_process_{p}" for p in phases]
    # Two repeats: one first cold load, one more cold, two warm and two without a cache.
    assert [len(r["all_mb_per_s"]) for r in ingest] == [1, 1, 2, 2]
    targets = {"ingest_in_process_cold": 250.0, "ingest_in_process_warm": 1000.0}
    for r in ingest:
        assert r["unit"] == "MB/s" and r["value"] == max(r["all_mb_per_s"]) > 0
        assert r["median_mb_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["target"] == targets.get(r["name"])
        assert r["met"] == (None if r["target"] is None else r["value"] >= r["target"])
        assert r["params"]["files"] == 32 and r["params"]["fresh_process_per_phase"] is False
        assert r["params"]["channels"] == ["sensor_a", "sensor_b"]
    # The optional section reads only its folder: no generated dataset was written.
    assert not list(work.glob("generated-*"))


@pytest.mark.slow
def test_novelty_section_records_detection_against_the_reference(tmp_path: Path) -> None:
    env = {**os.environ, "DAMAGE_LIGHTNING_SHARED_DATA": str(tmp_path / "no-shared-data")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--only", "novelty",
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = _by_name([json.loads(line) for line in proc.stdout.strip().splitlines()])
    far = names["novelty_monitoring_recording_false_alarm_rate"][0]
    assert far["target"] == 0.01 and far["met"] == (far["value"] <= 0.01)
    for name in ("stiffness_loss_10", "stiffness_loss_20", "bumper_contact"):
        record = names[f"novelty_monitoring_recording_detection_{name}"][0]
        assert record["target"] == 0.95
        assert names[f"novelty_monitoring_vs_reference_{name}"][0]["params"]["reference"] >= 0
    assert names["novelty_monitoring_recording_detection_stiffness_loss_05"][0]["target"] is None
    # Without the real data (and at the tiny size) CWRU and UESTC say why they did not run.
    assert names["novelty_cwru_faults_alarmed"][0]["skipped"] is True
    assert names["novelty_uestc"][0]["skipped"] is True


def _tiny_section(section: str, workdir: Path) -> dict[str, list[dict]]:
    """The records of one optional section at size tiny on the CPU, by name."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--only", section,
         "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _by_name([json.loads(line) for line in proc.stdout.strip().splitlines()])


def test_options_section_times_every_option_against_the_plain_stft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = _bench_module("options", monkeypatch)
    OPTIONS, NO_TARGET, TARGET = options.OPTIONS, options.NO_TARGET, options.TARGET

    names = _tiny_section("options", tmp_path / "work")
    assert names["option_step_plain_ms"][0]["value"] > 0
    for option, settings in OPTIONS.items():
        record = names[f"option_cost_{option}"][0]
        assert record["value"] > 0
        assert record["params"]["options"] == {
            k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()
        }
        if option in NO_TARGET:
            assert record["target"] is None and record["met"] is None
        else:
            assert record["target"] == TARGET and record["met"] == (record["value"] <= TARGET)
    # The envelope front end changes the network's input; the augmentations do not.
    assert names["option_cost_envelope"][0]["params"]["input_shape"] != [2, 129, 65]
    assert names["option_cost_augment_all"][0]["params"]["input_shape"] == [2, 129, 65]


def test_heap_section_times_steps_with_and_without_the_heap_kept(tmp_path: Path) -> None:
    names = _tiny_section("heap", tmp_path / "work")
    for kind in ("cnn", "resnet"):
        record = names[f"train_step_heap_speedup_{kind}"][0]
        rounds = record["rounds_wall"]
        assert len(rounds) == record["params"]["rounds"] == 2
        assert record["value"] == pytest.approx(statistics.median(rounds), abs=1e-3)
        assert set(record["step_ms"]) == set(record["page_faults_per_step"]) == {"system", "kept"}
        assert all(v > 0 for v in record["step_ms"].values())
    assert not list((tmp_path / "work").glob("generated-*"))
