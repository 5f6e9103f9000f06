"""The NumPyro model of one patient: priors, the PBPK solve, the error model.

    z_k ~ Normal(0, 1),                theta_k = median_k * exp(sigma_k z_k)   (free parameters)
    b_g ~ LogNormal(log m_g, 0.5)      proportional error scale per group g
                                       (PET organ, PET lesion, SPECT organ, SPECT lesion)
    A_i = pbpk.simulate(model, schedule, theta)[nuclide_i, region_i, t_i]   (MBq, physical)
    s_i = sqrt(b_{g(i)}^2 + u_i^2)     u_i = reported relative measurement sd (0 if absent)
    log y_i ~ Normal(log A_i, s_i)     measured rows
    P(y < LOD_i) = Phi((log LOD_i - log A_i) / s_i)   left-censored rows

Robustness under NUTS: the solve runs with ``check=False`` and a bounded ``max_steps``;
a failed or non-finite solve adds a penalty of -1e10 to the log density (NUTS marks the
transition divergent and rejects it; optimisers back off) and its predictions are
replaced by finite placeholders, so no NaN ever reaches the log density value.  The
solver used (`pbpk.rosenbrock.Rodas4`, by default) factorises with a plain LU and raises
no runtime error on singular matrices: extreme proposals show up as non-finite states,
which the ``solver_ok`` flag catches.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.stats import norm

import pbpk

from .observations import Observations
from .priors import ERROR_SCALE_MEDIANS, ERROR_SCALE_PRIOR_SIGMA, FreeParameter, error_scale_medians

#: Log-density penalty for a failed solve (finite, so optimisers and NUTS stay finite).
FAILED_SOLVE_LOG_DENSITY = -1e10
#: Floor of a predicted activity before the log (MBq); far below any measurable value.
ACTIVITY_FLOOR_MBQ = 1e-12
#: Solver settings for calibration: rtol 1e-5 (numerical error 4 orders below a 10 %
#: measurement error, ~1.8x fewer steps than 1e-6 for a 4th-order method), steps bounded
#: so extreme proposals fail fast (a PSMA therapy solve takes ~300 steps).
CALIBRATION_SOLVER = pbpk.SolverOptions(rtol=1e-5, atol=1e-8, max_steps=4096)
#: Solver settings for NUTS's trajectories when the caller gives none (`calibration.fit`,
#: `fit_cohort`): rtol 1e-3.  NUTS needs a potential consistent along each trajectory, not
#: a 1e-5 one.  On the reduced PSMA model (`benchmarks/bench_calibration_speed.py
#: --compare-solvers`) the 24 observed rows' predictions deviated from an rtol-1e-9 solve
#: by at most 3.5e-4 (relative) over 20 posterior draws, 0.7 % of the smallest measurement
#: error (5 %, PET); one chain of 200 + 400 iterations per setting: posterior means of log
#: theta within 0.87 Monte Carlo standard errors, sds within 6 %; a gradient 13.5 instead
#: of 34 ms, NUTS 4 x (200 + 1000) 285 instead of 675 s.  The MAP, the Laplace metric
#: and predictions keep CALIBRATION_SOLVER (a central-difference Hessian needs the
#: tighter solve).
NUTS_SOLVER = pbpk.SolverOptions(rtol=1e-3, atol=1e-6, max_steps=4096)
ERROR_GROUPS = ("PET organ", "PET lesion", "SPECT organ", "SPECT lesion")


@dataclass(frozen=True)
class Problem:
    """Everything the NumPyro model of one patient needs (static for JIT).  fixed:
    (name, value) of parameters held at known patient values (e.g. body weight, GFR,
    lesion volumes) in every solve, so one model object serves many patients;
    error_scale_prior: prior median of each error group's scale (ERROR_GROUPS order)."""

    model: pbpk.Model
    schedule: pbpk.Schedule
    observations: Observations
    free: tuple[FreeParameter, ...]
    options: pbpk.SolverOptions = CALIBRATION_SOLVER
    segments: tuple["Segment", ...] = ()
    fixed: tuple[tuple[str, float], ...] = ()
    error_scale_prior: tuple[float, ...] = ERROR_SCALE_MEDIANS

    @property
    def free_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.free)

    @property
    def error_groups(self) -> np.ndarray:
        """Error-scale group of each observation, as indices into ERROR_GROUPS."""
        o = self.observations
        return o.modality_index * 2 + o.is_lesion.astype(int)

    @property
    def used_error_groups(self) -> tuple[int, ...]:
        return tuple(int(g) for g in np.unique(self.error_groups))

    def parameters(self, theta, fixed_values=None) -> dict:
        """Parameter overrides of a solve: the `fixed` values (the patient's known
        covariates; `fixed_values` in their order instead when given, e.g. traced) and
        the free parameters theta."""
        values = [v for _, v in self.fixed] if fixed_values is None else fixed_values
        fixed = {name: values[k] for k, (name, _) in enumerate(self.fixed)}
        return {**fixed, **{name: theta[k] for k, name in enumerate(self.free_names)}}

    def data(self) -> dict:
        """What differs between patients of one protocol, as arrays (the ``data`` argument
        of `numpyro_model`): log measured activity (or detection limit), relative
        measurement sd, the fixed parameters' values."""
        o = self.observations
        return {"log_activity": np.log(o.activity_mbq), "relative_uncertainty": np.asarray(o.relative_uncertainty),
                "fixed": np.array([v for _, v in self.fixed], dtype=float)}

    def structure_key(self) -> tuple:
        """Everything but `data` that `numpyro_model` reads: problems with equal keys share
        compiled potentials (`potential.ChainRulePotential`).  Models enter by identity
        (their compiled form), so patients of one study share them by sharing one model
        object (known covariates as `fixed`)."""
        o = self.observations

        def arrays(*values):
            return tuple((np.asarray(v).dtype.str, np.asarray(v).shape, np.asarray(v).tobytes()) for v in values)

        segments = tuple((pbpk.compile_model(seg.model), seg.schedule.administrations)
                         + arrays(seg.rows, seg.times_h, seg.time_index)
                         for seg in self.segments)
        return (pbpk.compile_model(self.model), self.schedule.administrations, self.free, self.options, segments,
                tuple(name for name, _ in self.fixed), self.error_scale_prior, o.nuclide,
                arrays(o.times_h, o.time_index, o.region_index, o.modality_index, o.is_lesion, o.censored))

    def theta_from_z(self, z):
        median = jnp.asarray([f.median for f in self.free])
        sigma = jnp.asarray([f.sigma_log for f in self.free])
        return median * jnp.exp(sigma * z)


