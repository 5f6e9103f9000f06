"""Masks -> time-activity table: sums against direct numpy sums, units, pooling, errors, I/O."""

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

import imaging
from imaging import EmptyMaskError, GeometryMismatchError, InvalidVoxelError, Scan

SPACING = (4.0, 4.0, 4.0)
V_ML = 0.064
NAMES = {1: "kidney_left", 2: "kidney_right", 3: "liver", 4: "lesion_1", 5: "parotid_gland_left"}
CONC = {0: 100.0, 1: 9000.0, 2: 8000.0, 3: 3000.0, 4: 20000.0, 5: 5000.0}  # Bq/mL


def _grid(arr):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin((-50.0, -60.0, -40.0))
    return img


def make_labels():
    lab = np.zeros((20, 24, 28), np.uint8)
    lab[5:10, 4:9, 3:8] = 1
    lab[5:10, 4:9, 18:23] = 2
    lab[2:15, 12:20, 5:15] = 3
    z, y, x = np.ogrid[:20, :24, :28]
    lab[(z - 14) ** 2 + (y - 6) ** 2 + (x - 20) ** 2 <= 6] = 4
    lab[16:18, 20:22, 2:4] = 5
    return lab


def make_scan(lab, **kw):
    act = np.vectorize(CONC.get)(lab).astype(np.float32)
    base = dict(nuclide="Lu-177", time_h=24.0, injected_activity_mbq=7400.0, patient_weight_kg=75.0,
                acquisition_duration_s=900.0, decay_correction="START", patient_id="P7", scan_id="d1",
                tracer="177Lu-PSMA-617")
    base.update(kw)
    return Scan(_grid(act), "NM", "BQML", **base)


def test_activity_volume_mean_max_against_direct_sums():
    lab = make_labels()
    scan = make_scan(lab)
    table = imaging.time_activity(scan, Scan(_grid(lab), "SEG", "LABEL"), NAMES)
    assert list(table.columns) == list(imaging.COLUMNS)
    t = table.set_index("region")
    assert set(t.index) == {"kidneys", "liver", "lesion_1", "salivary_glands"}
    act = np.vectorize(CONC.get)(lab)
    for region, ids in {"kidneys": [1, 2], "liver": [3], "lesion_1": [4], "salivary_glands": [5]}.items():
        mask = np.isin(lab, ids)
        assert t.loc[region, "volume_ml"] == pytest.approx(mask.sum() * V_ML)
        assert t.loc[region, "activity_mbq"] == pytest.approx(act[mask].sum() * V_ML / 1e6, rel=1e-6)
        assert t.loc[region, "mean_bqml"] == pytest.approx(act[mask].mean(), rel=1e-6)
        assert t.loc[region, "max_bqml"] == pytest.approx(act[mask].max())
    assert (t["patient"] == "P7").all() and (t["time_h"] == 24.0).all() and (t["recovery_coefficient"] == 1).all()
    # Kidneys are heterogeneous (9000 vs 8000 Bq/mL): the pooled SD gives a nonzero noise term.
    assert t.loc["kidneys", "activity_uncertainty_mbq"] > 0
    assert t.loc["liver", "activity_uncertainty_mbq"] == pytest.approx(0.0, abs=1e-9)


def test_same_physical_activity_from_every_unit_and_convention():
    lab = make_labels()
    scan = make_scan(lab)
    ref = imaging.time_activity(scan, _grid(lab), NAMES)
    admin = imaging.decay_correct(scan, "ADMIN")
    suv = imaging.bqml_to_suv(scan)
    # Counts giving these concentrations: N = C * v * T * S / 1e6 (S = 12 cps/MBq).
    cnt = scan.with_image(sitk.Cast(scan.image, sitk.sitkFloat32) * (V_ML * 900 * 12 / 1e6), units="CNTS",
                          calibration_cps_per_mbq=12.0, decay_correction="NONE")
    for variant in (admin, suv):
        other = imaging.time_activity(variant, _grid(lab), NAMES)
        np.testing.assert_allclose(other["activity_mbq"], ref["activity_mbq"], rtol=1e-5)
    # Counts are frame averages (NONE); START differs by lambda T / (1 - exp(-lambda T)).
    lam = math.log(2) / (6.647 * 24)  # Lu-177 (ICRP-107)
    x = lam * 900 / 3600
    np.testing.assert_allclose(imaging.time_activity(cnt, _grid(lab), NAMES)["activity_mbq"],
                               ref["activity_mbq"] * x / -math.expm1(-x), rtol=1e-5)


def test_geometry_mismatch_and_resampling():
    lab = make_labels()
    scan = make_scan(lab)
    fine_lab = imaging.resample_to(_grid(lab), _fine_reference(), kind="label")
    with pytest.raises(GeometryMismatchError, match=r"label map.*d1.*different geometry"):
        imaging.time_activity(scan, fine_lab, NAMES)
    by_labels = imaging.time_activity(scan, fine_lab, NAMES, resample="labels").set_index("region")
    by_scan = imaging.time_activity(scan, fine_lab, NAMES, resample="scan").set_index("region")
    direct = imaging.time_activity(scan, _grid(lab), NAMES).set_index("region")
    # The fine label map is an exact 2x subdivision: nearest neighbour recovers the coarse labels.
    np.testing.assert_allclose(by_labels["activity_mbq"], direct["activity_mbq"], rtol=1e-6)
    # Scan -> fine grid (linear interpolation): region edges blur (half a coarse voxel mixes with
    # the neighbour: ~7 % of this 66 mL liver), but the volume is the label's own and the total
    # activity over all labels (background included as "rest") is conserved.
    assert by_scan.loc["liver", "activity_mbq"] == pytest.approx(direct.loc["liver", "activity_mbq"], rel=0.10)
    assert by_scan.loc["liver", "volume_ml"] == pytest.approx(direct.loc["liver", "volume_ml"], rel=1e-6)
    with_rest = sitk.Cast(fine_lab, sitk.sitkUInt8) + sitk.Cast(fine_lab == 0, sitk.sitkUInt8) * 6
    total = imaging.time_activity(scan, with_rest, {**NAMES, 6: "rest"}, resample="scan")["activity_mbq"].sum()
    assert total == pytest.approx(float(sitk.GetArrayFromImage(scan.image).sum()) * V_ML / 1e6, rel=1e-5)


