"""Dose metrics: region mean dose, cumulative DVH, Dx, and LQ radiobiology (BED, EQD2).

Cumulative DVH
--------------
For the n voxels of a region with doses d_i, V(D) = #{i : d_i >= D} / n (volume fraction
receiving at least D).  Dx (x in percent) is the largest D with V(D) >= x/100: sort the
doses descending, d_(1) >= d_(2) >= ..., then Dx = d_(ceil(x n / 100)) (D2 near the
maximum, D98 near the minimum).

BED with a protracted dose rate (linear-quadratic model, mono-exponential repair)
--------------------------------------------------------------------------------
For a dose rate R(t), t >= 0, total dose D = int R dt, and sublethal-damage repair with
rate mu = ln 2 / T_rep:

    BED = D + G D^2 / (alpha/beta),
    G   = (2 / D^2) int_0^inf R(t) int_0^t R(s) exp(-mu (t - s)) ds dt      (Lea-Catcheside)

For a sum of exponentials R(t) = sum_i a_i exp(-b_i t) (b_i > 0) the inner integral is
a_j (exp(-b_j t) - exp(-mu t)) / (mu - b_j), and integrating against a_i exp(-b_i t):

    G = (2 / D^2) sum_i sum_j a_i a_j / ((b_i + b_j)(b_i + mu)),   D = sum_i a_i / b_i.

* mono-exponential R = R0 exp(-lambda t): G = lambda / (lambda + mu) (Dale 1985,
  Br J Radiol 58:515), so BED = D (1 + D lambda / ((lambda + mu) alpha/beta)).
* bi-exponential (uptake with rate lambda_u, clearance with effective rate lambda_c,
  lambda_u > lambda_c): R = R0 (exp(-lambda_c t) - exp(-lambda_u t)), i.e. a = (R0, -R0),
  b = (lambda_c, lambda_u), D = R0 (1/lambda_c - 1/lambda_u); with the formula above

    G = 2 / (1/lambda_c - 1/lambda_u)^2 * [ 1/(2 lambda_c (lambda_c + mu))
        - 1/((lambda_c + lambda_u)(lambda_c + mu)) - 1/((lambda_c + lambda_u)(lambda_u + mu))
        + 1/(2 lambda_u (lambda_u + mu)) ].

Limits: instantaneous delivery (lambda -> inf) or no repair (mu = 0) give G = 1 and the
acute single-fraction LQ formula BED = D (1 + D/(alpha/beta)); very slow delivery gives
G -> 0 (BED -> D).  Cycles separated by much more than T_rep (weeks) repair fully in
between, so BEDs of cycles add: BED_total = sum_k BED_k.  EQD2 = BED / (1 + 2/(alpha/beta)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import GeometryError, InvalidDoseInputError


@dataclass(frozen=True)
class Radiobiology:
    """LQ parameters of a tissue: alpha/beta (Gy) and repair half-time (h), with source."""

    alpha_beta_gy: float
    repair_half_time_h: float
    source: str

    @property
    def repair_rate_per_h(self) -> float:
        return math.log(2.0) / self.repair_half_time_h


RADIOBIOLOGY_DEFAULTS: Mapping[str, Radiobiology] = {
    # alpha/beta 2.6 Gy and T_rep 2.8 h for kidneys: values used for 90Y/177Lu PRRT kidney
    # BED by Barone R et al., J Nucl Med 2005;46(suppl 1):99S-106S, the review of
    # Cremonesi M et al., J Nucl Med 2006;47:1467-1475, and Wessels BW et al. (MIRD
    # Pamphlet 20), J Nucl Med 2008;49:1884-1899 [recalled, not re-read here].
    "kidneys": Radiobiology(2.6, 2.8, "Barone 2005 JNM 46:99S; Cremonesi 2006 JNM 47:1467; Wessels 2008 JNM 49:1884"),
    # alpha/beta 10 Gy and T_rep 1.5 h: the conventional early-responding/tumour values
    # used for PRRT tumour BED in Cremonesi M et al., Eur J Nucl Med Mol Imaging
    # 2018;45:2426 (review) [recalled, not re-read here].
    "tumour": Radiobiology(10.0, 1.5, "Cremonesi 2018 EJNMMI 45:2426 (conventional tumour values)"),
}
"""Per-organ defaults; anything else must be given explicitly (no silent fallback)."""


def radiobiology(organ: str) -> Radiobiology:
    """Default LQ parameters for `organ` (keys of RADIOBIOLOGY_DEFAULTS)."""
    try:
        return RADIOBIOLOGY_DEFAULTS[organ]
    except KeyError:
        raise InvalidDoseInputError(
            f"organ {organ!r}: no default alpha/beta and repair half-time; known: "
            f"{sorted(RADIOBIOLOGY_DEFAULTS)}; pass alpha_beta_gy and repair_half_time_h explicitly"
        ) from None


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)  # +inf allowed: instantaneous delivery, or T_rep = inf (no repair)
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise InvalidDoseInputError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return value


def g_factor_exponentials(amplitudes: Sequence[float], rates_per_h: Sequence[float], repair_rate_per_h: float) -> float:
    """Lea-Catcheside G for R(t) = sum_i a_i exp(-b_i t): (2/D^2) sum_ij a_i a_j /((b_i+b_j)(b_i+mu))."""
    a = np.asarray(amplitudes, dtype=float)
    b = np.asarray(rates_per_h, dtype=float)
    mu = _positive("repair_rate_per_h", repair_rate_per_h, allow_zero=True)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0 or np.any(~np.isfinite(b)) or np.any(b <= 0):
        raise InvalidDoseInputError("rates_per_h: expected finite rates > 0, one per amplitude")
    total = float(np.sum(a / b))
    if not total > 0:
        raise InvalidDoseInputError("amplitudes: the dose rate must integrate to a positive dose")
    pair = np.outer(a, a) / ((b[:, None] + b[None, :]) * (b[:, None] + mu))
    return float(2.0 * pair.sum() / total**2)


def g_mono_exponential(effective_decay_per_h: float, repair_rate_per_h: float) -> float:
    """Dale (1985): G = lambda / (lambda + mu); lambda = inf (instantaneous) gives 1."""
    lam = _positive("effective_decay_per_h", effective_decay_per_h)
    mu = _positive("repair_rate_per_h", repair_rate_per_h, allow_zero=True)
    return 1.0 if math.isinf(lam) else lam / (lam + mu)


def g_bi_exponential(uptake_rate_per_h: float, clearance_rate_per_h: float, repair_rate_per_h: float) -> float:
    """G for R = R0 (exp(-lambda_c t) - exp(-lambda_u t)), lambda_u > lambda_c (derived above)."""
    lu = _positive("uptake_rate_per_h", uptake_rate_per_h)
    lc = _positive("clearance_rate_per_h", clearance_rate_per_h)
    if not lu > lc:
        raise InvalidDoseInputError(f"uptake_rate_per_h ({lu}) must exceed clearance_rate_per_h ({lc})")
    return g_factor_exponentials([1.0, -1.0], [lc, lu], repair_rate_per_h)


def g_factor_sampled(times_h, dose_rate, repair_rate_per_h: float, tail_rate_per_h: float) -> np.ndarray:
    """Lea-Catcheside G of a dose rate known at sample times (any curve, e.g. a PBPK
    region activity times an S value), vectorised over leading axes.

    times_h: (n,) increasing sample times (h); dose_rate: (..., n) >= 0 (any unit per h);
    after the last sample the rate falls as R_T exp(-tail_rate (t - T)) (e.g. physical
    decay, the slowest possible clearance).  Between samples R is taken piecewise linear
    and the repair integral u(t) = int_0^t R(s) exp(-mu (t - s)) ds is propagated exactly:

        u_{k+1} = u_k e^{-mu h} + R_k (a - b) + R_{k+1} b,
        a = (1 - e^{-mu h}) / mu,   b = 1/mu - (1 - e^{-mu h}) / (mu^2 h),   h = t_{k+1} - t_k;

    I = int R u dt by the trapezoid rule on the samples plus the analytic tail
    R_T u_T / (lam + mu) + R_T^2 (1/(2 lam) - 1/(lam + mu)) / (mu - lam), and
    D = int R dt (trapezoid + R_T / lam); G = 2 I / D^2 (0 where D = 0).
    """
    t = np.asarray(times_h, dtype=float)
    r = np.asarray(dose_rate, dtype=float)
    mu = _positive("repair_rate_per_h", repair_rate_per_h)
    lam = _positive("tail_rate_per_h", tail_rate_per_h)
    if t.ndim != 1 or t.size < 2 or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
        raise InvalidDoseInputError("times_h: expected >= 2 strictly increasing finite sample times (h)")
    if r.shape[-1] != t.size or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise InvalidDoseInputError(f"dose_rate: expected finite values >= 0 with last axis {t.size}, got {r.shape}")
    if math.isclose(mu, lam, rel_tol=1e-6):
        raise InvalidDoseInputError("tail_rate_per_h equals repair_rate_per_h; perturb one of them")
    h = np.diff(t)
    e = np.exp(-mu * h)
    a = -np.expm1(-mu * h) / mu
    b = 1.0 / mu - a / (mu * h)
    u = np.zeros(r.shape)
    for k in range(t.size - 1):  # recursion along time; vectorised over the leading axes
        u[..., k + 1] = u[..., k] * e[k] + r[..., k] * (a[k] - b[k]) + r[..., k + 1] * b[k]
    ru = r * u
    integral = np.sum(0.5 * h * (ru[..., 1:] + ru[..., :-1]), axis=-1)
    r_end, u_end = r[..., -1], u[..., -1]
    integral = integral + r_end * u_end / (lam + mu) + r_end**2 * (0.5 / lam - 1.0 / (lam + mu)) / (mu - lam)
    dose = np.sum(0.5 * h * (r[..., 1:] + r[..., :-1]), axis=-1) + r_end / lam
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dose > 0, 2.0 * integral / np.where(dose > 0, dose, 1.0) ** 2, 0.0)


def bed_gy(dose_gy, alpha_beta_gy: float, g: float = 1.0):
    """BED = D + G D^2 / (alpha/beta) (Gy); works elementwise on arrays."""
    ab = _positive("alpha_beta_gy", alpha_beta_gy)
    if not (0.0 <= g <= 1.0):
        raise InvalidDoseInputError(f"g: the Lea-Catcheside factor must be in [0, 1], got {g}")
    d = np.asarray(dose_gy, dtype=float)
    if np.any(~np.isfinite(d)) or np.any(d < 0):
        raise InvalidDoseInputError("dose_gy: doses must be finite and >= 0")
    out = d + g * d * d / ab
    return float(out) if out.ndim == 0 else out


def bed_mono_exponential(dose_gy, alpha_beta_gy: float, effective_half_life_h: float, repair_half_time_h: float):
    """BED for a mono-exponentially decreasing dose rate (effective half-life, h)."""
    lam = math.log(2.0) / _positive("effective_half_life_h", effective_half_life_h)
    mu = math.log(2.0) / _positive("repair_half_time_h", repair_half_time_h)
    return bed_gy(dose_gy, alpha_beta_gy, g_mono_exponential(lam, mu))


def bed_bi_exponential(dose_gy, alpha_beta_gy: float, uptake_half_life_h: float, clearance_half_life_h: float,
                       repair_half_time_h: float):
    """BED for a dose rate rising with `uptake_half_life_h` and falling with the effective
    `clearance_half_life_h` (h)."""
    lu = math.log(2.0) / _positive("uptake_half_life_h", uptake_half_life_h)
    lc = math.log(2.0) / _positive("clearance_half_life_h", clearance_half_life_h)
    mu = math.log(2.0) / _positive("repair_half_time_h", repair_half_time_h)
    return bed_gy(dose_gy, alpha_beta_gy, g_bi_exponential(lu, lc, mu))


def accumulate_bed(cycle_beds_gy: Sequence) -> np.ndarray | float:
    """Total BED over cycles with full repair in between: sum of the cycles' BEDs."""
    beds = [np.asarray(b, dtype=float) for b in cycle_beds_gy]
    if not beds:
        raise InvalidDoseInputError("cycle_beds_gy: expected at least one cycle")
    total = sum(beds)
    return float(total) if np.ndim(total) == 0 else total