@dataclass(frozen=True)
class Segment:
    """One ligand's part of a separated problem (`ligand_segments`): the model restricted
    to that ligand, its administrations, its observation rows and their output times."""

    model: pbpk.Model
    schedule: pbpk.Schedule
    rows: np.ndarray
    times_h: np.ndarray
    time_index: np.ndarray


def ligand_segments(model: pbpk.Model, schedule: pbpk.Schedule, observations: Observations) -> tuple[Segment, ...]:
    """Split a problem by ligand (`pbpk.restrict.restrict_ligands`): each ligand's
    administrations are solved with the model restricted to that ligand, which neglects
    competition between *different* ligands for the receptors (see that module)."""
    from pbpk.restrict import restrict_ligands

    tracer_ligand = {t.name: t.ligand.name for t in schedule.tracers}
    # table rows may name a tracer by any of its aliases (e.g. 177Lu-PSMA-617)
    row_ligand = np.array([tracer_ligand[pbpk.tracer(t).name] for t in observations.table["tracer"]])
    segments = []
    for ligand in dict.fromkeys(tracer_ligand.values()):
        rows = np.flatnonzero(row_ligand == ligand)
        if rows.size == 0:
            continue
        times = observations.times_h[observations.time_index[rows]]
        unique = np.unique(times)
        segments.append(Segment(restrict_ligands(model, [ligand]),
                                pbpk.Schedule([a for a in schedule if a.tracer.ligand.name == ligand]),
                                rows, unique, np.searchsorted(unique, times)))
    return tuple(segments)


def predicted_activity(problem: Problem, theta, fixed_values=None):
    """Model activity (MBq) at every observation, and whether the solve succeeded
    (fixed_values: `Problem.parameters`)."""
    params = problem.parameters(theta, fixed_values)
    return _gather_predictions(problem, lambda model, schedule, times: pbpk.simulate(
        model, schedule, times, params, tia=False, options=problem.options, check=False))


def predicted_activity_draws(problem: Problem, theta: np.ndarray):
    """`predicted_activity` of many draws theta (n, K) at once (concrete values, outside
    JIT): (activity (n, rows), ok (n,)).  The draws share one lockstep solve per segment
    (`pbpk.simulate_cohort`, failing draws isolated: compiled once per model and schedule
    structure, so the draws of other fits of the same model object reuse it); each draw
    alone (vmap) for solvers other than Rodas4."""
    theta = jnp.asarray(theta)
    if problem.options.method != "rodas4" or theta.shape[0] < 2:
        return jax.jit(jax.vmap(lambda th: predicted_activity(problem, th)))(theta)
    params = problem.parameters(theta.T)
    return _gather_predictions(problem, lambda model, schedule, times: pbpk.simulate_cohort(
        model, schedule, times, params, tia=False, options=problem.options, check=False, isolate_failures=True))


