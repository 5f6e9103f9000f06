"""The `twin` command line (twin.cli) and report assembly helpers (twin.reporting).

No calibration runs here (a Laplace fit of the PSMA model takes minutes): every test
checks what happens before the long work starts (arguments, study folders, configs,
existing outputs) or a helper on hand-made input with hand-computed expectations.  The
demo end to end is run by the lead's slow test.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pbpk
from imaging.phantom import make_patient
from twin import cli
from twin.cli import load_config, main, parse_config
from twin.covariates import Covariates
from twin.errors import ConfigError, TwinError
from twin.reporting import observed_on_schedule_clock, package_versions
from twin.study import load_study, write_study

ROOT = Path(__file__).resolve().parents[1]
ACTIVITIES_MBQ = {"body": 50.0, "liver": 10.0, "kidneys": 8.0, "spleen": 2.0, "salivary_glands": 1.0,
                  "lesion_1": 3.0, "lesion_2": 2.0, "bone": 4.0, "lungs": 2.0, "heart": 1.5, "brain": 0.3,
                  "urine": 5.0}

GOOD_CONFIG = """
[therapy]
cycles = 4
activity_mbq = 7400.0
ligand_nmol = 90.0
interval_h = 1008.0
tracer = "Lu-177-PSMA-617"

[[schedules]]
name = "6 x 6 GBq"
cycles = 6
activity_mbq = 6000.0

[[schedules]]
name = "4 x 7.4 GBq / 8 wk"
interval_h = 1344.0

[optimise]
activities_mbq = [2000.0, 12000.0]
n_cycles = [4, 6]
probability = 0.9
"""


def run(argv, capsys):
    """main(argv) -> (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_clean_error(err: str, pattern: str) -> None:
    """One "twin: error: ..." line matching `pattern`, no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("twin: error: ")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), err


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------- arguments
def test_python_m_twin_help_runs_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "twin", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "calibrate", "predict", "dose", "report"):
        assert command in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, pattern", [
    ([], "required: COMMAND|the following arguments are required"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["calibrate", "study"], "--output"),
    (["calibrate", "study", "--output", "t", "--method", "mcmc"], "invalid choice: 'mcmc'"),
    (["predict", "twin", "--output", "r.csv"], "--config"),
    (["report", "twin", "--config", "c.toml", "--output", "r.html", "--max-draws", "0"], "expected an integer >= 1"),
    (["dose", "twin", "--config", "c.toml", "--output", "d.nii.gz", "--method", "monte_carlo"],
     "invalid choice: 'monte_carlo'"),
    (["demo", "--seed", "one"], "invalid int value: 'one'"),
])
def test_argument_errors_exit_2_with_usage(argv, pattern, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("usage: twin")
    assert re.search(pattern, err), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_subcommand_help_exits_0(capsys):
    code, out, _ = run(["dose", "--help"], capsys)
    assert code == 0 and "--method" in out and "--force" in out


# ----------------------------------------------------------------------------- study folders
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A small valid study folder (12 mm voxels): PET at 1 h and SPECT at 24 h."""
    p = make_patient(seed=0, shape=(34, 26, 70), voxel_mm=12.0, anatomy_sd=0.0)
    pet = p.simulate_pet(ACTIVITIES_MBQ, time_h=1.0, injected_activity_mbq=150, voxel_mm=12.0)
    spect = p.simulate_spect(ACTIVITIES_MBQ, time_h=24.0, injected_activity_mbq=7400, voxel_mm=12.0,
                             scan_id="spect_24h")
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 150.0, 2.0, "Ga-68-PSMA-11"),
                              pbpk.Administration(168.0, 7400.0, 90.0, "Lu-177-PSMA-617")])
    folder = write_study(tmp_path_factory.mktemp("cli") / "study", patient_id="cli-test", covariates=Covariates(),
                         schedule=schedule, ct=p.ct, labels=p.labels, region_names=p.region_names,
                         scans=[pet, spect], scan_administration=[1, 2])
    load_study(folder)  # the unedited folder is valid
    return folder


