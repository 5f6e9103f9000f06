"""Virtual trials (twin.trial, twin.runner, twin.trial_summary): per-patient outcomes
against an independent single-patient computation, resumability, bad configs, and the
same table in-process and on a Dask LocalCluster with a worker killed mid-run."""

from __future__ import annotations

import copy
import os
import signal

import numpy as np
import pandas as pd
import pytest

import dose
import pbpk
from twin import runner, trial
from twin.cli import main
from twin.errors import ConfigError, TwinError
from twin.outcomes import OutcomeArrays
from twin.population import patient_parameters
from twin.trial import TrialConfig, padded_rows, read_table, run_trial, trial_chunk

MEV_TO_J = 1.602176634e-13

SCHEDULE = {"name": "2 x 7.4 GBq", "cycles": 2, "activity_mbq": 7400.0, "ligand_nmol": 100.0, "interval_h": 1008.0}


def small_trial(**trial) -> dict:
    doc = {
        "trial": {"patients": 8, "seed": 11, "chunk_size": 2, "regions": ["kidneys", "red_marrow", "lesion_1"], **trial},
        "population": {"n_lesions": {"distribution": "fixed", "value": 1}},
        # same structure (one compiled solve); same total ligand, half the activity
        "schedules": [SCHEDULE, {**SCHEDULE, "name": "2 x 3.7 GBq", "activity_mbq": 3700.0}],
    }
    return doc


def direct_tia_and_volumes(patient: dict, cycles: int, activity_mbq: float = 7400.0) -> tuple[dict, dict]:
    """One patient's region TIA (MBq h) under `cycles` x `activity_mbq` / 100 nmol and its
    region volumes (mL), from its own model solved alone (`pbpk.simulate`)."""
    params = patient_parameters(patient)
    model = pbpk.psma_model(("Lu-177-PSMA-617",), lesion_volumes_ml=(10.0,) * int(patient["n_lesions"]))
    schedule = pbpk.Schedule.cycles(cycles, activity_mbq=activity_mbq, ligand_nmol=100.0, interval_h=1008.0,
                                    tracer="Lu-177-PSMA-617")
    traj = pbpk.simulate(model, schedule, np.array([1.0, 24.0]), params)
    return {r: float(v) for r, v in traj.tia_mbq_h.items()}, pbpk.region_volumes_ml(model, params)


@pytest.fixture(scope="module")
def trial_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trial") / "out"
    config = TrialConfig.from_dict(small_trial())
    return config, run_trial(config, folder)


def test_trial_tables_and_one_patient_against_a_direct_simulation(trial_run):
    config, run = trial_run
    out, patients = run.outcomes(), run.patients()
    assert list(patients["patient_id"]) == list(range(8))
    assert len(out) == 8 * 2 * 3  # patients x schedules x regions
    assert out["solver_ok"].all() and np.isfinite(out[["tia_mbq_h", "dose_gy"]].to_numpy()).all()
    with_lq = out["region"].isin(["kidneys", "lesion_1"])  # LQ defaults: kidneys, tumour
    assert np.isfinite(out.loc[with_lq, "bed_gy"]).all() and out.loc[~with_lq, "bed_gy"].isna().all()
    # patients differ, so their doses differ
    kid = out[(out.region == "kidneys") & (out.schedule == "2 x 7.4 GBq")]["dose_gy"].to_numpy()
    assert np.unique(np.round(kid, 9)).size == 8

    # patient 4, independently: its own model parameters, pbpk.simulate, TIA x Delta_np / mass
    patient_4 = patients[patients.patient_id == 4].iloc[0].to_dict()
    tia, volumes = direct_tia_and_volumes(patient_4, cycles=2)
    delta_j_per_mbq_h = dose.nuclide("Lu-177").non_penetrating_mev * MEV_TO_J * 1e6 * 3600.0
    mine = out[(out.patient_id == 4) & (out.schedule == "2 x 7.4 GBq")].set_index("region")
    for region in ("kidneys", "red_marrow", "lesion_1"):
        assert mine.loc[region, "tia_mbq_h"] == pytest.approx(tia[region], rel=2e-5)  # trial rtol 1e-4
        expected = tia[region] * delta_j_per_mbq_h / (volumes[region] * 1e-3)  # 1.0 g/mL
        assert mine.loc[region, "dose_gy"] == pytest.approx(expected, rel=2e-5)
    assert mine.loc["kidneys", "bed_gy"] > mine.loc["kidneys", "dose_gy"]
    # the same total ligand (100 nmol) with half the activity is not solved again but scaled
    # (twin.outcomes.activity_multiples); patient 4's 3.7 GBq TIA solved alone agrees
    tia_half, _ = direct_tia_and_volumes(patient_4, cycles=2, activity_mbq=3700.0)
    mine = out[(out.patient_id == 4) & (out.schedule == "2 x 3.7 GBq")].set_index("region")
    for region in ("kidneys", "red_marrow", "lesion_1"):
        assert mine.loc[region, "tia_mbq_h"] == pytest.approx(tia_half[region], rel=2e-5)


