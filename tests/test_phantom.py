"""Synthetic patients (imaging.phantom): determinism, activity conservation, PSF and
Poisson statistics, and organ activities recovered from noisy simulated SPECT/PET
within the partial-volume + noise error predicted analytically.

Partial-volume model used for the tolerances (derived here, independent of the code):
a uniform object blurred by an isotropic Gaussian of sd sigma loses through a locally flat
surface the mass  integral_0^inf (1 - Phi(x / sigma)) dx = sigma / sqrt(2 pi)  per unit area
and unit concentration, so the spill-out fraction of an organ with surface S, volume V is
    f = S sigma / (sqrt(2 pi) V)                        (large organs, R >> sigma);
for a sphere of radius R (lesions, small glands) exactly
    1 - f = int_0^2R 4 pi d^2 g_sigma(d) V_overlap(d) / V dd,
    V_overlap(d) = pi (4R + d)(2R - d)^2 / 12       (two spheres at distance d).
The scanner voxel (box of width w, resampled from the phantom's w0) adds (w^2 - w0^2) / 12
to sigma^2.  The relative Poisson error of a region with N counts is 1 / sqrt(N).
"""

from __future__ import annotations

import datetime
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk
from scipy.integrate import quad

from dose.nuclides import half_life_h
from imaging.errors import ImagingError
from imaging.phantom import Lesion, anatomy, make_patient
from imaging.phantom import acquisition as acq

# 177Lu-PSMA-617 at 24 h after 7.4 GBq (activities at scan time, MBq; organ fractions of
# the order of published %IA, e.g. kidneys ~1-2 %IA at 24 h) and 68Ga-PSMA-11 at 1 h.
LU_24H = {"kidneys": 90.0, "liver": 110.0, "spleen": 22.0, "salivary_glands": 40.0, "lesion_1": 60.0,
          "lesion_2": 25.0, "urine": 300.0, "muscle": 900.0, "gi": 150.0, "whole_body": 5000.0}
GA_1H = {"kidneys": 9.0, "liver": 7.0, "spleen": 1.5, "salivary_glands": 2.5, "lesion_1": 2.0,
         "lesion_2": 0.8, "urine": 12.0, "muscle": 20.0, "gi": 6.0}
SPECT_FWHM_MM, PET_FWHM_MM = 11.0, 6.0


@pytest.fixture(scope="module")
def patient():
    # reference anatomy (anatomy_sd = 0) so that the analytic surfaces below are its shapes
    return make_patient(seed=0, anatomy_sd=0.0)


@pytest.fixture(scope="module")
def spect(patient):
    return patient.simulate_spect(LU_24H, 24.0, injected_activity_mbq=7400.0, seed=1)


@pytest.fixture(scope="module")
def pet(patient):
    return patient.simulate_pet(GA_1H, 1.0, injected_activity_mbq=150.0, seed=1)


def _arr(img):
    return sitk.GetArrayFromImage(img).astype(np.float64)


def _region_sums(patient, scan, values):
    """Sum of `values` (per scanner voxel) in each region of the label map resampled
    (nearest neighbour) onto the scan grid: direct numpy mask sums."""
    lab = _arr(patient.labels_on(scan)).astype(int)
    return {name: float(values[lab == code].sum()) for code, name in patient.region_names.items()}


def _activity_mbq(scan):
    """Scanner voxels -> MBq per voxel at acquisition start (SPECT: N / (S tau), tau the
    decay-weighted frame duration; PET (START): Bq/mL * mL / 1e6)."""
    if scan.units == "CNTS":
        tau = acq.decay_weighted_duration_s(scan.acquisition_duration_s, half_life_h(scan.nuclide))
        return _arr(scan.image) / (scan.calibration_cps_per_mbq * tau)
    assert scan.decay_correction == "START"
    return _arr(scan.image) * scan.voxel_volume_ml / 1e6


def _thomsen_area(a, b, c, p=1.6075):
    """Ellipsoid surface area (Knud Thomsen's approximation, < 1.1 % error)."""
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def _sphere_spill_out(radius_mm, sigma_mm):
    vol = 4 / 3 * math.pi * radius_mm ** 3
    g = lambda d: (2 * math.pi * sigma_mm ** 2) ** -1.5 * math.exp(-d * d / (2 * sigma_mm ** 2))
    overlap = lambda d: math.pi * (4 * radius_mm + d) * (2 * radius_mm - d) ** 2 / 12
    return 1.0 - quad(lambda d: 4 * math.pi * d * d * g(d) * overlap(d) / vol, 0, 2 * radius_mm)[0]


