"""Write dose maps (Gy) as NIfTI (SimpleITK) and as DICOM RT Dose (pydicom), atomically.

Both writers take a SimpleITK image (geometry from the image) or a numpy array in
(z, y, x) order with `voxel_mm` (per array axis) and `origin_mm` (x, y, z of the first
voxel centre, patient coordinates), and record the nuclide and the dose method:
NIfTI in the header's ``descrip`` field, RTDOSE in SeriesDescription and DoseComment
(standard attributes, no private tags).

RTDOSE encoding (DICOM PS3.3 C.8.8.3 RT Dose module): unsigned 32-bit pixels,
dose = pixel x DoseGridScaling with DoseGridScaling = max(dose) / (2^32 - 1), so the
quantisation error is below max(dose) * 1.2e-10; DoseUnits GY, DoseType PHYSICAL,
DoseSummationType as given (default "PLAN"), one multi-frame image whose frames are the
z slices: ImagePositionPatient is the first voxel centre, ImageOrientationPatient the
row and column direction cosines, PixelSpacing (row spacing, column spacing) =
(y, x) voxel size, GridFrameOffsetVector the offsets (mm) of each frame along the slice
normal (row x column) from the first frame, FrameIncrementPointer -> (3004,000C).

Files are written to a temporary name in the target folder and moved into place with
os.replace, so a reader never sees a half-written file.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .atomic import write_atomic
from .errors import InvalidDoseInputError
from .absorbed import check_voxel_mm

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
SUMMATION_TYPES = ("PLAN", "MULTI_PLAN", "FRACTION", "BEAM", "BRACHY", "FRACTION_SESSION", "BEAM_SESSION",
                   "BRACHY_SESSION", "CONTROL_POINT", "RECORD")


def _as_image(dose, voxel_mm, origin_mm) -> sitk.Image:
    if isinstance(dose, sitk.Image):
        if dose.GetDimension() != 3:
            raise InvalidDoseInputError(f"dose: expected a 3-D image, got dimension {dose.GetDimension()}")
        return dose
    arr = np.asarray(dose, dtype=np.float64)
    if arr.ndim != 3:
        raise InvalidDoseInputError(f"dose: expected a 3-D array (z, y, x), got shape {arr.shape}")
    if voxel_mm is None:
        raise InvalidDoseInputError("voxel_mm: required when dose is a numpy array")
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(check_voxel_mm(voxel_mm)[::-1])
    image.SetOrigin(tuple(float(v) for v in origin_mm))
    return image


def _dose_values(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if np.any(~np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidDoseInputError("dose: values must be finite and >= 0 Gy")
    return arr


def _description(nuclide: str, method: str) -> str:
    return f"rpt-twin absorbed dose, nuclide {nuclide}, method {method}"


def write_nifti(path, dose, *, nuclide: str, method: str, voxel_mm=None, origin_mm=(0.0, 0.0, 0.0)) -> Path:
    """Write a dose map (Gy, float32) as NIfTI; nuclide and method in ``descrip``."""
    image = _as_image(dose, voxel_mm, origin_mm)
    _dose_values(image)
    out = sitk.Cast(image, sitk.sitkFloat32)
    out.SetMetaData("ITK_FileNotes", _description(nuclide, method)[:79])  # NIfTI descrip: 80 bytes
    return write_atomic(path, lambda tmp: sitk.WriteImage(out, tmp, useCompression=str(path).endswith(".gz")))


def rtdose_dataset(dose, *, nuclide: str, method: str, voxel_mm=None, origin_mm=(0.0, 0.0, 0.0),
                   summation_type: str = "PLAN", frame_of_reference_uid: str | None = None,
                   patient_id: str = "", patient_name: str = "", study_instance_uid: str | None = None) -> pydicom.Dataset:
    """Build the RT Dose dataset (see the module docstring for the encoding)."""
    if summation_type not in SUMMATION_TYPES:
        raise InvalidDoseInputError(f"summation_type: expected one of {SUMMATION_TYPES}, got {summation_type!r}")
    image = _as_image(dose, voxel_mm, origin_mm)
    values = _dose_values(image)
    nz, ny, nx = values.shape
    sx, sy, sz = image.GetSpacing()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    row_dir, col_dir, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row_dir, col_dir)
    frame_step = sz * float(np.dot(slice_dir, normal))

    top = float(values.max())
    scaling = top / (2**32 - 1) if top > 0 else 1.0
    pixels = np.rint(values / scaling).astype(np.uint32)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_DOSE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    now = datetime.datetime.now(datetime.timezone.utc)
    ds.SOPClassUID = RT_DOSE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTDOSE"
    ds.Manufacturer = "rpt-twin"
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.SeriesDescription = _description(nuclide, method)[:64]
    ds.DoseComment = f"{nuclide} {method}"[:64]
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation_type
    ds.DoseGridScaling = f"{scaling:.10e}"  # DS: at most 16 characters
    ds.ImagePositionPatient = [float(v) for v in image.GetOrigin()]
    ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row_dir, col_dir])]
    ds.PixelSpacing = [float(sy), float(sx)]
    ds.SliceThickness = float(sz)
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [float(k * frame_step) for k in range(nz)]
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def write_rtdose(path, dose, *, nuclide: str, method: str, **kwargs) -> Path:
    """Write a dose map (Gy) as a DICOM RT Dose file; keyword arguments as `rtdose_dataset`."""
    ds = rtdose_dataset(dose, nuclide=nuclide, method=method, **kwargs)
    return write_atomic(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def read_rtdose(path) -> sitk.Image:
    """Read an RT Dose file written by `write_rtdose` back to a SimpleITK image in Gy
    (pixel x DoseGridScaling, geometry from the position/orientation/spacing/offsets)."""
    ds = pydicom.dcmread(path)
    if ds.get("Modality") != "RTDOSE" or ds.get("DoseUnits") != "GY":
        raise InvalidDoseInputError(f"{path}: expected an RTDOSE file with DoseUnits GY")
    values = ds.pixel_array.astype(np.float64).reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    values *= float(ds.DoseGridScaling)
    offsets = np.asarray(ds.GridFrameOffsetVector, dtype=float)
    row_dir = np.asarray(ds.ImageOrientationPatient[:3], dtype=float)
    col_dir = np.asarray(ds.ImageOrientationPatient[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    step = float(offsets[1] - offsets[0]) if offsets.size > 1 else float(ds.get("SliceThickness", 1.0))
    image = sitk.GetImageFromArray(values)
    image.SetOrigin(tuple(float(v) for v in ds.ImagePositionPatient))
    image.SetSpacing((float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), abs(step)))
    slice_dir = normal * np.sign(step)
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, slice_dir]).ravel()))
    return image
