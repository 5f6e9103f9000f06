"""NIfTI and DICOM round trips of every modality, timing tags, and bad-input errors."""

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import imaging
from imaging import GeometryMismatchError, ImagingError, MissingTagError, Scan, UnitsError

# A proper rotation (det +1) about an oblique axis: non-identity direction.
_AXIS = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
_ANGLE = 0.4
_K = np.array([[0, -_AXIS[2], _AXIS[1]], [_AXIS[2], 0, -_AXIS[0]], [-_AXIS[1], _AXIS[0], 0]])
DIRECTION = np.eye(3) + math.sin(_ANGLE) * _K + (1 - math.cos(_ANGLE)) * _K @ _K
SPACING = (2.1, 3.3, 4.7)
ORIGIN = (-120.5, 33.25, 870.0)
SHAPE_ZYX = (7, 9, 11)


def _image(values: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(values)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(tuple(DIRECTION.ravel()))
    return img


def _activity(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 5000.0, SHAPE_ZYX)).astype(np.float32)  # Bq/mL, continuous values


def make_scans():
    rng = np.random.default_rng(1)
    common = dict(patient_id="P001", patient_weight_kg=81.5)
    pet = Scan(_image(_activity()), "PT", "BQML", nuclide="Ga-68", tracer="68Ga-PSMA-11", time_h=1.05,
               injected_activity_mbq=151.3, decay_correction="START", acquisition_duration_s=180.0,
               scan_id="pet", **common)
    counts = rng.poisson(40.0, SHAPE_ZYX).astype(np.float32)
    spect = Scan(_image(counts), "NM", "CNTS", nuclide="Lu-177", tracer="177Lu-PSMA-617", time_h=24.25,
                 injected_activity_mbq=7400.0, acquisition_duration_s=1200.0, calibration_cps_per_mbq=9.7,
                 scan_id="spect24", **common)
    ct = Scan(_image(rng.integers(-1000, 1500, SHAPE_ZYX).astype(np.float32)), "CT", "HU", scan_id="ct", **common)
    seg = Scan(_image(rng.integers(0, 5, SHAPE_ZYX).astype(np.uint16)), "SEG", "LABEL", scan_id="labels", **common)
    return {"PT": pet, "NM": spect, "CT": ct, "SEG": seg}