def _replace(old, new):
    def edit(folder):
        path = folder / "study.toml"
        text = path.read_text()
        assert old in text, (old, text)
        path.write_text(text.replace(old, new, 1))
    return edit


BAD_STUDIES = {
    "missing CT": (lambda f: (f / "ct.nii.gz").unlink(), r"field 'ct'.*ct\.nii\.gz.*does not exist"),
    "misspelt scan table": (_replace("[[scan]]", "[[scans]]"), r"unknown key\(s\) \['scans'\]"),
    "no emission scan": (lambda f: (f / "study.toml").write_text(
        (f / "study.toml").read_text().split("[[scan]]")[0]), r"\[\[scan\]\]: none"),
    "unknown tracer": (_replace('"Lu-177-PSMA-617"', '"Lu-177-PSMA-999"'), r"#2 field 'tracer'.*PSMA-999"),
    "administrations out of order": (_replace("time_h = 168.0", "time_h = -5.0"), r"#2.*time order"),
    "scan time disagrees with image": (_replace("time_h = 24.0", "time_h = 30.0"), r"30\.0 h.*image says 24\.0 h"),
}


@pytest.mark.parametrize("case", list(BAD_STUDIES))
def test_bad_study_folder_exits_2_and_writes_nothing(case, study_dir, tmp_path, capsys):
    edit, pattern = BAD_STUDIES[case]
    folder = shutil.copytree(study_dir, tmp_path / "study")
    edit(folder)
    out = tmp_path / "twin"
    before = listing(tmp_path)
    code, _, err = run(["calibrate", folder, "--output", out], capsys)
    assert code == 2
    assert_clean_error(err, pattern)
    assert str(folder) in err  # names the file at fault
    assert not out.exists()
    assert listing(tmp_path) == before  # no temporary folder left either


def test_calibrate_refuses_existing_output_before_reading_the_study(tmp_path, capsys):
    out = tmp_path / "twin"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code, _, err = run(["calibrate", tmp_path / "no-such-study", "--output", out], capsys)
    assert code == 2
    assert_clean_error(err, r"output exists; pass --force")
    assert (out / "keep.txt").read_text() == "old"


def test_calibrate_missing_study_folder(tmp_path, capsys):
    code, _, err = run(["calibrate", tmp_path / "nothing", "--output", tmp_path / "twin"], capsys)
    assert code == 2
    assert_clean_error(err, r"study\.toml: no such file")
    assert not (tmp_path / "twin").exists()


