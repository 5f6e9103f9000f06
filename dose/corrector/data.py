"""Training pairs of the dose corrector: (TIA, CT, reference dose) -> the network's input
and target.

A pair holds the physics dose = `absorbed_dose(method="density")` (density-scaled kernel,
the corrector's input), the density (g/cm^3) from the CT through the HU table (Schneider
2000 by default), and the target dose (Gy) the corrector learns to reproduce:
* `pair_from_reference`: a reference dose the user brings, e.g. a Monte Carlo dose from
  their own engine (OpenGATE, ...), as arrays, SimpleITK images or image files (NIfTI,
  MHA, anything SimpleITK reads);
* `make_pair`: the heterogeneity-aware `reference` method of this package as the target.
Synthetic whole-body patients as a source of such maps live outside `dose` (it knows
nothing of imaging): `twin.corrector_data.phantom_pairs` draws them from `imaging.phantom`.
"""
from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ..absorbed import TIA_UNITS_TO_MBQ_S, _same_grid, absorbed_dose
from ..density import SCHNEIDER_2000_TABLE, hu_to_density
from ..errors import GeometryError, InvalidDoseInputError
from ..kernels import _voxel_tuple


def _read(value, field: str):
    """An image file path -> SimpleITK image (InvalidDoseInputError naming the file if it
    cannot be read); arrays and images pass through."""
    if isinstance(value, (str, os.PathLike)):
        try:
            return sitk.ReadImage(os.fspath(value))
        except RuntimeError as exc:
            raise InvalidDoseInputError(f"{field} {os.fspath(value)}: cannot read the image ({exc})") from exc
    return value


def _array_on_grid(value, field: str, grid: sitk.Image | None, shape: tuple[int, ...]) -> np.ndarray:
    """Array of an image or array input that must lie on the TIA's grid (the image `grid`,
    or the TIA array's `shape`); GeometryError naming `field` otherwise."""
    if isinstance(value, sitk.Image):
        if grid is not None and not _same_grid(value, grid):
            raise GeometryError(f"{field}: grid (size {value.GetSize()}, spacing {value.GetSpacing()}, origin "
                                f"{value.GetOrigin()}) differs from the TIA grid (size {grid.GetSize()}, spacing "
                                f"{grid.GetSpacing()}, origin {grid.GetOrigin()}); resample it to the TIA grid")
        value = sitk.GetArrayFromImage(value)
    arr = np.asarray(value)
    if arr.shape != tuple(shape):
        raise GeometryError(f"{field}: shape {arr.shape} differs from the TIA shape {tuple(shape)} (z, y, x)")
    return arr


def pair_from_reference(tia, ct_hu, reference_gy, voxel_mm=None, *, nuclide: str = "Lu-177",
                        tia_units: str = "MBq*s", body=None, hu_table=SCHNEIDER_2000_TABLE) -> dict:
    """A training pair from a TIA map, its CT and a reference dose the user computed.

    tia: TIA per voxel (`tia_units`: "MBq*s" or "MBq*h"); ct_hu: CT (HU); reference_gy:
    the target absorbed dose (Gy); body (optional): mask of the voxels the loss counts
    (default every voxel).  Each is a numpy array (z, y, x), a SimpleITK image or an image
    file path; with images the CT, reference and mask must share the TIA's grid (size,
    spacing, origin, direction) and the voxel size is the TIA's spacing (`voxel_mm`, (z, y,
    x) mm or one size, is then optional and must agree); with arrays `voxel_mm` is required.
    Returns the dict `train` takes: physics_gy (density-scaled kernel dose, Gy),
    density_g_cm3, reference_gy, body, tia_mbq_s, voxel_mm (z, y, x) and nuclide.
    GeometryError for grids that differ, InvalidDoseInputError for unreadable files or
    reference doses that are not finite or negative (beyond 1e-6 of the maximum: FFT round-off)."""
    tia, ct_hu, reference_gy, body = (_read(v, f) for v, f in ((tia, "tia"), (ct_hu, "ct_hu"),
                                                               (reference_gy, "reference_gy"), (body, "body")))
    grid = tia if isinstance(tia, sitk.Image) else None
    if voxel_mm is not None:
        voxel_mm = _voxel_tuple(voxel_mm)
    shape = tuple(grid.GetSize()[::-1]) if grid is not None else np.shape(tia)
    # every input is checked against the TIA grid before the (costly) physics dose
    rho = hu_to_density(_array_on_grid(ct_hu, "ct_hu", grid, shape).astype(np.float64), hu_table)
    ref = _array_on_grid(reference_gy, "reference_gy", grid, shape).astype(np.float64)
    if not np.all(np.isfinite(ref)):
        raise InvalidDoseInputError("reference_gy: non-finite values (NaN/inf)")
    if ref.size and ref.min() < -1e-6 * max(ref.max(), 0.0):  # FFT round-off of a kernel dose is allowed
        raise InvalidDoseInputError(f"reference_gy: negative absorbed doses (min {ref.min():.3g} Gy)")
    mask = np.ones(shape, bool) if body is None else _array_on_grid(body, "body", grid, shape) != 0
    physics = absorbed_dose(tia, voxel_mm, nuclide, method="density", density_g_cm3=rho, tia_units=tia_units)
    if grid is not None:
        voxel = tuple(float(v) for v in grid.GetSpacing()[::-1])
        physics = sitk.GetArrayFromImage(physics)
    else:
        voxel = voxel_mm
    tia_arr = _array_on_grid(tia, "tia", grid, shape).astype(np.float64) * TIA_UNITS_TO_MBQ_S[tia_units]
    return {"seed": None, "tia_mbq_s": tia_arr, "density_g_cm3": rho, "physics_gy": np.asarray(physics, float),
            "reference_gy": ref, "body": mask, "voxel_mm": voxel, "nuclide": nuclide}


def make_pair(tia_mbq_s: np.ndarray, ct_hu: np.ndarray, voxel_mm, body: np.ndarray, *, nuclide: str = "Lu-177",
              seed: int | None = None) -> dict:
    """`pair_from_reference` with this package's heterogeneity-aware `reference` dose as
    the target; arrays (z, y, x), Gy.

    tia_mbq_s: voxel TIA (MBq*s); ct_hu: CT on the same grid (HU); voxel_mm: (z, y, x) or
    one size (mm); body: bool mask of the body (where the corrector is trained)."""
    voxel_mm = _voxel_tuple(voxel_mm)
    rho = hu_to_density(np.asarray(ct_hu, dtype=np.float64))
    ref = absorbed_dose(tia_mbq_s, voxel_mm, nuclide, method="reference", density_g_cm3=rho)
    pair = pair_from_reference(tia_mbq_s, ct_hu, ref, voxel_mm, nuclide=nuclide, body=body)
    pair["seed"] = seed
    return pair
