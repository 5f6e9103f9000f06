"""Synthetic patients: analytic head-and-trunk anatomy (CT in HU + label map), organ
activities -> noise-free activity maps, simulated PET and SPECT (Gaussian PSF, Poisson
noise, calibration), written as NIfTI or DICOM through the imaging writers.

    patient = make_patient(seed=0)
    spect = patient.simulate_spect({"kidneys": 80.0, "liver": 60.0}, time_h=24.0)

Modules: `anatomy` (shapes, CT numbers, labels), `activity` (organ -> voxel activity),
`acquisition` (blur, rebin, decay, noise), `patient` (`SyntheticPatient`, `make_patient`).
"""

from .activity import AGGREGATE_REGIONS, RegionActivities
from .anatomy import BASE_REGIONS, DEFAULT_LESIONS, HU, Lesion
from .patient import SyntheticPatient, make_patient

__all__ = ["make_patient", "SyntheticPatient", "Lesion", "RegionActivities", "BASE_REGIONS",
           "DEFAULT_LESIONS", "AGGREGATE_REGIONS", "HU"]