# ----------------------------------------------------------------------------- configs
def test_good_config_builds_the_same_schedules_as_pbpk(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(GOOD_CONFIG)
    cfg = load_config(path)
    want = pbpk.Schedule.cycles(4, activity_mbq=7400.0, ligand_nmol=90.0, interval_h=1008.0,
                                tracer="Lu-177-PSMA-617")
    assert cfg.therapy.administrations == want.administrations
    assert [a.time_h for a in cfg.therapy] == [0.0, 1008.0, 2016.0, 3024.0]
    # keys a schedule does not give are the therapy's
    six = cfg.schedules["6 x 6 GBq"]
    assert six.administrations == pbpk.Schedule.cycles(6, activity_mbq=6000.0, ligand_nmol=90.0,
                                                        interval_h=1008.0).administrations
    eight = cfg.schedules["4 x 7.4 GBq / 8 wk"]
    assert [a.time_h for a in eight] == [0.0, 1344.0, 2688.0, 4032.0]
    assert all(a.activity_mbq == 7400.0 and a.ligand_nmol == 90.0 for a in eight)
    assert cfg.optimise == {"activities_mbq": (2000.0, 12000.0), "n_cycles": (4, 6), "probability": 0.9,
                            "tracer": "Lu-177-PSMA-617", "ligand_nmol": (90.0,), "interval_h": (1008.0,)}
    # optimiser values given in [optimise] win over the therapy's
    doc = tomllib.loads(GOOD_CONFIG.replace("probability = 0.9", "probability = 0.9\ninterval_h = [1008.0, 1344.0]"))
    assert parse_config(doc, "c.toml").optimise["interval_h"] == (1008.0, 1344.0)


def test_single_cycle_needs_no_interval_and_ligand_is_optional():
    cfg = parse_config({"therapy": {"cycles": 1, "activity_mbq": 6000.0}}, "c.toml")
    (a,) = cfg.therapy.administrations
    assert (a.time_h, a.activity_mbq, a.ligand_nmol, a.tracer.name) == (0.0, 6000.0, None, "Lu-177-PSMA-617")
    assert cfg.schedules == {} and cfg.optimise is None


BAD_CONFIGS = {
    "unknown top key": ("[therapy]\ncycles = 1\nactivity_mbq = 7400.0\n[extras]\nx = 1\n", r"unknown key.*'extras'"),
    "unknown therapy key": (GOOD_CONFIG.replace("interval_h = 1008.0", "interval_h = 1008.0\ninterval_d = 42"),
                            r"\[therapy\]: unknown key.*'interval_d'"),
    "unknown schedule key": (GOOD_CONFIG.replace('name = "6 x 6 GBq"', 'name = "6 x 6 GBq"\nactivity_gbq = 6'),
                             r"\[\[schedules\]\] #1: unknown key.*'activity_gbq'"),
    "unknown optimise key": (GOOD_CONFIG.replace("probability = 0.9", "probability = 0.9\ntarget = 'kidneys'"),
                             r"\[optimise\]: unknown key.*'target'"),
    "zero cycles": (GOOD_CONFIG.replace("cycles = 4", "cycles = 0"), r"\[therapy\] key 'cycles': 0"),
    "float cycles": (GOOD_CONFIG.replace("cycles = 4", "cycles = 4.5"), r"key 'cycles': 4\.5.*integer"),
    "negative activity": (GOOD_CONFIG.replace("activity_mbq = 6000.0", "activity_mbq = -6000.0"),
                          r"#1 key 'activity_mbq': -6000\.0; expected a finite number > 0"),
    "text activity": (GOOD_CONFIG.replace("activity_mbq = 7400.0", 'activity_mbq = "7.4 GBq"'),
                      r"\[therapy\] key 'activity_mbq': '7\.4 GBq'"),
    "nan interval": (GOOD_CONFIG.replace("interval_h = 1344.0", "interval_h = nan"), r"#2 key 'interval_h': nan"),
    "no interval for cycles": ("[therapy]\ncycles = 3\nactivity_mbq = 7400.0\n", r"'interval_h' missing"),
    "unknown tracer": (GOOD_CONFIG.replace('"Lu-177-PSMA-617"', '"Lu-177-PSMA-999"'),
                       r"\[therapy\] key 'tracer'.*PSMA-999"),
    "no therapy": ("[[schedules]]\nname = 'a'\ncycles = 1\nactivity_mbq = 1.0\n", r"\[therapy\] missing"),
    "schedule without name": (GOOD_CONFIG.replace('name = "6 x 6 GBq"\n', ""), r"#1 key 'name': None"),
    "duplicate schedule": (GOOD_CONFIG.replace('"4 x 7.4 GBq / 8 wk"', '"6 x 6 GBq"'), r"#2 key 'name'.*twice"),
    "reserved schedule name": (GOOD_CONFIG.replace('"6 x 6 GBq"', '"therapy"'), r"reserved name 'therapy'"),
    "probability 1": (GOOD_CONFIG.replace("probability = 0.9", "probability = 1.0"), r"'probability': 1\.0"),
    "activity bounds reversed": (GOOD_CONFIG.replace("[2000.0, 12000.0]", "[12000.0, 2000.0]"),
                                 r"'activities_mbq'.*lo < hi"),
    "n_cycles not integers": (GOOD_CONFIG.replace("n_cycles = [4, 6]", "n_cycles = [4, 5.5]"), r"'n_cycles': 5\.5"),
    "toml syntax": ("[therapy\ncycles = 1\n", r"not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
@pytest.mark.parametrize("command, output", [("predict", "r.csv"), ("report", "r.html"), ("dose", "d.nii.gz")])
def test_config_errors_exit_2_before_any_work(case, command, output, tmp_path, capsys):
    text, pattern = BAD_CONFIGS[case]
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    # the twin folder does not exist: an error about the config proves the config was checked first
    code, _, err = run([command, tmp_path / "no-twin", "--config", cfg, "--output", tmp_path / output], capsys)
    assert code == 2
    assert_clean_error(err, pattern)
    assert str(cfg) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_config_error_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(BAD_CONFIGS["unknown therapy key"][0])
    with pytest.raises(ConfigError, match="interval_d"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_good_config_then_missing_twin_folder(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD_CONFIG)
    code, _, err = run(["predict", tmp_path / "no-twin", "--config", cfg, "--output", tmp_path / "r.csv"], capsys)
    assert code == 2
    assert_clean_error(err, r"no-twin: not a twin folder")
    empty = tmp_path / "empty-twin"
    empty.mkdir()
    code, _, err = run(["dose", empty, "--config", cfg, "--output", tmp_path / "d.nii.gz"], capsys)
    assert code == 2
    assert_clean_error(err, r"twin\.json: not found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "empty-twin"]


# ----------------------------------------------------------------------------- existing outputs
@pytest.mark.parametrize("command, output", [("predict", "r.csv"), ("report", "r.html"), ("dose", "d.nii.gz")])
def test_existing_output_is_not_overwritten_without_force(command, output, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD_CONFIG)
    out = tmp_path / output
    out.write_bytes(b"previous result")
    code, _, err = run([command, tmp_path / "no-twin", "--config", cfg, "--output", out], capsys)
    assert code == 2
    assert_clean_error(err, re.escape(str(out)) + r": output exists; pass --force")
    assert out.read_bytes() == b"previous result"
    # with --force the command goes on (and fails later on the missing twin): the old file stays intact
    code, _, err = run([command, tmp_path / "no-twin", "--config", cfg, "--output", out, "--force"], capsys)
    assert code == 2 and "not a twin folder" in err
    assert out.read_bytes() == b"previous result"


def test_demo_refuses_existing_output_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "report.html").write_text("old report")
    code, _, err = run(["demo", "--output", out, "--quick"], capsys)
    assert code == 2
    assert_clean_error(err, r"output exists; pass --force")
    assert listing(tmp_path) == ["demo", os.path.join("demo", "report.html")]
    assert (out / "report.html").read_text() == "old report"


# ----------------------------------------------------------------------------- helpers
def test_write_csv_is_atomic_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    out.write_text("old")

    class Boom(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            Path(args[0]).write_text("half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cli.write_csv(Boom({"a": [1]}), out)
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
    cli.write_csv(pd.DataFrame({"a": [1, 2]}), out)
    assert pd.read_csv(out)["a"].tolist() == [1, 2]


def test_progress_lines():
    stream = io.StringIO()
    progress = cli.Progress(2, stream)
    with progress.step("first"):
        pass
    with progress.step("second"):
        pass
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/2] first ..." and lines[2] == "[2/2] second ..."
    assert re.fullmatch(r"\[1/2\] first done in \d+\.\d s", lines[1])
    assert re.fullmatch(r"\[2/2\] second done in \d+\.\d s", lines[3])


def test_demo_schedules_vary_activity_cycles_and_interval():
    schedules = cli.demo_schedules()
    therapy = next(iter(schedules.values()))
    # the demo therapy: VISION's 4 x 7.4 GBq every 6 weeks (1008 h)
    assert [(a.time_h, a.activity_mbq, a.ligand_nmol) for a in therapy] == \
        [(k * 1008.0, 7400.0, 90.0) for k in range(4)]
    shapes = {(len(s), s.administrations[0].activity_mbq,
               s.administrations[1].time_h - s.administrations[0].time_h) for s in schedules.values()}
    assert len(shapes) == len(schedules) >= 4
    assert {n for n, _, _ in shapes} >= {4, 6}
    assert len({a for _, a, _ in shapes}) >= 2 and len({t for _, _, t in shapes}) >= 2
    assert {a.tracer.name for s in schedules.values() for a in s} == {"Lu-177-PSMA-617"}


# ----------------------------------------------------------------------------- reporting helpers
def _table(rows):
    return pd.DataFrame(rows, columns=["region", "modality", "tracer", "time_h", "activity_mbq", "cycle"])


def test_observed_rows_move_to_the_schedule_clock():
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 150.0, 2.0, "Ga-68-PSMA-11"),
                              pbpk.Administration(168.0, 7400.0, 90.0, "Lu-177-PSMA-617"),
                              pbpk.Administration(1176.0, 7400.0, 90.0, "Lu-177-PSMA-617")])
    table = _table([("kidneys", "PT", "Ga-68-PSMA-11", 1.0, 5.0, 1),
                    ("kidneys", "NM", "Lu-177-PSMA-617", 24.0, 300.0, 1),
                    ("liver", "NM", "Lu-177-PSMA-617", 96.0, 120.0, 1),
                    ("kidneys", "NM", "Lu-177-PSMA-617", 24.0, 280.0, 2)])
    got = observed_on_schedule_clock(table, schedule)
    assert list(got.columns) == ["region", "modality", "nuclide", "time_h", "activity_mbq"]
    np.testing.assert_array_equal(got["time_h"], [1.0, 168.0 + 24.0, 168.0 + 96.0, 1176.0 + 24.0])
    assert list(got["nuclide"]) == ["Ga-68", "Lu-177", "Lu-177", "Lu-177"]
    assert list(got["modality"]) == ["PT", "NM", "NM", "NM"]
    np.testing.assert_array_equal(got["activity_mbq"], table["activity_mbq"])
    # no cycle column: the first administration of the tracer
    no_cycle = observed_on_schedule_clock(table.drop(columns="cycle"), schedule)
    np.testing.assert_array_equal(no_cycle["time_h"], [1.0, 192.0, 264.0, 192.0])
    # the schedule's order of listing does not matter, only time order within a tracer
    shuffled = pbpk.Schedule([schedule.administrations[0], schedule.administrations[1], schedule.administrations[2]])
    pd.testing.assert_frame_equal(observed_on_schedule_clock(table, shuffled), got)


def test_observed_clock_errors_name_the_row():
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 150.0, 2.0, "Ga-68-PSMA-11"),
                              pbpk.Administration(168.0, 7400.0, 90.0, "Lu-177-PSMA-617")])
    with pytest.raises(TwinError, match=r"row 1: cycle 2 of Lu-177-PSMA-617; the schedule has 1"):
        observed_on_schedule_clock(_table([("kidneys", "PT", "Ga-68-PSMA-11", 1.0, 5.0, 1),
                                           ("kidneys", "NM", "Lu-177-PSMA-617", 24.0, 3.0, 2)]), schedule)
    with pytest.raises(TwinError, match=r"row 0: tracer Lu-177-PSMA-I&T is never administered"):
        observed_on_schedule_clock(_table([("kidneys", "NM", "Lu-177-PSMA-I&T", 24.0, 3.0, 1)]), schedule)
    with pytest.raises(TwinError, match=r"row 0: tracer 'Xx-999' is unknown"):
        observed_on_schedule_clock(_table([("kidneys", "NM", "Xx-999", 24.0, 3.0, 1)]), schedule)
    with pytest.raises(TwinError, match=r"missing column\(s\) \['tracer'\]"):
        observed_on_schedule_clock(_table([]).drop(columns="tracer"), schedule)