def _sigma_eff(fwhm_mm, scan_voxel_mm, phantom_voxel_mm=4.0):
    return math.sqrt((fwhm_mm / acq.FWHM_PER_SIGMA) ** 2 + max(scan_voxel_mm ** 2 - phantom_voxel_mm ** 2, 0) / 12)


def predicted_spill_out(patient, region, sigma_mm):
    """Analytic spill-out fraction of a region of the reference anatomy (see module doc)."""
    if region.startswith("lesion_"):
        return _sphere_spill_out(patient.lesions[int(region.split("_")[1]) - 1].radius_mm, sigma_mm)
    shapes = [s for s in anatomy.reference_structures() if s.region == region]
    outer = [s.shape for s in shapes if s.weight == 1.0]
    if region == "salivary_glands":  # small glands: exact sphere formula, volume-weighted
        vols = np.array([e.volume_ml for e in outer])
        radii = (3 * vols * 1000 / (4 * math.pi)) ** (1 / 3)
        return float(np.sum(vols * [_sphere_spill_out(r, sigma_mm) for r in radii]) / vols.sum())
    area = sum(_thomsen_area(*e.semi_mm) for e in outer)
    # activity-weighted volume: inner structures (renal medulla) carry weight w < 1
    vol = sum(e.volume_ml for e in outer) * 1000 - sum((1 - s.weight) * s.shape.volume_ml * 1000
                                                        for s in shapes if s.weight != 1.0)
    return area * sigma_mm / (math.sqrt(2 * math.pi) * vol)


# --------------------------------------------------------------------------- determinism
def test_deterministic_given_seed():
    a = make_patient(seed=7, heterogeneity_cv=0.3)
    b = make_patient(seed=7, heterogeneity_cv=0.3)
    c = make_patient(seed=8, heterogeneity_cv=0.3)
    assert np.array_equal(a.label_array(), b.label_array())
    assert np.array_equal(_arr(a.ct.image), _arr(b.ct.image))
    assert a.region_volumes_ml() != c.region_volumes_ml()  # another seed, another anatomy
    acts = {"liver": 50.0, "kidneys": 40.0}
    s1, s2 = a.simulate_spect(acts, 24.0, seed=3), b.simulate_spect(acts, 24.0, seed=3)
    assert np.array_equal(_arr(s1.image), _arr(s2.image))
    assert not np.array_equal(_arr(s1.image), _arr(a.simulate_spect(acts, 24.0, seed=4).image))
    p1, p2 = a.simulate_pet(acts, 1.0, seed=3), b.simulate_pet(acts, 1.0, seed=3)
    assert np.array_equal(_arr(p1.image), _arr(p2.image))


# --------------------------------------------------------------------------- activity map
def test_activity_map_conserves_region_and_total_activity():
    p = make_patient(seed=2, heterogeneity_cv=0.4, heterogeneity_mm=12.0)
    img = p.activity_map(LU_24H)
    assert img.GetSpacing() == p.labels.GetSpacing() and img.GetOrigin() == p.labels.GetOrigin()
    mbq = _arr(img) * p.voxel_ml / 1e6
    lab = p.label_array()
    sums = {name: mbq[lab == code].sum() for code, name in p.region_names.items()}
    resolved = p.resolve(LU_24H)
    # muscle and gi have no shape: added to "body"; whole_body is an aggregate: ignored
    assert set(resolved.into_body) == {"muscle", "gi"} and resolved.ignored == ("whole_body",)
    expected = {r: LU_24H.get(r, 0.0) for r in p.region_names.values()}
    expected["body"] = LU_24H["muscle"] + LU_24H["gi"]
    for region, value in expected.items():
        assert sums[region] == pytest.approx(value, rel=1e-12, abs=1e-12), region
    total_in = sum(v for k, v in LU_24H.items() if k != "whole_body")
    assert mbq.sum() == pytest.approx(total_in, rel=1e-12)
    assert mbq[lab == 0].sum() == 0.0
    # heterogeneity really varies inside an organ; kidneys: cortex hotter than medulla
    liver = _arr(img)[lab == [k for k, v in p.region_names.items() if v == "liver"][0]]
    assert liver.std() / liver.mean() > 0.2
    # policies for regions without a shape
    assert p.resolve(LU_24H, unplaced="ignore").activity_mbq["body"] == 0.0
    with pytest.raises(ImagingError, match="muscle"):
        p.resolve(LU_24H, unplaced="error")
    with pytest.raises(ImagingError, match="liver"):
        p.activity_map({"liver": -1.0})
    with pytest.raises(ImagingError, match="liver"):
        p.activity_map({"liver": float("nan")})


