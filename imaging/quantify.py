"""Quantification: decay-correction conventions, SUV, counts -> Bq/mL.

Decay conventions (DICOM DecayCorrection (0054,1102)), nuclide decay constant
lambda = ln 2 / T1/2 with T1/2 from ICRP-107 (`dose.nuclides.half_life_h`), acquisition
start t (h after injection) and frame duration T:

* NONE  - voxel = activity concentration averaged over the frame,
          C_none = C_start * (1 - exp(-lambda T)) / (lambda T);
* START - voxel = activity concentration at acquisition start, C_start;
* ADMIN - voxel = activity concentration at administration, C_admin = C_start * exp(lambda t).

Without a frame duration, NONE is taken as instantaneous at the start (C_none = C_start).

Body-weight SUV (g/mL): SUV = C [Bq/mL] * W [g] / D_ref [Bq], where D_ref is the injected
activity decayed to the same reference as the voxels (ADMIN: D; START: D exp(-lambda t);
NONE: the frame average of D exp(-lambda t')), so SUV does not depend on the convention.

Counts -> Bq/mL: C = N / (T_s * S) * 1e6 / V_ml with N counts per voxel, S the system
sensitivity (calibration factor, cps/MBq), V_ml the voxel volume; or by DICOM Real World
Value Mapping C = slope * N + intercept.  Either gives the frame-average concentration
(decay correction NONE).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from .errors import InvalidVoxelError, MissingTagError, UnitsError
from .scan import DECAY_CORRECTIONS, Scan


def _where(scan: Scan) -> str:
    return scan.source or scan.scan_id


def _require(scan: Scan, field: str, why: str):
    value = getattr(scan, field)
    if value is None:
        raise MissingTagError(f"{_where(scan)}: {field} missing; needed to {why}")
    return value


def decay_constant_per_h(scan: Scan) -> float:
    """lambda = ln 2 / T1/2 (1/h) of the scan's nuclide (ICRP-107)."""
    from dose.nuclides import decay_constant_per_h as lam

    return lam(_require(scan, "nuclide", "decay-correct (nuclide half-life)"))


def _start_factor(scan: Scan, convention: str) -> float:
    """C_convention / C_start for this scan."""
    if convention == "START":
        return 1.0
    lam = decay_constant_per_h(scan)
    if convention == "ADMIN":
        return math.exp(lam * _require(scan, "time_h", "decay-correct to administration"))
    if scan.acquisition_duration_s is None:
        return 1.0
    x = lam * scan.acquisition_duration_s / 3600.0
    return -math.expm1(-x) / x if x > 0 else 1.0


def decay_factor_to(scan: Scan, target: str, source: str | None = None) -> float:
    """Factor f with C_target = f * C_source (source defaults to scan.decay_correction)."""
    source = source or scan.decay_correction
    for value, name in ((target, "target"), (source, "source")):
        if value not in DECAY_CORRECTIONS:
            raise UnitsError(f"{_where(scan)}: decay correction {name} {value!r}; expected one of {DECAY_CORRECTIONS}")
    if target == source:
        return 1.0
    return _start_factor(scan, target) / _start_factor(scan, source)


def _scale(scan: Scan, factor: float, **changes) -> Scan:
    return scan.with_image(sitk.Cast(scan.image, sitk.sitkFloat32) * float(factor), **changes)


def decay_correct(scan: Scan, to: str) -> Scan:
    """The same activity expressed with decay correction `to` (START, ADMIN or NONE).

    Works for Bq/mL, counts and SUV voxels alike (all proportional to activity; SUV is
    convention-free, so it is returned unchanged but relabelled)."""
    if scan.units not in ("BQML", "CNTS", "SUVbw"):
        raise UnitsError(f"{_where(scan)}: units {scan.units!r}; decay correction needs activity units")
    if scan.units == "SUVbw":
        decay_factor_to(scan, to)  # validate
        return scan.with_image(scan.image, decay_correction=to)
    return _scale(scan, decay_factor_to(scan, to), decay_correction=to)


def reference_activity_bq(scan: Scan) -> float:
    """Injected activity decayed to the scan's decay-correction reference, Bq."""
    d_mbq = _require(scan, "injected_activity_mbq", "compute SUV (RadionuclideTotalDose)")
    return d_mbq * 1e6 / decay_factor_to(scan, "ADMIN")