def test_package_versions_match_importlib_metadata():
    import importlib.metadata

    versions = package_versions()
    assert versions["jax"] == importlib.metadata.version("jax")
    assert versions["SimpleITK"] == importlib.metadata.version("SimpleITK")
    assert package_versions(("surely-not-a-package-xyz",)) == {"surely-not-a-package-xyz": "not installed"}


# ----------------------------------------------------------------------------- truth and report content
Z_DRAWS = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])  # symmetric, median 0 (= the truth)


@pytest.fixture(scope="module")
def fixed_twin(study_dir):
    """A twin of `study_dir` with a hand-made posterior: 7 draws theta_k = truth * exp(0.1 z_k),
    every free parameter scaled together, so the truth is the median draw (no fit)."""
    import calibration
    from calibration.posterior import Posterior
    from twin.patient import PatientTwin

    twin = PatientTwin.from_study(study_dir)
    problem = calibration.make_problem(twin.model, twin.table, twin.schedule, free=twin.free,
                                       separate_ligands=True)
    names = problem.free_names
    truth = {n: 1.3 * twin.model.parameter(n).value for n in names}
    base = np.array([truth[n] for n in names])
    theta = base[None, :] * np.exp(0.1 * Z_DRAWS)[:, None]
    n_groups = len(problem.used_error_groups)
    samples = {"theta": theta[None], "z": np.zeros((1, len(Z_DRAWS), len(names))),
               "error_scale": np.ones((1, len(Z_DRAWS), n_groups)), "solver_ok": np.ones((1, len(Z_DRAWS)), bool)}
    twin.posterior = Posterior(problem, "laplace", samples, {"map_success": True}, {})
    return twin, truth


