"""Absorbed dose (Gy) from a time-integrated activity (TIA) map.

``absorbed_dose(tia, voxel_mm, nuclide, method=...)`` with the methods

* ``"kernel"``: MIRD voxel-S convolution in one homogeneous medium (`medium`),
  D = A~ (*) S (dose.convolution: JAX FFT, zero padded, float32).
* ``"local"``: local energy deposition of electrons and alphas (dose.local), optional
  RBE factor passed explicitly; density from the CT (with the low-density guard below),
  else the medium's density (dose.media).
* ``"density"``: kernel dose rescaled by mass, D(x) = D_kernel(x) rho_medium / rho'(x),
  rho'(x) = max(rho(x), min_density_g_cm3).  Energy deposited per voxel is kept and
  divided by the voxel's actual mass (Dieudonne et al. 2013, J Nucl Med 54:236; see
  ../shared/research/dose.md 4.2).  **Low-density guard**: below `min_density_g_cm3`
  (default 0.1 g/cm^3, i.e. air and the lowest-density lung; normal inflated lung is
  about 0.2-0.3 g/cm^3) the density is clamped, so the amplification is at most
  rho_medium / min_density (about 10x): dose in air voxels stays finite (no division
  by ~0.001 g/cm^3), is not physically meaningful, and should be masked by the user.
* ``"multi_kernel"``: tissue classes from the CT (dose.density: lung incl. air,
  adipose, soft tissue, bone; Schneider 2000 limits), one convolution per class with
  that class's kernel and the activity of that class only (masked source), each
  rescaled by mass to the target voxel (rho_class / rho'(x), same guard):
  D(x) = sum_c [(A~ 1_c) (*) S_c](x) rho_c / rho'(x).  Exact inside a uniform region of
  one class; at interfaces it uses the source's medium along the whole path.
* ``"reference"``: slow heterogeneity-aware superposition with range-scaled kernels
  along the straight path (dose.reference).
* ``"corrected"``: the ``"density"`` dose passed through a trained CNN corrector
  (`dose.corrector`; give ``corrector=`` a `dose.corrector.Corrector` or the path of
  weights written by `dose.corrector.save`), D = max(0, D_density + R(D_density, rho)).
  For an image input the output image records the method and the corrector's weights
  and training provenance in its metadata (``rpt_twin:dose_method``,
  ``rpt_twin:corrector``, JSON).

Units: TIA in MBq s (``tia_units="MBq*s"``) or MBq h (``"MBq*h"``, times 3600); kernels
in mGy/(MBq s); dose in Gy.  Geometry: for numpy input, `voxel_mm` gives the voxel size
per array axis (axis 0, 1, 2).  For a SimpleITK image the voxel size comes from the
image (spacing reversed to numpy axis order), `voxel_mm` may be None, and the dose is
returned as a SimpleITK image on the same grid.  A CT (`ct_hu`) must be on the TIA grid
(same shape, and for images same spacing, origin and direction): resample it first.

``kernel_voxel_mm``: compute on another grid (e.g. the voxel size of a published kernel).
The TIA map is resampled (as activity concentration, linear interpolation, then
renormalised so the total activity is exactly conserved), the dose is computed there and
resampled (linear) back to the input grid.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from . import nuclides
from .convolution import convolve
from .density import SCHNEIDER_2000_TABLE, TISSUE_CLASSES, hu_to_density, tissue_classes
from .errors import GeometryError, InvalidDoseInputError
from .local import local_deposition_dose

METHODS = ("kernel", "local", "density", "multi_kernel", "reference", "corrected")
TIA_UNITS_TO_MBQ_S = {"MBq*s": 1.0, "MBq*h": 3600.0}
MGY_TO_GY = 1e-3

KernelSource = Callable[[str, tuple, str], object]
"""(nuclide, voxel_mm, medium) -> object with .values (mGy/(MBq s), odd, centred) and
.density_g_cm3; default dose.kernels.voxel_kernel."""


def default_kernel_source() -> KernelSource:
    from .kernels import voxel_kernel  # imported here: kernels are built lazily, on first use

    return voxel_kernel


def medium_density_g_cm3(medium: str) -> float:
    """Mass density (g/cm^3) of a named medium, from dose.media."""
    from . import media

    return float(media.medium(medium).density_g_cm3)


def check_voxel_mm(voxel_mm) -> tuple[float, float, float]:
    """Three finite voxel sizes > 0 mm, else GeometryError."""
    try:
        voxel = tuple(float(v) for v in voxel_mm)
    except TypeError as exc:
        raise GeometryError(f"voxel_mm: expected three sizes in mm, got {voxel_mm!r}") from exc
    if len(voxel) != 3 or not all(np.isfinite(v) and v > 0 for v in voxel):
        raise GeometryError(f"voxel_mm: expected three finite sizes > 0 mm, got {voxel_mm!r}")
    return voxel


def _image_voxel_mm(image: sitk.Image) -> tuple[float, float, float]:
    if image.GetDimension() != 3:
        raise GeometryError(f"image: expected a 3-D image, got dimension {image.GetDimension()}")
    return tuple(float(v) for v in image.GetSpacing()[::-1])


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6, atol=1e-9)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-4)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-6)
    )


def check_tia(tia: np.ndarray) -> np.ndarray:
    """TIA array: 3-D, finite and >= 0, else InvalidDoseInputError."""
    tia = np.asarray(tia)
    if not np.issubdtype(tia.dtype, np.floating):
        tia = tia.astype(np.float64)
    if tia.ndim != 3:
        raise InvalidDoseInputError(f"tia: expected a 3-D map, got shape {tia.shape}")
    if not np.all(np.isfinite(tia)):
        raise InvalidDoseInputError("tia: time-integrated activity contains NaN or inf")
    if np.any(tia < 0):
        raise InvalidDoseInputError(f"tia: time-integrated activity must be >= 0, minimum is {tia.min():g}")
    return tia


def resample_activity(tia: np.ndarray, voxel_mm: Sequence[float], new_voxel_mm: Sequence[float]) -> np.ndarray:
    """Resample a TIA map (MBq s per voxel, extensive) to voxels of `new_voxel_mm` covering
    the same field of view: the concentration (per mm^3) is linearly interpolated with
    SimpleITK and multiplied by the new voxel volume, then renormalised so that the total
    activity is exactly conserved."""
    image = sitk.GetImageFromArray(np.asarray(tia, dtype=np.float64) / np.prod(voxel_mm))
    image.SetSpacing(tuple(voxel_mm[::-1]))
    return _resample(image, new_voxel_mm, total=float(np.sum(tia)))


def _resample(image: sitk.Image, new_voxel_mm: Sequence[float], total: float | None = None) -> np.ndarray:
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.array(new_voxel_mm[::-1], dtype=float)
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_spacing / new_spacing)).astype(int)
    # keep the field of view's corner: origin moves by half a voxel difference
    origin = np.array(image.GetOrigin()) + 0.5 * (new_spacing - old_spacing)
    out = sitk.Resample(image, [int(v) for v in size], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                        new_spacing.tolist(), image.GetDirection(), 0.0, sitk.sitkFloat64)
    arr = sitk.GetArrayFromImage(out)
    if total is None:
        return arr
    arr = arr * np.prod(new_voxel_mm)
    s = arr.sum()
    return arr * (total / s) if s > 0 else arr


def _back_to_grid(dose: np.ndarray, dose_voxel_mm, target_shape, target_voxel_mm) -> np.ndarray:
    image = sitk.GetImageFromArray(np.asarray(dose, dtype=np.float64))
    image.SetSpacing(tuple(dose_voxel_mm[::-1]))
    ref = sitk.Image([int(v) for v in target_shape[::-1]], sitk.sitkFloat64)
    ref.SetSpacing(tuple(target_voxel_mm[::-1]))
    ref.SetOrigin(tuple(0.5 * (np.array(target_voxel_mm[::-1]) - np.array(dose_voxel_mm[::-1]))))
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(out)


def kernel_dose_gy(tia_mbq_s: np.ndarray, kernel_values: np.ndarray) -> np.ndarray:
    """Voxel-S convolution D = A~ (*) S, Gy (float32), S in mGy/(MBq s)."""
    return convolve(tia_mbq_s, np.asarray(kernel_values, dtype=np.float32) * np.float32(MGY_TO_GY))


def _dose_on_grid(tia, voxel, nuclide, method, density, medium, min_density, rbe, kernel_source, corrector=None):
    if method == "local":
        rho = medium_density_g_cm3(medium) if density is None else np.maximum(density, min_density)
        return local_deposition_dose(tia, voxel, nuclide, rho, rbe=rbe)
    if method == "kernel":
        return kernel_dose_gy(tia, kernel_source(nuclide, voxel, medium).values)
    if density is None:
        raise InvalidDoseInputError(f"method={method!r} needs a CT (ct_hu) or a density map (density_g_cm3)")
    if method in ("density", "corrected"):
        kernel = kernel_source(nuclide, voxel, medium)
        dose = kernel_dose_gy(tia, kernel.values) * (kernel.density_g_cm3 / np.maximum(density, min_density))
        return dose if method == "density" else corrector(np.asarray(dose, np.float64), density, voxel_mm=voxel,
                                                              nuclide=nuclide)
    if method == "multi_kernel":
        classes = tissue_classes(density)
        dose = np.zeros(tia.shape, dtype=np.float64)
        for index, name in enumerate(TISSUE_CLASSES):
            source = np.where(classes == index, tia, 0.0)
            if not np.any(source > 0):
                continue
            kernel = kernel_source(nuclide, voxel, name)
            dose += kernel_dose_gy(source, kernel.values) * kernel.density_g_cm3
        return dose / np.maximum(density, min_density)
    from .reference import reference_dose  # method == "reference"

    return reference_dose(tia, voxel, nuclide, density, kernel_source=kernel_source)


def absorbed_dose(
    tia,
    voxel_mm,
    nuclide: str,
    method: str = "kernel",
    ct_hu=None,
    tia_units: str = "MBq*s",
    medium: str = "soft_tissue",
    *,
    density_g_cm3=None,
    hu_table=SCHNEIDER_2000_TABLE,
    min_density_g_cm3: float = 0.1,
    rbe: float = 1.0,
    kernel_voxel_mm=None,
    kernel_source: KernelSource | None = None,
    corrector=None,
):
    """Absorbed dose map (Gy) from a TIA map; see the module docstring for the methods.

    tia: numpy array (MBq s or MBq h per voxel, `tia_units`) or SimpleITK image.
    voxel_mm: voxel size per array axis (mm); None (or the same size) when `tia` is an
        image, whose spacing is used.
    nuclide: ICRP-107 name, e.g. "Lu-177" (UnknownNuclideError otherwise).
    ct_hu: CT in HU on the TIA grid (array or image), converted with `hu_table`;
        or give `density_g_cm3` directly (not both).  An image must share the TIA
        image's grid (size, spacing, origin, direction); GeometryError otherwise.
    rbe: explicit RBE factor, only for ``method="local"`` (default 1: absorbed dose).
    kernel_source: (nuclide, voxel_mm, medium) -> kernel; default dose.kernels.voxel_kernel.
    corrector: for ``method="corrected"`` only: a `dose.corrector.Corrector`, a weights path, or
      ``"default"`` for the shipped weights (177Lu, 12 mm voxels; other voxel sizes or
      nuclides raise a specific error).
    Returns a float array (same shape) or, for an image input, a SimpleITK image on the
    same grid.
    """
    nuclides.nuclide(nuclide)  # UnknownNuclideError early, before any work
    if method not in METHODS:
        raise InvalidDoseInputError(f"method: expected one of {METHODS}, got {method!r}")
    if tia_units not in TIA_UNITS_TO_MBQ_S:
        raise InvalidDoseInputError(f"tia_units: expected one of {tuple(TIA_UNITS_TO_MBQ_S)}, got {tia_units!r}")
    if rbe != 1.0 and method != "local":
        raise InvalidDoseInputError("rbe: an RBE factor applies to method='local' only (absorbed dose otherwise)")
    if (corrector is None) == (method == "corrected"):
        raise InvalidDoseInputError("corrector: method='corrected' needs corrector= (a dose.corrector.Corrector or "
                                    "a weights path written by dose.corrector.save); other methods take none")
    if method == "corrected" and not callable(corrector):
        from .corrector import load as load_corrector

        corrector = load_corrector(None if corrector == "default" else str(corrector))

    image = tia if isinstance(tia, sitk.Image) else None
    if image is not None:
        voxel = _image_voxel_mm(image)
        if voxel_mm is not None and not np.allclose(check_voxel_mm(voxel_mm), voxel, rtol=1e-6):
            raise GeometryError(f"voxel_mm {tuple(voxel_mm)} differs from the TIA image spacing {voxel} (z, y, x)")
        tia_array = sitk.GetArrayFromImage(image)
    else:
        if voxel_mm is None:
            raise GeometryError("voxel_mm: required when tia is a numpy array")
        voxel = check_voxel_mm(voxel_mm)
        tia_array = tia
    tia_mbq_s = check_tia(tia_array)
    if tia_units != "MBq*s":
        tia_mbq_s = tia_mbq_s * tia_mbq_s.dtype.type(TIA_UNITS_TO_MBQ_S[tia_units])
    check_voxel_mm(voxel)

    density = _density_map(ct_hu, density_g_cm3, hu_table, image, tia_mbq_s.shape, voxel)
    if not (np.isfinite(min_density_g_cm3) and min_density_g_cm3 > 0):
        raise InvalidDoseInputError(f"min_density_g_cm3: expected > 0, got {min_density_g_cm3!r}")
    source = kernel_source if kernel_source is not None else (default_kernel_source() if method != "local" else None)

    if kernel_voxel_mm is not None and not np.allclose(check_voxel_mm(kernel_voxel_mm), voxel):
        work_voxel = check_voxel_mm(kernel_voxel_mm)
        work_tia = resample_activity(tia_mbq_s, voxel, work_voxel)
        work_density = None
        if density is not None:
            dimg = sitk.GetImageFromArray(density)
            dimg.SetSpacing(tuple(voxel[::-1]))
            work_density = np.maximum(_resample(dimg, work_voxel), 0.0)
        work = _dose_on_grid(work_tia, work_voxel, nuclide, method, work_density, medium, min_density_g_cm3, rbe, source,
                             corrector)
        dose = _back_to_grid(np.asarray(work), work_voxel, tia_mbq_s.shape, voxel)
    else:
        dose = np.asarray(_dose_on_grid(tia_mbq_s, voxel, nuclide, method, density, medium, min_density_g_cm3, rbe, source,
                                        corrector))

    if image is None:
        return dose
    out = sitk.GetImageFromArray(dose.astype(np.float32))
    out.CopyInformation(image)
    out.SetMetaData("rpt_twin:dose_method", method)
    if method == "corrected":
        out.SetMetaData("rpt_twin:corrector", json.dumps(getattr(corrector, "provenance", {}), sort_keys=True))
    return out


def _density_map(ct_hu, density_g_cm3, hu_table, image, shape, voxel) -> np.ndarray | None:
    """Density map (g/cm^3) from a CT or a density map on the TIA grid: an image CT must
    share the TIA image's grid (or, with a numpy TIA, have spacing `voxel`); arrays must
    have the TIA's shape.  GeometryError otherwise."""
    if ct_hu is not None and density_g_cm3 is not None:
        raise InvalidDoseInputError("give either ct_hu or density_g_cm3, not both")
    given = ct_hu if ct_hu is not None else density_g_cm3
    if given is None:
        return None
    name = "ct_hu" if ct_hu is not None else "density_g_cm3"
    if isinstance(given, sitk.Image):
        if image is not None and not _same_grid(given, image):
            raise GeometryError(
                f"{name}: CT grid (size {given.GetSize()}, spacing {given.GetSpacing()}, origin {given.GetOrigin()}) "
                f"differs from the TIA grid (size {image.GetSize()}, spacing {image.GetSpacing()}, origin "
                f"{image.GetOrigin()}); resample the CT to the TIA grid first"
            )
        if image is None and not np.allclose(_image_voxel_mm(given), voxel, rtol=1e-6):
            raise GeometryError(f"{name}: CT spacing {given.GetSpacing()} (x, y, z) differs from voxel_mm {voxel} (z, y, x)")
        arr = sitk.GetArrayFromImage(given).astype(float)
    else:
        arr = np.asarray(given, dtype=float)
    if arr.shape != tuple(shape):
        raise GeometryError(f"{name}: shape {arr.shape} differs from the TIA shape {tuple(shape)}")
    if ct_hu is not None:
        return hu_to_density(arr, hu_table)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidDoseInputError("density_g_cm3: densities must be finite and >= 0 g/cm^3")
    return arr