def bqml_to_suv(scan: Scan) -> Scan:
    """Body-weight SUV: SUV = C * W_g / D_ref (see module doc)."""
    if scan.units != "BQML":
        raise UnitsError(f"{_where(scan)}: units {scan.units!r}; bqml_to_suv expects BQML")
    w_g = _require(scan, "patient_weight_kg", "compute SUV (PatientWeight)") * 1000.0
    return _scale(scan, w_g / reference_activity_bq(scan), units="SUVbw")


def suv_to_bqml(scan: Scan) -> Scan:
    """Inverse of `bqml_to_suv`: C = SUV * D_ref / W_g."""
    if scan.units != "SUVbw":
        raise UnitsError(f"{_where(scan)}: units {scan.units!r}; suv_to_bqml expects SUVbw")
    w_g = _require(scan, "patient_weight_kg", "convert SUV (PatientWeight)") * 1000.0
    return _scale(scan, reference_activity_bq(scan) / w_g, units="BQML")


def counts_to_bqml(scan: Scan, calibration_cps_per_mbq: float | None = None) -> Scan:
    """Counts per voxel -> Bq/mL (decay correction NONE), by the calibration factor
    (argument, else `scan.calibration_cps_per_mbq`) and `acquisition_duration_s`, else by
    the scan's Real World Value Mapping."""
    if scan.units != "CNTS":
        raise UnitsError(f"{_where(scan)}: units {scan.units!r}; counts_to_bqml expects CNTS")
    cal = calibration_cps_per_mbq if calibration_cps_per_mbq is not None else scan.calibration_cps_per_mbq
    if cal is not None:
        if not (cal > 0 and math.isfinite(cal)):
            raise UnitsError(f"{_where(scan)}: calibration factor {cal!r} cps/MBq; expected a positive number")
        duration = _require(scan, "acquisition_duration_s", "convert counts to activity (ActualFrameDuration)")
        factor = 1e6 / (cal * duration * scan.voxel_volume_ml)
        return _scale(scan, factor, units="BQML", decay_correction="NONE", calibration_cps_per_mbq=cal)
    if scan.real_world_slope is not None:
        image = sitk.Cast(scan.image, sitk.sitkFloat32) * scan.real_world_slope + scan.real_world_intercept
        return scan.with_image(image, units="BQML", decay_correction="NONE")
    raise MissingTagError(f"{_where(scan)}: no calibration factor (cps/MBq) and no Real World Value Mapping; "
                          "cannot convert counts to Bq/mL (give calibration_cps_per_mbq=...)")


def to_bqml(scan: Scan, decay_correction: str = "START") -> Scan:
    """Any activity scan (BQML, SUVbw, CNTS) as Bq/mL with the given decay correction."""
    if scan.units == "CNTS":
        scan = counts_to_bqml(scan)
    elif scan.units == "SUVbw":
        scan = suv_to_bqml(scan)
    elif scan.units != "BQML":
        raise UnitsError(f"{_where(scan)}: units {scan.units!r}; expected activity units BQML, SUVbw or CNTS")
    return decay_correct(scan, decay_correction)


def check_activity_voxels(scan: Scan, allow_negative_fraction: float = 0.0) -> None:
    """Raise `InvalidVoxelError` on NaN/inf voxels, or on negative voxels beyond a
    fraction `allow_negative_fraction` of the total |activity| (reconstructions such
    as OSEM are non-negative; filtered back-projection is not, hence the option)."""
    a = sitk.GetArrayViewFromImage(scan.image)
    if not np.all(np.isfinite(a)):
        n = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise InvalidVoxelError(f"{_where(scan)}: {n} NaN or infinite voxels where activity is expected")
    neg = a < 0
    if neg.any():
        frac = float(-a[neg].sum() / max(np.abs(a).sum(), 1e-300))
        if frac > allow_negative_fraction:
            raise InvalidVoxelError(f"{_where(scan)}: {int(neg.sum())} negative voxels (min {float(a.min()):.4g}) "
                                    f"where activity is expected")
