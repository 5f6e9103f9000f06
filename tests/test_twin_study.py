"""twin.covariates and twin.study: covariates, study folders (read, validate, write).

Independent checks: psma_model's own signature defaults and volume parameters, voxel
counts of the phantom (`SyntheticPatient.region_volumes_ml`), `imaging.time_activity` on
the in-memory scans, `calibration.observations_from_table` on the loaded table, and, for
the partial-volume correction, the phantom's known (true) lesion activities.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

import imaging
import pbpk
from calibration.observations import observations_from_table
from imaging.phantom import make_patient
from twin.covariates import IMAGED_ORGANS, MODEL_ORGANS, Covariates
from twin.errors import InconsistentTimesError, MissingModalityError, StudyError, UnknownTracerError
from twin.study import load_study, measured_volumes_ml, write_study

ACTIVITIES_MBQ = {"body": 50.0, "liver": 10.0, "kidneys": 8.0, "spleen": 2.0, "salivary_glands": 1.0,
                  "lesion_1": 3.0, "lesion_2": 2.0}
PATIENT_ID = 'synthetic "0" \\ é'  # quotes, backslash and non-ASCII exercise the TOML quoting


# ----------------------------------------------------------------------------- covariates
def test_covariate_defaults_are_those_of_psma_model():
    sig = inspect.signature(pbpk.psma_model).parameters
    c = Covariates()
    assert c.weight_kg == sig["body_weight_kg"].default == 73.0
    assert c.height_cm == sig["height_cm"].default == 176.0
    assert c.haematocrit == sig["haematocrit"].default == 0.4
    assert c.gfr_ml_min == sig["gfr_ml_min"].default == 88.7
    assert c.sex is None and dict(c.organ_volumes_ml) == {} and c.lesion_volumes_ml == ()


@pytest.mark.parametrize("field, value", [
    ("weight_kg", -70.0), ("weight_kg", True), ("height_cm", math.nan), ("gfr_ml_min", 0.0),
    ("haematocrit", 1.0), ("haematocrit", 0.0), ("sex", "X"), ("organ_volumes_ml", {"liver": -1.0}),
    ("organ_volumes_ml", [1.0]), ("lesion_volumes_ml", (1.0, math.inf)), ("lesion_volumes_ml", "12"),
])
def test_covariates_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(StudyError, match=field):
        Covariates(**{field: value})


def test_covariates_dict_round_trip_and_unknown_key():
    c = Covariates(weight_kg=81.5, height_cm=169, sex="F", gfr_ml_min=61.0, haematocrit=0.37,
                   organ_volumes_ml={"kidneys": 290.0, "thyroid": 20.0}, lesion_volumes_ml=[4.0, 7.5])
    back = Covariates.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and hash(back) == hash(c)
    assert back.height_cm == 169.0 and isinstance(back.height_cm, float) and back.lesion_volumes_ml == (4.0, 7.5)
    with pytest.raises(StudyError, match="weight_kgs"):
        Covariates.from_dict({"weight_kgs": 70.0})


def test_model_organs_are_exactly_the_volumes_psma_model_applies():
    """Every organ of MODEL_ORGANS sets psma_model's `<organ>_volume_l` (and no other volume
    changes); organs psma_model would ignore are left out of model_kwargs."""
    volumes = {organ: 100.0 + 10.0 * i for i, organ in enumerate(MODEL_ORGANS)}
    c = Covariates(weight_kg=90.0, organ_volumes_ml={**volumes, "thyroid": 20.0}, lesion_volumes_ml=(3.0,))
    kwargs = c.model_kwargs()
    assert set(kwargs["organ_volumes_ml"]) == set(MODEL_ORGANS)
    assert kwargs["body_weight_kg"] == 90.0 and kwargs["lesion_volumes_ml"] == (3.0,)
    assert set(IMAGED_ORGANS) <= set(MODEL_ORGANS)
    ref = pbpk.psma_model(lesion_volumes_ml=(3.0,))
    model = pbpk.psma_model(lesion_volumes_ml=(3.0,), **{k: v for k, v in kwargs.items() if k != "lesion_volumes_ml"})
    changed = {p.name for p in model.parameters
               if p.name.endswith("_volume_l") and p.value != ref.parameter(p.name).value}
    assert changed == {f"{o}_volume_l" for o in MODEL_ORGANS}
    for organ, v in volumes.items():
        assert model.parameter(f"{organ}_volume_l").value == pytest.approx(v / 1000.0, rel=1e-12)


# ----------------------------------------------------------------------------- study fixtures
@pytest.fixture(scope="module")
def phantom():
    """Small phantom (8 mm voxels), 68Ga PET at 1 h, 177Lu SPECT 24 h after each of two cycles."""
    p = make_patient(seed=0, shape=(50, 38, 104), voxel_mm=8.0, anatomy_sd=0.0)
    pet = p.simulate_pet(ACTIVITIES_MBQ, time_h=1.0, injected_activity_mbq=150, voxel_mm=8.0)
    c1 = p.simulate_spect(ACTIVITIES_MBQ, time_h=24.0, injected_activity_mbq=7400, voxel_mm=8.0,
                          scan_id="spect_c1_24h")
    c2 = p.simulate_spect({k: 0.9 * v for k, v in ACTIVITIES_MBQ.items()}, time_h=24.0, injected_activity_mbq=7400,
                          voxel_mm=8.0, seed=1, scan_id="spect_c2_24h")
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 150.0, 2.0, "Ga-68-PSMA-11"),
                              pbpk.Administration(168.0, 7400.0, 90.0, "Lu-177-PSMA-617"),
                              pbpk.Administration(1176.0, 7400.0, 90.0, "Lu-177-PSMA-617")])
    return p, [pet, c1, c2], schedule


COVARIATES = Covariates(weight_kg=75.0, height_cm=180.0, sex="M", gfr_ml_min=90.0, haematocrit=0.42,
                        organ_volumes_ml={"kidneys": 310.0, "liver": 1800.0}, lesion_volumes_ml=(10.0, 5.0))


def _write(phantom, folder, **changes):
    p, scans, schedule = phantom
    args = dict(patient_id=PATIENT_ID, covariates=COVARIATES, schedule=schedule, ct=p.ct, labels=p.labels,
                region_names=p.region_names, scans=scans, scan_administration=[1, 2, 3])
    args.update(changes)
    return write_study(folder, **args)


@pytest.fixture(scope="module")
def study_dir(phantom, tmp_path_factory):
    return _write(phantom, tmp_path_factory.mktemp("studies") / "s0")


@pytest.fixture(scope="module")
def study(study_dir):
    return load_study(study_dir)


# ----------------------------------------------------------------------------- round trip
def test_round_trip(phantom, study, study_dir):
    p, scans, schedule = phantom
    assert study.folder == study_dir and study.patient_id == PATIENT_ID
    assert study.schedule.administrations == schedule.administrations
    assert study.covariates == COVARIATES
    assert study.region_names == dict(p.region_names)
    assert [s.time_h for s in study.scans] == [1.0, 24.0, 24.0]
    assert [s.scan_id for s in study.scans] == ["pet_1h", "spect_c1_24h", "spect_c2_24h"]
    assert study.scan_administration == (1, 2, 3)
    assert study.tracer_names == ("Ga-68-PSMA-11", "Lu-177-PSMA-617")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(study.labels), p.label_array())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(study.ct.image), sitk.GetArrayFromImage(p.ct.image))
    for got, want in zip(study.scans, scans):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got.image), sitk.GetArrayFromImage(want.image))
        assert (got.modality, got.units, got.tracer, got.nuclide) == (want.modality, want.units, want.tracer,
                                                                      want.nuclide)


def test_table_equals_time_activity_with_cycles(phantom, study):
    p, scans, schedule = phantom
    want = pd.concat([imaging.time_activity(s, p.labels, p.region_names, resample="labels") for s in scans],
                     ignore_index=True)
    got = study.table
    assert list(got.columns) == [*imaging.COLUMNS, "cycle"]
    assert list(got.region) == list(want.region) and list(got.scan_id) == list(want.scan_id)
    np.testing.assert_allclose(got.activity_mbq, want.activity_mbq, rtol=1e-6)
    np.testing.assert_allclose(got.time_h, want.time_h, rtol=0)
    assert set(got.patient) == {PATIENT_ID}
    # cycle: number of administrations of the row's tracer up to and including its own
    admin_of = dict(zip([s.scan_id for s in study.scans], study.scan_administration))
    admins = schedule.administrations
    expected = [sum(a.tracer.name == pbpk.tracer(tr).name and a.time_h <= admins[admin_of[sid] - 1].time_h
                    for a in admins) for sid, tr in zip(got.scan_id, got.tracer)]
    assert list(got.cycle) == expected
    n = len(p.region_names)
    assert list(got.cycle) == [1] * n + [1] * n + [2] * n


def test_table_passes_observations_from_table(study):
    model = study.model()
    rows = study.table[study.table.region.isin(model.region_names)]
    obs = observations_from_table(rows, model, study.schedule)
    np.testing.assert_allclose(obs.times_h, [1.0, 168.0 + 24.0, 1176.0 + 24.0])
    assert obs.n == len(rows) == len(study.table) - 3  # 'body' is not a model region (3 scans)
    assert {"lesion_1", "lesion_2"} <= set(rows.region)
    assert model.parameter("kidneys_volume_l").value == pytest.approx(0.310)


def test_volumes_measured_from_label_map(phantom, tmp_path):
    p, _, _ = phantom
    truth = p.region_volumes_ml()  # the phantom's own voxel count
    folder = _write(phantom, tmp_path / "s", covariates=Covariates(weight_kg=75.0))
    text = (folder / "study.toml").read_text()
    assert "lesion_volumes_ml" in text  # write_study states the volumes it measured
    # drop them: load_study must measure the same from the label map
    (folder / "study.toml").write_text("\n".join(l for l in text.splitlines() if "volumes_ml" not in l) + "\n")
    c = load_study(folder).covariates
    assert set(c.organ_volumes_ml) == {o for o in IMAGED_ORGANS if o in truth}
    for organ, v in c.organ_volumes_ml.items():
        assert v == pytest.approx(truth[organ], rel=1e-12)
    assert c.lesion_volumes_ml == pytest.approx((truth["lesion_1"], truth["lesion_2"]), rel=1e-12)
    organs, lesions = measured_volumes_ml(p.labels, p.region_names)
    assert organs == dict(c.organ_volumes_ml) and lesions == c.lesion_volumes_ml


def test_inline_region_names_phantom_regions_file_and_bare_label_nifti(study_dir, tmp_path, study):
    folder = shutil.copytree(study_dir, tmp_path / "s")
    inline = "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in study.region_names.items())
    text = (folder / "study.toml").read_text()
    (folder / "study.toml").write_text(text.replace('regions = "regions.json"\n', "")
                                       .replace("\n[[scan]]", f"\n[images.region_names]\n{inline}\n\n[[scan]]", 1))
    (folder / "regions.json").unlink()
    (folder / "labels.json").unlink()  # bare NIfTI label map (e.g. TotalSegmentator output)
    s = load_study(folder)
    assert s.region_names == study.region_names
    np.testing.assert_array_equal(sitk.GetArrayFromImage(s.labels), sitk.GetArrayFromImage(study.labels))
    # the file imaging.phantom writes: {"region_names": {...}, ...}
    (folder / "study.toml").write_text(text)
    (folder / "regions.json").write_text(json.dumps({"patient_id": "x", "seed": 0, "region_names":
                                                     {str(k): v for k, v in study.region_names.items()}}))
    assert load_study(folder).region_names == study.region_names


# ----------------------------------------------------------------------------- bad folders
def _replace(old, new, count=1):
    def edit(folder):
        text = (folder / "study.toml").read_text()
        assert old in text, old
        (folder / "study.toml").write_text(text.replace(old, new, count))
    return edit


def _drop_scans(folder):
    text = (folder / "study.toml").read_text()
    (folder / "study.toml").write_text(text[: text.index("[[scan]]")])


def _late_scan(folder):
    """Cycle-1 SPECT at 1100 h after its administration (168 h): past cycle 2 (1176 h)."""
    sidecar = folder / "scan_02_spect_c1_24h.json"
    meta = json.loads(sidecar.read_text())
    meta["time_h"] = 1100.0
    sidecar.write_text(json.dumps(meta))
    _replace('file = "scan_02_spect_c1_24h.nii.gz"\nadministration = 2\ntime_h = 24.0',
             'file = "scan_02_spect_c1_24h.nii.gz"\nadministration = 2\ntime_h = 1100.0')(folder)


def _shifted_labels(folder):
    lab = sitk.ReadImage(str(folder / "labels.nii.gz"))
    lab.SetOrigin(tuple(o + 4.0 for o in lab.GetOrigin()))
    sitk.WriteImage(lab, str(folder / "labels.nii.gz"))


def _regions(folder):
    names = json.loads((folder / "regions.json").read_text())
    names["99"] = "thyroid"
    (folder / "regions.json").write_text(json.dumps(names))


BAD_CASES = {
    "no study.toml": (lambda f: (f / "study.toml").unlink(), StudyError, "study.toml"),
    "toml syntax": (_replace("[images]", "[images"), StudyError, "not valid TOML"),
    "no patient id": (_replace('id = "', 'name = "'), StudyError, r"\[patient\] field 'id'"),
    "unknown patient key": (_replace("sex = ", "gender = "), StudyError, "gender"),
    "unknown administration key": (_replace("ligand_nmol = 2.0", "ligand_nmol = 2.0\nvolume_ml = 5.0"),
                                   StudyError, r"\[\[administration\]\] #1.*volume_ml"),
    "unknown top-level key": (_replace("[images]", "[extra]\nx = 1\n\n[images]"), StudyError, "extra"),
    "ligand below carrier-free": (_replace("ligand_nmol = 90.0", "ligand_nmol = 0.0"), StudyError,
                                  r"#2.*ligand_nmol"),
    "no ct file": (lambda f: (f / "ct.nii.gz").unlink(), MissingModalityError, r"field 'ct'.*ct\.nii\.gz"),
    "no labels entry": (_replace('labels = "labels.nii.gz"\n', ""), MissingModalityError, "'labels'"),
    "no scans": (_drop_scans, MissingModalityError, r"\[\[scan\]\]"),
    "missing scan file": (_replace("scan_03_spect_c2_24h.nii.gz", "spect_c3.nii.gz"), MissingModalityError,
                          r"\[\[scan\]\] #3.*spect_c3\.nii\.gz"),
    "unknown tracer": (_replace('"Lu-177-PSMA-617"', '"Lu-177-PSMA-999"'), UnknownTracerError,
                       r"#2 field 'tracer'.*PSMA-999"),
    "scan tracer differs": (_replace("administration = 1", "administration = 2"), StudyError,
                            r"#1.*field 'tracer'.*Ga-68-PSMA-11"),
    "administrations out of order": (_replace("time_h = 168.0", "time_h = 2000.0"), InconsistentTimesError,
                                     r"#3.*time order"),
    "negative scan time": (_replace("time_h = 1.0", "time_h = -1.0"), InconsistentTimesError,
                           r"\[\[scan\]\] #1 field 'time_h'"),
    "toml time disagrees": (_replace("time_h = 1.0", "time_h = 1.5"), InconsistentTimesError,
                            r"scan_01_pet_1h.*1\.5 h.*image says 1\.0 h"),
    "scan sees next cycle": (_late_scan, InconsistentTimesError, r"scan_02.*next cycle"),
    "labels off CT grid": (_shifted_labels, StudyError, r"labels.*not on the CT grid"),
    "named label without voxels": (_regions, StudyError, r"\[99\].*thyroid"),
    "lesion count": (_replace("lesion_volumes_ml = [10.0, 5.0]", "lesion_volumes_ml = [10.0]"), StudyError,
                     "lesion_volumes_ml has 1 entries"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_folder_raises_specific_error(case, study_dir, tmp_path):
    edit, error, pattern = BAD_CASES[case]
    folder = shutil.copytree(study_dir, tmp_path / "s")
    edit(folder)
    with pytest.raises(error, match=pattern) as info:
        load_study(folder)
    assert str(folder) in str(info.value)  # names the file
    if error is StudyError and case == "scan tracer differs":
        assert not isinstance(info.value, InconsistentTimesError)


# ----------------------------------------------------------------------------- writing
def test_write_refuses_existing_folder_and_overwrites_on_request(phantom, study_dir, tmp_path):
    before = (study_dir / "study.toml").read_bytes()
    with pytest.raises(StudyError, match="exists"):
        _write(phantom, study_dir)
    assert (study_dir / "study.toml").read_bytes() == before
    folder = shutil.copytree(study_dir, tmp_path / "s")
    _write(phantom, folder, patient_id="other", overwrite=True)
    assert load_study(folder).patient_id == "other"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["s"]  # no temporary folders left


def test_failed_write_leaves_no_folder(phantom, tmp_path, monkeypatch):
    calls = []
    real = imaging.write_nifti

    def failing(scan, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real(scan, path)

    monkeypatch.setattr(imaging, "write_nifti", failing)
    with pytest.raises(OSError, match="disk full"):
        _write(phantom, tmp_path / "s")
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("changes, error, pattern", [
    (dict(scan_administration=[2, 2, 3]), StudyError, r"scans\[0\].*tracer"),
    (dict(scan_administration=[1, 2]), StudyError, "2 entries for 3 scans"),
    (dict(scan_administration=[1, 2, 4]), StudyError, r"scan_administration\[2\]"),
    (dict(scans=[]), MissingModalityError, "scans"),
    (dict(covariates=Covariates(lesion_volumes_ml=(1.0,))), StudyError, "lesion_volumes_ml has 1"),
    (dict(region_names={1: "body", 99: "thyroid"}), StudyError, "thyroid"),
])
def test_write_validates_before_writing(phantom, tmp_path, changes, error, pattern):
    with pytest.raises(error, match=pattern):
        _write(phantom, tmp_path / "s", **changes)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_scan_after_next_cycle(phantom, tmp_path):
    p, scans, schedule = phantom
    late = scans[1].with_image(scans[1].image, time_h=1008.0)  # 168 + 1008 = 1176 h: cycle 2 starts
    with pytest.raises(InconsistentTimesError, match="next cycle"):
        _write(phantom, tmp_path / "s", scans=[scans[0], late, scans[2]])
    assert list(tmp_path.iterdir()) == []


def test_dicom_scan_folder(phantom, study_dir, tmp_path, study):
    """CT, label map and a scan given as DICOM series folders; the scan's time comes from
    the DICOM timing tags."""
    p, scans, _ = phantom
    folder = shutil.copytree(study_dir, tmp_path / "s")
    imaging.write_dicom_series(scans[0], folder / "pet_dicom")
    imaging.write_dicom_series(p.ct, folder / "ct_dicom")
    imaging.write_dicom_series(p.label_scan(), folder / "labels_dicom")
    _replace('file = "scan_01_pet_1h.nii.gz"', 'file = "pet_dicom"')(folder)
    _replace('ct = "ct.nii.gz"\nlabels = "labels.nii.gz"', 'ct = "ct_dicom"\nlabels = "labels_dicom"')(folder)
    s = load_study(folder)
    assert s.ct.modality == "CT" and "ct_dicom" in s.ct.source
    np.testing.assert_array_equal(sitk.GetArrayFromImage(s.labels), p.label_array())
    assert s.scans[0].source is not None and "pet_dicom" in s.scans[0].source
    assert s.scans[0].time_h == pytest.approx(1.0, abs=1e-3)
    pet_rows = s.table[s.table.scan_id == s.scans[0].scan_id]
    # DICOM stores rescaled integers: agreement within the quantisation (0.001 % of the total)
    np.testing.assert_allclose(pet_rows.activity_mbq, study.table.activity_mbq[: len(pet_rows)], rtol=1e-4,
                               atol=1e-5 * sum(ACTIVITIES_MBQ.values()))


def _drop_sidecar_time(folder):
    sidecar = folder / "scan_01_pet_1h.json"
    meta = json.loads(sidecar.read_text())
    del meta["time_h"]
    sidecar.write_text(json.dumps(meta))


def test_scan_time_from_study_file_when_the_image_has_none(study_dir, tmp_path, study):
    folder = shutil.copytree(study_dir, tmp_path / "s")
    _drop_sidecar_time(folder)
    s = load_study(folder)
    assert s.scans[0].time_h == 1.0
    np.testing.assert_allclose(s.table.activity_mbq, study.table.activity_mbq, rtol=0)
    _replace("time_h = 1.0\n", "")(folder)  # now neither the image nor study.toml has it
    with pytest.raises(StudyError, match=r"\[\[scan\]\] #1.*time_h"):
        load_study(folder)


# ----------------------------------------------------------------------------- partial volume
# Independent truth: the phantom's known activities (ACTIVITIES_MBQ, MBq at scan time) and the
# tables imaging.time_activity gives without correction.
LESIONS = ("lesion_1", "lesion_2")
ORGANS = ("body", "liver", "kidneys", "spleen", "salivary_glands")


@pytest.fixture(scope="module")
def fine_pv_study(tmp_path_factory):
    """4 mm phantom (the PSF is well sampled: sigma 0.64 voxel for PET, 1.2 for SPECT), a PET
    and a SPECT with the phantom's default PSFs, both on the phantom's 4 mm grid (so the
    lesion VOIs are the true lesions, as the sphere model assumes), written with
    resolution_fwhm_mm; returns (corrected study, same folder loaded without the key)."""
    from imaging.phantom.patient import PET_FWHM_MM, SPECT_FWHM_MM

    p = make_patient(seed=0, shape=(100, 76, 208), voxel_mm=4.0, anatomy_sd=0.0)
    pet = p.simulate_pet(ACTIVITIES_MBQ, time_h=1.0, injected_activity_mbq=150, fwhm_mm=PET_FWHM_MM, voxel_mm=4.0)
    spect = p.simulate_spect(ACTIVITIES_MBQ, time_h=24.0, injected_activity_mbq=7400, fwhm_mm=SPECT_FWHM_MM,
                             voxel_mm=4.0)
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 150.0, 2.0, "Ga-68-PSMA-11"),
                              pbpk.Administration(168.0, 7400.0, 90.0, "Lu-177-PSMA-617")])
    base = tmp_path_factory.mktemp("pv")
    folder = write_study(base / "with", patient_id="pv", covariates=Covariates(), schedule=schedule, ct=p.ct,
                         labels=p.labels, region_names=p.region_names, scans=[pet, spect],
                         scan_administration=[1, 2], resolution_fwhm_mm=[PET_FWHM_MM, SPECT_FWHM_MM])
    plain = shutil.copytree(folder, base / "without")
    text = (plain / "study.toml").read_text()
    (plain / "study.toml").write_text("\n".join(l for l in text.splitlines()
                                                if not l.startswith("resolution_fwhm_mm")) + "\n")
    return load_study(folder), load_study(plain), (PET_FWHM_MM, SPECT_FWHM_MM)


def test_recovery_correction_brings_lesions_to_the_true_activity(fine_pv_study):
    corrected, plain, fwhms = fine_pv_study
    assert corrected.scan_resolution_fwhm_mm == fwhms and plain.scan_resolution_fwhm_mm == (None, None)
    c = corrected.table.set_index(["scan_id", "region"])
    u = plain.table.set_index(["scan_id", "region"])
    assert list(c.index) == list(u.index)
    for scan in corrected.scans:
        for lesion in LESIONS:
            true = ACTIVITIES_MBQ[lesion]
            got, raw = c.loc[(scan.scan_id, lesion)], u.loc[(scan.scan_id, lesion)]
            # blur spills 20-50 % out of 5-10 mL lesions; the sphere RC recovers it to within 5 %
            assert abs(raw.activity_mbq / true - 1) > 0.15
            assert abs(got.activity_mbq / true - 1) < 0.05
            assert abs(got.activity_mbq - true) < abs(raw.activity_mbq - true) / 3
            assert 0.4 < got.recovery_coefficient < 1.0 and raw.recovery_coefficient == 1.0
            # corrected = measured / RC (activity, mean and uncertainty), volume unchanged
            np.testing.assert_allclose(got.activity_mbq * got.recovery_coefficient, raw.activity_mbq, rtol=1e-12)
            np.testing.assert_allclose(got.mean_bqml * got.recovery_coefficient, raw.mean_bqml, rtol=1e-12)
            np.testing.assert_allclose(got.activity_uncertainty_mbq * got.recovery_coefficient,
                                       raw.activity_uncertainty_mbq, rtol=1e-12)
            assert got.volume_ml == raw.volume_ml
        for organ in ORGANS:  # organs are not corrected: identical rows
            assert c.loc[(scan.scan_id, organ)].equals(u.loc[(scan.scan_id, organ)])
            assert c.loc[(scan.scan_id, organ)].recovery_coefficient == 1.0
    # wider PSF (SPECT 11 mm vs PET 6 mm) and smaller lesion -> smaller RC
    pet_id, spect_id = (s.scan_id for s in corrected.scans)
    for lesion in LESIONS:
        assert c.loc[(spect_id, lesion)].recovery_coefficient < c.loc[(pet_id, lesion)].recovery_coefficient
    for scan_id in (pet_id, spect_id):
        assert c.loc[(scan_id, "lesion_2")].recovery_coefficient < c.loc[(scan_id, "lesion_1")].recovery_coefficient
    # the RC is that of a sphere of the VOI volume with the scan's FWHM
    for (scan_id, fwhm) in zip((pet_id, spect_id), fwhms):
        for lesion in LESIONS:
            row = c.loc[(scan_id, lesion)]
            assert row.recovery_coefficient == pytest.approx(
                imaging.sphere_recovery_coefficient(row.volume_ml, fwhm), rel=1e-12)


def test_study_without_resolution_loads_as_before(phantom, study, study_dir):
    """No resolution_fwhm_mm: the table is exactly imaging.time_activity without correction."""
    p, scans, _ = phantom
    assert "resolution_fwhm_mm" not in (study_dir / "study.toml").read_text()
    assert study.scan_resolution_fwhm_mm == (None, None, None)
    want = pd.concat([imaging.time_activity(s, p.labels, p.region_names, resample="labels") for s in scans],
                     ignore_index=True)
    pd.testing.assert_frame_equal(study.table.drop(columns=["cycle", "patient"]),
                                  want.drop(columns=["patient"]), check_exact=True)
    assert (study.table.recovery_coefficient == 1.0).all()


@pytest.mark.parametrize("value", ["0.0", "-6.0", '"6.0"', "nan", "inf", "true", "[6.0]"])
def test_bad_resolution_raises_study_error_naming_the_key(study_dir, tmp_path, value):
    folder = shutil.copytree(study_dir, tmp_path / "s")
    _replace('file = "scan_02_spect_c1_24h.nii.gz"\nadministration = 2\ntime_h = 24.0',
             'file = "scan_02_spect_c1_24h.nii.gz"\nadministration = 2\ntime_h = 24.0\n'
             f'resolution_fwhm_mm = {value}')(folder)
    with pytest.raises(StudyError, match=r"\[\[scan\]\] #2 field 'resolution_fwhm_mm'.*FWHM in mm") as info:
        load_study(folder)
    assert str(folder / "study.toml") in str(info.value)


def test_resolution_round_trip_per_scan(phantom, tmp_path):
    """write_study -> load_study keeps each scan's key (None: no key, no correction)."""
    folder = _write(phantom, tmp_path / "s", resolution_fwhm_mm=[6.0, None, 11.5])
    text = (folder / "study.toml").read_text()
    assert text.count("resolution_fwhm_mm = ") == 2 and "resolution_fwhm_mm = 11.5" in text
    s = load_study(folder)
    assert s.scan_resolution_fwhm_mm == (6.0, None, 11.5)
    rc = s.table.set_index(["scan_id", "region"]).recovery_coefficient
    for scan_id, fwhm in zip(("pet_1h", "spect_c1_24h", "spect_c2_24h"), (6.0, None, 11.5)):
        for region in (*LESIONS, *ORGANS):
            assert (rc[(scan_id, region)] < 1.0) == (fwhm is not None and region in LESIONS)