def _hand_predictions(regions, bed_regions, scale=1.0):
    """A prediction table (twin.predict layout) with made-up ordered values; BED NaN outside
    `bed_regions` (as the twin reports regions without LQ parameters)."""
    rows = []
    for k, r in enumerate(regions):
        row = {"region": r}
        for m, v in (("tia_mbq_h", 1000.0 * (k + 1)), ("dose_gy", 0.5 * (k + 1)), ("bed_gy", 0.6 * (k + 1))):
            v = np.nan if (m == "bed_gy" and r not in bed_regions) else v * scale
            row.update({f"{m}_mean": v, f"{m}_q05": 0.8 * v, f"{m}_q50": v, f"{m}_q95": 1.25 * v})
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_truth_comparison_against_a_direct_simulation(fixed_twin):
    from dose.nuclides import half_life_h
    from twin.reporting import truth_comparison

    twin, truth = fixed_twin
    therapy = pbpk.Schedule.cycles(1, activity_mbq=7400.0, ligand_nmol=90.0, interval_h=1.0)
    model = twin.prediction_model(therapy)
    operator = twin.dose_operator("Lu-177", model)
    # independent path: pbpk.simulate (not pbpk.batch / twin.outcomes) of the true parameters, TIA to infinity
    traj = pbpk.simulate(model, therapy, np.array([50 * half_life_h("Lu-177")]), truth, tia=True)
    tia = dict(zip(model.region_names, np.asarray(traj.region_tia_mbq_h)[list(model.nuclides).index("Lu-177")]))
    true_tia = np.array([tia[r] for r in operator.regions])
    true_dose = operator.matrix @ np.array([tia[r] for r in model.region_names])
    # predictions: the true values x 1.1 (q05 = 0.88, q95 = 1.375 x truth: inside) except the
    # first region, whose interval is placed above the truth (x 2: q05 = 1.6 x truth: outside)
    pred = _hand_predictions(operator.regions, ())
    factor = np.full(len(true_tia), 1.1)
    factor[0] = 2.0
    for m, true in (("tia_mbq_h", true_tia), ("dose_gy", true_dose)):
        for q, f in (("q05", 0.8), ("q50", 1.0), ("q95", 1.25)):
            pred[f"{m}_{q}"] = true * factor * f
    cmp = truth_comparison(twin, truth, therapy, pred)
    assert list(cmp["region"]) == list(operator.regions)
    np.testing.assert_allclose(cmp["tia_true_mbq_h"], true_tia, rtol=2e-3)
    np.testing.assert_allclose(cmp["dose_true_gy"], true_dose, rtol=2e-3)
    np.testing.assert_allclose(cmp["dose_gy_q50"], true_dose * factor, rtol=1e-12)
    assert cmp["tia_in_90"].tolist() == cmp["dose_in_90"].tolist() == [False] + [True] * (len(true_tia) - 1)
    with pytest.raises(TwinError, match=r"truth: parameters \['no_such_parameter'\]"):
        truth_comparison(twin, {"no_such_parameter": 1.0}, therapy, pred)


