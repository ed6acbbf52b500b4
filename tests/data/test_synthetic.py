"""Tests for the simulated shear-frame dataset: physics, integrators and the files on disk."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.integrate
import scipy.linalg
import scipy.signal

from damage_lightning.data import synthetic as syn
from damage_lightning.data.synthetic import (
    CHANNELS,
    CLASS_NAMES,
    ContactSpec,
    ShearFrame,
    base_excitation,
    default_dataset_dir,
    generate_dataset,
    main_synth,
    simulate_recording,
)

FS = 1024.0
REPO = Path(__file__).resolve().parents[2]


def _reference(frame: ShearFrame, base: np.ndarray, fs: float, contact=None, oversample=1):
    """Absolute floor accelerations (and contact force) by adaptive Runge-Kutta (DOP853).

    Independent of the package's integrator: it integrates
    ``M u'' + C u' + K u = -M 1 a_g + e f(u)`` directly, with the base acceleration linear between
    samples, and reports it on a grid ``oversample`` times finer than the samples.
    """
    n = frame.n_floors
    m_inv = np.linalg.inv(frame.mass_matrix())
    stiff, damp = frame.stiffness_matrix(), frame.damping_matrix()
    e = np.zeros(n)
    if contact is not None:
        e[contact.lower], e[contact.lower - 1] = 1.0, -1.0
    t_base = np.arange(base.size) / fs

    def force(u):
        if contact is None:
            return 0.0
        d = e @ u
        return -contact.stiffness * (d - np.clip(d, -contact.gap, contact.gap))

    a = np.block([[np.zeros((n, n)), np.eye(n)], [-m_inv @ stiff, -m_inv @ damp]])
    b_base = np.concatenate([np.zeros(n), -np.ones(n)])
    b_force = np.concatenate([np.zeros(n), m_inv @ e])
    slope = np.append(np.diff(base), 0.0) * fs

    def rhs(t, x):
        i = min(int(t * fs), base.size - 1)
        accel = base[i] + slope[i] * (t - t_base[i])  # linear between samples
        return a @ x + b_base * accel + b_force * force(x[:n])

    t_eval = np.arange((base.size - 1) * oversample + 1) / (fs * oversample)
    sol = scipy.integrate.solve_ivp(
        rhs,
        (0.0, t_eval[-1]),
        np.zeros(2 * n),
        method="DOP853",
        t_eval=t_eval,
        rtol=1e-9,
        atol=1e-15,
        max_step=1.0 / fs,
    )
    assert sol.success
    u, v = sol.y[:n], sol.y[n:]
    f = np.array([force(u[:, i]) for i in range(u.shape[1])])
    return m_inv @ (-stiff @ u - damp @ v) + np.outer(m_inv @ e, f), f


def _rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


# ------------------------------------------------------------------------------------------------
# Physics of the frame


def test_natural_frequencies_match_independent_eigensolutions():
    frame = syn.nominal_frame()
    lam = np.linalg.eigvals(np.linalg.inv(frame.mass_matrix()) @ frame.stiffness_matrix())
    expected = np.sort(np.sqrt(lam.real)) / (2 * np.pi)
    np.testing.assert_allclose(frame.natural_frequencies(), expected, rtol=1e-10)
    assert np.all(np.diff(frame.natural_frequencies()) > 0)

    k, m = 1.7e5, 5.6  # one story: sqrt(k/m) / 2 pi
    np.testing.assert_allclose(
        ShearFrame([m], [k]).natural_frequencies(), [np.sqrt(k / m) / (2 * np.pi)], rtol=1e-12
    )
    # Two equal stories: omega^2 = k/m (3 -+ sqrt 5) / 2.
    two = ShearFrame([m, m], [k, k]).natural_frequencies()
    analytic = np.sqrt(k / m * (3 - np.array([1, -1]) * np.sqrt(5)) / 2) / (2 * np.pi)
    np.testing.assert_allclose(two, analytic, rtol=1e-12)


def test_nominal_modes_are_plausible_and_well_inside_nyquist():
    freqs = syn.nominal_frame().natural_frequencies()
    assert freqs.size == 3 and 20 < freqs[0] and freqs[-1] < 0.5 * FS / 2


@pytest.mark.parametrize("story", [1, 2, 3])
def test_stiffness_loss_lowers_the_natural_frequencies(story):
    nominal = syn.nominal_frame()
    k = nominal.stiffnesses.copy()
    k[story - 1] *= 0.8
    damaged = ShearFrame(nominal.masses, k).natural_frequencies()
    healthy = nominal.natural_frequencies()
    assert np.all(damaged <= healthy * (1 + 1e-12))
    assert damaged[0] < healthy[0] * 0.995


def test_nuisance_variation_acts_as_physics_says():
    nominal = syn.nominal_frame()
    # A global stiffness change scales every frequency by sqrt(1 + drift): no change in shape.
    drifted = ShearFrame(nominal.masses, nominal.stiffnesses * 1.05)
    np.testing.assert_allclose(
        drifted.natural_frequencies(), nominal.natural_frequencies() * np.sqrt(1.05), rtol=1e-10
    )
    heavier = nominal.masses.copy()
    heavier[1] *= 1.1
    assert np.all(
        ShearFrame(heavier, nominal.stiffnesses).natural_frequencies()
        < nominal.natural_frequencies()
    )


def test_rayleigh_damping_gives_the_target_ratio_at_modes_1_and_2():
    frame = ShearFrame([5.8, 5.6, 5.4], [4e6, 3.5e6, 3e6], damping_ratio=0.02)
    omega2, phi = scipy.linalg.eigh(frame.stiffness_matrix(), frame.mass_matrix())
    omega = np.sqrt(omega2)
    modal = np.einsum("ji,jk,ki->i", phi, frame.damping_matrix(), phi)  # phi is mass-normalised
    zeta = modal / (2 * omega)
    np.testing.assert_allclose(zeta[:2], 0.02, rtol=1e-10)
    assert zeta[2] > 0.02  # Rayleigh damping grows above the second mode
    # The same ratios from the complex eigenvalues of the first-order system.
    n = 3
    m_inv = np.linalg.inv(frame.mass_matrix())
    a = np.block(
        [
            [np.zeros((n, n)), np.eye(n)],
            [-m_inv @ frame.stiffness_matrix(), -m_inv @ frame.damping_matrix()],
        ]
    )
    lam = np.linalg.eigvals(a)
    lam = lam[lam.imag > 0][np.argsort(np.abs(lam[lam.imag > 0]))]
    np.testing.assert_allclose(-lam.real[:2] / np.abs(lam[:2]), 0.02, rtol=1e-8)
    # A one-story frame matches its only mode.
    single = ShearFrame([5.0], [2e5], damping_ratio=0.03)
    c = single.damping_matrix()[0, 0]
    np.testing.assert_allclose(c / (2 * np.sqrt(2e5 * 5.0)), 0.03, rtol=1e-12)


def test_response_spectrum_peaks_at_the_natural_frequencies():
    frame = syn.nominal_frame()
    base = base_excitation(32768, FS, np.random.default_rng(0), band=(5.0, 450.0))
    floors = frame.simulate(base, FS)
    freq, psd = scipy.signal.welch(floors, fs=FS, nperseg=2048)
    peaks, _ = scipy.signal.find_peaks(np.log(psd.sum(axis=0)), prominence=1.0)
    expected = frame.natural_frequencies()
    assert len(peaks) == 3
    np.testing.assert_allclose(freq[peaks], expected, rtol=0.02)


# ------------------------------------------------------------------------------------------------
# Integration accuracy


def test_exact_discretisation_matches_independent_integrations():
    frame = syn.nominal_frame()
    base = base_excitation(200, FS, np.random.default_rng(1))
    base[0] = 0.0  # both conventions then start from rest with zero input
    ours = frame.simulate(base, FS)
    reference, _ = _reference(frame, base, FS)
    scale = np.abs(reference).max()
    assert np.abs(ours - reference).max() < 1e-6 * scale

    # And against scipy's own first-order-hold discretisation of the same state space.
    n = 3
    m_inv = np.linalg.inv(frame.mass_matrix())
    kk, cc = m_inv @ frame.stiffness_matrix(), m_inv @ frame.damping_matrix()
    a = np.block([[np.zeros((n, n)), np.eye(n)], [-kk, -cc]])
    b = np.concatenate([np.zeros(n), -np.ones(n)])[:, None]
    discrete = scipy.signal.cont2discrete(
        (a, b, np.hstack([-kk, -cc]), np.zeros((n, 1))), 1 / FS, "foh"
    )
    _, y, _ = scipy.signal.dlsim(discrete, base)
    assert np.abs(ours - y.T).max() < 1e-8 * scale


def test_contact_with_a_huge_gap_equals_the_linear_frame():
    frame = syn.nominal_frame()
    base = base_excitation(1024, FS, np.random.default_rng(2))
    linear = frame.simulate(base, FS)
    never = frame.simulate(base, FS, ContactSpec(gap=1.0, stiffness=1.2e7))  # 1 m: never touches
    np.testing.assert_allclose(never, linear, rtol=0, atol=1e-12 * np.abs(linear).max())


def test_contact_with_a_small_gap_shows_impacts():
    frame = syn.nominal_frame()
    base = base_excitation(2048, FS, np.random.default_rng(3))
    linear = frame.simulate(base, FS)
    drift_rms = np.sqrt(np.mean(frame.drift_response(base, FS) ** 2))
    contact = frame.simulate(base, FS, ContactSpec(gap=0.8 * drift_rms, stiffness=1.2e7))
    assert np.all(np.isfinite(contact))
    assert _rel_rms(contact, linear) > 0.3
    # Impacts put energy above the excitation band (350 Hz), where the linear frame has none.
    freq, p_contact = scipy.signal.welch(contact, fs=FS, nperseg=512)
    _, p_linear = scipy.signal.welch(linear, fs=FS, nperseg=512)
    high = freq > 400
    assert np.all(p_contact[1:, high].sum(axis=1) > 100 * p_linear[1:, high].sum(axis=1))


@pytest.mark.parametrize(
    ("masses", "stiffnesses", "lower"),
    [((5.8, 5.6, 5.4), (4e6, 4e6, 4e6), 2), ((6.0, 5.0), (3e6, 2e6), 1)],
    ids=["three-story", "two-story"],
)
def test_contact_integration_matches_adaptive_runge_kutta(masses, stiffnesses, lower):
    frame = ShearFrame(np.array(masses), np.array(stiffnesses))
    base = base_excitation(192, FS, np.random.default_rng(4))
    drift_rms = np.sqrt(np.mean(frame.drift_response(base, FS, lower=lower) ** 2))
    contact = ContactSpec(gap=0.8 * drift_rms, stiffness=3 * stiffnesses[0], lower=lower)
    ours = frame.simulate(base, FS, contact, oversample=10)
    fine, force = _reference(frame, base, FS, contact, oversample=10)
    assert np.mean(force != 0) > 0.05  # contacts really happen
    reference = scipy.signal.resample_poly(fine, 1, 10, axis=1)[:, : base.size]
    inner = slice(32, -32)  # the decimation filter's edges differ from the exact linear part
    error = _rel_rms(ours[:, inner], reference[:, inner])
    assert error < 0.02


# ------------------------------------------------------------------------------------------------
# Recordings


@pytest.fixture(scope="module")
def recordings():
    return {
        label: simulate_recording(label, np.random.default_rng(10 + i), n_samples=512)
        for i, label in enumerate(CLASS_NAMES)
    }


def test_recordings_have_the_documented_shape_and_metadata(recordings):
    assert set(recordings) == set(CLASS_NAMES)
    for label, (data, meta) in recordings.items():
        assert data.shape == (len(CHANNELS), 512) and data.dtype == np.float32
        assert np.all(np.isfinite(data))
        assert -0.05 <= meta["drift"] <= 0.05
        assert meta["added_mass_floor"] in (1, 2, 3) and 0 <= meta["added_mass_fraction"] <= 0.1
        assert 0.5 <= meta["excitation_rms"] <= 2.0
        assert len(meta["snr_db"]) == 4 and all(20 <= s <= 40 for s in meta["snr_db"])
        # The base channel is the excitation (plus at most -20 dB of noise).
        assert abs(np.sqrt(np.mean(data[0] ** 2.0)) / meta["excitation_rms"] - 1) < 0.2
        if label.startswith("story"):
            assert meta["damaged_story"] == int(label[5])
            assert 0.10 <= meta["severity"] <= 0.30
        else:
            assert meta["damaged_story"] == 0 and meta["severity"] == 0
        if label == "bumper_contact":
            assert meta["gap"] > 0 and 0.6 <= meta["gap_ratio"] <= 1.2
            assert meta["contact_fraction"] > 0.05
        else:
            assert meta["gap"] is None and meta["contact_fraction"] == 0


def test_recording_metadata_describes_the_simulated_frame(recordings):
    nominal = syn.nominal_frame()
    for _label, (_, meta) in recordings.items():
        masses = nominal.masses.copy()
        masses[meta["added_mass_floor"] - 1] *= 1 + meta["added_mass_fraction"]
        k = nominal.stiffnesses * (1 + meta["drift"])
        if meta["damaged_story"]:
            k[meta["damaged_story"] - 1] *= 1 - meta["severity"]
        np.testing.assert_allclose(
            ShearFrame(masses, k).natural_frequencies(), meta["natural_frequencies_hz"], rtol=1e-9
        )


def test_recording_is_determined_by_its_generator():
    a, meta_a = simulate_recording("story2_stiffness_loss", np.random.default_rng(5), 256)
    b, meta_b = simulate_recording("story2_stiffness_loss", np.random.default_rng(5), 256)
    c, _ = simulate_recording("story2_stiffness_loss", np.random.default_rng(6), 256)
    assert np.array_equal(a, b) and meta_a == meta_b
    assert not np.allclose(a, c)


def test_bad_arguments_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="undamaged"):
        simulate_recording("cracked", np.random.default_rng(0))
    with pytest.raises(ValueError, match="sample_rate"):
        simulate_recording("undamaged", np.random.default_rng(0), 256, sample_rate=300.0)
    with pytest.raises(ValueError, match="positive"):
        ShearFrame([5.0, -1.0], [1e6, 1e6])
    with pytest.raises(ValueError, match="lower"):
        syn.nominal_frame().simulate(np.zeros(16), FS, ContactSpec(1e-6, 1e6, lower=3))
    with pytest.raises(ValueError, match="Nyquist"):
        base_excitation(64, 500.0, np.random.default_rng(0), band=(10.0, 300.0))


# ------------------------------------------------------------------------------------------------
# The dataset on disk

TINY = {"recordings_per_class": 2, "n_samples": 256}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("ds") / "tiny", seed=7, **TINY)


def test_dataset_layout_and_manifest(tiny):
    expected = {f"{c}/{c}_{i:03d}.csv" for c in CLASS_NAMES for i in range(2)}
    csvs = {str(p.relative_to(tiny)) for p in tiny.rglob("*.csv")} - {"manifest.csv"}
    assert csvs == expected
    manifest = pd.read_csv(tiny / "manifest.csv")
    assert list(manifest.columns[:3]) == ["path", "label", "sample_rate"]
    for column in (
        "severity",
        "damaged_story",
        "gap",
        "drift",
        "added_mass_floor",
        "added_mass_fraction",
        "excitation_rms",
        "snr_db_base",
        "snr_db_floor3",
    ):
        assert column in manifest.columns
    assert set(manifest["path"]) == expected
    assert (manifest["sample_rate"] == FS).all()
    assert manifest.groupby("label").size().to_dict() == dict.fromkeys(CLASS_NAMES, 2)
    assert all(
        Path(p).parts[0] == lab for p, lab in zip(manifest["path"], manifest["label"], strict=True)
    )
    bumper = manifest["label"] == "bumper_contact"
    assert manifest.loc[bumper, "gap"].gt(0).all() and manifest.loc[~bumper, "gap"].isna().all()
    table = pd.read_csv(tiny / expected.pop())
    assert list(table.columns) == list(CHANNELS) and len(table) == 256
    assert all(np.issubdtype(t, np.floating) for t in table.dtypes)
    marker = json.loads((tiny / syn.MARKER_FILE).read_text())
    assert marker["parameters"]["seed"] == 7 and marker["n_recordings"] == 10


def test_each_recording_has_its_own_child_generator(tiny, tmp_path):
    # Recording 1 of class 4 comes from SeedSequence(7) -> child 4 -> child 1, whatever else runs.
    seq = np.random.SeedSequence(7).spawn(5)[4].spawn(2)[1]
    data, _ = simulate_recording("bumper_contact", np.random.default_rng(seq), 256)
    written = pd.read_csv(tiny / "bumper_contact" / "bumper_contact_001.csv").to_numpy().T
    np.testing.assert_allclose(written, data, rtol=1e-5, atol=1e-6 * np.abs(data).max())
    # Fewer recordings per class leave the first recording of every class unchanged.
    one = generate_dataset(tmp_path / "one", seed=7, recordings_per_class=1, n_samples=256)
    for c in CLASS_NAMES:
        name = f"{c}/{c}_000.csv"
        assert (one / name).read_bytes() == (tiny / name).read_bytes()


def test_same_seed_gives_identical_files_and_another_seed_does_not(tiny, tmp_path):
    again = generate_dataset(tmp_path / "again", seed=7, **TINY)
    assert _snapshot(again) == _snapshot(tiny)
    other = _snapshot(generate_dataset(tmp_path / "other", seed=8, **TINY))
    name = "undamaged/undamaged_000.csv"
    assert other[name] != _snapshot(tiny)[name]


def test_complete_dataset_is_reused_untouched(tmp_path):
    out = generate_dataset(tmp_path / "ds", seed=1, **TINY)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate_dataset(out, seed=1, **TINY) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folders left


def test_mismatching_dataset_raises_unless_overwrite(tmp_path):
    out = generate_dataset(tmp_path / "ds", seed=1, **TINY)
    with pytest.raises(FileExistsError, match=r"other parameters.*seed=1"):
        generate_dataset(out, seed=2, **TINY)
    assert json.loads((out / syn.MARKER_FILE).read_text())["parameters"]["seed"] == 1
    generate_dataset(out, seed=2, overwrite=True, **TINY)
    assert json.loads((out / syn.MARKER_FILE).read_text())["parameters"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_foreign_content_is_never_deleted(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a generated dataset"):
            generate_dataset(folder, overwrite=overwrite, **TINY)
    assert (folder / "notes.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path / "afile", **TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (generate_dataset(empty, **TINY) / "manifest.csv").is_file()


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = syn.simulate_recording

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "simulate_recording", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "ds", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_losing_a_race_keeps_the_winner_and_discards_the_temporary_folder(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real = syn._write_dataset
    raced = []

    def racing(folder, params):
        n = real(folder, params)
        if not raced:  # another process completes the same dataset first
            raced.append(True)
            generate_dataset(out, seed=3, **TINY)
        return n

    monkeypatch.setattr(syn, "_write_dataset", racing)
    assert generate_dataset(out, seed=3, **TINY) == out
    winner_marker = (out / syn.MARKER_FILE).stat().st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert winner_marker == (out / syn.MARKER_FILE).stat().st_mtime_ns
    assert len(pd.read_csv(out / "manifest.csv")) == 10


def test_concurrent_callers_get_one_complete_dataset(tmp_path):
    out = tmp_path / "ds"
    results, errors = [], []

    def work():
        try:
            results.append(generate_dataset(out, seed=4, **TINY))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [out, out]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert len(pd.read_csv(out / "manifest.csv")) == 10


def test_default_dataset_dir_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(syn, "generate_dataset", functools.partial(generate_dataset, **TINY))
    monkeypatch.setenv("DAMAGE_LIGHTNING_CACHE", str(tmp_path / "env"))
    path = default_dataset_dir()
    assert path == tmp_path / "env" / "synthetic" / "shear_frame_v2_seed0"
    assert (path / "manifest.csv").is_file()
    mtime = (path / syn.MARKER_FILE).stat().st_mtime_ns
    assert default_dataset_dir() == path and (path / syn.MARKER_FILE).stat().st_mtime_ns == mtime
    explicit = default_dataset_dir(tmp_path / "cache", seed=5)
    assert explicit == tmp_path / "cache" / "synthetic" / "shear_frame_v2_seed5"
    assert json.loads((explicit / syn.MARKER_FILE).read_text())["parameters"]["seed"] == 5


def test_main_synth_writes_a_small_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["--out", str(out), "--recordings-per-class", "1", "--samples", "300", "--seed", "2"]
    assert main_synth(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "5 recordings" in printed and " s" in printed
    assert len(pd.read_csv(out / "manifest.csv")) == 5
    assert len(pd.read_csv(out / "undamaged" / "undamaged_000.csv")) == 300

    assert main_synth(args) == 0
    assert "untouched" in capsys.readouterr().out
    changed = [*args[:-1], "3"]
    assert main_synth(changed) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main_synth([*changed, "--overwrite"]) == 0
    assert main_synth(["--out", str(tmp_path / "x"), "--sample-rate", "200"]) == 2
    assert "sample_rate" in capsys.readouterr().err
    assert main_synth([]) == 2  # --out is required


def test_module_does_not_import_torch():
    code = (
        "import sys, damage_lightning.data.synthetic; "
        "sys.exit('torch' in sys.modules or 'lightning' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0
