"""Single-time-point (STP) estimates of the time-integrated activity.

Both methods take one activity A(t) (MBq, physical decay included) measured at time t (h
after administration) and assume mono-exponential kinetics after t.

Hänscheid (Hänscheid H et al. J Nucl Med 2018;59:75, 177Lu-DOTATATE/-TOC, one
SPECT/CT at about 4 d):

    TIA ≈ 2 t A(t) / ln 2                                                    [MBq*h]

(the same expression, A(t) x 2t/ln2, is what rpt_dosi implements as "hanscheid2018",
dsarrut/rpt_dosi rpt_dosi/dosimetry.py).  For mono-exponential kinetics A(t) = A0
exp(-lambda t), TIA = A0/lambda, the ratio estimate/truth is

    R(x) = (2/ln 2) x exp(-x),  x = lambda t = t ln 2 / T_eff,

so the estimate is exact where x exp(-x) = ln2 / 2, i.e. at x = ln 2 (t = T_eff) and at
x = 2 ln 2 (t = 2 T_eff) — both roots checked by substitution: ln2 · 1/2 and 2 ln2 · 1/4.
Between them it overestimates, by at most 2/(e ln 2) - 1 = +6.1 % at x = 1
(t = T_eff / ln 2); outside it underestimates, increasingly with distance.  This is the
derivation behind the method's "t close to the effective half-life" condition.

Madsen (Madsen MT et al. Med Phys 2018;45:2318): with a population effective decay
constant lambda = ln 2 / T_eff,

    TIA = A(t) exp(lambda t) / lambda                                        [MBq*h]

exact for mono-exponential kinetics with the true lambda.  For a wrong lambda the
relative error is first-order insensitive at t = 1/lambda (d ln TIA / d lambda = t -
1/lambda = 0), i.e. the best scan time is t = T_eff / ln 2.  (The same expression is
rpt_dosi's "madsen2018".)

Hou X et al. (J Nucl Med 2021;62:1006, PMC8882881) evaluate these two STP methods over
log-normal population distributions of T_eff (`stp_error_lognormal` reproduces that kind
of analysis for given distribution parameters); they do not introduce a third formula
(abstract: "we analyzed 2 STP dosimetry methods"; that these are Hänscheid's and
Madsen's is recalled, not re-read), so no separate method is implemented for them;
`stp_relative_error` gives the per-patient error those analyses integrate.

Uncertainties: linear propagation of the activity uncertainty sigma_A and, for Madsen,
of the population half-life uncertainty sigma_T: dTIA/dT_eff = TIA (1 - lambda t) / T_eff.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from dose import nuclides as _nuclides

from ..errors import (CalibrationError, InvalidActivityError, InvalidTimeError, UnknownPopulationValueError,
                      positive_number)
from .series import Series, as_series, nearest_point, nuclide_of_tracer

LN2 = math.log(2.0)


@dataclass(frozen=True)
class PopulationHalfLife:
    """A population effective half-life (h) with its source; `checked` is False for values
    recalled from memory and not re-read in a primary source (verify before relying)."""

    t_eff_h: float
    source: str
    checked: bool


# Population effective half-lives of 177Lu-PSMA-617 (mono-exponential fits).
_PSMA617_LU177 = {
    # Median of 37 kidneys, 20 patients, SPECT/CT 4/24/48/72 h, mono-exponential fits
    # (range 8.5-152 h): "Normal-Organ Effective Half-Lives for 177Lu-PSMA", AAPM 2026
    # annual meeting abstract (read in this session).
    "kidney": PopulationHalfLife(35.5, "AAPM 2026 abstract 'Normal-Organ Effective Half-Lives for "
                                 "177Lu-PSMA', median of 37 kidneys (range 8.5-152 h)", True),
    # Same abstract: parotid glands, median of 38 (range 18.9-160.8 h).
    "salivary": PopulationHalfLife(42.2, "AAPM 2026 abstract 'Normal-Organ Effective Half-Lives for "
                                   "177Lu-PSMA', parotid median of 38 (range 18.9-160.8 h)", True),
    # RECALLED, NOT CHECKED: lesion effective half-lives of roughly 2.5 d are reported for
    # 177Lu-PSMA-617 (e.g. Scarpa L et al. Eur J Nucl Med Mol Imaging 2017;44:788); Hou et
    # al. 2021 report that STP is unreliable for PSMA tumours.  Verify before use.
    "lesion": PopulationHalfLife(60.0, "recalled (lesions ~2.5 d for 177Lu-PSMA-617, e.g. Scarpa 2017); "
                                 "not verified — pass t_eff_h from your own population", False),
}

_REGION_CLASSES = (
    ("kidney", ("kidney", "renal")),
    ("salivary", ("salivary", "parotid", "submandibular")),
    ("lesion", ("lesion", "tumour", "tumor", "metasta")),
)


def region_class(region: str) -> str | None:
    """"kidney", "salivary" or "lesion" for a region name (substring match, e.g.
    "kidney_left", "parotid_r", "lesion_3"), else None."""
    name = str(region).lower()
    for cls, keys in _REGION_CLASSES:
        if any(k in name for k in keys):
            return cls
    return None


def population_half_life(region: str, tracer: str = "Lu-177-PSMA-617") -> PopulationHalfLife:
    """Default population effective half-life for `region` and `tracer`.

    Tabulated only for 177Lu-PSMA-617 kidneys, salivary glands and lesions (see the
    sources in this module); anything else raises `UnknownPopulationValueError`.
    """
    try:
        nuclide = nuclide_of_tracer(tracer)
    except CalibrationError:
        nuclide = None
    cls = region_class(region)
    if nuclide != "Lu-177" or "PSMA-617" not in str(tracer).upper() or cls is None:
        raise UnknownPopulationValueError(
            f"no population effective half-life tabulated for region {region!r}, tracer {tracer!r} "
            "(only 177Lu-PSMA-617 kidney/salivary/lesion); pass t_eff_h="
        )
    return _PSMA617_LU177[cls]


@dataclass(frozen=True)
class StpEstimate:
    """Single-time-point TIA estimate: method ("haenscheid" or "madsen"), tia_mbq_h and its
    1-sd tia_sd_mbq_h (NaN with flag "no_uncertainties" when neither the activity nor the
    half-life uncertainty is known), the scan used (time_h, activity_mbq), the population
    effective half-life t_eff_h (Madsen; NaN for Hänscheid) and flags.  Fields are floats
    for a table/Series input and arrays for array input."""

    method: str
    tia_mbq_h: float | np.ndarray
    tia_sd_mbq_h: float | np.ndarray
    time_h: float | np.ndarray
    activity_mbq: float | np.ndarray
    t_eff_h: float
    flags: tuple[str, ...]


_SELECT_KEYS = {"patient", "region", "tracer", "cycle", "nuclide", "decay_corrected", "below_detection"}


def _point(data, time_h, sigma_mbq, max_offset_h, select) -> tuple:
    """(t, A, sigma or None, series or None) from a table/Series or from numbers."""
    unknown = set(select) - _SELECT_KEYS
    if unknown:
        raise CalibrationError(f"unknown keyword(s) {sorted(unknown)}; expected some of {sorted(_SELECT_KEYS)}")
    if isinstance(data, (pd.DataFrame, Series)):
        if time_h is None:
            raise InvalidTimeError("time_h: give the (target) scan time in h for a single-time-point estimate")
        if sigma_mbq is not None:
            raise CalibrationError("sigma_mbq must not be given with a table/Series; its uncertainties are used")
        s = as_series(data, **select)
        i = nearest_point(s, float(time_h), max_offset_h)
        sig = None if s.sigma_mbq is None else float(s.sigma_mbq[i])
        return float(s.times_h[i]), float(s.activities_mbq[i]), sig, s
    a = np.asarray(data, dtype=float)
    t = np.asarray(time_h, dtype=float)
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InvalidActivityError(f"activity_mbq: expected finite activities > 0 MBq, got {data!r}")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise InvalidTimeError(f"time_h: expected finite times > 0 h after administration, got {time_h!r}")
    sig = None
    if sigma_mbq is not None:
        sig = np.asarray(sigma_mbq, dtype=float)
        if not np.all(np.isfinite(sig)) or np.any(sig < 0):
            raise InvalidActivityError(f"sigma_mbq: expected finite uncertainties >= 0 MBq, got {sigma_mbq!r}")
    try:
        np.broadcast_shapes(a.shape, t.shape, () if sig is None else sig.shape)
    except ValueError:
        raise CalibrationError(f"activity_mbq {a.shape}, time_h {t.shape} and sigma_mbq "
                               f"{None if sig is None else sig.shape}: shapes do not broadcast") from None
    if select.get("decay_corrected"):
        nuc = select.get("nuclide") or (nuclide_of_tracer(select["tracer"]) if select.get("tracer") else None)
        if nuc is None:
            raise CalibrationError("decay_corrected=True with plain numbers needs nuclide= or tracer=")
        f = np.exp(-_nuclides.decay_constant_per_h(nuc) * t)
        a = a * f
        sig = None if sig is None else sig * f
    return t, a, sig, None


def _out(x):
    return float(x) if np.ndim(x) == 0 else np.asarray(x, dtype=float)


def haenscheid(
    data,
    time_h=None,
    *,
    sigma_mbq=None,
    max_offset_h: float | None = None,
    **select,
) -> StpEstimate:
    """Hänscheid 2018 STP estimate TIA = 2 t A(t) / ln 2 (MBq*h); see module docstring.

    `data`: a long time-activity table (select with patient=, region=, tracer=; the scan
    nearest `time_h` is used, optionally no farther than `max_offset_h`), a `Series`, or
    the activity A(t) in MBq (float or array) measured at `time_h` (h) with its optional
    uncertainty `sigma_mbq`.  Other keywords (cycle=, nuclide=, decay_corrected=,
    below_detection=) as for `as_series`.
    """
    t, a, sig, series = _point(data, time_h, sigma_mbq, max_offset_h, select)
    factor = 2.0 * t / LN2
    tia = factor * a
    flags = list(series.notes) if series is not None else []
    if sig is None:
        sd = np.full(np.shape(tia), np.nan)
        flags.append("no_uncertainties")
    else:
        sd = factor * sig
    return StpEstimate("haenscheid", _out(tia), _out(sd), _out(t), _out(a), float("nan"), tuple(flags))


def madsen(
    data,
    time_h=None,
    *,
    t_eff_h: float | None = None,
    t_eff_sd_h: float | None = None,
    sigma_mbq=None,
    max_offset_h: float | None = None,
    **select,
) -> StpEstimate:
    """Madsen 2018 STP estimate TIA = A(t) exp(lambda t) / lambda, lambda = ln 2 / T_eff.

    `t_eff_h`: population effective half-life (h).  When omitted, the default of
    `population_half_life(region, tracer)` is used (177Lu-PSMA-617 kidneys, salivary glands,
    lesions), with a warning if that value is not checked against its source.
    `t_eff_sd_h`: its uncertainty (propagated when given).  Other arguments as for
    `haenscheid`.
    """
    t, a, sig, s = _point(data, time_h, sigma_mbq, max_offset_h, select)
    flags = list(s.notes) if s is not None else []
    if t_eff_h is None:
        region = s.region if s is not None else select.get("region")
        tracer = s.tracer if s is not None else select.get("tracer")
        if region is None or tracer is None:
            raise UnknownPopulationValueError("madsen: pass t_eff_h= (or a region and tracer with a tabulated default)")
        pop = population_half_life(region, tracer)
        t_eff_h = pop.t_eff_h
        flags.append("default_t_eff")
        if not pop.checked:
            flags.append("t_eff_unchecked")
            warnings.warn(f"madsen: population T_eff {pop.t_eff_h} h for {region!r} is {pop.source}",
                          UserWarning, stacklevel=2)
    t_eff_h = positive_number(t_eff_h, "t_eff_h", "a finite effective half-life > 0 h")
    nuclide = s.nuclide if s is not None else (
        select.get("nuclide") or (nuclide_of_tracer(select["tracer"]) if select.get("tracer") else None))
    if nuclide is not None and t_eff_h > _nuclides.half_life_h(nuclide) * (1 + 1e-12):
        raise CalibrationError(
            f"t_eff_h = {t_eff_h} h exceeds the physical half-life of {nuclide} "
            f"({_nuclides.half_life_h(nuclide):.2f} h); an effective half-life cannot be longer"
        )
    lam = LN2 / t_eff_h
    tia = a * np.exp(lam * t) / lam
    var = np.zeros(np.shape(tia))
    known = False
    if sig is not None:
        var = var + (np.exp(lam * t) / lam * sig) ** 2
        known = True
    if t_eff_sd_h is not None:
        if not (math.isfinite(t_eff_sd_h) and t_eff_sd_h >= 0):
            raise CalibrationError(f"t_eff_sd_h: expected a finite value >= 0 h, got {t_eff_sd_h!r}")
        var = var + (tia * (1.0 - lam * t) / t_eff_h * t_eff_sd_h) ** 2
        known = True
    if known:
        sd = np.sqrt(var)
    else:
        sd = np.full(np.shape(tia), np.nan)
        flags.append("no_uncertainties")
    return StpEstimate("madsen", _out(tia), _out(sd), _out(t), _out(a), float(t_eff_h), tuple(flags))


def stp_relative_error(method: str, time_h, t_eff_true_h, t_eff_population_h=None):
    """Relative error (estimate/truth - 1) of an STP method for mono-exponential kinetics
    with effective half-life `t_eff_true_h`, scan at `time_h` (arrays broadcast).

    haenscheid: (2/ln2) x e^-x - 1 with x = t ln2 / T_true;
    madsen: exp((lambda_pop - lambda_true) t) lambda_true / lambda_pop - 1.
    """
    t = np.asarray(time_h, dtype=float)
    lt = LN2 / np.asarray(t_eff_true_h, dtype=float)
    if method == "haenscheid":
        x = lt * t
        return 2.0 / LN2 * x * np.exp(-x) - 1.0
    if method == "madsen":
        if t_eff_population_h is None:
            raise CalibrationError("stp_relative_error('madsen'): t_eff_population_h is required")
        lpop = LN2 / np.asarray(t_eff_population_h, dtype=float)
        return np.exp((lpop - lt) * t) * lt / lpop - 1.0
    raise CalibrationError(f"method {method!r}: expected 'haenscheid' or 'madsen'")


def stp_error_lognormal(
    method: str,
    time_h,
    t_eff_median_h: float,
    t_eff_gsd: float,
    *,
    t_eff_population_h: float | None = None,
    n: int = 4001,
) -> pd.DataFrame:
    """Distribution of the relative TIA error of an STP method over a population whose
    effective half-lives are log-normal (median `t_eff_median_h`, geometric standard
    deviation `t_eff_gsd` >= 1), for mono-exponential kinetics — the analysis of Hou et al.
    J Nucl Med 2021;62:1006 (log-normal T_eff, error versus scan time).

    Madsen uses `t_eff_population_h` (default: the median).  The distribution is evaluated
    deterministically on n equal-probability quantiles of T_eff (z_k = Phi^-1((k + 1/2)/n)).
    Returns one row per scan time: time_h, mean_error, mean_abs_error, q05, q50, q95 (of
    estimate/truth - 1).
    """
    t_eff_median_h = positive_number(t_eff_median_h, "t_eff_median_h", "a finite value > 0 h")
    if not (math.isfinite(t_eff_gsd) and t_eff_gsd >= 1.0):
        raise CalibrationError(f"t_eff_gsd: expected a geometric standard deviation >= 1, got {t_eff_gsd!r}")
    times = np.atleast_1d(np.asarray(time_h, dtype=float))
    if not np.all(np.isfinite(times)) or np.any(times <= 0):
        raise InvalidTimeError(f"time_h: expected finite times > 0 h, got {time_h!r}")
    z = norm.ppf((np.arange(n) + 0.5) / n)
    t_eff = t_eff_median_h * t_eff_gsd ** z
    pop = t_eff_median_h if t_eff_population_h is None else t_eff_population_h
    rows = []
    for t in times:
        err = stp_relative_error(method, t, t_eff, pop if method == "madsen" else None)
        q05, q50, q95 = np.quantile(err, [0.05, 0.5, 0.95])
        rows.append(dict(time_h=float(t), mean_error=float(err.mean()), mean_abs_error=float(np.abs(err).mean()),
                         q05=float(q05), q50=float(q50), q95=float(q95)))
    return pd.DataFrame(rows)