def _gather_predictions(problem: Problem, solve):
    """(activity at every observation, ok) from ``solve(model, schedule, times_h)`` of each
    ligand segment (or of the whole problem), one trajectory or a set of them (then every
    output has a leading set axis); failed or non-finite predictions become 1.0."""
    o = problem.observations
    parts = [(seg.model, seg.schedule, seg.times_h, seg.rows, seg.time_index) for seg in problem.segments] or \
        [(problem.model, problem.schedule, o.times_h, np.arange(o.activity_mbq.size), o.time_index)]
    pred, ok = None, jnp.asarray(True)
    for model, schedule, times, rows, time_index in parts:
        traj = solve(model, schedule, times)
        nuclide_index = np.array([traj.nuclides.index(o.nuclide[i]) for i in rows], dtype=int)
        values = traj.region_activity_mbq[..., nuclide_index, o.region_index[rows], time_index]
        if pred is None:
            pred = jnp.zeros(values.shape[:-1] + o.activity_mbq.shape)
        pred = pred.at[..., rows].set(values)
        ok = ok & traj.solver_ok
    ok = ok & jnp.all(jnp.isfinite(pred), axis=-1)
    return jnp.where(ok[..., None], jnp.maximum(pred, ACTIVITY_FLOOR_MBQ), 1.0), ok


def numpyro_model(problem: Problem, predicted=None, data=None):
    """The NumPyro model (see module docstring).  Sites: ``z`` (standard-normal free
    parameters), ``error_scale`` (used groups only), deterministic ``theta`` and
    ``solver_ok``, observed ``log_activity`` and a censoring factor.

    predicted: optional ``(activity_mbq, solver_ok)`` already computed for this ``z`` by
    `predicted_activity` (the fit's chain-rule gradient supplies them; the ODE is then
    not solved here).  data: `Problem.data()` (default), possibly traced."""
    o = problem.observations
    data = problem.data() if data is None else data
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([len(problem.free)]).to_event(1))
    theta = numpyro.deterministic("theta", problem.theta_from_z(z))
    used = problem.used_error_groups
    scale = error_scale_site(used, problem.error_scale_prior)
    pred, ok = predicted_activity(problem, theta, data["fixed"]) if predicted is None else predicted

    group = np.searchsorted(np.asarray(used), problem.error_groups)
    observe(data["log_activity"], data["relative_uncertainty"], group, ~o.censored, o.censored, pred, ok, scale)


def error_scale_site(used: tuple[int, ...], medians=ERROR_SCALE_MEDIANS):
    """The ``error_scale`` site: one log-normal proportional error sd per group in `used`
    (indices into ERROR_GROUPS), prior medians `medians` (one per group; default
    `priors.ERROR_SCALE_MEDIANS`), log-sd `priors.ERROR_SCALE_PRIOR_SIGMA`."""
    medians = jnp.asarray(error_scale_medians(used, medians))
    return numpyro.sample("error_scale", dist.LogNormal(jnp.log(medians), ERROR_SCALE_PRIOR_SIGMA).to_event(1))


def observe(log_y, relative_uncertainty, group, measured, censored, pred, ok, scale):
    """The error model's sites for observations of any shape (one patient: (n,); a cohort:
    (patients, rows), padding masked out of both `measured` and `censored`):
    ``solver_ok`` (deterministic), the failed-solve penalty (per False in `ok`), observed
    ``log_activity`` (measured rows) and the censoring factor ``below_detection``.
    group: index of each row into `scale` (the error scales of the groups present)."""
    numpyro.deterministic("solver_ok", ok)
    numpyro.factor("failed_solve_penalty", jnp.sum(jnp.where(ok, 0.0, FAILED_SOLVE_LOG_DENSITY)))
    s = jnp.sqrt(scale[group] ** 2 + jnp.asarray(relative_uncertainty) ** 2)
    log_pred = jnp.log(pred)
    log_y = jnp.asarray(log_y)
    with numpyro.handlers.mask(mask=jnp.asarray(measured)):
        numpyro.sample("log_activity", dist.Normal(log_pred, s), obs=log_y)
    if np.any(censored):
        censored_ll = norm.logcdf((log_y - log_pred) / s)
        numpyro.factor("below_detection", jnp.sum(jnp.where(jnp.asarray(censored), censored_ll, 0.0)))