def _fine_reference():
    ref = sitk.Image([56, 48, 40], sitk.sitkUInt8)
    ref.SetSpacing((2.0, 2.0, 2.0))
    ref.SetOrigin((-51.0, -61.0, -41.0))
    return ref


def test_empty_mask_and_invalid_voxels():
    lab = make_labels()
    scan = make_scan(lab)
    with pytest.raises(EmptyMaskError, match=r"label 9 \('spleen'\)"):
        imaging.time_activity(scan, _grid(lab), {**NAMES, 9: "spleen"})
    bad = sitk.GetArrayFromImage(scan.image)
    bad[3, 3, 3] = np.nan
    with pytest.raises(InvalidVoxelError, match="d1.*NaN"):
        imaging.time_activity(scan.with_image(_grid(bad)), _grid(lab), NAMES)
    bad[3, 3, 3] = -50.0
    with pytest.raises(InvalidVoxelError, match="negative"):
        imaging.time_activity(scan.with_image(_grid(bad)), _grid(lab), NAMES)
    with pytest.raises(imaging.UnitsError):
        imaging.time_activity(Scan(_grid(lab.astype(np.float32)), "CT", "HU"), _grid(lab), NAMES)


def test_uncertainty_matches_monte_carlo_spread():
    """Uniform region + iid Gaussian voxel noise (sd s): the reported noise term s*sqrt(V*v)
    equals the standard deviation of the activity over repeated noise realisations."""
    lab = make_labels()
    rng = np.random.default_rng(11)
    s = 2000.0
    estimates, reported = [], []
    truth = np.vectorize(CONC.get)(lab) + 10 * s
    for _ in range(100):
        noisy = truth + rng.normal(0.0, s, lab.shape)
        scan = make_scan(lab).with_image(_grid(noisy.astype(np.float32)))
        row = imaging.time_activity(scan, _grid(lab), {3: "liver"}).iloc[0]
        estimates.append(row["activity_mbq"])
        reported.append(row["activity_uncertainty_mbq"])
    assert np.std(estimates, ddof=1) == pytest.approx(np.mean(reported), rel=0.2)  # SE of an SD from 100 draws: 7 %
    assert np.mean(reported) == pytest.approx(s * math.sqrt((lab == 3).sum()) * V_ML / 1e6, rel=0.05)


def test_recovery_coefficient_against_blurred_voxel_sphere():
    """Analytic sphere RC vs a voxelised sphere blurred with a Gaussian (SimpleITK)."""
    radius_mm, fwhm_mm, h = 8.0, 10.0, 0.5
    n = 80
    c = (np.arange(n) - n / 2 + 0.5) * h
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    sphere = (x**2 + y**2 + z**2 <= radius_mm**2).astype(np.float32)
    img = sitk.GetImageFromArray(sphere)
    img.SetSpacing((h, h, h))
    blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, fwhm_mm / 2.3548))
    numeric = float(blurred[sphere > 0].sum() / sphere.sum())
    volume_ml = sphere.sum() * h**3 / 1000.0
    assert imaging.sphere_recovery_coefficient(volume_ml, fwhm_mm) == pytest.approx(numeric, abs=0.01)
    assert imaging.sphere_recovery_coefficient(1e5, fwhm_mm) > 0.98  # large regions: no correction
    lab = make_labels()
    t = imaging.time_activity(make_scan(lab), _grid(lab), NAMES, recovery_fwhm_mm=10.0,
                              recovery_regions={"lesion_1"}).set_index("region")
    rc = t.loc["lesion_1", "recovery_coefficient"]
    assert rc == pytest.approx(imaging.sphere_recovery_coefficient(t.loc["lesion_1", "volume_ml"], 10.0))
    assert t.loc["liver", "recovery_coefficient"] == 1.0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_round_trip(tmp_path, suffix):
    lab = make_labels()
    scans = [make_scan(lab, scan_id=f"d{i}", time_h=t) for i, t in enumerate((4.0, 24.0, 96.0))]
    table = imaging.time_activity(scans, _grid(lab), NAMES)
    assert len(table) == 3 * 4
    path = imaging.write_table(table, tmp_path / f"tac{suffix}")
    pd.testing.assert_frame_equal(imaging.read_table(path), table)
    assert [p.name for p in tmp_path.iterdir()] == [f"tac{suffix}"]


def test_region_names():
    assert imaging.to_model_region("kidney_right") == "kidneys"
    assert imaging.to_model_region("submandibular_gland_left") == "salivary_glands"
    assert imaging.to_model_region("lung_middle_lobe_right") == "lungs"
    assert imaging.to_model_region("urinary_bladder") == "urine"
    assert imaging.to_model_region("vertebrae_L3") == "bone"
    assert imaging.to_model_region("Tumor 2") == "lesion_2"
    assert imaging.to_model_region("my_region") == "my_region"
    with pytest.raises(imaging.ImagingError, match="my_region"):
        imaging.to_model_region("my_region", strict=True)