@pytest.mark.parametrize("value, pattern", [
    ([6.0, 0.0, 11.0], r"scans\[1\] field 'resolution_fwhm_mm'"),
    ([6.0, math.nan, 11.0], r"scans\[1\] field 'resolution_fwhm_mm'"),
    ([6.0, "11", 11.0], r"scans\[1\] field 'resolution_fwhm_mm'"),
    ([6.0, 11.0], "resolution_fwhm_mm: 2 entries for 3 scans"),
    (6.0, "resolution_fwhm_mm: 6.0; expected a sequence"),
])
def test_write_rejects_bad_resolution(phantom, tmp_path, value, pattern):
    with pytest.raises(StudyError, match=pattern):
        _write(phantom, tmp_path / "s", resolution_fwhm_mm=value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_make_study_writes_the_phantom_psf_and_spect_lesions_move_to_truth(tmp_path, monkeypatch):
    """twin.synthetic.make_study (8 mm phantom, as `twin demo --quick`) records the FWHM the
    phantom used for each scan; the SPECT lesion activities (11 mm PSF resolved on the 8 mm
    phantom) move to the truth, the true-model activities make_study imaged (recorded from
    its pbpk.simulate call); organs unchanged.  (The 6 mm PET PSF is under-sampled on 8 mm
    voxels, sigma 0.32 voxel, so its lesions are over-corrected: see twin.synthetic; not
    asserted.)"""
    import twin.synthetic as synthetic
    from imaging.phantom.patient import PET_FWHM_MM, SPECT_FWHM_MM

    recorded = []
    real_simulate = pbpk.simulate

    def spy(*args, **kwargs):  # the real simulation; keeps its result as the truth
        recorded.append(real_simulate(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(synthetic.pbpk, "simulate", spy)
    syn = synthetic.make_study(tmp_path / "s", voxel_mm=8.0)
    monkeypatch.undo()
    assert len(recorded) == 1
    s = load_study(syn.folder)
    assert s.scan_resolution_fwhm_mm == (PET_FWHM_MM, SPECT_FWHM_MM, SPECT_FWHM_MM)
    text = (syn.folder / "study.toml").read_text()
    assert text.count("resolution_fwhm_mm = ") == 3
    (syn.folder / "study.toml").write_text("\n".join(l for l in text.splitlines()
                                                     if not l.startswith("resolution_fwhm_mm")) + "\n")
    plain = load_study(syn.folder)
    true = recorded[0].activity_of("Lu-177")  # at times (PET, SPECT 1, SPECT 2)
    c = s.table.set_index(["scan_id", "region"])
    u = plain.table.set_index(["scan_id", "region"])
    assert [sc.scan_id for sc in s.scans] == ["pet_1h", "spect_24h", "spect_96h"]
    for k, scan in enumerate(s.scans[1:], start=1):
        for lesion in LESIONS:
            t = float(true[lesion][k])
            raw, got = u.loc[(scan.scan_id, lesion)].activity_mbq, c.loc[(scan.scan_id, lesion)].activity_mbq
            assert raw < 0.7 * t and abs(got - t) < 0.3 * abs(raw - t)  # measured: -37..-43 % -> +2..+10 %
        for organ in ("kidneys", "liver", "salivary_glands"):
            assert c.loc[(scan.scan_id, organ)].activity_mbq == u.loc[(scan.scan_id, organ)].activity_mbq
