"""Rigid/affine registration recovers a known shift; activity-conserving resampling."""

import numpy as np
import pytest
import SimpleITK as sitk

import imaging
from imaging import Scan


def _phantom(shape=(40, 44, 48), spacing=(3.0, 3.0, 3.0), shift_mm=(0.0, 0.0, 0.0)):
    """Asymmetric blobs (so a rigid fit has one answer); voxel positions shifted by shift_mm."""
    img = sitk.Image(list(shape), sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin((-60.0, -66.0, -72.0))
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape[::-1], spacing[::-1])], indexing="ij")
    x = x + img.GetOrigin()[0] - shift_mm[0]
    y = y + img.GetOrigin()[1] - shift_mm[1]
    z = z + img.GetOrigin()[2] - shift_mm[2]
    a = (1000 * np.exp(-((x - 10) ** 2 + (y + 5) ** 2 + (z - 3) ** 2) / (2 * 12.0**2))
         + 600 * np.exp(-((x + 20) ** 2 + (y - 15) ** 2 + (z + 12) ** 2) / (2 * 7.0**2))
         + 300 * np.exp(-((x - 5) ** 2 + (y - 25) ** 2 + (z - 20) ** 2) / (2 * 5.0**2))
         + 50 * ((np.abs(x) < 45) & (np.abs(y) < 40) & (np.abs(z) < 50)))
    out = sitk.GetImageFromArray(a.astype(np.float32))
    out.CopyInformation(img)
    return out


SHIFT = (4.3, -3.1, 5.2)


def test_rigid_registration_recovers_shift():
    fixed = _phantom()
    moving = _phantom(shift_mm=SHIFT)  # content moved by +SHIFT
    result = imaging.register_rigid(fixed, moving)
    # The transform maps fixed points to moving points: p -> p + SHIFT, everywhere in the image.
    for p in [(0.0, 0.0, 0.0), (30.0, -20.0, 15.0), (-40.0, 30.0, -30.0)]:
        q = np.array(result.transform.TransformPoint(p))
        assert np.linalg.norm(q - np.array(p) - SHIFT) < 1.0
    transform, resampled = result
    np.testing.assert_allclose(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(fixed),
                               atol=0.05 * float(sitk.GetArrayFromImage(fixed).max()))


def test_affine_stage_keeps_the_rigid_answer():
    fixed = _phantom()
    moving = _phantom(shift_mm=SHIFT)
    result = imaging.register_rigid(fixed, moving, affine=True, iterations=100)
    q = np.array(result.transform.TransformPoint((0.0, 0.0, 0.0)))
    assert np.linalg.norm(q - SHIFT) < 1.0


def _scan(image, units="BQML"):
    return Scan(image, "NM" if units == "CNTS" else "PT", units, time_h=1.0)


def test_resample_conserves_activity_down_and_up():
    rng = np.random.default_rng(3)
    fine = sitk.GetImageFromArray(rng.gamma(2.0, 100.0, (30, 33, 36)).astype(np.float32))
    fine.SetSpacing((1.5, 1.5, 2.0))
    coarse_ref = sitk.Image([12, 13, 11], sitk.sitkFloat32)
    coarse_ref.SetSpacing((5.0, 4.5, 6.5))
    coarse_ref.SetOrigin((-3.0, -3.0, -4.0))  # covers the whole fine image
    total = float(sitk.GetArrayFromImage(fine).sum()) * 1.5 * 1.5 * 2.0
    down = imaging.resample_to(_scan(fine), coarse_ref)
    assert float(sitk.GetArrayFromImage(down.image).sum()) * 5.0 * 4.5 * 6.5 == pytest.approx(total, rel=1e-5)
    # Counts (an extensive quantity) are conserved as counts.
    counts = imaging.resample_to(_scan(fine, "CNTS"), coarse_ref)
    assert float(sitk.GetArrayFromImage(counts.image).sum()) == pytest.approx(
        float(sitk.GetArrayFromImage(fine).sum()), rel=1e-5)
    # A uniform concentration stays uniform inside (the sub-voxel averaging is a mean, not a sum).
    flat = sitk.GetImageFromArray(np.full((30, 33, 36), 7.0, np.float32))
    flat.CopyInformation(fine)
    inner_ref = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    inner_ref.SetSpacing((4.0, 4.0, 5.0))
    inner_ref.SetOrigin((10.0, 10.0, 10.0))
    np.testing.assert_allclose(sitk.GetArrayFromImage(imaging.resample_to(flat, inner_ref, kind="activity")), 7.0,
                               rtol=1e-5)


def test_resample_labels_nearest_and_ct_linear():
    lab = sitk.GetImageFromArray(np.repeat(np.arange(6, dtype=np.uint8), 4).reshape(1, 1, 24).repeat(5, 0).repeat(5, 1))
    lab.SetSpacing((1.0, 1.0, 1.0))
    ref = sitk.Image([48, 5, 5], sitk.sitkUInt8)
    ref.SetSpacing((0.5, 1.0, 1.0))
    ref.SetOrigin((-0.25, 0.0, 0.0))
    out = imaging.resample_to(lab, ref, kind="label")
    assert out.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(out))) <= set(range(6))
    ct = sitk.GetImageFromArray(np.tile(np.arange(24, dtype=np.float32) * 10.0, (5, 5, 1)))
    ct_out = sitk.GetArrayFromImage(imaging.resample_to(ct, ref, kind="ct"))
    # Linear between voxel centres: x = -0.25 + 0.5 i (mm) -> 10 * x HU inside; -1000 HU outside.
    np.testing.assert_allclose(ct_out[2, 2, 1:46], 10.0 * (-0.25 + 0.5 * np.arange(1, 46)), rtol=1e-5)
    far = sitk.Image(ref)
    far.SetOrigin((100.0, 0.0, 0.0))
    assert np.all(sitk.GetArrayFromImage(imaging.resample_to(ct, far, kind="ct")) == -1000.0)  # outside: air
    # Nearest neighbour: x = -0.25 + 0.5 i -> source voxel round(x), label = voxel // 4.
    x = -0.25 + 0.5 * np.arange(48)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out)[2, 2, 1:47], np.round(x[1:47]).astype(int) // 4)


def test_registration_of_scans_returns_a_scan_with_its_activity():
    fixed = _scan(_phantom())
    moving = _scan(_phantom(shift_mm=SHIFT))
    transform, resampled = imaging.register_rigid(fixed, moving)
    assert isinstance(resampled, Scan) and resampled.units == "BQML" and resampled.time_h == 1.0
    a = sitk.GetArrayFromImage(resampled.image).astype(float)
    b = sitk.GetArrayFromImage(fixed.image).astype(float)
    assert a.sum() == pytest.approx(b.sum(), rel=0.02)  # nearly all activity lies inside both fields of view
