"""Local energy deposition (LED): all non-penetrating energy absorbed in the source voxel.

    D(x) [Gy] = A~(x) [MBq s] * 1e6 [decays / (MBq s)] * E_np [MeV] * 1.602176634e-13 [J/MeV]
                / ( rho(x) [g/cm^3] * V [cm^3] * 1e-3 [kg/g] )          (* RBE, optional)

E_np is the mean energy per decay of electrons and alphas (beta-, beta+, internal
conversion and Auger electrons, alphas and their recoils) from ICRP-107
(`dose.nuclides.non_penetrating_energy_mev`); photons are ignored (they escape a
voxel).  LED is the method for alpha emitters (ranges 45-80 um, far below a voxel) and
an upper bound of the self-dose for beta emitters; it is exact for uniform regions much
larger than the electron range (../shared/research/dose.md section 6.2).

An RBE weighting is never folded in silently: pass ``rbe`` explicitly (e.g. 5 for
alphas, a value the user must choose and report); the default 1 gives absorbed dose.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidDoseInputError
from .nuclides import MEV_TO_J, non_penetrating_energy_mev


def local_deposition_gy_per_mbq_s(nuclide: str, voxel_mm, density_g_cm3) -> np.ndarray | float:
    """Self-dose per unit TIA, Gy per (MBq s), of a voxel of size `voxel_mm` (3 values) and
    mass density `density_g_cm3` (scalar or array): 1e6 E_np J / (rho V)."""
    voxel = np.asarray(voxel_mm, dtype=float)
    volume_cm3 = float(np.prod(voxel)) / 1000.0
    rho = np.asarray(density_g_cm3, dtype=float)
    if np.any(~np.isfinite(rho)) or np.any(rho <= 0):
        raise InvalidDoseInputError("density_g_cm3: local deposition needs finite densities > 0 g/cm^3")
    mass_kg = rho * volume_cm3 * 1e-3
    return 1e6 * non_penetrating_energy_mev(nuclide) * MEV_TO_J / mass_kg


def local_deposition_dose(tia_mbq_s: np.ndarray, voxel_mm, nuclide: str, density_g_cm3, rbe: float = 1.0) -> np.ndarray:
    """Dose (Gy, or RBE-weighted Gy if ``rbe != 1``) by local energy deposition.

    `tia_mbq_s`: TIA per voxel (MBq s); `density_g_cm3`: scalar or array of the image shape.
    """
    if not (np.isfinite(rbe) and rbe > 0):
        raise InvalidDoseInputError(f"rbe: expected a finite factor > 0, got {rbe!r}")
    return np.asarray(tia_mbq_s, dtype=float) * local_deposition_gy_per_mbq_s(nuclide, voxel_mm, density_g_cm3) * float(rbe)