def test_activity_from_pbpk_style_table():
    p = make_patient(seed=0)
    rows = [dict(time_h=t, nuclide=n, region=r, activity_mbq=a * f, percent_ia=0.0)
            for t, f in ((1.0, 1.0), (24.0, 0.5)) for n in ("Lu-177", "Ga-68")
            for r, a in (("kidneys", 80.0), ("liver", 40.0), ("rest", 10.0), ("whole_body", 130.0))]
    frame = pd.DataFrame(rows)
    got = p.resolve(frame, time_h=24.0, nuclide="Lu-177")
    assert got.activity_mbq["kidneys"] == 40.0 and got.activity_mbq["body"] == 5.0
    assert got.into_body == ("rest",) and got.ignored == ("whole_body",)
    spect = p.simulate_spect(frame, 24.0, noise=False)  # table nuclide defaults to the scan's
    assert _activity_mbq(spect).sum() == pytest.approx(65.0, rel=1e-5)
    with pytest.raises(ImagingError, match="nuclide"):
        p.resolve(frame, time_h=24.0)
    with pytest.raises(ImagingError, match="time_h = 5"):
        p.resolve(frame, time_h=5.0, nuclide="Lu-177")
    with pytest.raises(ImagingError, match="columns"):
        p.resolve(frame.drop(columns="activity_mbq"), time_h=24.0, nuclide="Lu-177")


def test_pbpk_psma_region_names_map_onto_the_phantom():
    """Every region of pbpk.psma_model is placed, spread over "body", or ignored (whole_body)."""
    import pbpk

    regions = [r.name for r in pbpk.psma_model(lesion_volumes_ml=[10.0, 5.0]).regions]
    p = make_patient(seed=0)
    got = p.resolve({r: 1.0 for r in regions})
    placed = {r for r in regions if r in p.region_names.values()}
    assert placed == {"liver", "spleen", "bone", "heart", "lungs", "brain", "salivary_glands", "lesion_1",
                      "lesion_2", "kidneys", "urine"}
    assert set(got.into_body) == {"blood", "gi", "prostate", "red_marrow", "muscle", "skin", "adipose",
                                  "tumour_rest", "rest"}
    assert got.ignored == ("whole_body",)
    assert got.total_mbq == pytest.approx(len(regions) - 1)


# --------------------------------------------------------------------------- PSF and noise
def test_psf_blur_conserves_counts_and_has_the_stated_width():
    rng = np.random.default_rng(0)
    x = np.zeros((40, 40, 40))
    x[20, 20, 20] = 1.0
    b = acq.blur(x, (2.0, 2.0, 2.0), 10.0)
    assert b.sum() == pytest.approx(1.0, rel=1e-12)
    # second moment along each axis = sigma^2 = (FWHM / 2.3548)^2 (2 mm voxels)
    coords = (np.arange(40) - 20) * 2.0
    for axis in range(3):
        prof = b.sum(axis=tuple(k for k in range(3) if k != axis))
        assert np.sum(prof * coords ** 2) == pytest.approx((10.0 / 2.3548200450309493) ** 2, rel=2e-3)
    # a random image near the border: the reflecting boundary keeps every count
    y = rng.random((30, 20, 25))
    assert acq.blur(y, (4.0, 4.0, 4.0), 12.0).sum() == pytest.approx(y.sum(), rel=1e-12)
    # rebinning onto a coarser scanner grid conserves the sum exactly
    o, s, n = acq.scanner_grid((0.0, 0.0, 0.0), (4.0, 4.0, 4.0), (25, 20, 30), 4.8)
    assert acq.rebin(y, (0.0, 0.0, 0.0), (4.0,) * 3, o, s, n).sum() == pytest.approx(y.sum(), rel=1e-12)


