"""Dose engine: nuclide data (ICRP-107) now; voxel kernels, convolution and metrics to come.

`dose.nuclides` is the project's single source of nuclide data.
"""

from . import nuclides
from .errors import DoseError, UnknownNuclideError
from .nuclides import Nuclide, nuclide

__all__ = ["nuclides", "nuclide", "Nuclide", "DoseError", "UnknownNuclideError"]
