"""MBAM reduction: limits applied to the symbolic model representation, refit, iterate.

`reduce(model, schedules, times_h)` (Transtrum & Qiu, PRL 2014; calibration.md 1.6):
at the current fit theta*, (1) stop if the FIM is no longer sloppy (smallest eigenvalue
>= `min_eigenvalue`, default 1: every direction known to within ~1 log-unit at the
design's noise); (2) integrate geodesics along the given eigendirections (default: the
sloppiest, forward then backward), one at a time (a flat direction, FIM eigenvalue
below the noise floor, needs no geodesic: its limit is read off the eigenvector);
(3) apply the limit found at the geodesic's end point (new combination parameters take
their values there); (4) refit the reduced model's log-parameters to the *full* model's
predictions r_full(theta*) (scipy `least_squares`, trust-region reflective, JAX
Jacobian), same weights; (5) accept
when the RMS residual per prediction <= `max_rms_sigma` (default 1 sigma), else (and for
a geodesic without boundary, an unsupported limit or a failed solve) record why and try
the next direction; when none is accepted, stop with a message and the best model so
far (never raising on a numerical failure).

Supported limits (each gives a `Model` with one parameter fewer, or two fewer when the
kept combination no longer appears):

* "zero" / "infinity" for one parameter p: every rate, assignment and volume expression
  E is replaced by lim_{p -> 0+ or oo} E (`sympy.limit`); reactions whose rate becomes
  identically 0 are removed (k -> 0: the reaction is switched off).
* "ratio" (a, b -> same direction, a/b fixed), "product" (a -> 0, b -> oo or the
  reverse, a*b fixed) and "scaling" (several parameters at the same log-rate): a new
  parameter c = a/b (resp. a*b) with the current value of the combination replaces a
  (a = c*b, resp. a = c/b) for every parameter but one driver b, which is taken to its
  limit as above (e.g. kon -> 0, R -> oo at fixed kon*R: saturable binding becomes
  linear uptake).

A limit is refused with `MBAMError` naming the expression when any limit is infinite
or undefined: e.g. kon, koff -> oo at fixed K_D (rapid binding equilibrium) makes the
binding flux diverge; its reduced form (merged free+bound species with an algebraic
isotherm) needs a species merge that is not implemented yet, nor is the irreversible
k -> oo transfer (instantaneous emptying of a species), the fold ("equal") or a
general combination.  Assignments that depend on the limiting parameters are inlined
first, so every expression is written in parameters only where the limit acts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import sympy as sp
from scipy.optimize import least_squares

from ..atomic import write_atomic
from ..errors import PBPKError
from ..model import Model, Parameter, Reaction
from .fisher import fisher_information
from .geodesic import Geodesic, geodesic
from .limits import Limit, classify_direction, identify_limit
from .merge import lump_fast_reactions, split_fast
from .predictions import MBAMError, Predictions


def _inline_dependents(model: Model, params: set[sp.Symbol]):
    """Inline assignments that (transitively) depend on `params`; returns (kept
    assignments, substitution map of the inlined ones)."""
    subs: dict[sp.Symbol, sp.Expr] = {}
    kept = []
    for name, expr in model.assignments:
        full = expr.xreplace(subs)
        if full.free_symbols & params:
            subs[sp.Symbol(name)] = full
        else:
            kept.append((name, expr))
    return kept, subs


def _limit(expr, var: sp.Symbol, target, what: str):
    if var not in expr.free_symbols:
        return expr
    out = sp.limit(expr, var, target)
    if out.has(sp.oo, -sp.oo, sp.zoo, sp.nan) or isinstance(out, sp.AccumBounds) or var in out.free_symbols:
        raise MBAMError(f"limit {var} -> {target} is not supported here: {what} = {expr} becomes {out}")
    return sp.simplify(out)


def _combination_parameter(model: Model, a: str, b: str, product: bool, limit: Limit) -> Parameter:
    pa, pb = model.parameter(a), model.parameter(b)
    if product:
        return Parameter(f"{a}_times_{b}", pa.value * pb.value, f"({pa.unit})*({pb.unit})",
                         description=f"MBAM combination {a}*{b} ({limit.describe()})",
                         source="pbpk.mbam (geodesic limit)", lower=0.0)
    return Parameter(f"{a}_over_{b}", pa.value / pb.value, f"({pa.unit})/({pb.unit})",
                     description=f"MBAM combination {a}/{b} ({limit.describe()})",
                     source="pbpk.mbam (geodesic limit)", lower=0.0)


def apply_limit(model: Model, limit: Limit) -> Model:
    """The model in the limit `limit` (see the module docstring for what is supported).

    For "ratio", "product" and "scaling" limits each parameter in turn is tried as the
    driver b (taken to its limit); every other parameter a_i of the limit is replaced by
    a combination c_i = a_i*b (opposite directions) or a_i/b (same direction); the first
    driver for which every expression has a finite limit is used."""
    names = model.parameter_names
    for n in limit.parameters:
        if n not in names:
            raise MBAMError(f"limit on {n!r}: model {model.name!r} has no such parameter")
    if limit.kind in ("zero", "infinity"):
        return _apply(model, limit, limit.parameters[0], limit.signs[0], [])
    if limit.kind not in ("ratio", "product", "scaling"):
        raise MBAMError(f"limit kind {limit.kind!r} ({limit.describe()}) is not supported by apply_limit; "
                        f"supported: zero, infinity, ratio, product, scaling")
    errors = []
    for k, b in enumerate(limit.parameters):
        others = [(a, g != limit.signs[k]) for a, g in zip(limit.parameters, limit.signs) if a != b]
        try:
            return _apply(model, limit, b, limit.signs[k], others)
        except MBAMError as exc:
            errors.append(str(exc))
    raise MBAMError(f"limit {limit.describe()} is not supported here: " + "; ".join(errors))


def _apply(model: Model, limit: Limit, driver: str, sign: int, others) -> Model:
    """Take `driver` -> oo (sign > 0) or 0, with each (a, product) in `others` replaced by
    its combination with the driver."""
    b = sp.Symbol(driver)
    new_params, subs_a = [], {}
    for a, product in others:
        c = _combination_parameter(model, a, driver, product, limit)
        new_params.append(c)
        subs_a[sp.Symbol(a)] = c.symbol / b if product else c.symbol * b
    removed = {driver} | {a for a, _ in others}
    target = sp.oo if sign > 0 else 0
    kept, inlined = _inline_dependents(model, {sp.Symbol(n) for n in removed})

    def transform(expr, what):
        expr = sp.sympify(expr).xreplace(inlined).xreplace(subs_a)
        try:
            return _limit(expr, b, target, what)
        except (NotImplementedError, sp.PoleError) as exc:
            raise MBAMError(f"limit {b} -> {target}: sympy cannot evaluate it for {what}: {exc}") from exc

    assignments = tuple((n, transform(e, f"assignment {n}")) for n, e in kept)
    compartments = tuple(replace(c, volume=transform(c.volume, f"volume of {c.name}")) for c in model.compartments)
    regions = tuple(r if r.volume is None else replace(r, volume=transform(r.volume, f"volume of region {r.name}"))
                    for r in model.regions)
    reactions, fast = [], []
    for r in model.reactions:
        what = f"rate of reaction {r.name}"
        if sign > 0:  # rates growing like the driver are fast: lumped below
            try:
                e1, e0 = split_fast(sp.sympify(r.rate).xreplace(inlined).xreplace(subs_a), b, what)
            except (NotImplementedError, sp.PoleError) as exc:
                raise MBAMError(f"limit {b} -> oo: sympy cannot evaluate it for {what}: {exc}") from exc
            if e1 != 0:
                fast.append((r, e1))
            rate = e0
        else:
            rate = transform(r.rate, what)
        if rate != 0:
            reactions.append(Reaction(r.name, rate, r.stoichiometry))
    params = [p for p in model.parameters if p.name not in removed] + new_params
    positive = tuple(a for a in model.positive_assignments if a not in {str(s) for s in inlined})
    out = replace(model, name=f"{model.name}|{limit.describe()}", parameters=tuple(params), assignments=assignments,
                  compartments=compartments, reactions=tuple(reactions), regions=regions,
                  positive_assignments=positive)
    if fast:
        out = lump_fast_reactions(out, b, fast, list(out.reactions))
    unused = {c.name for c in new_params} - {str(x) for x in _used_symbols(out)}
    return replace(out, parameters=tuple(p for p in out.parameters if p.name not in unused)) if unused else out


def _used_symbols(model: Model) -> set:
    """Symbols in the model's rates, assignments and volumes."""
    exprs = ([r.rate for r in model.reactions] + [e for _, e in model.assignments]
             + [c.volume for c in model.compartments] + [r.volume for r in model.regions if r.volume is not None])
    return set().union(*(sp.sympify(e).free_symbols for e in exprs))