@pytest.mark.slow
def test_report_content_of_a_fixed_posterior(fixed_twin):
    import SimpleITK as sitk

    from twin.report import figure_count, render_html
    from twin.reporting import report_content

    twin, _ = fixed_twin
    therapy = pbpk.Schedule.cycles(1, activity_mbq=7400.0, ligand_nmol=90.0, interval_h=1.0)
    regions = twin.dose_operator("Lu-177", twin.prediction_model(therapy)).regions
    bed_regions = {"kidneys", "lesion_1", "lesion_2"}
    predictions = _hand_predictions(regions, bed_regions)
    what_if = pd.concat([_hand_predictions(regions, bed_regions).assign(schedule="1 x 7.4 GBq"),
                         _hand_predictions(regions, bed_regions, 0.7).assign(schedule="1 x 5 GBq")], ignore_index=True)
    dose = np.zeros(sitk.GetArrayFromImage(twin.labels).shape, np.float32)
    dose[5:9, 8:12, 10:20] = 3.0
    dose[0, 0, 0] = -1e-7  # FFT round-off
    dose_map = sitk.GetImageFromArray(dose)
    dose_map.CopyInformation(twin.labels)
    content = report_content(twin, therapy, schedules={"1 x 7.4 GBq": therapy}, max_draws=len(Z_DRAWS), n_points=12,
                             predictions=predictions, what_if=what_if, dose_map=dose_map)
    # observed points: the table's own times moved by their administration's time (PET 0 h, therapy 168 h)
    np.testing.assert_allclose(np.sort(content.observed["time_h"].unique()), [1.0, 168.0 + 24.0])
    assert set(content.observed["nuclide"]) == set(content.predicted["nuclide"]) == {"Ga-68", "Lu-177"}
    assert (content.predicted.filter(like="activity_mbq_") >= 0).all().all()
    assert content.dose_gy.min() == 0.0 and content.dose_gy.max() == 3.0
    assert content.dose_gy.shape == content.labels.shape == content.ct_hu.shape
    # every dose region, BED NaN (rendered "–") where no LQ parameters are known
    assert set(content.predictions["region"]) == set(regions)
    assert content.predictions.set_index("region")["bed_gy_q50"].notna().to_dict() == \
        {r: r in bed_regions for r in regions}
    assert set(content.schedules["schedule"]) == {"1 x 7.4 GBq", "1 x 5 GBq"}
    assert content.provenance["decay data"] == "ICRP-107 (icrp107-database)"
    assert "kidneys_rden_nmol_l" in content.provenance["free parameters and priors"]
    assert content.provenance["therapy schedule"] == "7400 MBq Lu-177-PSMA-617 (90 nmol) at 0 h"
    text = render_html(content)
    assert text.count("<img src=\"data:image/png;base64,") == figure_count(content) == 4


