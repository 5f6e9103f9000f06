"""Image I/O (NIfTI, DICOM), quantification (Bq/mL, SUV, decay), resampling,
registration and masks -> time-activity tables."""

from .dicom import read_dicom_series, write_dicom_series
from .errors import (EmptyMaskError, GeometryMismatchError, ImagingError, InvalidVoxelError, MissingTagError,
                     UnitsError)
from .io import read_scan
from .nifti import read_nifti, write_nifti
from .quantify import (bqml_to_suv, check_activity_voxels, counts_to_bqml, decay_correct, decay_factor_to,
                       suv_to_bqml, to_bqml)
from .register import Registration, register_rigid
from .resample import resample_to
from .regions import MODEL_REGIONS, label_names, to_model_region
from .scan import DECAY_CORRECTIONS, MODALITIES, UNITS, Scan
from .time_activity import COLUMNS, read_table, sphere_recovery_coefficient, time_activity, write_table

__all__ = [
    "Scan", "MODALITIES", "UNITS", "DECAY_CORRECTIONS",
    "ImagingError", "MissingTagError", "UnitsError", "GeometryMismatchError", "EmptyMaskError", "InvalidVoxelError",
    "read_scan", "read_nifti", "write_nifti", "read_dicom_series", "write_dicom_series",
    "decay_correct", "decay_factor_to", "bqml_to_suv", "suv_to_bqml", "counts_to_bqml", "to_bqml",
    "check_activity_voxels", "resample_to", "register_rigid", "Registration",
    "to_model_region", "label_names", "MODEL_REGIONS",
    "time_activity", "sphere_recovery_coefficient", "write_table", "read_table", "COLUMNS",
]
