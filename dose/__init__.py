"""Dose engine: nuclide data (ICRP-107), voxel S-value kernels, JIT FFT convolution,
local deposition, density handling, a heterogeneity-aware reference method, dose metrics
and RTDOSE/NIfTI output.

`dose.nuclides` is the project's single source of nuclide data.  Units: TIA in MBq*s (or
MBq*h, stated), kernels in mGy/(MBq*s), dose in Gy.
"""

from . import kernels, media, metrics, nuclides, rtdose
from .absorbed import absorbed_dose
from .errors import DoseError, GeometryError, InvalidDoseInputError, UnknownNuclideError
from .kernels import VoxelKernel, voxel_kernel
from .nuclides import Nuclide, nuclide

__all__ = [
    "DoseError", "GeometryError", "InvalidDoseInputError", "Nuclide", "UnknownNuclideError", "VoxelKernel",
    "absorbed_dose", "kernels", "media", "metrics", "nuclide", "nuclides", "rtdose", "voxel_kernel",
]
