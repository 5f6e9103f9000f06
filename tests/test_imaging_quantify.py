"""SUV <-> Bq/mL, decay-correction conventions, counts -> Bq/mL (calibration and RWVM)."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

import imaging
from imaging import InvalidVoxelError, MissingTagError, Scan, UnitsError
from imaging import quantify

# Lu-177 half-life 6.647 d (ICRP-107); Ga-68 67.71 min (ICRP-107).  Typed here, independent of dose.nuclides.
LU177_HALF_LIFE_H = 6.647 * 24.0
GA68_HALF_LIFE_H = 67.71 / 60.0


def _scan(values, **kw):
    img = sitk.GetImageFromArray(np.asarray(values, dtype=np.float32))
    img.SetSpacing((4.0, 4.0, 5.0))
    base = dict(nuclide="Lu-177", time_h=24.0, injected_activity_mbq=7400.0, patient_weight_kg=80.0,
                acquisition_duration_s=1800.0)
    base.update(kw)
    return Scan(img, kw.pop("modality", "PT"), kw.pop("units", "BQML"), **{k: v for k, v in base.items()
                                                                          if k not in ("modality", "units")})


def _arr(scan):
    return sitk.GetArrayFromImage(scan.image).astype(float)


def test_suv_round_trip_and_value():
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 5e4, (4, 5, 6))
    scan = _scan(c, decay_correction="START")
    suv = imaging.bqml_to_suv(scan)
    assert suv.units == "SUVbw"
    # Direct formula: SUV = C * W[g] / (D * exp(-lambda t)) for START-corrected voxels.
    d_start = 7400e6 * 2 ** (-24.0 / LU177_HALF_LIFE_H)
    np.testing.assert_allclose(_arr(suv), c * 80e3 / d_start, rtol=2e-5)
    back = imaging.suv_to_bqml(suv)
    np.testing.assert_allclose(_arr(back), c, rtol=1e-5)
    assert back.units == "BQML" and back.decay_correction == "START"


def test_suv_is_the_same_in_every_convention():
    """Uniform 1 MBq in the body weight -> SUV = 1 whatever the decay correction reference."""
    w_kg, a_mbq, t_h = 70.0, 200.0, 1.5
    lam = math.log(2) / GA68_HALF_LIFE_H
    c_admin = a_mbq * 1e6 / (w_kg * 1000.0)  # Bq/mL of a uniform 1 g/mL body, at administration
    c_start = c_admin * math.exp(-lam * t_h)
    T_h = 600 / 3600
    c_none = c_start * (1 - math.exp(-lam * T_h)) / (lam * T_h)
    for conv, c in (("ADMIN", c_admin), ("START", c_start), ("NONE", c_none)):
        scan = _scan(np.full((2, 2, 2), c), nuclide="Ga-68", time_h=t_h, injected_activity_mbq=a_mbq,
                     patient_weight_kg=w_kg, acquisition_duration_s=600.0, decay_correction=conv)
        np.testing.assert_allclose(_arr(imaging.bqml_to_suv(scan)), 1.0, rtol=1e-5)


def test_decay_conventions_give_the_same_physical_activity():
    lam = math.log(2) / LU177_HALF_LIFE_H
    c_start = 1234.5
    T_h = 1800 / 3600
    variants = {
        "START": c_start,
        "ADMIN": c_start * math.exp(lam * 24.0),
        "NONE": c_start * (1 - math.exp(-lam * T_h)) / (lam * T_h),
    }
    for conv, value in variants.items():
        scan = _scan(np.full((2, 3, 4), value), decay_correction=conv)
        for target, expected in variants.items():
            out = imaging.decay_correct(scan, target)
            assert out.decay_correction == target
            np.testing.assert_allclose(_arr(out), expected, rtol=1e-6)


def test_decay_correction_needs_nuclide_and_time():
    scan = _scan(np.ones((2, 2, 2)), nuclide=None)
    with pytest.raises(MissingTagError, match="nuclide"):
        imaging.decay_correct(scan, "ADMIN")
    with pytest.raises(MissingTagError, match="time_h"):
        imaging.decay_correct(_scan(np.ones((2, 2, 2)), time_h=None), "ADMIN")
    with pytest.raises(UnitsError, match="LATER"):
        imaging.decay_correct(_scan(np.ones((2, 2, 2))), "LATER")


def test_counts_to_bqml_by_calibration_and_by_rwvm(tmp_path):
    counts = np.random.default_rng(2).poisson(50, (6, 7, 8)).astype(float)
    scan = _scan(counts, modality="NM", units="CNTS", calibration_cps_per_mbq=10.0)
    out = imaging.counts_to_bqml(scan)
    # 1 MBq gives 10 cps; T = 1800 s; voxel 0.08 mL: C = N / (1800 * 10) * 1e6 / 0.08
    np.testing.assert_allclose(_arr(out), counts / (1800 * 10) * 1e6 / 0.08, rtol=1e-6)
    assert out.units == "BQML" and out.decay_correction == "NONE"
    # Total activity = total counts / (T * S), in MBq.
    assert _arr(out).sum() * 0.08 / 1e6 == pytest.approx(counts.sum() / (1800 * 10), rel=1e-6)
    # Written as DICOM, the calibration travels as a Real World Value Mapping.
    back = imaging.read_scan(imaging.write_dicom_series(scan, tmp_path / "nm"))
    assert back.calibration_cps_per_mbq is None and back.real_world_slope is not None
    np.testing.assert_allclose(_arr(imaging.counts_to_bqml(back)), _arr(out), rtol=1e-6)


def test_counts_without_calibration_raise():
    scan = _scan(np.ones((2, 2, 2)), modality="NM", units="CNTS")
    with pytest.raises(MissingTagError, match="calibration"):
        imaging.counts_to_bqml(scan)
    with pytest.raises(UnitsError, match="BQML"):
        imaging.bqml_to_suv(scan)


def test_to_bqml_from_each_unit():
    c = np.full((2, 2, 2), 5000.0)
    scan = _scan(c, decay_correction="START")
    for variant in (scan, imaging.bqml_to_suv(scan), imaging.decay_correct(scan, "ADMIN")):
        np.testing.assert_allclose(_arr(imaging.to_bqml(variant, "START")), c, rtol=1e-5)


def test_invalid_voxels():
    bad = np.ones((2, 2, 2))
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidVoxelError, match="NaN"):
        imaging.check_activity_voxels(_scan(bad, scan_id="day1"))
    neg = np.ones((2, 2, 2))
    neg[1, 1, 1] = -3.0
    with pytest.raises(InvalidVoxelError, match="day2.*negative"):
        imaging.check_activity_voxels(_scan(neg, scan_id="day2"))
    quantify.check_activity_voxels(_scan(neg), allow_negative_fraction=0.5)
