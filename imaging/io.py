"""`read_scan`: one entry point for NIfTI files (+ JSON sidecar) and DICOM series folders."""

from __future__ import annotations

import os
from pathlib import Path

from .dicom import read_dicom_series
from .errors import ImagingError, MissingTagError
from .nifti import is_nifti, read_nifti
from .scan import Scan


def read_scan(path: str | os.PathLike, **overrides) -> Scan:
    """Read a scan: a `.nii`/`.nii.gz` file (metadata from the `.json` sidecar next to
    it) or a folder holding one DICOM series (or one file of it).

    `overrides` set any `Scan` field (e.g. `time_h=`, `injected_activity_mbq=`,
    `nuclide=`, `patient_weight_kg=`), taking precedence over the file's metadata.  PET
    and SPECT scans must end up with a time after injection: missing timing tags raise
    `MissingTagError` naming the file and tag, unless `time_h=` is given.
    """
    path = Path(path)
    if path.is_dir():
        scan = read_dicom_series(path, **overrides)
    elif is_nifti(path):
        scan = read_nifti(path, **overrides)
    elif path.is_file():
        scan = read_dicom_series(path.parent, **overrides)
    else:
        raise ImagingError(f"{path}: no such file or folder; expected a NIfTI file or a DICOM series folder")
    if scan.modality in ("PT", "NM") and scan.time_h is None:
        raise MissingTagError(f"{path}: time_h (time after injection) missing; give it in the metadata or "
                              "as read_scan(..., time_h=...)")
    return scan
