"""Cohort calibration (twin.cohort): toy patients of known receptor density calibrated in
one run with a corrupt study among them; the posterior table against the saved draws;
resume, refused other settings, --force; the same tables on a Dask LocalCluster; the
command line's bad input."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import pbpk
from imaging.atomic import atomic_folder
from toy_models import TRACER, receptor_toy_model
from twin import PatientTwin
from twin.cli import main
from twin.cohort import calibrate_cohort, calibrate_patient, find_studies
from twin.errors import TwinError

SCAN_H = (4.0, 24.0, 96.0)
KIDNEY_TRUTH = {"p1": 25.0, "p2": 55.0, "p3": 110.0}  # nmol/L; prior median 40 (sigma_log 0.5)
LESION_TRUTH = 80.0
FREE = {"kidneys_rden_nmol_l": (40.0, 0.5), "lesion_1_rden_nmol_l": (60.0, 0.5)}
FIT = {"num_samples": 200}


def therapy():
    return pbpk.Schedule.cycles(1, activity_mbq=7400.0, ligand_nmol=90.0, interval_h=1008.0, tracer=TRACER)


@functools.lru_cache(maxsize=1)
def toy_model():
    return receptor_toy_model()


class ToyTwin(PatientTwin):
    """A toy-model twin; persist only saves PSMA twins, so this one saves its posterior
    draws (theta.npz), which the tests compare with the posterior table."""

    def save(self, folder, *, overwrite: bool = False):
        with atomic_folder(folder, overwrite=overwrite) as tmp:
            np.savez(tmp / "theta.npz", theta=np.asarray(self.posterior.samples["theta"]),
                     names=np.array(self.posterior.free_names))
        return folder


def toy_twin(folder):
    """The tests' make_twin: a toy twin of the table.csv in `folder` (module level: it
    pickles by reference to Dask workers)."""
    table = pd.read_csv(folder / "table.csv")
    return ToyTwin(toy_model(), therapy(), table, free=FREE)


def write_toy_study(folder, patient, kidney_rden, seed):
    """table.csv of SPECT kidneys, lesion and blood activity at SCAN_H of the toy model
    with this kidney receptor density, 5 % log-normal noise (and a study.toml naming the
    patient, so the folder is found as a study)."""
    truth = {"kidneys_rden_nmol_l": kidney_rden, "lesion_1_rden_nmol_l": LESION_TRUTH}
    traj = pbpk.simulate(toy_model(), therapy(), np.array(SCAN_H), truth, tia=False)
    rng = np.random.default_rng(seed)
    rows = [dict(patient=patient, modality="NM", tracer=TRACER, time_h=t, region=region,
                 activity_mbq=float(traj.activity_of("Lu-177")[region][k]) * np.exp(0.05 * rng.standard_normal()),
                 activity_uncertainty_mbq=0.0)
            for region in ("kidneys", "lesion_1", "blood") for k, t in enumerate(SCAN_H)]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "table.csv", index=False)
    (folder / "study.toml").write_text(f'[patient]\nid = "{patient}"\n')


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    for k, (patient, rden) in enumerate(KIDNEY_TRUTH.items()):
        write_toy_study(root / patient, patient, rden, seed=k)
    bad = root / "p0_corrupt"
    bad.mkdir()
    (bad / "table.csv").write_text("this is not a time-activity table\n1\n")
    (bad / "study.toml").write_text('[patient]\nid = "p0"\n')
    (root / "notes").mkdir()  # not a study folder: ignored
    return root


@pytest.fixture(scope="module")
def cohort(studies, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "out"
    calls = []
    run = calibrate_cohort(studies, out, fit_kwargs=FIT, make_twin=toy_twin,
                           progress=lambda done, total: calls.append((done, total)))
    return run, calls


def drop_seconds(status):
    return status.drop(columns="seconds")


def test_cohort_records_failures_and_recovers_each_patients_truth(cohort, studies):
    run, calls = cohort
    status, post = run.status(), run.posterior()
    assert list(status["patient_id"]) == ["p0_corrupt", "p1", "p2", "p3"]  # sorted, "notes" skipped
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    bad = status.iloc[0]
    assert bad["status"] == "failed" and bad["error"].startswith("TwinError: table:")
    assert "region" in bad["error"] and bad["twin_folder"] == "" and np.isnan(bad["failed_solve_fraction"])
    ok = status.iloc[1:]
    assert (ok["status"] == "ok").all() and (ok["error"] == "").all() and (ok["method"] == "laplace").all()
    assert list(ok["twin_patient_id"]) == ["p1", "p2", "p3"]
    assert (ok["failed_solve_fraction"] == 0).all() and ok["max_r_hat"].isna().all()  # R-hat: NUTS only
    assert (status["seconds"] > 0).all()
    assert set(post["patient_id"]) == {"p1", "p2", "p3"}  # no rows of the failed patient
    assert len(post) == 3 * 2

    kidney = post[post.parameter == "kidneys_rden_nmol_l"].set_index("patient_id")
    # posterior means ordered like the truths, each nearer its truth than the prior median 40 nmol/L
    assert list(kidney.sort_values("mean").index) == ["p1", "p2", "p3"]
    for p, truth in KIDNEY_TRUTH.items():
        assert abs(np.log(kidney.loc[p, "mean"] / truth)) < abs(np.log(40.0 / truth))
        assert kidney.loc[p, "q05"] < truth < kidney.loc[p, "q95"]
        assert kidney.loc[p, "q05"] < kidney.loc[p, "q50"] < kidney.loc[p, "q95"]

    # the table summarises the draws the task saved in twins/<patient_id>/ (numpy, independently)
    for p in KIDNEY_TRUTH:
        saved = np.load(run.folder / "twins" / p / "theta.npz")
        theta = saved["theta"].reshape(-1, 2)
        rows = post[post.patient_id == p].set_index("parameter")
        for k, name in enumerate(saved["names"]):
            v = theta[:, k]
            np.testing.assert_allclose(rows.loc[name, ["mean", "sd", "q05", "q50", "q95"]].to_numpy(float),
                                       [v.mean(), v.std(ddof=1), *np.percentile(v, [5, 50, 95])], rtol=1e-12)
    assert not (run.folder / "twins" / "p0_corrupt").exists()
    manifest = json.loads((run.folder / "cohort.json").read_text())
    assert manifest["method"] == "laplace" and manifest["fit_kwargs"] == FIT
    assert [p.rsplit("/", 1)[-1] for p in manifest["studies"]] == ["p0_corrupt", "p1", "p2", "p3"]


def test_resume_recomputes_only_the_missing_patient(cohort, studies, tmp_path):
    run, _ = cohort
    out = tmp_path / "out"
    shutil.copytree(run.folder, out)
    for table in ("status", "posterior"):
        (out / table / "part-000002.parquet").unlink()  # p2
    again = calibrate_cohort(studies, out, fit_kwargs=FIT, make_twin=toy_twin)
    assert again.stats.computed == [2] and again.stats.skipped == [0, 1, 3] and not again.stats.failed
    pd.testing.assert_frame_equal(again.posterior(), run.posterior())
    a, b = drop_seconds(again.status()), drop_seconds(run.status())
    pd.testing.assert_frame_equal(a, b)


def test_other_settings_are_refused_and_force_recomputes(cohort, studies, tmp_path):
    run, _ = cohort
    out = tmp_path / "out"
    shutil.copytree(run.folder, out)
    before = {p: p.stat().st_mtime_ns for p in (out / "status").iterdir()}
    for change in ({"seed": 1}, {"method": "svi"}, {"fit_kwargs": {"num_samples": 100}}):
        kwargs = {"fit_kwargs": FIT, "make_twin": toy_twin, **change}
        with pytest.raises(TwinError, match="holds another run"):
            calibrate_cohort(studies, out, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in (out / "status").iterdir()} == before  # nothing touched
    # --force: the folder is emptied and holds the new run only (here: the corrupt study, seed 1)
    forced = calibrate_cohort([studies / "p0_corrupt"], out, seed=1, make_twin=toy_twin, force=True)
    assert forced.stats.computed == [0] and not forced.stats.skipped
    st = forced.status()
    assert list(st["patient_id"]) == ["p0_corrupt"] and st["status"].tolist() == ["failed"]
    assert not (out / "twins").exists() and forced.posterior().empty
    assert json.loads((out / "cohort.json").read_text())["seed"] == 1


def test_bad_study_lists_are_refused_before_any_work(studies, tmp_path):
    with pytest.raises(TwinError, match="no study folders"):
        calibrate_cohort(tmp_path, tmp_path / "out", make_twin=toy_twin)
    with pytest.raises(TwinError, match="share the name"):
        find_studies([studies / "p1", studies / "p1"])
    with pytest.raises(TwinError, match="not folders"):
        find_studies([studies / "p1", studies / "nope"])
    with pytest.raises(TwinError, match="is one study folder"):
        find_studies(studies / "p1")
    with pytest.raises(TwinError, match="method 'mcmc'"):
        calibrate_cohort(studies, tmp_path / "out", method="mcmc", make_twin=toy_twin)
    with pytest.raises(TwinError, match="fit_kwargs"):
        calibrate_cohort(studies, tmp_path / "out", fit_kwargs={"options": object()}, make_twin=toy_twin)
    assert not (tmp_path / "out").exists()


def test_cli_on_an_empty_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["calibrate-cohort", str(empty), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twin: error: ") and "no study folders" in err
    assert not (tmp_path / "out").exists()
    assert main(["calibrate-cohort", str(empty), "--output", str(tmp_path / "out"), "--method", "mcmc"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_patient_task_pickles_for_dask_workers(studies, tmp_path):
    """What `client.map` ships to a worker: the task (calibrate_patient with the run's
    plain-data config and the builder) survives cloudpickle.  The runner's Dask path itself
    (LocalCluster, a worker killed mid-run, identical tables) is tested in test_twin_trial;
    a cohort on a LocalCluster costs each worker a first-fit compilation (~45 s), too much
    for CI."""
    import cloudpickle

    task = functools.partial(calibrate_patient, {"studies": [str(studies / "p1")], "method": "laplace", "seed": 0,
                                                  "fit_kwargs": FIT, "output": str(tmp_path)}, toy_twin)
    back = cloudpickle.loads(cloudpickle.dumps(task))
    assert back.func is calibrate_patient and back.args[0] == task.args[0] and back.args[1] is toy_twin