def test_dose_array_removes_only_fft_roundoff():
    import SimpleITK as sitk

    from twin.reporting import dose_array_gy

    a = np.zeros((3, 4, 5), np.float32)
    a[1, 2, 3] = 10.0
    a[0, 0, 0] = -5e-5  # 5e-6 of the maximum: round-off
    got = dose_array_gy(sitk.GetImageFromArray(a))
    assert got.dtype == np.float32 and got.min() == 0.0 and got[1, 2, 3] == 10.0
    a[0, 0, 0] = -1e-3  # 1e-4 of the maximum: a real error
    with pytest.raises(TwinError, match="round-off floor"):
        dose_array_gy(sitk.GetImageFromArray(a))
    a[0, 0, 0] = np.nan
    with pytest.raises(TwinError, match="NaN"):
        dose_array_gy(sitk.GetImageFromArray(a))


def test_curves_without_roundoff_is_per_curve():
    from twin.reporting import curves_without_roundoff

    curves = pd.DataFrame({"region": ["kidneys"] * 3 + ["brain"] * 3, "nuclide": ["Lu-177"] * 6,
                           "time_h": [1.0, 2.0, 3.0] * 2,
                           "activity_mbq_q05": [-4e-20, 5.0, 4.0, 1e-3, -1e-12, 2e-3],
                           "activity_mbq_q50": [1.0, 6.0, 5.0, 2e-3, 1e-3, 3e-3]})
    got = curves_without_roundoff(curves)
    assert got["activity_mbq_q05"].tolist() == [0.0, 5.0, 4.0, 1e-3, 0.0, 2e-3]
    assert got["activity_mbq_q50"].tolist() == curves["activity_mbq_q50"].tolist()
    assert curves["activity_mbq_q05"].iloc[0] == -4e-20  # input untouched
    # -1e-6 MBq is round-off for kidneys (max 5 MBq) but not for brain (max 2e-3 MBq)
    bad = curves.copy()
    bad.loc[4, "activity_mbq_q05"] = -1e-6
    with pytest.raises(TwinError, match=r"activity curve \('brain', 'Lu-177'\) activity_mbq_q05"):
        curves_without_roundoff(bad)