def test_noise_free_spect_total_counts(patient):
    s = patient.simulate_spect(LU_24H, 24.0, noise=False)
    tau = acq.decay_weighted_duration_s(1200.0, half_life_h("Lu-177"))
    total = sum(v for k, v in LU_24H.items() if k != "whole_body")
    assert _arr(s.image).sum() == pytest.approx(total * 4.5 * tau, rel=1e-6)  # float32 voxels
    assert s.units == "CNTS" and s.modality == "NM" and s.decay_correction == "NONE"
    assert s.spacing_mm == (4.8, 4.8, 4.8) and s.calibration_cps_per_mbq == 4.5


def test_noise_is_poisson_in_a_uniform_region(patient):
    acts = {"liver": 2000.0}  # high count level: ~ 1000 counts per voxel
    mean_img = _arr(patient.simulate_spect(acts, 24.0, noise=False).image)
    noisy = _arr(patient.simulate_spect(acts, 24.0, seed=5).image)
    noisy4 = _arr(patient.simulate_spect(acts, 24.0, seed=5, noise_gain=4.0).image)
    # uniform interior: voxels whose noise-free value is within 0.5 % of the maximum
    interior = mean_img > 0.995 * mean_img.max()
    n = interior.sum()
    assert n > 2000
    m = noisy[interior]
    assert np.all(m == np.round(m))  # integer counts
    # Poisson: mean = variance; sd of the sample variance ratio ~ sqrt(2 / n)
    assert m.mean() == pytest.approx(mean_img[interior].mean(), rel=4 / math.sqrt(n * m.mean()))
    assert m.var(ddof=1) / m.mean() == pytest.approx(1.0, abs=4 * math.sqrt(2 / n))
    z = (noisy - mean_img)[mean_img > 1] / np.sqrt(mean_img[mean_img > 1])
    assert abs(z.mean()) < 4 / math.sqrt(z.size) and z.var() == pytest.approx(1.0, abs=0.02)
    assert noisy4[interior].var() / noisy4[interior].mean() == pytest.approx(4.0, abs=16 * math.sqrt(2 / n))


def test_pet_noise_level_is_the_documented_one():
    """68Ga-PSMA, 150 MBq, 1 h, liver SUV 5 (75 kg): liver voxel COV 10-15 % (EANM <= 15 %)."""
    p = make_patient(seed=0)
    conc_mbq_ml = 5.0 * 150.0 * 2 ** (-1.0 / half_life_h("Ga-68")) / 75000.0
    acts = {"liver": conc_mbq_ml * p.region_volumes_ml()["liver"]}
    noisy, mean = (_arr(p.simulate_pet(acts, 1.0, noise=n).image) for n in (True, False))
    interior = mean > 0.995 * mean.max()
    cov = noisy[interior].std() / noisy[interior].mean()
    assert 0.10 < cov < 0.15


def test_pet_decay_correction_conventions(patient):
    kw = dict(seed=2, injected_activity_mbq=150.0)
    start = _arr(patient.simulate_pet(GA_1H, 1.5, **kw).image)
    admin = _arr(patient.simulate_pet(GA_1H, 1.5, decay_correction="ADMIN", **kw).image)
    none = _arr(patient.simulate_pet(GA_1H, 1.5, decay_correction="NONE", **kw).image)
    t_half = half_life_h("Ga-68")
    hot = start > 0
    assert np.allclose(admin[hot] / start[hot], 2 ** (1.5 / t_half), rtol=1e-6)
    tau = acq.decay_weighted_duration_s(180.0, t_half)
    assert np.allclose(none[hot] / start[hot], tau / 180.0, rtol=1e-6)
    with pytest.raises(ImagingError, match="decay_correction"):
        patient.simulate_pet(GA_1H, 1.0, decay_correction="DECY")


# --------------------------------------------------------------------------- organ activities
ORGANS = ("liver", "kidneys", "spleen", "salivary_glands", "lesion_1", "lesion_2")


def _surroundings_ratio(patient, region, conc_bqml, width_mm):
    """q = mean true concentration in a shell of `width_mm` outside the region / inside."""
    lab = patient.label_array()
    code = {v: k for k, v in patient.region_names.items()}[region]
    dist = ndi.distance_transform_edt(lab != code, sampling=patient.spacing_mm[::-1])
    return conc_bqml[(dist > 0) & (dist <= width_mm)].mean() / conc_bqml[lab == code].mean()


