"""Dose map output: DICOM RTDOSE (read back with pydicom) and NIfTI."""

import os

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dose.errors import InvalidDoseInputError
from dose.rtdose import read_rtdose, write_nifti, write_rtdose


def _dose_image():
    rng = np.random.default_rng(0)
    dose = rng.gamma(2.0, 1.5, size=(7, 9, 11))  # (z, y, x), Gy
    image = sitk.GetImageFromArray(dose)
    image.SetSpacing((2.5, 3.0, 4.0))
    image.SetOrigin((-120.0, 35.5, 10.0))
    return dose, image


def test_rtdose_round_trip_with_pydicom(tmp_path):
    dose, image = _dose_image()
    path = write_rtdose(tmp_path / "dose.dcm", image, nuclide="Lu-177", method="kernel", summation_type="PLAN")
    assert [p.name for p in tmp_path.iterdir()] == ["dose.dcm"]  # no temporary file left
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTDOSE" and ds.DoseUnits == "GY" and ds.DoseType == "PHYSICAL"
    assert ds.DoseSummationType == "PLAN"
    assert "Lu-177" in ds.SeriesDescription and "kernel" in ds.SeriesDescription
    values = ds.pixel_array.astype(float) * float(ds.DoseGridScaling)
    assert values.shape == dose.shape
    assert np.max(np.abs(values - dose)) < 1e-4 * dose.max()
    # geometry: first voxel centre, axes, spacing (row, column), frame offsets along z
    assert np.allclose(ds.ImagePositionPatient, [-120.0, 35.5, 10.0])
    assert np.allclose(ds.ImageOrientationPatient, [1, 0, 0, 0, 1, 0])
    assert np.allclose(ds.PixelSpacing, [3.0, 2.5])
    assert np.allclose(ds.GridFrameOffsetVector, 4.0 * np.arange(7))
    assert ds.FrameIncrementPointer == pydicom.tag.Tag(0x3004, 0x000C)
    back = read_rtdose(path)
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    assert back.GetOrigin() == pytest.approx(image.GetOrigin())
    assert np.allclose(sitk.GetArrayFromImage(back), dose, atol=1e-4 * dose.max())


def test_rtdose_keeps_an_oblique_orientation(tmp_path):
    dose, image = _dose_image()
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    back = read_rtdose(write_rtdose(tmp_path / "d.dcm", image, nuclide="Y-90", method="reference"))
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    assert np.allclose(back.TransformIndexToPhysicalPoint((3, 4, 5)), image.TransformIndexToPhysicalPoint((3, 4, 5)))


def test_nifti_output_keeps_values_geometry_and_metadata(tmp_path):
    dose, image = _dose_image()
    path = write_nifti(tmp_path / "dose.nii.gz", image, nuclide="Lu-177", method="multi_kernel")
    assert sorted(os.listdir(tmp_path)) == ["dose.nii.gz"]
    back = sitk.ReadImage(str(path))
    assert np.allclose(sitk.GetArrayFromImage(back), dose, rtol=1e-6)
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    assert back.GetOrigin() == pytest.approx(image.GetOrigin())
    assert "Lu-177" in back.GetMetaData("descrip") and "multi_kernel" in back.GetMetaData("descrip")


def test_outputs_get_the_permissions_of_a_normally_created_file(tmp_path):
    """Written through a temporary file (mkstemp: 0600), renamed with 0666 less the umask."""
    _, image = _dose_image()
    old = os.umask(0o022)
    try:
        nifti = write_nifti(tmp_path / "dose.nii.gz", image, nuclide="Lu-177", method="kernel")
        rtdose = write_rtdose(tmp_path / "dose.dcm", image, nuclide="Lu-177", method="kernel")
    finally:
        os.umask(old)
    assert [oct(p.stat().st_mode & 0o777) for p in (nifti, rtdose)] == ["0o644", "0o644"]


def test_numpy_input_and_bad_values(tmp_path):
    dose = np.ones((3, 4, 5))
    back = read_rtdose(write_rtdose(tmp_path / "a.dcm", dose, nuclide="Lu-177", method="local", voxel_mm=(2.0, 3.0, 4.0)))
    assert back.GetSpacing() == pytest.approx((4.0, 3.0, 2.0))
    with pytest.raises(InvalidDoseInputError, match="dose"):
        write_rtdose(tmp_path / "b.dcm", np.full((3, 4, 5), np.nan), nuclide="Lu-177", method="kernel", voxel_mm=(1, 1, 1))
    with pytest.raises(InvalidDoseInputError, match="voxel_mm"):
        write_nifti(tmp_path / "c.nii", dose, nuclide="Lu-177", method="kernel")
    assert not (tmp_path / "b.dcm").exists()