# ------------------------------------------------------------------ the reduction loop


@dataclass(frozen=True)
class ReductionStep:
    """One limit taken: the limit, the reduced model's parameter count, the refit cost
    0.5*sum((r_reduced - r_full)^2) in sigma units, its RMS per prediction and its worst
    single prediction |r_reduced - r_full| (sigma), timings (s), the FIM eigenvalues before
    the step and the number of free (fitted) parameters after."""

    limit: Limit
    n_parameters: int
    cost: float
    rms_sigma: float
    geodesic_s: float
    refit_s: float
    fim_eigenvalues: tuple[float, ...]
    n_free: int = 0
    max_sigma: float = float("nan")


@dataclass
class ReductionResult:
    """`.model`: the last accepted (best) model; `.free`: its free log-parameters; `.steps`:
    accepted steps; `.message`: why the loop stopped; `.attempts`: every geodesic tried,
    with its limit and outcome."""

    model: Model
    steps: list = field(default_factory=list)
    message: str = ""
    free: tuple = ()  # the free (fitted) log-parameters of `.model`
    final_eigenvalues: tuple = ()  # FIM eigenvalues of `.model` (when the loop computed them)
    attempts: list = field(default_factory=list)  # (step, eigen index, forward, Geodesic, Limit | None, note)

    def report(self, path) -> None:
        """Write a text report (atomically: temporary file, then os.replace)."""
        lines = [f"MBAM reduction; stopped: {self.message}",
                 f"final model: {self.model.name} ({len(self.model.parameters)} parameters)", ""]
        for step, i, fwd, geo, lim, note in self.attempts:
            lines.append(f"attempt (step {step}, eigendirection {i}{'+' if fwd else '-'}): {geo.status}, "
                         f"{len(geo.ts)} points, t = {geo.ts[-1]:.3g}, tau = {geo.taus[-1]:.3g}: "
                         f"{lim.describe() if lim else '-'}: {note}")
        lines.append("")
        for k, s in enumerate(self.steps, 1):
            lines += [f"step {k}: {s.limit.describe()} (alignment {s.limit.alignment:.3f})",
                      f"  parameters: {s.n_parameters} ({s.n_free} free); refit cost {s.cost:.4g}, "
                      f"RMS {s.rms_sigma:.3g} sigma, worst prediction {s.max_sigma:.3g} sigma; "
                      f"geodesic {s.geodesic_s:.1f} s, refit {s.refit_s:.1f} s",
                      "  FIM eigenvalues at start: " + ", ".join(f"{e:.3g}" for e in s.fim_eigenvalues)]
        if self.final_eigenvalues:
            lines.append("FIM eigenvalues of the final model: " + ", ".join(f"{e:.3g}" for e in self.final_eigenvalues))
        write_atomic(path, lambda f: f.write("\n".join(lines) + "\n"), "w")

    def plot(self, path) -> None:
        """Write a PNG (atomically): left, the FIM eigenvalue spectrum before each step and of
        the final model (the sloppiness ladder shrinking as limits are taken); right, the
        refit RMS error (sigma units) of each reduced model against the full model."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9.0, 4.0), dpi=90, layout="constrained")
        FigureCanvasAgg(fig)
        spectra = [s.fim_eigenvalues for s in self.steps] + ([self.final_eigenvalues] if self.final_eigenvalues else [])
        left, right = fig.subplots(1, 2)
        tiny = np.finfo(float).tiny
        for k, ev in enumerate(spectra):
            ev = np.maximum(np.asarray(ev, dtype=float), tiny)
            left.hlines(ev, k - 0.3, k + 0.3, colors="C0", linewidth=1.0)
        left.set_yscale("log")
        labels = [str(k) for k in range(1, len(self.steps) + 1)] + (["final"] if self.final_eigenvalues else [])
        left.set_xticks(range(len(spectra)), labels)
        left.set_xlabel("before step")
        left.set_ylabel("FIM eigenvalue")
        steps = np.arange(1, len(self.steps) + 1)
        right.plot(steps, [s.rms_sigma for s in self.steps], "o-")
        right.set_xlabel("step (limit taken)")
        right.set_ylabel("refit RMS error (sigma)")
        right.set_title("free parameters after the last step: " + (str(self.steps[-1].n_free) if self.steps else "-"))
        write_atomic(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}), "wb")


def _supported_form(lim: Limit) -> Limit:
    """A general combination (several log-parameters diverging at different rates) is
    approximated by its dominant part: the parameters with |u_i| >= 0.5 max|u| (then the
    largest alone); the refit decides whether the approximation holds."""
    for threshold in (0.5, 0.999):
        if lim.kind != "combination":
            break
        lim = replace(classify_direction(lim.direction, lim.names, threshold=threshold), alignment=lim.alignment)
    return lim


def _flat_path(pred: Predictions, theta: np.ndarray, v: np.ndarray, eigenvalue: float) -> Geodesic:
    """A 'geodesic' along a flat direction: with FIM eigenvalue below the solver's noise
    floor the predictions do not depend on v at all, the manifold is flat along it and the
    geodesic is the straight line theta + t v; its limit is read off v directly (the
    refit then confirms it)."""
    v = v / np.linalg.norm(v)
    return Geodesic(tuple(pred.free), np.zeros(1), theta[None, :], v[None, :], np.zeros(1), np.array([eigenvalue]),
                    np.zeros(1), "flat", f"flat direction (FIM eigenvalue {eigenvalue:.3g}): limit read off the "
                                       f"eigenvector")


def _refit(pred: Predictions, current: Model, reduced: Model, target: np.ndarray, max_evaluations: int):
    """Refit the reduced model's free log-parameters to the full model's predictions
    `target` (scipy least_squares, trust-region reflective, JAX Jacobian): (free names,
    OptimizeResult, the reduced model's Predictions).  MBAMError if a solve fails.
    Residuals and Jacobians come from the reduced model's one compiled jet
    (`Predictions.value_and_jacobian`), which the next step's FIM and geodesics reuse."""
    free = [n for n in pred.free if n in reduced.parameter_names] + [
        p.name for p in reduced.parameters if p.name not in current.parameter_names]
    rp = pred.with_model(reduced, free)

    def residual(x):
        out = rp.value_and_jacobian(x)[0] - target
        if not np.all(np.isfinite(out)):
            raise MBAMError(f"the reduced model's solve failed during the refit at {dict(zip(free, np.exp(x)))}")
        return out

    fit = least_squares(residual, rp.theta0, jac=lambda x: rp.value_and_jacobian(x)[1], method="trf",
                        max_nfev=max_evaluations)
    return free, fit, rp


def reduce(model: Model, schedules=None, times_h=None, *, predictions: Predictions | None = None,
           max_rms_sigma: float = 1.0, max_prediction_sigma: float | None = None, min_eigenvalue: float = 1.0,
           max_steps: int = 10,
           directions=((0, True), (0, False)), geodesic_options: dict | None = None,
           max_refit_evaluations: int = 50, log=None, time_budget_s: float | None = None,
           flat_eigenvalue: float = 1e-8,
           **prediction_options):
    """Reduce `model` by MBAM for the design (schedules, times_h) or a prebuilt
    `predictions`; each step integrates geodesics from the current fit along
    `directions` ((eigen index, forward) pairs, tried in order) until one ends at a
    limit `apply_limit` supports, refits the reduced model to the full model's
    predictions (scipy least_squares in log-parameters, JAX Jacobian) and accepts it
    when the RMS error per prediction <= `max_rms_sigma` and (if given) every single
    prediction is within `max_prediction_sigma` (e.g. 0.5 with a 10 % error model: no
    prediction, TIA included, moves by more than 5 % from the full model's).  Stops (never raising on a
    numerical failure) when the FIM is no longer sloppy (smallest eigenvalue >=
    `min_eigenvalue`), no direction gives an acceptable limit, or after `max_steps`;
    `.model` is the best model so far.  A limit whose refit misses the threshold is
    recorded and the next direction is tried.  `log`: an optional callable receiving one
    line per geodesic tried (progress of long runs); `time_budget_s`: no new step starts
    after this many seconds (wall clock).  `flat_eigenvalue`: directions whose FIM
    eigenvalue is below it (default 1e-8: a unit log-change moves the predictions by
    < 1e-4 sigma, the solver's noise floor) are flat; no geodesic is integrated (it would
    follow solver noise), the limit is read off the eigenvector and checked by the refit."""
    log = log or (lambda line: None)
    started = time.perf_counter()
    if predictions is None:
        if schedules is None or times_h is None:
            raise MBAMError("reduce needs schedules and times_h (the measurement design), or predictions")
        predictions = Predictions.build(model, schedules, times_h, **prediction_options)
    target = predictions.r(predictions.theta0)
    result = ReductionResult(model, free=tuple(predictions.free))
    current, pred, theta = model, predictions, predictions.theta0
    geo_opts = {"rtol": 1e-3, "atol": 1e-3, **(geodesic_options or {})}
    for _ in range(max_steps):
        if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
            result.message = f"time budget of {time_budget_s:g} s spent after {len(result.steps)} steps"
            return result
        try:
            fim = fisher_information(pred, theta)
        except MBAMError as exc:
            result.message = f"FIM failed: {exc}"
            return result
        result.final_eigenvalues = tuple(fim.eigenvalues)
        if fim.eigenvalues[0] >= min_eigenvalue:
            result.message = (f"no sloppy direction left: smallest FIM eigenvalue {fim.eigenvalues[0]:.3g} >= "
                              f"{min_eigenvalue:g}")
            return result
        reasons, accepted = [], None
        step = len(result.steps) + 1
        for i, fwd in directions:
            if i >= len(theta):
                continue
            t0 = time.perf_counter()
            if fim.eigenvalues[i] < flat_eigenvalue:
                path = _flat_path(pred, theta, fim.eigenvectors[:, i] * (1 if fwd else -1), fim.eigenvalues[i])
            else:
                path = geodesic(pred, theta, i=i, forward=fwd, **geo_opts)
            geo_s = time.perf_counter() - t0
            tag = f"direction {i}{'+' if fwd else '-'}"
            if not path.reached_boundary:
                reasons.append(f"{tag}: {path.message}")
                result.attempts.append((step, i, fwd, path, None, path.message))
                log(f"step {step}, {tag}: {path.message} ({geo_s:.1f} s)")
                continue
            lim = _supported_form(identify_limit(pred, path))
            t0 = time.perf_counter()
            try:
                reduced = apply_limit(current.with_parameter_values(
                    **{n: float(np.exp(x)) for n, x in zip(pred.free, path.end)}), lim)
                free, fit, rp = _refit(pred, current, reduced, target, max_refit_evaluations)
            except (PBPKError, NotImplementedError, sp.PoleError) as exc:  # reported, not raised
                reasons.append(f"{tag}: {lim.describe()}: {exc}")
                result.attempts.append((step, i, fwd, path, lim, str(exc)))
                log(f"step {step}, {tag}: {lim.describe()}: {exc}")
                continue
            refit_s = time.perf_counter() - t0
            rms, worst = float(np.sqrt(np.mean(fit.fun**2))), float(np.max(np.abs(fit.fun)))
            note = None
            if not np.isfinite(rms) or rms > max_rms_sigma:
                note = f"refit misses the full model's predictions by RMS {rms:.3g} sigma > {max_rms_sigma:g}"
            elif max_prediction_sigma is not None and worst > max_prediction_sigma:
                k = int(np.argmax(np.abs(fit.fun)))
                note = (f"refit misses prediction {rp.label(k)} by {worst:.3g} sigma > "
                        f"max_prediction_sigma = {max_prediction_sigma:g}")
            if note is not None:
                reasons.append(f"{tag}: {lim.describe()}: {note}")
                result.attempts.append((step, i, fwd, path, lim, note))
                log(f"step {step}, {tag}: {lim.describe()}: {note} (geodesic {geo_s:.1f} s, refit {refit_s:.1f} s)")
                continue
            result.attempts.append((step, i, fwd, path, lim, "limit applied"))
            log(f"step {step}, {tag}: {lim.describe()}: applied, RMS {rms:.3g} sigma (worst {worst:.3g}), "
                f"{len(free)} free parameters "
                f"(geodesic {geo_s:.1f} s, refit {refit_s:.1f} s)")
            accepted = (lim, reduced, free, fit, rp, rms, worst, geo_s, refit_s)
            break
        if accepted is None:
            result.message = "no acceptable limit found; " + "; ".join(reasons)
            return result
        lim, reduced, free, fit, rp, rms, worst, geo_s, refit_s = accepted
        current = reduced.with_parameter_values(**{n: float(np.exp(x)) for n, x in zip(free, fit.x)})
        pred, theta = rp, fit.x
        result.model, result.free = current, tuple(free)
        result.final_eigenvalues = ()  # the next iteration computes the new model's spectrum
        result.steps.append(ReductionStep(lim, len(current.parameters), float(fit.cost), rms, geo_s, refit_s,
                                          tuple(fim.eigenvalues), len(free), worst))
    result.message = f"reached max_steps = {max_steps}"
    return result