def recovery_table(patient, scan, activities, fwhm_mm, counts_per_mbq, organs=ORGANS):
    """Measured recovery RC = A_image / A_true per organ, its prediction and tolerance.

    A_image from imaging.time_activity (label map resampled to the scan grid, nearest
    neighbour), checked against direct numpy mask sums.
    Prediction (two-compartment partial-volume model): RC = 1 - f (1 - q), f the analytic
    spill-out fraction (module docstring), q the surroundings/organ concentration ratio
    from the noise-free truth (spill-in from the surroundings through the same surface).
    Tolerance = 0.15 f (1 + q)    (15 % error of the spill-out and the spill-in terms:
                                   flat-surface / sphere shapes, phantom-voxel staircase,
                                   non-uniform surroundings such as a hot kidney next to
                                   the spleen)
              + 0.5 |dV / V|      (nearest-neighbour mask on the scanner grid moves the
                                   boundary, where the blurred concentration is ~ half)
              + 3 / sqrt(N)       (Poisson, 3 sd; N counts in the mask).
    """
    import imaging

    sigma = _sigma_eff(fwhm_mm, scan.spacing_mm[0])
    conc = patient.activity_array_bqml(activities)
    tac = imaging.time_activity([scan], patient.label_scan(), patient.region_names, resample="labels")
    tac = tac.set_index("region")
    direct = _region_sums(patient, scan, _activity_mbq(scan))
    true_ml = patient.region_volumes_ml()
    rows = []
    for r in organs:
        measured = tac.loc[r, "activity_mbq"]
        assert measured == pytest.approx(direct[r], rel=1e-5), r  # time_activity == numpy mask sum
        f = predicted_spill_out(patient, r, sigma)
        q = _surroundings_ratio(patient, r, conc, 2 * sigma)
        n = measured * counts_per_mbq
        rc = measured / activities[r]
        tol = 0.15 * f * (1 + q) + 0.5 * abs(tac.loc[r, "volume_ml"] / true_ml[r] - 1) + 3 / math.sqrt(n)
        rows.append(dict(region=r, rc=rc, rc_pred=1 - f * (1 - q), f=f, q=q, tol=tol, counts=n))
    return pd.DataFrame(rows).set_index("region")


@pytest.mark.parametrize("modality", ["NM", "PT"])
def test_organ_activities_from_noisy_scans_agree_with_truth(patient, spect, pet, modality):
    if modality == "NM":
        scan, acts, fwhm = spect, LU_24H, SPECT_FWHM_MM
        per_mbq = scan.calibration_cps_per_mbq * scan.acquisition_duration_s
    else:
        scan, acts, fwhm = pet, GA_1H, PET_FWHM_MM
        per_mbq = 1000.0 * acq.decay_weighted_duration_s(180.0, half_life_h("Ga-68"))
    table = recovery_table(patient, scan, acts, fwhm, per_mbq)
    print(f"\n{modality} recovery (FWHM {fwhm} mm, voxel {scan.spacing_mm[0]} mm):\n{table.round(4)}")
    for r, row in table.iterrows():
        assert abs(row.rc - row.rc_pred) <= row.tol, (r, row.to_dict())
        # hence |A_image / A_true - 1| <= f |1 - q| + tol: the expected partial-volume error
        assert abs(row.rc - 1) <= row.f * abs(1 - row.q) + row.tol, r
    # large organs: tight (liver within 5 % SPECT / 3 % PET of the truth with the bare mask)
    assert abs(table.loc["liver", "rc"] - 1) < (0.05 if modality == "NM" else 0.03)
    # small objects lose much more, as the physics says (lesion_2, 5 mL, loses the most)
    assert table.loc["lesion_2", "rc"] < table.loc["lesion_1", "rc"] < table.loc["kidneys", "rc"]