def eqd2_gy(bed, alpha_beta_gy: float):
    """Equivalent dose in 2-Gy fractions: EQD2 = BED / (1 + 2/(alpha/beta))."""
    ab = _positive("alpha_beta_gy", alpha_beta_gy)
    out = np.asarray(bed, dtype=float) / (1.0 + 2.0 / ab)
    return float(out) if out.ndim == 0 else out


def _pair(dose, labels) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(dose, dtype=float)
    lab = np.asarray(labels)
    if d.shape != lab.shape:
        raise GeometryError(f"labels: shape {lab.shape} differs from the dose shape {d.shape}")
    if np.any(~np.isfinite(d)):
        raise InvalidDoseInputError("dose: contains NaN or inf")
    return d, lab


def mean_dose_by_label(dose_gy, labels, names: Mapping[int, str] | None = None) -> pd.DataFrame:
    """Mean, min, max dose (Gy) and voxel count per non-zero label.

    Columns: label, region, n_voxels, mean_gy, min_gy, max_gy."""
    d, lab = _pair(dose_gy, labels)
    rows = []
    for value in np.unique(lab):
        if value == 0:
            continue
        sel = d[lab == value]
        rows.append({"label": int(value), "region": (names or {}).get(int(value), str(int(value))), "n_voxels": sel.size,
                     "mean_gy": float(sel.mean()), "min_gy": float(sel.min()), "max_gy": float(sel.max())})
    return pd.DataFrame(rows, columns=["label", "region", "n_voxels", "mean_gy", "min_gy", "max_gy"])


