"""Training pairs of the dose corrector from a TIA map and a CT.

A pair: physics dose = `absorbed_dose(method="density")` (density-scaled kernel, the
corrector's input), target = `absorbed_dose(method="reference")` (heterogeneity-aware),
density from the CT through the Schneider table.  Synthetic whole-body patients as a
source of such maps live outside `dose` (it knows nothing of imaging):
`twin.corrector_data.phantom_pairs` draws them from `imaging.phantom`.
"""
from __future__ import annotations

import numpy as np

from ..absorbed import absorbed_dose
from ..density import hu_to_density
from ..kernels import _voxel_tuple

def make_pair(tia_mbq_s: np.ndarray, ct_hu: np.ndarray, voxel_mm, body: np.ndarray, *, nuclide: str = "Lu-177",
              seed: int | None = None) -> dict:
    """One (physics dose, density, reference dose) triple; arrays (z, y, x), Gy.

    tia_mbq_s: voxel TIA (MBq*s); ct_hu: CT on the same grid (HU); voxel_mm: (z, y, x) or
    one size (mm); body: bool mask of the body (where the corrector is trained)."""
    vox = _voxel_tuple(voxel_mm)
    rho = hu_to_density(np.asarray(ct_hu, dtype=np.float64))
    phys = absorbed_dose(tia_mbq_s, vox, nuclide, method="density", density_g_cm3=rho)
    ref = absorbed_dose(tia_mbq_s, vox, nuclide, method="reference", density_g_cm3=rho)
    return {"seed": seed, "tia_mbq_s": np.asarray(tia_mbq_s, float), "density_g_cm3": np.asarray(rho, float),
            "physics_gy": np.asarray(phys, float), "reference_gy": np.asarray(ref, float),
            "body": np.asarray(body, bool)}
