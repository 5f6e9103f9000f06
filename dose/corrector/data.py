"""Reproducible training pairs from synthetic patients (imaging.phantom).

Each pair: physics dose = `absorbed_dose(method="density")` (density-scaled kernel),
target = `absorbed_dose(method="reference")` (heterogeneity-aware), density from the
CT through the Schneider table, all on a coarse whole-body grid (lungs, bone, soft
tissue interfaces are present in every phantom).  Organ activities are drawn from
the seed (log-uniform), so different seeds give different anatomy and uptake.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..absorbed import absorbed_dose
from ..density import hu_to_density

#: smallest whole-body phantom grid (x, y, z) at 12 mm that holds the body outline
SMALL_SHAPE_XYZ = (36, 28, 72)
SMALL_VOXEL_MM = 12.0
REGIONS = ("body", "bone", "lungs", "liver", "kidneys", "spleen", "heart", "lesion_1", "lesion_2")


def make_pair(seed: int, shape_xyz=SMALL_SHAPE_XYZ, voxel_mm: float = SMALL_VOXEL_MM,
              nuclide: str = "Lu-177", anatomy_sd: float = 0.1) -> dict:
    """One (physics dose, density, reference dose) triple, arrays (z, y, x), Gy."""
    from imaging.phantom import make_patient  # test/training-time dependency only

    rng = np.random.default_rng(seed)
    p = make_patient(seed=seed, shape=shape_xyz, voxel_mm=voxel_mm, anatomy_sd=anatomy_sd)
    names = set(p.region_names.values())
    act = {r: float(10 ** rng.uniform(1.5, 3.3)) for r in REGIONS if r in names}  # MBq
    conc_bqml = p.activity_array_bqml(act)
    tia_mbq_s = conc_bqml * p.voxel_ml * 1e-6 * 86400.0  # 1 day effective
    ct = sitk.GetArrayFromImage(p.ct.image).astype(np.float64)
    vox = (voxel_mm,) * 3
    rho = hu_to_density(ct)
    phys = absorbed_dose(tia_mbq_s, vox, nuclide, method="density", density_g_cm3=rho)
    ref = absorbed_dose(tia_mbq_s, vox, nuclide, method="reference", density_g_cm3=rho)
    return {"seed": seed, "tia_mbq_s": tia_mbq_s, "density_g_cm3": np.asarray(rho, float),
            "physics_gy": np.asarray(phys, float), "reference_gy": np.asarray(ref, float),
            "body": p.label_array() > 0}


def make_pairs(seeds, **kwargs) -> list[dict]:
    return [make_pair(int(s), **kwargs) for s in seeds]
