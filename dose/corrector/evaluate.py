"""Accuracy of a dose map against the `reference` dose, per heterogeneity class and per
region: the held-out evaluation of the CNN corrector (issue 8).

Voxel classes (inside the body mask; tissue classes from `dose.density.tissue_classes`,
Schneider 2000 density limits):

* ``lung``: lung-class voxels (incl. air cavities) with rho >= `min_density_g_cm3`
  (0.1 g/cm^3, the density method's low-density guard: dose to air is not meaningful);
* ``bone_interface``: bone-class voxels and adipose/soft-tissue voxels within
  `interface_voxels` (default 2) voxels of bone (Chebyshev distance: a (2k+1)^3 cube);
* ``soft_tissue``: soft-tissue-class voxels farther than `homogeneous_voxels` (default
  3) voxels from any voxel of another class or outside the body.

Voxel mean absolute error of a map D against the reference R over a class C:
    MAE_C = (1/|C|) sum_{v in C} |D(v) - R(v)|   (Gy).
Mean-dose error of a region G:  100 (mean_G D - mean_G R) / mean_G R  (%).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..density import tissue_classes
from ..errors import GeometryError

CLASSES = ("lung", "bone_interface", "soft_tissue")
LUNG, ADIPOSE, SOFT, BONE = 0, 1, 2, 3  # indices of dose.density.TISSUE_CLASSES


def _cube(k: int) -> np.ndarray:
    return np.ones((2 * k + 1,) * 3, bool)


def class_masks(density_g_cm3, body, *, interface_voxels: int = 2, homogeneous_voxels: int = 3,
                min_density_g_cm3: float = 0.1) -> dict[str, np.ndarray]:
    """Boolean masks of the voxel classes in `CLASSES` (see module doc); arrays (z, y, x)."""
    rho = np.asarray(density_g_cm3, float)
    body = np.asarray(body, bool)
    if body.shape != rho.shape or rho.ndim != 3:
        raise GeometryError(f"body: shape {body.shape} must equal density_g_cm3 shape {rho.shape} (3-D)")
    cls = tissue_classes(rho)
    bone = (cls == BONE) & body
    near_bone = ndimage.binary_dilation(bone, _cube(interface_voxels))
    soft = (cls == SOFT) & body
    other = ~soft  # any other class, or outside the body
    far = ~ndimage.binary_dilation(other, _cube(homogeneous_voxels), border_value=1)
    return {"lung": (cls == LUNG) & body & (rho >= min_density_g_cm3),
            "bone_interface": bone | (near_bone & body & ((cls == SOFT) | (cls == ADIPOSE))),
            "soft_tissue": soft & far}


def class_mae_gy(dose_gy, reference_gy, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Voxel mean absolute error (Gy) of `dose_gy` against `reference_gy` in each mask."""
    d, r = np.asarray(dose_gy, float), np.asarray(reference_gy, float)
    if d.shape != r.shape:
        raise GeometryError(f"dose_gy: shape {d.shape} differs from reference_gy {r.shape}")
    return {k: float(np.abs(d - r)[m].mean()) if m.any() else float("nan") for k, m in masks.items()}


def region_mean_error_pct(dose_gy, reference_gy, labels, region_names: dict[int, str]) -> dict[str, float]:
    """Mean-dose error (%) of `dose_gy` against `reference_gy` in every labelled region
    with a non-zero reference mean dose."""
    d, r, lab = np.asarray(dose_gy, float), np.asarray(reference_gy, float), np.asarray(labels)
    if not d.shape == r.shape == lab.shape:
        raise GeometryError(f"labels: shape {lab.shape}, dose {d.shape} and reference {r.shape} must agree")
    out = {}
    for code, name in sorted(region_names.items()):
        m = lab == int(code)
        if m.any() and r[m].mean() > 0:
            out[name] = float(100.0 * (d[m].mean() - r[m].mean()) / r[m].mean())
    return out