@pytest.mark.parametrize("modality", ["NM", "PT"])
def test_grown_masks_recover_total_activity(patient, modality):
    """Recovery-coefficient check: every hot region's mask grown by 2 FWHM (voxels given to
    the nearest hot region) holds its whole activity: the Gaussian tail beyond 2 FWHM
    (4.7 sd) is < 1e-5 of the spill.  Tolerance 3/sqrt(N) + 0.5 % for isolated regions
    (salivary glands, lesions) and + 1.5 % for liver, kidneys and spleen, whose surfaces
    are closer than 1 FWHM so their zones split a shared spill at the mid-line."""
    hot = {r: LU_24H[r] for r in ORGANS}
    if modality == "NM":
        scan, fwhm = patient.simulate_spect(hot, 24.0, seed=11), SPECT_FWHM_MM
        per_mbq = scan.calibration_cps_per_mbq * scan.acquisition_duration_s
    else:
        scan, fwhm = patient.simulate_pet(hot, 1.0, seed=11), PET_FWHM_MM
        per_mbq = 1000.0 * acq.decay_weighted_duration_s(180.0, half_life_h("Ga-68"))
    lab = _arr(patient.labels_on(scan)).astype(int)
    codes = [k for k, v in patient.region_names.items() if v in hot]
    dist, idx = ndi.distance_transform_edt(~np.isin(lab, codes), sampling=scan.spacing_mm[::-1],
                                           return_indices=True)
    grown = np.where(dist <= 2 * fwhm, lab[tuple(idx)], 0)
    mbq = _activity_mbq(scan)
    for code in codes:
        r = patient.region_names[code]
        a = mbq[grown == code].sum()
        tol = 3 / math.sqrt(a * per_mbq) + (0.015 if r in ("liver", "kidneys", "spleen") else 0.005)
        assert a / hot[r] == pytest.approx(1.0, abs=tol), r
        assert mbq[lab == code].sum() / hot[r] < 1 - 0.02  # the bare mask does not


# --------------------------------------------------------------------------- files
@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_written_scans_read_back_with_total_activity(tmp_path, fmt):
    """Write CT, labels, SPECT and PET; read back with imaging.read_scan; quantify with
    imaging.to_bqml (START): the total activity equals the file's original to <= 0.1 %
    and the ground truth within 3 / sqrt(N) + 0.1 %.  (8 mm phantom: fewer DICOM slices.)"""
    import imaging

    patient = make_patient(seed=0, voxel_mm=8.0, shape=(48, 36, 102))
    spect = patient.simulate_spect(LU_24H, 24.0, injected_activity_mbq=7400.0, seed=1)
    pet = patient.simulate_pet(GA_1H, 1.0, injected_activity_mbq=150.0, seed=1)

    folder = patient.write(tmp_path / "patient", [spect, pet], format=fmt,
                           ground_truth={spect.scan_id: {"kidneys": LU_24H["kidneys"]}},
                           injection_datetime=datetime.datetime(2026, 3, 2, 9, 41, 7))
    name = (lambda s: folder / s) if fmt == "dicom" else (lambda s: folder / f"{s}.nii.gz")
    truth = {"NM": sum(v for k, v in LU_24H.items() if k != "whole_body"), "PT": sum(GA_1H.values())}
    for scan, inj, t in ((spect, 7400.0, 24.0), (pet, 150.0, 1.0)):
        back = imaging.read_scan(name(scan.scan_id))
        assert (back.modality, back.units, back.nuclide) == (scan.modality, scan.units, scan.nuclide)
        assert back.time_h == pytest.approx(t, abs=1e-6)
        assert back.decay_correction == scan.decay_correction
        assert back.acquisition_duration_s == pytest.approx(scan.acquisition_duration_s)
        assert back.injected_activity_mbq == pytest.approx(inj)
        assert np.allclose(back.image.GetOrigin(), scan.image.GetOrigin(), atol=1e-3)
        assert np.allclose(back.image.GetSpacing(), scan.image.GetSpacing(), atol=1e-6)
        before = _arr(imaging.to_bqml(scan, "START").image).sum() * scan.voxel_volume_ml / 1e6
        after = _arr(imaging.to_bqml(back, "START").image).sum() * back.voxel_volume_ml / 1e6
        assert after == pytest.approx(before, rel=1e-3)
        n_total = _arr(scan.image).sum() if scan.units == "CNTS" else truth["PT"] * 1000.0 * 180.0
        assert after == pytest.approx(truth[scan.modality], rel=3 / math.sqrt(n_total) + 1e-3)
    labels = imaging.read_scan(name("labels"))
    assert np.array_equal(_arr(labels.image), _arr(patient.labels))
    ct = imaging.read_scan(name("ct"))
    assert np.allclose(_arr(ct.image), _arr(patient.ct.image), atol=0.5)
    meta = json.loads((folder / "regions.json").read_text())
    assert meta["region_names"]["7"] == "kidneys" and meta["ground_truth_mbq"][spect.scan_id]["kidneys"] == 90.0
    with pytest.raises(FileExistsError):  # never overwrites silently
        patient.write(folder, [spect], format=fmt)