def assert_same_geometry(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def assert_same_values(a: Scan, b: Scan):
    x, y = sitk.GetArrayFromImage(a.image).astype(float), sitk.GetArrayFromImage(b.image).astype(float)
    if a.units in ("LABEL", "HU", "CNTS"):
        np.testing.assert_array_equal(x, y)
    else:
        assert abs(y.sum() / x.sum() - 1.0) < 1e-3  # total activity within 0.1 %
        np.testing.assert_allclose(y, x, atol=x.max() / 32767.0)  # per-voxel: half a quantisation step


@pytest.mark.parametrize("modality", ["PT", "NM", "CT", "SEG"])
def test_nifti_round_trip(tmp_path, modality):
    scan = make_scans()[modality]
    path = imaging.write_nifti(scan, tmp_path / f"{modality}.nii.gz")
    back = imaging.read_scan(path)
    assert_same_geometry(scan.image, back.image)
    assert_same_values(scan, back)
    for field in ("modality", "units", "nuclide", "tracer", "time_h", "injected_activity_mbq", "decay_correction",
                  "acquisition_duration_s", "patient_weight_kg", "patient_id", "scan_id", "calibration_cps_per_mbq"):
        assert getattr(back, field) == getattr(scan, field), field
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.parametrize("modality", ["PT", "NM", "CT", "SEG"])
def test_dicom_round_trip(tmp_path, modality):
    scan = make_scans()[modality]
    folder = imaging.write_dicom_series(scan, tmp_path / modality)
    back = imaging.read_scan(folder)
    assert (back.modality, back.units) == (scan.modality, scan.units)
    assert_same_geometry(scan.image, back.image)
    assert_same_values(scan, back)
    assert back.patient_id == "P001" and back.patient_weight_kg == pytest.approx(81.5)
    if modality in ("PT", "NM"):
        assert back.time_h == pytest.approx(scan.time_h, abs=1e-6)
        assert back.injected_activity_mbq == pytest.approx(scan.injected_activity_mbq, rel=1e-9)
        assert back.nuclide == scan.nuclide and back.tracer == scan.tracer
        assert back.decay_correction == scan.decay_correction
        assert back.acquisition_duration_s == pytest.approx(scan.acquisition_duration_s)


def test_dicom_geometry_agrees_with_simpleitk_reader(tmp_path):
    """Independent check of the pydicom geometry: SimpleITK/GDCM reads the same series."""
    scans = make_scans()
    for modality in ("PT", "CT"):
        folder = imaging.write_dicom_series(scans[modality], tmp_path / modality)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        ref = reader.Execute()
        ours = imaging.read_scan(folder).image
        assert_same_geometry(ref, ours)
        np.testing.assert_allclose(sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(ours),
                                   rtol=1e-5, atol=1e-3 * float(sitk.GetArrayFromImage(ours).max()))
    # NM: one multi-frame file; GDCM reads the geometry from DetectorInformationSequence.
    folder = imaging.write_dicom_series(scans["NM"], tmp_path / "NM")
    ref = sitk.ReadImage(str(next(folder.iterdir())))
    assert_same_geometry(ref, imaging.read_scan(folder).image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(scans["NM"].image))


def test_pet_tags_written(tmp_path):
    scan = make_scans()["PT"]
    injection = dt.datetime(2026, 3, 2, 8, 30, 15)
    folder = imaging.write_dicom_series(scan, tmp_path / "pet", injection_datetime=injection)
    files = sorted(folder.iterdir())
    assert len(files) == SHAPE_ZYX[0]
    ds = pydicom.dcmread(files[0])
    item = ds.RadiopharmaceuticalInformationSequence[0]
    assert ds.Modality == "PT" and ds.Units == "BQML" and ds.DecayCorrection == "START"
    assert "DECY" in ds.CorrectedImage
    assert float(item.RadionuclideTotalDose) == pytest.approx(151.3e6)  # Bq for PET
    assert float(item.RadionuclideHalfLife) == pytest.approx(67.71 * 60, rel=2e-3)  # Ga-68: 67.71 min (ICRP-107)
    assert item.RadiopharmaceuticalStartDateTime.startswith("20260302083015")
    acq = injection + dt.timedelta(hours=1.05)
    assert ds.AcquisitionDate == acq.strftime("%Y%m%d") and ds.SeriesTime.startswith(acq.strftime("%H%M%S"))
    # DecayFactor for START = lambda T / (1 - exp(-lambda T)), T = 180 s.
    lam = math.log(2) / (67.71 * 60)
    assert float(ds.DecayFactor) == pytest.approx(lam * 180 / (1 - math.exp(-lam * 180)), rel=1e-4)
    slopes = {float(pydicom.dcmread(f).RescaleSlope) for f in files}
    assert len(slopes) > 1  # per-slice rescale


def _strip(folder: Path, fn):
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


def _drop_datetimes(ds):
    del ds.AcquisitionDateTime
    del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime


@pytest.mark.parametrize("modality", ["PT", "NM"])
def test_timing_from_date_and_time_fallback(tmp_path, modality):
    """Without the DT tags, time after injection comes from SeriesDate + RadiopharmaceuticalStartTime
    and AcquisitionDate + AcquisitionTime, then SeriesDate + SeriesTime."""
    scan = make_scans()[modality]
    scan = scan.with_image(scan.image, time_h=2.75)
    folder = imaging.write_dicom_series(scan, tmp_path / "s", injection_datetime=dt.datetime(2026, 1, 1, 7, 10, 30))
    assert imaging.read_scan(folder).time_h == pytest.approx(2.75, abs=1e-6)  # DT tags
    _strip(folder, _drop_datetimes)
    assert imaging.read_scan(folder).time_h == pytest.approx(2.75, abs=1e-6)  # date + time
    _strip(folder, lambda ds: (delattr(ds, "AcquisitionDate"), delattr(ds, "AcquisitionTime")))
    assert imaging.read_scan(folder).time_h == pytest.approx(2.75, abs=1e-6)  # series date + time


def test_date_time_fallback_over_midnight_is_refused(tmp_path):
    """Injection 23:30, scan 00:30 next day: without the DT tag the injection date is unknown;
    the reader refuses a negative time instead of returning it."""
    scan = make_scans()["PT"]
    folder = imaging.write_dicom_series(scan.with_image(scan.image, time_h=1.0), tmp_path / "pet",
                                        injection_datetime=dt.datetime(2026, 1, 1, 23, 30))
    assert imaging.read_scan(folder).time_h == pytest.approx(1.0)
    _strip(folder, _drop_datetimes)
    with pytest.raises(ImagingError, match=r"RadiopharmaceuticalStartDateTime.*time_h"):
        imaging.read_scan(folder)
    assert imaging.read_scan(folder, time_h=1.0).time_h == 1.0


def test_missing_timing_tags_raise_naming_file_and_tag(tmp_path):
    folder = imaging.write_dicom_series(make_scans()["PT"], tmp_path / "pet")

    def drop(ds):
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.RadiopharmaceuticalStartDateTime
        del item.RadiopharmaceuticalStartTime

    _strip(folder, drop)
    with pytest.raises(MissingTagError, match=r"pet.*RadiopharmaceuticalStartDateTime"):
        imaging.read_scan(folder)
    assert imaging.read_scan(folder, time_h=1.05).time_h == 1.05


def test_unknown_units_raise(tmp_path):
    folder = imaging.write_dicom_series(make_scans()["PT"], tmp_path / "pet")
    _strip(folder, lambda ds: setattr(ds, "Units", "PROPCPS"))
    with pytest.raises(UnitsError, match=r"Units \(0054,1001\) = 'PROPCPS'"):
        imaging.read_scan(folder)
    path = imaging.write_nifti(make_scans()["PT"], tmp_path / "pet.nii.gz")
    meta = json.loads(path.with_name("pet.json").read_text())
    meta["units"] = "kBq/cc"
    path.with_name("pet.json").write_text(json.dumps(meta))
    with pytest.raises(UnitsError, match="kBq/cc"):
        imaging.read_scan(path)


def test_nifti_without_sidecar_needs_modality(tmp_path):
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(_image(_activity()), str(path))
    with pytest.raises(MissingTagError, match=r"x.json.*modality"):
        imaging.read_scan(path)
    with pytest.raises(MissingTagError, match="time_h"):
        imaging.read_scan(path, modality="PT", units="BQML")
    scan = imaging.read_scan(path, modality="PT", units="BQML", time_h=2.0)
    assert scan.time_h == 2.0


def test_writer_failure_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = pydicom.dataset.Dataset.save_as

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", failing)
    with pytest.raises(OSError, match="simulated"):
        imaging.write_dicom_series(make_scans()["PT"], tmp_path / "pet")
    assert calls["n"] == 3
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary


def test_writer_refuses_existing_folder_and_nan(tmp_path):
    scan = make_scans()["CT"]
    imaging.write_dicom_series(scan, tmp_path / "ct")
    with pytest.raises(FileExistsError):
        imaging.write_dicom_series(scan, tmp_path / "ct")
    imaging.write_dicom_series(scan, tmp_path / "ct", overwrite=True)
    bad = sitk.GetArrayFromImage(make_scans()["PT"].image)
    bad[1, 2, 3] = np.nan
    with pytest.raises(ImagingError, match="NaN"):
        imaging.write_dicom_series(make_scans()["PT"].with_image(_image(bad)), tmp_path / "nan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def test_non_uniform_slices_raise(tmp_path):
    folder = imaging.write_dicom_series(make_scans()["CT"], tmp_path / "ct")
    f = sorted(folder.iterdir())[3]
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [float(v) + 1.0 for v in ds.ImagePositionPatient]
    ds.save_as(f)
    with pytest.raises(GeometryMismatchError, match="spacing"):
        imaging.read_scan(folder)


@pytest.mark.parametrize("convention", ["START", "ADMIN", "NONE"])
def test_dicom_decay_conventions_read_back_to_one_physical_activity(tmp_path, convention):
    """A PET written in each DecayCorrection convention reads back to the same activity at scan start."""
    pet = make_scans()["PT"]  # START
    variant = imaging.decay_correct(pet, convention)
    back = imaging.read_scan(imaging.write_dicom_series(variant, tmp_path / convention))
    assert back.decay_correction == convention
    a = sitk.GetArrayFromImage(imaging.to_bqml(back, "START").image).astype(float)
    assert a.sum() == pytest.approx(sitk.GetArrayFromImage(pet.image).astype(float).sum(), rel=1e-4)


def test_suv_pet_and_quantitative_spect_round_trip(tmp_path):
    scans = make_scans()
    suv = imaging.bqml_to_suv(scans["PT"])
    back = imaging.read_scan(imaging.write_dicom_series(suv, tmp_path / "suv"))
    assert back.units == "SUVbw"
    assert pydicom.dcmread(next((tmp_path / "suv").iterdir())).Units == "GML"
    assert_same_values(suv, back)
    nm = imaging.counts_to_bqml(scans["NM"])
    back = imaging.read_scan(imaging.write_dicom_series(nm, tmp_path / "nm"))
    assert (back.modality, back.units) == ("NM", "BQML")
    assert_same_geometry(nm.image, back.image)
    assert_same_values(nm, back)


def test_unknown_override_is_refused(tmp_path):
    folder = imaging.write_dicom_series(make_scans()["CT"], tmp_path / "ct")
    with pytest.raises(ImagingError, match="time_hours"):
        imaging.read_scan(folder, time_hours=3.0)


def test_nm_negative_slice_spacing(tmp_path):
    """Frames stepping along -normal (negative SpacingBetweenSlices) keep their physical positions."""
    scan = make_scans()["NM"]
    folder = imaging.write_dicom_series(scan, tmp_path / "nm")
    f = next(folder.iterdir())
    ds = pydicom.dcmread(f)
    arr = ds.pixel_array[::-1].copy()  # frames in reverse order ...
    last = np.array(scan.image.TransformIndexToPhysicalPoint((0, 0, SHAPE_ZYX[0] - 1)))
    ds.DetectorInformationSequence[0].ImagePositionPatient = [float(v) for v in last]  # ... from the last position
    ds.SpacingBetweenSlices = -SPACING[2]
    ds.PixelData = arr.tobytes()
    ds.save_as(f)
    back = imaging.read_scan(folder)
    a = sitk.GetArrayFromImage(back.image)
    for idx in [(0, 0, 0), (3, 4, 5), (10, 8, 6)]:
        p = scan.image.TransformIndexToPhysicalPoint(idx)
        assert back.image[back.image.TransformPhysicalPointToIndex(p)] == scan.image[idx]
    assert a.sum() == pytest.approx(sitk.GetArrayFromImage(scan.image).sum())


def test_atomic_outputs_get_the_permissions_of_normally_created_ones(tmp_path):
    """mkstemp / mkdtemp make private (0600 / 0700) temporaries; the renamed results get
    0666 / 0777 less the umask, like files and folders created directly."""
    import os

    from imaging.atomic import atomic_file, atomic_folder

    old = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "table.csv") as tmp:
            tmp.write_text("a\n1\n")
        with atomic_folder(tmp_path / "series") as folder:
            (folder / "x.txt").write_text("x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "table.csv").stat().st_mode & 0o777) == "0o640"
    assert oct((tmp_path / "series").stat().st_mode & 0o777) == "0o750"