@pytest.mark.parametrize("n, chunk, rows", [(1, 50, 1), (3, 50, 4), (16, 50, 16), (17, 50, 32), (33, 50, 50),
                                             (50, 50, 50)])
def test_a_lesion_count_group_is_padded_to_a_power_of_two_within_the_chunk(n, chunk, rows):
    assert padded_rows(n, chunk) == rows


def test_lesion_count_groups_are_solved_at_their_own_size(monkeypatch):
    """A chunk of 3 patients with 2, 1 and 1 lesions: the 1-lesion pair is solved as 2 rows
    and the 2-lesion patient alone (padding each group to the chunk size solved 8 rows), and
    every patient's outcome row comes from its own parameters.  The solve is replaced by one
    that returns each row's first parameter as its TIA (the solves themselves are checked
    against pbpk.simulate above)."""
    doc = {"trial": {"patients": 3, "seed": 0, "chunk_size": 4, "regions": ["kidneys", "lesion_1"]},
           "population": {"n_lesions": {"distribution": "choice", "values": [1, 2]}},
           "schedules": [SCHEDULE]}
    config = TrialConfig.from_dict(doc)
    solved = []

    def first_parameter_as_tia(model, parameters, thetas, schedules, operator, radiobiology, **kwargs):
        thetas = np.asarray(thetas)
        solved.append((len(model.region_names), len(thetas)))
        shape = (len(thetas), len(schedules))
        tia = np.broadcast_to(thetas[:, None, None, 0], shape + (len(model.region_names),))
        dose_gy = np.broadcast_to(thetas[:, None, None, 0], shape + (len(operator.regions),))
        return OutcomeArrays(tuple(schedules), tia, dose_gy, dose_gy, np.ones(len(thetas), dtype=bool))

    monkeypatch.setattr(trial, "outcome_arrays", first_parameter_as_tia)
    tables = trial_chunk(config.to_dict(), 0)
    patients, out = tables["patients"], tables["outcomes"]
    assert list(patients["n_lesions"]) == [2, 1, 1]
    assert [rows for _, rows in solved] == [2, 1] and solved[0][0] < solved[1][0]  # 1 lesion, then 2
    markers = []
    for k, row in enumerate(patients.to_dict("records")):
        params = patient_parameters(row)
        markers.append(params[sorted(params)[0]])
        assert out.loc[out.patient_id == k, "tia_mbq_h"].to_numpy() == pytest.approx(markers[-1], rel=1e-15)
    assert len(set(markers)) == 3  # a row given to the wrong patient would show
    assert len(out) == 3 * 2


