"""CT numbers (HU) to mass density (g/cm^3) and tissue classes.

HU -> density
-------------
A piecewise-linear table (HU_i, rho_i), linear between nodes and constant beyond the
end nodes.  Default: the HU-to-density calibration of Schneider W, Bortfeld T,
Schlegel W, "Correlation between CT numbers and tissue parameters needed for Monte
Carlo simulations of clinical dose distributions", Phys Med Biol 2000;45:459-478,
doi:10.1088/0031-9155/45/2/314, in the tabulated form GATE ships as
``Schneider2000DensitiesTable.txt`` (nodes copied from that file as quoted in
../shared/research/dose.md section 4.1; the jump at 100/101 HU is in the original:
soft tissue and bone follow separate linear fits).  Any scanner-specific calibration
can be passed instead as ``table=[(hu, rho), ...]`` (HU strictly increasing).

Tissue classes
--------------
Four classes for the multi-kernel method: lung (including air), adipose, soft tissue
and bone.  The boundaries are the HU limits of Schneider et al. 2000's tissue
segmentation (their table 6: air below -950 HU, lung -950 to -120 HU, adipose tissue
mixtures -120 to -23 HU, soft tissues -22 to +120 HU, bone/marrow mixtures above
+120 HU; the same limits as GATE's ``Schneider2000MaterialsTable.txt``), converted to
density with the default table, so classes are defined on density and apply to any
calibration:

    lung    rho <  rho(-120 HU)            (air rho < rho(-950 HU) is lumped into lung)
    adipose rho(-120 HU) <= rho < rho(-22 HU)
    soft    rho(-22 HU)  <= rho < rho(+120 HU)
    bone    rho >= rho(+120 HU)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InvalidDoseInputError

# (HU, g/cm^3): Schneider, Bortfeld & Schlegel 2000, Phys Med Biol 45:459, as tabulated
# in GATE's Schneider2000DensitiesTable.txt (see module docstring).
SCHNEIDER_2000_TABLE: tuple[tuple[float, float], ...] = (
    (-1000.0, 0.00121),
    (-98.0, 0.93),
    (-97.0, 0.930486),
    (14.0, 1.03),
    (23.0, 1.031),
    (100.0, 1.1199),
    (101.0, 1.0762),
    (1600.0, 1.9642),
    (3000.0, 2.8),
)

# HU limits of the tissue segmentation of Schneider et al. 2000 (table 6).
SCHNEIDER_2000_CLASS_HU = {"air_lung": -950.0, "lung_adipose": -120.0, "adipose_soft": -22.0, "soft_bone": 120.0}

TISSUE_CLASSES = ("lung", "adipose", "soft_tissue", "cortical_bone")
"""Class names, in class-index order; each is also the name of the medium whose kernel
the multi-kernel method uses for sources in that class (dose.media)."""


def _check_table(table: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(table, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 2:
        raise InvalidDoseInputError(f"table: expected at least two (HU, density) pairs, got shape {arr.shape}")
    hu, rho = arr[:, 0], arr[:, 1]
    if not (np.all(np.isfinite(arr)) and np.all(np.diff(hu) > 0) and np.all(rho > 0)):
        raise InvalidDoseInputError("table: HU must be finite and strictly increasing, densities finite and > 0 g/cm^3")
    return hu, rho


def hu_to_density(ct_hu, table: Sequence[tuple[float, float]] = SCHNEIDER_2000_TABLE) -> np.ndarray:
    """Mass density (g/cm^3) of each voxel: linear interpolation of `table` in HU, clamped
    to the end nodes outside the table range."""
    hu_nodes, rho_nodes = _check_table(table)
    ct = np.asarray(ct_hu, dtype=float)
    if not np.all(np.isfinite(ct)):
        raise InvalidDoseInputError("ct_hu: CT numbers must be finite (NaN or inf found)")
    return np.interp(ct, hu_nodes, rho_nodes)


def class_density_thresholds(table: Sequence[tuple[float, float]] = SCHNEIDER_2000_TABLE) -> tuple[float, float, float]:
    """Density limits (g/cm^3) lung|adipose, adipose|soft, soft|bone: the HU limits of
    Schneider et al. 2000 (table 6) mapped through `table`."""
    limits = [SCHNEIDER_2000_CLASS_HU[k] for k in ("lung_adipose", "adipose_soft", "soft_bone")]
    return tuple(float(v) for v in hu_to_density(limits, table))


def tissue_classes(density_g_cm3, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Class index per voxel (0 lung incl. air, 1 adipose, 2 soft tissue, 3 bone; names in
    `TISSUE_CLASSES`) from mass density by the thresholds of `class_density_thresholds`."""
    rho = np.asarray(density_g_cm3, dtype=float)
    if not np.all(np.isfinite(rho)) or np.any(rho < 0):
        raise InvalidDoseInputError("density_g_cm3: densities must be finite and >= 0")
    limits = np.asarray(class_density_thresholds() if thresholds is None else thresholds, dtype=float)
    if limits.shape != (3,) or np.any(np.diff(limits) <= 0):
        raise InvalidDoseInputError(f"thresholds: expected three increasing densities, got {limits}")
    return np.searchsorted(limits, rho, side="right").astype(np.int8)