def _region(dose_gy, mask) -> np.ndarray:
    d, m = _pair(dose_gy, mask)
    sel = d[m.astype(bool)]
    if sel.size == 0:
        raise InvalidDoseInputError("mask: the region is empty")
    return sel


def cumulative_dvh(dose_gy, mask, bins_gy=None) -> pd.DataFrame:
    """Cumulative DVH of a region: columns dose_gy, volume_fraction = V(D) = #(d >= D)/n.

    `bins_gy`: dose levels (default 200 levels from 0 to the region maximum)."""
    sel = np.sort(_region(dose_gy, mask))
    levels = np.linspace(0.0, sel[-1], 200) if bins_gy is None else np.asarray(bins_gy, dtype=float)
    fraction = (sel.size - np.searchsorted(sel, levels, side="left")) / sel.size
    return pd.DataFrame({"dose_gy": levels, "volume_fraction": fraction})


def dose_at_volume(dose_gy, mask, percents: Sequence[float] = (2.0, 50.0, 90.0, 98.0)) -> dict[str, float]:
    """Dx for each x in `percents`: the largest dose received by at least x % of the region,
    d_(ceil(x n / 100)) of the descending-sorted doses.  Keys "D2", "D50", ..."""
    desc = np.sort(_region(dose_gy, mask))[::-1]
    out = {}
    for x in percents:
        if not 0.0 < x <= 100.0:
            raise InvalidDoseInputError(f"percents: expected values in (0, 100], got {x}")
        k = max(1, math.ceil(x * desc.size / 100.0 - 1e-9))
        out[f"D{x:g}"] = float(desc[k - 1])
    return out