def test_summary_matches_the_table(trial_run):
    config, run = trial_run
    out = run.outcomes()
    summary = pd.read_csv(run.folder / "summary.csv").set_index(["schedule", "region"])
    for (s, r), g in out.groupby(["schedule", "region"]):
        assert summary.loc[(s, r), "patients"] == len(g)
        assert summary.loc[(s, r), "dose_gy_mean"] == pytest.approx(g["dose_gy"].mean(), rel=1e-12)
        # histogram quantiles: within one log bin (2.3 %) of the empirical (inverted-CDF) quantile
        exact = np.quantile(g["dose_gy"], 0.5, method="inverted_cdf")
        assert summary.loc[(s, r), "dose_gy_q50"] == pytest.approx(exact, rel=0.024)
    exceed = pd.read_csv(run.folder / "exceedance.csv")
    kid = exceed[exceed["limit"] == "kidneys bed_gy"].set_index("schedule")
    for s, g in out[out.region == "kidneys"].groupby("schedule"):
        assert kid.loc[s, "patients_over"] == int((g["bed_gy"] > 40.0).sum())
    assert (run.folder / "dose_distributions.png").stat().st_size > 1000


def test_resume_recomputes_only_missing_chunks(trial_run, tmp_path):
    config, run = trial_run
    before = run.outcomes()
    (run.folder / "outcomes" / runner.PART_PATTERN.format(1)).unlink()  # as if killed before writing it
    again = run_trial(config, run.folder)
    assert again.stats.computed == [1] and again.stats.skipped == [0, 2, 3]
    pd.testing.assert_frame_equal(again.outcomes(), before)
    # a chunk that fails is reported, the others are written, and a rerun completes the table
    calls = []

    def flaky(k):
        calls.append(k)
        if k == 0 and len(calls) == 1:
            raise RuntimeError("node lost")
        return trial_chunk(config.to_dict(), k)

    folder = tmp_path / "flaky"
    stats = runner.run_parts(flaky, range(config.n_chunks), folder, ("patients", "outcomes"))
    assert stats.failed.keys() == {0} and stats.computed == [1, 2, 3]
    stats = runner.run_parts(flaky, range(config.n_chunks), folder, ("patients", "outcomes"))
    assert stats.computed == [0] and stats.skipped == [1, 2, 3]
    pd.testing.assert_frame_equal(read_table(folder, "outcomes"), before)


