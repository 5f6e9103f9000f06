"""NIfTI scans with a JSON sidecar for the metadata NIfTI cannot hold.

`scan.nii.gz` holds voxels and geometry (SimpleITK); `scan.json` next to it holds the
`Scan` metadata (modality, units, nuclide, tracer, time_h, injected_activity_mbq,
decay_correction, acquisition_duration_s, patient_weight_kg, ids, calibration).  Both
are written atomically (temporary name in the same folder, then os.replace).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

import SimpleITK as sitk

from .atomic import atomic_file
from .errors import ImagingError, MissingTagError
from .scan import METADATA_FIELDS, Scan

_EXTENSIONS = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(_EXTENSIONS)


def sidecar_path(path: str | os.PathLike) -> Path:
    """`x.nii.gz` / `x.nii` -> `x.json`."""
    text = str(path)
    for ext in _EXTENSIONS:
        if text.lower().endswith(ext):
            return Path(text[: -len(ext)] + ".json")
    raise ImagingError(f"{path}: not a NIfTI file name; expected one of {_EXTENSIONS}")


def write_nifti(scan: Scan, path: str | os.PathLike) -> Path:
    """Write `scan` as NIfTI (float32 for activity/CT, integer labels kept) + JSON sidecar.

    Returns the image path.  Both files are written atomically; the image is written
    first, so a sidecar never describes a missing image.
    """
    path = Path(path)
    sidecar = sidecar_path(path)
    image = scan.image
    if scan.units != "LABEL" and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    with atomic_file(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=str(path).lower().endswith(".gz"))
    with atomic_file(sidecar) as tmp:
        meta = {k: (float(v) if isinstance(v, numbers.Real) and not isinstance(v, (bool, int)) else v)
                for k, v in scan.metadata().items()}  # numpy scalars -> JSON numbers
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def read_nifti(path: str | os.PathLike, **overrides) -> Scan:
    """Read a NIfTI image and its JSON sidecar into a `Scan`.

    `overrides` (any `Scan` field but `image`) take precedence over the sidecar; without
    a sidecar, `modality` and `units` must be given as overrides.
    """
    path = Path(path)
    if not path.is_file():
        raise ImagingError(f"{path}: no such NIfTI file")
    sidecar = sidecar_path(path)
    meta: dict = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as err:
            raise ImagingError(f"{sidecar}: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise ImagingError(f"{sidecar}: expected a JSON object of Scan metadata")
        unknown = set(meta) - set(METADATA_FIELDS)
        if unknown:
            raise ImagingError(f"{sidecar}: unknown metadata fields {sorted(unknown)}; expected {METADATA_FIELDS}")
    bad = set(overrides) - set(METADATA_FIELDS)
    if bad:
        raise ImagingError(f"{path}: unknown overrides {sorted(bad)}; expected some of {METADATA_FIELDS}")
    meta.update(overrides)
    for field in ("modality", "units"):
        if meta.get(field) is None:
            raise MissingTagError(f"{sidecar}: field {field!r} missing (no sidecar or no entry); "
                                  f"give it in the sidecar or as read_scan(..., {field}=...)")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ImagingError(f"{path}: SimpleITK could not read it ({err})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImagingError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
    if meta["units"] == "LABEL":
        if image.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32, sitk.sitkInt8,
                                      sitk.sitkInt16, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64):
            raise ImagingError(f"{path}: label map has pixel type {image.GetPixelIDTypeAsString()}; "
                               "expected integers")
    elif image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    for key, value in list(meta.items()):
        if isinstance(value, float) and math.isnan(value):
            raise ImagingError(f"{sidecar}: field {key!r} is NaN")
    return Scan(image=image, source=str(path), **meta)
