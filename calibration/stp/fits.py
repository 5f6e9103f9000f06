"""Mono- and bi-exponential time-activity fits with analytic time-integrated activity.

Models (t in h after administration, activities with physical decay included, all decay
constants are *effective* = physical + biological, and each is constrained to be at least
the physical decay constant lambda_phys of the nuclide, i.e. biological clearance >= 0):

* ``mono``:        A(t) = A0 exp(-lambda t)                         TIA = A0 / lambda
* ``bi_uptake``:   A(t) = A0 [exp(-lambda_c t) - exp(-lambda_u t)],  lambda_u > lambda_c
                   (uptake-clearance, A(0) = 0)                    TIA = A0 (1/lambda_c - 1/lambda_u)
* ``bi_sum``:      A(t) = A_f exp(-lambda_f t) + A_s exp(-lambda_s t), lambda_f > lambda_s,
                   A_f, A_s >= 0 (two clearance phases)            TIA = A_f/lambda_f + A_s/lambda_s

Both bi-exponential forms are standard fit functions of clinical dosimetry: the
uptake-clearance form (zero activity at injection, suited to organs that take the
radiopharmaceutical up from blood, e.g. kidneys) and the sum of two decaying exponentials
(the bi-exponential of OLINDA-style residence-time fits) are both in the function set of
NUKFIT (Kletting P et al. Med Phys 2013;40:102504) and of the model-selection studies of
the same group (Hardiansyah D et al. EJNMMI Phys 2023, doi:10.1186/s40658-023-00530-1,
whose functions are built from such terms with lambda_phys added to each decay constant);
the NLME single-time-point method of Devasia TP et al. (J Nucl Med 2021) uses a
bi-exponential for 177Lu-DOTATATE kidneys.  [Kletting 2013 citation recalled, not
re-read.]

Fitting: weighted non-linear least squares (scipy.optimize.least_squares, trust-region
reflective with bounds), residuals r_i = (A(t_i) - A_i) / sigma_i.  ``weighting=``:
"uncertainty" (default when the series has activity uncertainties): sigma_i = the given
1-sd uncertainties, covariance absolute (as curve_fit's absolute_sigma=True);
"relative" (default otherwise): sigma_i proportional to A_i, i.e. a proportional error
model as for count-limited SPECT/PET data, so late low-activity points, which carry most
of the TIA, are not swamped by the early peak; "uniform": sigma_i = 1.  For "relative"
and "uniform" the covariance is scaled by the residual variance
s^2 = sum r_i^2 / (n - p).  The constraint lambda_u > lambda_c (lambda_f > lambda_s) is
imposed by fitting the difference delta >= 0.  Parameter covariance C = s^2 (J^T J)^-1
(J: Jacobian of the residuals at the optimum, pseudo-inverse by SVD); the TIA
uncertainty follows by first-order propagation, var(TIA) = g^T C g with g the gradient
of the analytic TIA (law of propagation of uncertainty as recommended for MRT
dosimetry: Gear JI et al. EJNMMI 2018;45:2456, EANM guidance [recalled]).  Each fit is
started from several initial guesses (log-linear regression of the late points, a grid
of fast rates around 1/t_1) at tolerance 1e-8, and the best is polished to 1e-15.

A fit needs at least as many points as parameters (`IllPosedFitError` otherwise).  With
exactly as many points and no uncertainties the curve interpolates the data and its
uncertainty is undefined: tia_sd_mbq_h is NaN and the flag "no_degrees_of_freedom" says
so.  A parameter that ends on its bound (e.g. lambda = lambda_phys: no biological
clearance seen) is reported in `flags` as "at_bound:<name>".  When the data do not
identify a parameter (its conditional uncertainty exceeds a factor e^10, e.g. an uptake
rate so fast that no sample sees it) it is flagged "unidentified:<name>", its covariance
entries (and those of reported parameters built from it) are NaN, and the TIA
uncertainty is computed on the identified parameters (the TIA depends only weakly on
such a parameter).  If the identified parameters are still collinear (e.g. two equal
rates), the covariance is the pseudo-inverse on the identified directions and the flag
"covariance_singular" is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.optimize import least_squares

from ..errors import FitFailedError, IllPosedFitError
from .series import Series, as_series

_TOL = 1e-15  # least_squares ftol/xtol/gtol: data are exact in the analytic tests
_START_TOL = 1e-8  # tolerance of the multi-start stage
_MAX_LOG_SD = 10.0  # conditional sd of ln(theta) above which a parameter counts as unidentified
_RCOND = 1e-10  # singular values of the weighted Jacobian below this fraction of the largest are dropped


@dataclass(frozen=True)
class _Model:
    name: str
    internal_names: tuple[str, ...]
    names: tuple[str, ...]  # reported parameters
    f: Callable  # f(t, theta) -> activity
    jac: Callable  # jac(t, theta) -> (n, p)
    tia: Callable  # tia(theta) -> float
    grad_tia: Callable  # grad of tia w.r.t. internal theta
    to_reported: Callable  # theta -> reported values
    reported_jac: Callable  # d reported / d theta (p x p)
    lower: Callable  # lower(lambda_phys) -> bounds array


def _mono() -> _Model:
    def f(t, th):
        return th[0] * np.exp(-th[1] * t)

    def jac(t, th):
        e = np.exp(-th[1] * t)
        return np.column_stack([e, -th[0] * t * e])

    return _Model(
        "mono", ("a0_mbq", "lambda_eff_per_h"), ("a0_mbq", "lambda_eff_per_h"), f, jac,
        lambda th: th[0] / th[1],
        lambda th: np.array([1.0 / th[1], -th[0] / th[1] ** 2]),
        lambda th: np.array(th, dtype=float),
        lambda th: np.eye(2),
        lambda lp: np.array([0.0, lp]),
    )


def _bi_uptake() -> _Model:
    def f(t, th):
        a0, lc, d = th
        return a0 * (np.exp(-lc * t) - np.exp(-(lc + d) * t))

    def jac(t, th):
        a0, lc, d = th
        e1, e2 = np.exp(-lc * t), np.exp(-(lc + d) * t)
        return np.column_stack([e1 - e2, a0 * t * (e2 - e1), a0 * t * e2])

    def tia(th):
        a0, lc, d = th
        return a0 * d / (lc * (lc + d))

    def grad(th):
        a0, lc, d = th
        lu = lc + d
        return np.array([1.0 / lc - 1.0 / lu, a0 * (1.0 / lu**2 - 1.0 / lc**2), a0 / lu**2])

    return _Model(
        "bi_uptake", ("a0_mbq", "lambda_clearance_per_h", "delta_lambda_per_h"),
        ("a0_mbq", "lambda_clearance_per_h", "lambda_uptake_per_h"), f, jac, tia, grad,
        lambda th: np.array([th[0], th[1], th[1] + th[2]]),
        lambda th: np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 1.0]]),
        lambda lp: np.array([0.0, lp, 0.0]),
    )


def _bi_sum() -> _Model:
    def f(t, th):
        af, as_, ls, d = th
        return af * np.exp(-(ls + d) * t) + as_ * np.exp(-ls * t)

    def jac(t, th):
        af, as_, ls, d = th
        ef, es = np.exp(-(ls + d) * t), np.exp(-ls * t)
        return np.column_stack([ef, es, -t * (af * ef + as_ * es), -t * af * ef])

    def tia(th):
        af, as_, ls, d = th
        return af / (ls + d) + as_ / ls

    def grad(th):
        af, as_, ls, d = th
        lf = ls + d
        return np.array([1.0 / lf, 1.0 / ls, -af / lf**2 - as_ / ls**2, -af / lf**2])

    return _Model(
        "bi_sum", ("a_fast_mbq", "a_slow_mbq", "lambda_slow_per_h", "delta_lambda_per_h"),
        ("a_fast_mbq", "lambda_fast_per_h", "a_slow_mbq", "lambda_slow_per_h"), f, jac, tia, grad,
        lambda th: np.array([th[0], th[2] + th[3], th[1], th[2]]),
        lambda th: np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 1.0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]),
        lambda lp: np.array([0.0, 0.0, lp, 0.0]),
    )


MODELS = {"mono": _mono(), "bi_uptake": _bi_uptake(), "bi_sum": _bi_sum()}


@dataclass(frozen=True)
class ExponentialFit:
    """Result of an exponential time-activity fit.

    model: "mono", "bi_uptake" or "bi_sum"; params: reported parameters by name (MBq and
    1/h); covariance: their covariance matrix (order of `params`); tia_mbq_h: analytic
    integral of the fitted curve from 0 to infinity (MBq*h); tia_sd_mbq_h: its 1-sd
    uncertainty (NaN only with the flag "no_degrees_of_freedom");
    chi2: sum of squared (weighted) residuals; dof: n - p; weighted: whether the given
    activity uncertainties were used (weighting "uncertainty"); flags: notes such as
    "at_bound:lambda_eff_per_h" or "unidentified:delta_lambda_per_h".
    """

    model: str
    params: dict[str, float]
    covariance: np.ndarray
    tia_mbq_h: float
    tia_sd_mbq_h: float
    chi2: float
    dof: int
    weighted: bool
    flags: tuple[str, ...]
    series: Series = field(repr=False)
    _theta: np.ndarray = field(repr=False)

    def activity_mbq(self, times_h) -> np.ndarray:
        """Fitted activity (MBq, physical decay included) at `times_h` (h)."""
        return MODELS[self.model].f(np.asarray(times_h, dtype=float), self._theta)

    @property
    def param_sd(self) -> dict[str, float]:
        """1-sd uncertainties of `params` (square roots of the covariance diagonal; NaN for
        a parameter flagged unidentified or without degrees of freedom)."""
        return dict(zip(self.params, np.sqrt(np.diag(self.covariance))))


def _loglinear(t: np.ndarray, a: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    """Weighted regression of ln A on t: returns (A0, lambda) of A0 exp(-lambda t)."""
    if t.size == 1:
        return float(a[0]), 0.0
    slope, intercept = np.polyfit(t, np.log(a), 1, w=w)
    return float(np.exp(intercept)), float(-slope)


def _starts(model: str, s: Series, lp: float) -> list[np.ndarray]:
    t, a = s.times_h, s.activities_mbq
    floor = lp * (1.0 + 1e-6)
    if model == "mono":
        a0, lam = _loglinear(t, a)
        lam = max(lam, floor)
        return [np.array([a0 if lam > floor else a[0] * np.exp(lam * t[0]), lam])]
    ipk = int(np.argmax(a))
    late = slice(ipk, None) if t.size - ipk >= 2 else slice(t.size - 2, None)
    a_late, l_late = _loglinear(t[late], a[late])
    l_late = max(l_late, floor)
    a_late = a[late][-1] * np.exp(l_late * t[late][-1])
    # fast-rate candidates spread around 1/t of the early samples
    rates = np.array([0.1, 0.3, 1.0, 3.0, 10.0, 30.0]) / t[0]
    starts = []
    if model == "bi_uptake":
        for r in rates:
            starts.append(np.array([a_late, l_late, max(r, 1e-3 * l_late + 1e-9)]))
    else:  # bi_sum
        for r in rates:
            excess = max(a[0] - a_late * np.exp(-l_late * t[0]), 1e-3 * a[0])
            af = excess * np.exp((l_late + r) * t[0])
            starts.append(np.array([min(af, 1e3 * a.max()), a_late, l_late, r]))
    return starts


def _covariance(jr: np.ndarray, theta: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """(J^T J)^-1 of the weighted residual Jacobian, robust to unidentified parameters.

    A parameter is *unidentified* when even its conditional uncertainty on the log scale,
    noise / (|dr/dtheta_j| |theta_j|), exceeds _MAX_LOG_SD (the data constrain it to
    no better than a factor e^10, e.g. an uptake rate so fast that no sample sees it) or
    its sensitivity is numerically zero; its rows/columns are NaN and it is left out.
    `noise` is the residual scale (1 for weighted fits, s for unweighted ones, 0 for exact
    interpolation).  On the rest, the pseudo-inverse of the column-equilibrated Jacobian
    (C = D V S^-2 V^T D, D = diag(1/|J_col|)) drops singular values below _RCOND of the
    largest; `singular` says whether any was dropped.
    """
    p = jr.shape[1]
    norms = np.linalg.norm(jr, axis=0)
    rel = norms * np.where(theta != 0, np.abs(theta), 1.0)
    unidentified = (norms == 0) | ((theta != 0) & ((rel <= _RCOND * rel.max()) | (rel * _MAX_LOG_SD < noise)))
    known = ~unidentified
    cov = np.full((p, p), np.nan)
    if not known.any():
        return cov, unidentified, True
    d = 1.0 / norms[known]
    _, sv, vt = np.linalg.svd(jr[:, known] * d, full_matrices=False)
    keep = sv > _RCOND * sv[0]
    singular = sv.size < known.sum() or not np.all(keep)
    cov[np.ix_(known, known)] = d[:, None] * ((vt[keep].T / sv[keep] ** 2) @ vt[keep]) * d[None, :]
    return cov, unidentified, bool(singular)


def fit_exponential(
    data,
    activities_mbq=None,
    *,
    model: str = "mono",
    weighting: str | None = None,
    **select,
) -> ExponentialFit:
    """Fit `model` ("mono", "bi_uptake", "bi_sum"; see module docstring) to one series.

    `data` is a long time-activity table, a `Series`, or an array of times (h) with
    `activities_mbq`; `select` are the keywords of `as_series` (patient, region, tracer,
    cycle, nuclide, sigma_mbq, decay_corrected, below_detection).  weighting: see the
    module docstring (default: "uncertainty" when the series has uncertainties, else
    "relative").
    """
    if model not in MODELS:
        raise IllPosedFitError(f"model {model!r}: expected one of {sorted(MODELS)}")
    m = MODELS[model]
    s = as_series(data, activities_mbq, **select)
    p = len(m.internal_names)
    if s.n_points < p:
        raise IllPosedFitError(
            f"{s.label()}: {model} fit has {p} parameters but only {s.n_points} time point(s); "
            f"need at least {p} (use a single-time-point method or fewer parameters)"
        )
    lp = s.decay_constant_per_h
    t, a = s.times_h, s.activities_mbq
    if weighting is None:
        weighting = "uncertainty" if s.sigma_mbq is not None else "relative"
    if weighting == "uncertainty":
        if s.sigma_mbq is None:
            raise IllPosedFitError(f"{s.label()}: weighting='uncertainty' but the series has no activity uncertainties")
        sig = s.sigma_mbq
    elif weighting == "relative":
        sig = a.copy()
    elif weighting == "uniform":
        sig = np.ones_like(a)
    else:
        raise IllPosedFitError(f"weighting={weighting!r}: expected 'uncertainty', 'relative', 'uniform' or None")
    lower = m.lower(lp)
    upper = np.full(p, np.inf)

    def resid(th):
        return (m.f(t, th) - a) / sig

    def jac(th):
        return m.jac(t, th) / sig[:, None]

    best = None
    def solve(x0, tol, max_nfev):
        x0 = np.maximum(x0, lower + 1e-12 * (1.0 + np.abs(lower)))  # strictly feasible start
        try:
            res = least_squares(resid, x0, jac=jac, bounds=(lower, upper), method="trf",
                                x_scale="jac", ftol=tol, xtol=tol, gtol=tol, max_nfev=max_nfev)
        except (ValueError, FloatingPointError):
            return None
        return res if res.status >= 0 and np.all(np.isfinite(res.x)) else None

    # multi-start at moderate tolerance, then polish the best start to _TOL
    for x0 in _starts(model, s, lp):
        res = solve(x0, _START_TOL, 200 * p)
        if res is not None and (best is None or res.cost < best.cost):
            best = res
    if best is not None:
        polished = solve(best.x, _TOL, 2000 * p)
        if polished is not None and polished.cost <= best.cost:
            best = polished
    if best is None or best.status == 0:
        raise FitFailedError(f"{s.label()}: {model} fit did not converge (from {len(_starts(model, s, lp))} "
                             "starting points, within the evaluation budget)")
    th = best.x
    flags = list(s.notes)
    for name, active in zip(m.internal_names, best.active_mask):
        if active != 0:
            flags.append(f"at_bound:{name}")
    jr = jac(th)
    dof = s.n_points - p
    chi2 = float(2.0 * best.cost)
    weighted = weighting == "uncertainty"
    noise = 1.0 if weighted else (math.sqrt(chi2 / dof) if dof > 0 else 0.0)
    cov, unidentified, singular = _covariance(jr, th, noise)
    for j in np.flatnonzero(unidentified):
        flags.append(f"unidentified:{m.internal_names[j]}")
    if singular:
        flags.append("covariance_singular")
    if not weighted:
        if dof > 0:
            cov = cov * (chi2 / dof)
        else:
            flags.append("no_degrees_of_freedom")
            cov = np.full((p, p), np.nan)
    known = ~unidentified
    g = m.grad_tia(th)
    tia_var = float(g[known] @ cov[np.ix_(known, known)] @ g[known])
    tia = float(m.tia(th))
    if not np.isfinite(tia) or tia <= 0:
        raise FitFailedError(f"{s.label()}: {model} fit gave a non-positive or non-finite TIA {tia}")
    tr = m.reported_jac(th)
    rep_cov = tr[:, known] @ cov[np.ix_(known, known)] @ tr[:, known].T
    depends = np.any(tr[:, unidentified] != 0, axis=1)
    rep_cov[depends, :] = np.nan
    rep_cov[:, depends] = np.nan
    return ExponentialFit(
        model=model,
        params=dict(zip(m.names, map(float, m.to_reported(th)))),
        covariance=rep_cov,
        tia_mbq_h=tia,
        tia_sd_mbq_h=float(np.sqrt(max(tia_var, 0.0))) if np.isfinite(tia_var) else float("nan"),
        chi2=chi2,
        dof=dof,
        weighted=weighted,
        flags=tuple(flags),
        series=s,
        _theta=np.array(th, dtype=float),
    )


def fit_mono_exponential(data, activities_mbq=None, **kwargs) -> ExponentialFit:
    """A(t) = A0 exp(-lambda_eff t), lambda_eff >= lambda_phys; TIA = A0/lambda_eff.
    Keywords as for `fit_exponential`."""
    return fit_exponential(data, activities_mbq, model="mono", **kwargs)


def fit_biexponential(data, activities_mbq=None, *, form: str = "uptake", **kwargs) -> ExponentialFit:
    """Bi-exponential fit; form "uptake" (A0 [e^-lambda_c t - e^-lambda_u t], the default,
    for regions that start empty) or "sum" (A_f e^-lambda_f t + A_s e^-lambda_s t).
    Keywords as for `fit_exponential`."""
    forms = {"uptake": "bi_uptake", "sum": "bi_sum"}
    if form not in forms:
        raise IllPosedFitError(f"form {form!r}: expected 'uptake' or 'sum'")
    return fit_exponential(data, activities_mbq, model=forms[form], **kwargs)