def test_other_trial_in_the_folder_is_refused(trial_run):
    config, run = trial_run
    other = TrialConfig.from_dict(small_trial(seed=12))
    with pytest.raises(TwinError, match="holds another run"):
        run_trial(other, run.folder)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["population"].update(shoe_size={"distribution": "fixed", "value": 44}), "shoe_size"),
    (lambda d: d["population"].update(weight_kg={"distribution": "normal", "mean": 80.0, "sd": -3.0}), "sd"),
    (lambda d: d["schedules"][0].update(tracer="Lu-177-PSMA-999"), "tracer"),
    (lambda d: d["schedules"].append({**SCHEDULE, "name": "pet", "tracer": "Ga-68-PSMA-11"}), "nuclide"),
    (lambda d: d["trial"].update(regions=["kidneys", "lesion_7"]), "lesion_7"),
    (lambda d: d["trial"].update(patients=0), "patients"),
    (lambda d: d.update(extra={}), "extra"),
])
def test_bad_config_is_refused_before_any_work(edit, message, tmp_path):
    doc = copy.deepcopy(small_trial())
    edit(doc)
    path = tmp_path / "trial.toml"
    path.write_text(_toml(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        TrialConfig.from_dict(doc)
    assert main(["trial", str(path), "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def _toml(doc: dict) -> str:
    """Minimal TOML writer for the test configs (tables, arrays of tables, inline tables)."""
    def value(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str):
            return f'"{v}"'
        return repr(v)
    lines = []
    for key, body in doc.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{key}]]")
                lines += [f'{k} = {value(v)}' for k, v in item.items()]
        else:
            lines.append(f"[{key}]")
            lines += [f'{k} = {value(v)}' for k, v in body.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_local_cluster_with_a_killed_worker_gives_the_in_process_table(trial_run, tmp_path):
    """Two worker processes; one is killed (SIGKILL) after the first chunk is stored: the
    scheduler re-runs its chunks elsewhere, and the table equals the in-process one."""
    config, run = trial_run
    killed = []
    def cores():
        return sorted(os.sched_getaffinity(0))

    pinning = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2
    with runner.connect(workers=2, cache_dir=tmp_path / "jax-cache") as client:
        pids = list(client.run(os.getpid).values())
        if pinning:  # each worker on its own share of the cores
            shares = list(client.run(cores).values())
            assert len(shares) == 2 and not set(shares[0]) & set(shares[1])

        def kill_after_first(finished, total):
            if finished == 1 and not killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        distributed = run_trial(config, tmp_path / "dask", client=client, progress=kill_after_first)
        if pinning:  # the restarted worker is pinned again
            client.wait_for_workers(2)
            shares = list(client.run(cores).values())
            assert len(shares) == 2 and not set(shares[0]) & set(shares[1])
    assert killed and len(distributed.stats.computed) == config.n_chunks
    out = distributed.outcomes()
    assert not out.duplicated(["patient_id", "schedule", "region"]).any()
    pd.testing.assert_frame_equal(out, run.outcomes())


@pytest.mark.parametrize("cores, n, expected", [
    ([0, 1], 2, [[0], [1]]),
    ([4, 5, 6, 7], 2, [[4, 5], [6, 7]]),
    ([0, 1, 2], 2, [[0], [1, 2]]),
    ([0, 1], 3, [[0], [1], [0]]),
])
def test_core_share_splits_the_cores_between_workers(cores, n, expected):
    assert [runner.core_share(cores, i, n) for i in range(n)] == expected


def test_worker_xla_flags_are_all_read_by_xla():
    """XLA stops reading XLA_FLAGS at the first word that is not a flag: a flag appended
    to the workers' flags (here a host device count) must still take effect."""
    import subprocess
    import sys

    flags = runner.worker_environment()["XLA_FLAGS"] + " --xla_force_host_platform_device_count=3"
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.device_count())"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


def test_patients_the_model_cannot_hold_are_recorded_not_fatal(trial_run, tmp_path):
    """Large lesions leave no rest-of-body plasma flow (flows are balanced): those patients
    get model_error and NaN outcomes; the others are computed as usual."""
    doc = small_trial(patients=6)
    doc["population"]["lesion_volume_ml"] = {"distribution": "uniform", "low": 50.0, "high": 1500.0}
    config = TrialConfig.from_dict(doc)
    run = run_trial(config, tmp_path / "big-lesions")
    patients, out = run.patients(), run.outcomes()
    bad = patients["model_error"] != ""
    assert bad.any() and (~bad).any()
    assert patients.loc[bad, "model_error"].str.contains("expected").all()
    assert (patients.loc[bad, "lesion_1_volume_ml"] > patients.loc[~bad, "lesion_1_volume_ml"].max()).all()
    by_patient = out.groupby("patient_id")
    assert (~by_patient["solver_ok"].any()[patients.loc[bad, "patient_id"]]).all()
    assert by_patient["solver_ok"].all()[patients.loc[~bad, "patient_id"]].all()
    assert out.loc[~out["solver_ok"], "dose_gy"].isna().all()


def test_cli_runs_and_resumes_the_same_trial(trial_run, tmp_path, capsys):
    config, run = trial_run
    path = tmp_path / "trial.toml"
    path.write_text(_toml(small_trial()), encoding="utf-8")
    out = tmp_path / "cli-out"
    assert main(["trial", str(path), "--output", str(out)]) == 0
    pd.testing.assert_frame_equal(read_table(out, "outcomes"), run.outcomes())
    assert main(["trial", str(path), "--output", str(out)]) == 0  # resume: nothing left to do
    assert "0 chunks computed, 4 already done" in capsys.readouterr().err
