"""Trapezoid time-integrated activity with an uptake segment and an exponential tail.

For samples (t_1, A_1) ... (t_n, A_n), t_1 > 0, activities with physical decay included:

    TIA = U + sum_{i=1}^{n-1} (t_{i+1} - t_i) (A_i + A_{i+1}) / 2 + A_n / lambda_tail      [MBq*h]

Uptake segment U over [0, t_1] (``uptake=``):
* "linear" (default): activity rises linearly from A(0) = 0, U = A_1 t_1 / 2 — the usual
  choice for organs and lesions that take the radiopharmaceutical up from blood;
* "constant": A(t) = A_1 on [0, t_1], U = A_1 t_1 — for regions that are full at
  injection (blood, whole body).
Both are the segment rules of trapezoidal integration described in MIRD Pamphlet No. 16
(Siegel JA et al. J Nucl Med 1999;40:37S-61S) [recalled, not re-read]; their difference,
A_1 t_1 / 2, is a bound on the error of this segment and vanishes as t_1 -> 0.

Tail beyond t_n (``tail=``):
* "physical" (default): only physical decay after the last scan, lambda_tail = lambda_phys
  (conservative: no biological clearance assumed, MIRD Pamphlet 16);
* "fit": the effective decay of the last segment, lambda_tail = ln(A_{n-1}/A_n) /
  (t_n - t_{n-1}), bounded below by lambda_phys (if the activity still rises or falls
  slower than physical decay, lambda_phys is used and the flag "tail_at_physical" set);
* "none": no tail (area to t_n only).

Uncertainty: with activity uncertainties sigma_i (independent), var(TIA) = sum_i
(dTIA/dA_i)^2 sigma_i^2; the TIA is linear in A_i except for the fitted tail, whose
derivatives are analytic.  Without uncertainties tia_sd_mbq_h is NaN (flag
"no_uncertainties").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CalibrationError
from .series import as_series

UPTAKE_RULES = ("linear", "constant")
TAIL_RULES = ("physical", "fit", "none")


@dataclass(frozen=True)
class TrapezoidTIA:
    """Trapezoid TIA (MBq*h) with its parts: uptake (0..t_1), body (t_1..t_n), tail
    (t_n..inf); lambda_tail_per_h (NaN for tail="none"), 1-sd uncertainty, flags."""

    tia_mbq_h: float
    tia_sd_mbq_h: float
    uptake_mbq_h: float
    body_mbq_h: float
    tail_mbq_h: float
    lambda_tail_per_h: float
    flags: tuple[str, ...]


def trapezoid_tia(
    data,
    activities_mbq=None,
    *,
    uptake: str = "linear",
    tail: str = "physical",
    **select,
) -> TrapezoidTIA:
    """Trapezoid TIA of one series (see module docstring for the rules and maths).

    `data`: a long time-activity table, a `Series`, or times (h) with `activities_mbq`;
    `select` are the keywords of `as_series` (patient, region, tracer, cycle, nuclide,
    sigma_mbq, decay_corrected, below_detection).
    """
    if uptake not in UPTAKE_RULES:
        raise CalibrationError(f"uptake={uptake!r}: expected one of {UPTAKE_RULES}")
    if tail not in TAIL_RULES:
        raise CalibrationError(f"tail={tail!r}: expected one of {TAIL_RULES}")
    s = as_series(data, activities_mbq, **select)
    t, a = s.times_h, s.activities_mbq
    n = s.n_points
    lp = s.decay_constant_per_h
    flags = list(s.notes)
    grad = np.zeros(n)

    # uptake segment
    c = 0.5 if uptake == "linear" else 1.0
    u = c * a[0] * t[0]
    grad[0] += c * t[0]
    # body
    dt = np.diff(t)
    body = float(np.sum(dt * (a[:-1] + a[1:]) / 2.0))
    grad[:-1] += dt / 2.0
    grad[1:] += dt / 2.0
    # tail
    if tail == "none":
        lam, tl = float("nan"), 0.0
    else:
        lam = lp
        fitted = False
        if tail == "fit":
            if n < 2:
                raise CalibrationError(f"{s.label()}: tail='fit' needs at least two time points")
            log_ratio = float(np.log(a[-2] / a[-1]))
            lam_fit = log_ratio / dt[-1]
            if lam_fit > lp:
                lam, fitted = lam_fit, True
            else:
                flags.append("tail_at_physical")
        tl = float(a[-1] / lam)
        if fitted:
            # tail = A_n dt / L, L = ln(A_{n-1}/A_n)
            big_l = np.log(a[-2] / a[-1])
            grad[-1] += dt[-1] / big_l + dt[-1] / big_l**2
            grad[-2] += -a[-1] * dt[-1] / (big_l**2 * a[-2])
        else:
            grad[-1] += 1.0 / lam
    total = float(u + body + tl)
    if s.sigma_mbq is not None:
        sd = float(np.sqrt(np.sum((grad * s.sigma_mbq) ** 2)))
    else:
        sd = float("nan")
        flags.append("no_uncertainties")
    return TrapezoidTIA(total, sd, float(u), body, tl, float(lam), tuple(flags))