# --------------------------------------------------------------------------- bad input
def test_bad_input_raises_specific_errors():
    with pytest.raises(ImagingError, match="border"):
        make_patient(shape=(60, 72, 204))
    with pytest.raises(ImagingError, match="outside the body"):
        make_patient(lesions=[Lesion((160.0, 0.0, 300.0), 50.0)])
    with pytest.raises(ImagingError, match="volume_ml"):
        Lesion((0.0, 0.0, 300.0), -1.0)
    p = make_patient(seed=0, lesions=[((0.0, -40.0, 200.0), 2.0)])
    assert p.region_names[max(p.region_names)] == "lesion_1"
    with pytest.raises(ImagingError, match="fwhm_mm"):
        p.simulate_spect({"liver": 1.0}, 24.0, fwhm_mm=-1.0)
    with pytest.raises(ImagingError, match="noise_gain"):
        p.simulate_pet({"liver": 1.0}, 1.0, noise_gain=0.5)
    with pytest.raises(ImagingError, match="unknown|Unknown|nuclide"):
        p.simulate_spect({"liver": 1.0}, 24.0, nuclide="Xx-999")
    with pytest.raises(ImagingError, match="format"):
        p.write("/nonexistent/never", [], format="png")


def test_failed_write_leaves_nothing(tmp_path):
    p = make_patient(seed=0, voxel_mm=8.0, shape=(48, 36, 102))
    good = p.simulate_spect({"liver": 10.0}, 24.0)
    bad = good.with_image(good.image, time_h=None, scan_id="bad")  # SPECT without timing
    with pytest.raises(ImagingError, match="time_h"):  # the DICOM writer needs the time
        p.write(tmp_path / "out", [good, bad], format="dicom")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary left over
    with pytest.raises(ImagingError, match="unique"):
        p.write(tmp_path / "out", [good, good])


def test_series_from_a_table_follows_the_table_over_time():
    p = make_patient(seed=4)
    times = [1.0, 24.0, 96.0]
    frame = pd.DataFrame([dict(time_h=t, nuclide="Lu-177", region=r, activity_mbq=a * math.exp(-t / 50.0))
                          for t in times for r, a in (("kidneys", 100.0), ("liver", 80.0), ("rest", 300.0))])
    scans = p.simulate_series(frame, times, "NM", noise=False)
    assert [s.scan_id for s in scans] == ["nm_1h", "nm_24h", "nm_96h"]
    for s, t in zip(scans, times):
        assert s.time_h == t
        assert _activity_mbq(s).sum() == pytest.approx(480.0 * math.exp(-t / 50.0), rel=1e-5)
    pets = p.simulate_series(frame, times[:2], "PT", nuclide="Lu-177", tracer=None)
    assert [s.scan_id for s in pets] == ["pt_1h", "pt_24h"] and pets[0].nuclide == "Lu-177"
    with pytest.raises(ImagingError, match="modality"):
        p.simulate_series(frame, times, "CT")


@pytest.mark.slow
def test_pbpk_trajectory_to_spect_end_to_end(patient, therapy_trajectory):
    """A real pbpk trajectory (7.4 GBq 177Lu-PSMA-617, conftest) imaged at 24 h: the image
    holds the placed activity (whole_body ignored) within Poisson error, and the organs
    agree with the partial-volume prediction of `recovery_table`."""
    import imaging

    frame = therapy_trajectory.to_frame()
    truth = patient.resolve(frame, 24.0, nuclide="Lu-177")
    assert truth.ignored == ("whole_body",) and "muscle" in truth.into_body
    spect = patient.simulate_spect(frame, 24.0, injected_activity_mbq=7400.0, seed=21)
    total = _arr(imaging.to_bqml(spect, "START").image).sum() * spect.voxel_volume_ml / 1e6
    n = _arr(spect.image).sum()
    assert total == pytest.approx(truth.total_mbq, rel=3 / math.sqrt(n) + 1e-6)
    acts = truth.activity_mbq
    table = recovery_table(patient, spect, acts, SPECT_FWHM_MM,
                           spect.calibration_cps_per_mbq * spect.acquisition_duration_s,
                           organs=("liver", "kidneys", "spleen", "salivary_glands"))
    print(f"\npbpk 24 h SPECT recovery:\n{table.round(4)}")
    for r, row in table.iterrows():
        assert abs(row.rc - row.rc_pred) <= row.tol, (r, row.to_dict())