def test_sigterm_during_the_demo_leaves_nothing(tmp_path):
    """`timeout` (SIGTERM) while the demo writes its study: exit 143, no output, no temporary folder."""
    import signal
    import time

    out = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "twin", "demo", "--quick", "--output", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".demo.*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert list(tmp_path.glob(".demo.*.tmp")), "the demo did not start writing"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "twin: terminated; nothing written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_termination_swallowed_in_a_finaliser_is_delivered_again():
    """A SIGTERM whose `Terminated` is raised inside a __del__ (or a gc callback, as JAX's)
    is only printed by Python; the CLI's unraisable hook sends the signal again so that the
    command still stops with 143 instead of running on."""
    script = textwrap.dedent("""
        import sys, time
        from twin import cli

        class Finaliser:
            def __del__(self):
                raise cli.Terminated()

        def swallow(args):
            Finaliser()  # collected at once: its Terminated is unraisable
            time.sleep(60)
            return 0

        args = cli.build_parser().parse_args(["demo"])
        args.func = swallow
        cli.build_parser = lambda: type("P", (), {"parse_args": lambda self, argv: args})()
        status = cli.main([])
        assert sys.unraisablehook is sys.__unraisablehook__, "hook not restored"
        sys.exit(status)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=40)
    assert done.returncode == 143, done.stderr
    assert "twin: terminated; nothing written" in done.stderr and "Exception ignored" not in done.stderr


@pytest.mark.slow
def test_saved_twin_loads_back_with_its_posterior_and_predictions(fixed_twin, tmp_path):
    """PatientTwin.save -> load: JSON/CSV/NPZ/NIfTI round trip of the posterior, table,
    schedule, free set and anatomy; the loaded twin predicts the same TIA and dose."""
    import SimpleITK as sitk

    from twin.patient import PatientTwin

    twin, _ = fixed_twin
    twin.save(tmp_path / "twin")
    with pytest.raises(TwinError, match="exists"):
        twin.save(tmp_path / "twin")
    assert not list(tmp_path.glob("*.tmp"))
    back = PatientTwin.load(tmp_path / "twin")
    for key in ("theta", "z", "error_scale", "solver_ok"):
        np.testing.assert_array_equal(back.posterior.samples[key], twin.posterior.samples[key])
    assert back.posterior.free_names == twin.posterior.free_names and back.posterior.method == "laplace"
    assert len(back.posterior.problem.segments) == len(twin.posterior.problem.segments) == 2
    assert [(a.time_h, a.activity_mbq, a.tracer.name) for a in back.schedule] == \
        [(a.time_h, a.activity_mbq, a.tracer.name) for a in twin.schedule]
    pd.testing.assert_frame_equal(back.table, twin.table, check_dtype=False)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.labels), sitk.GetArrayFromImage(twin.labels))
    assert back.region_names == twin.region_names and back.covariates == twin.covariates
    therapy = pbpk.Schedule.cycles(1, activity_mbq=7400.0, ligand_nmol=90.0, interval_h=1.0)
    a, b = twin.predict(therapy, max_draws=3), back.predict(therapy, max_draws=3)
    np.testing.assert_allclose(b["dose_gy_q50"], a["dose_gy_q50"], rtol=1e-6)  # float32 image round trip
    with pytest.raises(TwinError, match="not found"):
        PatientTwin.load(tmp_path / "nothing")
