"""Training pairs of the CNN dose corrector from synthetic whole-body patients
(`imaging.phantom` anatomy and CT, `dose.corrector.data.make_pair` doses): composition of
imaging and dose, hence here and not in `dose`.

Each seed gives its own anatomy (`anatomy_sd`) and organ activities drawn log-uniformly
between 10^1.5 and 10^3.3 MBq, integrated over one day (TIA = A * 86400 s), on a coarse
whole-body grid where lungs, bone and soft-tissue interfaces are all present.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from dose.corrector.data import make_pair
from imaging.phantom import make_patient

#: smallest whole-body phantom grid (x, y, z) at 12 mm that holds the body outline
SMALL_SHAPE_XYZ = (36, 28, 72)
SMALL_VOXEL_MM = 12.0
REGIONS = ("body", "bone", "lungs", "liver", "kidneys", "spleen", "heart", "lesion_1", "lesion_2")


def phantom_pair(seed: int, shape_xyz=SMALL_SHAPE_XYZ, voxel_mm: float = SMALL_VOXEL_MM,
                 nuclide: str = "Lu-177", anatomy_sd: float = 0.1) -> dict:
    """One (physics dose, density, reference dose) triple of phantom `seed` (see module doc),
    with the phantom's label map (`labels`, (z, y, x) ints), `region_names` (label -> name),
    `voxel_mm` and `nuclide`, for per-region evaluation."""
    rng = np.random.default_rng(seed)
    p = make_patient(seed=seed, shape=shape_xyz, voxel_mm=voxel_mm, anatomy_sd=anatomy_sd)
    names = set(p.region_names.values())
    act = {r: float(10 ** rng.uniform(1.5, 3.3)) for r in REGIONS if r in names}  # MBq
    tia_mbq_s = p.activity_array_bqml(act) * p.voxel_ml * 1e-6 * 86400.0  # 1 day
    ct = sitk.GetArrayFromImage(p.ct.image).astype(np.float64)
    labels = p.label_array()
    pair = make_pair(tia_mbq_s, ct, voxel_mm, labels > 0, nuclide=nuclide, seed=seed)
    pair.update(labels=labels, region_names=dict(p.region_names), voxel_mm=float(voxel_mm), nuclide=nuclide)
    return pair


def phantom_pairs(seeds, **kwargs) -> list[dict]:
    """`phantom_pair` for every seed."""
    return [phantom_pair(int(s), **kwargs) for s in seeds]
