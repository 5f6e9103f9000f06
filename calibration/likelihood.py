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

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.stats import norm

import pbpk

from .observations import Observations
from .priors import ERROR_SCALE_PRIOR_SIGMA, FreeParameter, error_scale_medians

#: Log-density penalty for a failed solve (finite, so optimisers and NUTS stay finite).
FAILED_SOLVE_LOG_DENSITY = -1e10
#: Floor of a predicted activity before the log (MBq); far below any measurable value.
ACTIVITY_FLOOR_MBQ = 1e-12
#: Solver settings for calibration: rtol 1e-5 (numerical error 4 orders below a 10 %
#: measurement error, ~1.8x fewer steps than 1e-6 for a 4th-order method), steps bounded
#: so extreme proposals fail fast (a PSMA therapy solve takes ~300 steps).
CALIBRATION_SOLVER = pbpk.SolverOptions(rtol=1e-5, atol=1e-8, max_steps=4096)
ERROR_GROUPS = ("PET organ", "PET lesion", "SPECT organ", "SPECT lesion")


@dataclass(frozen=True)
class Problem:
    """Everything the NumPyro model of one patient needs (static for JIT)."""

    model: pbpk.Model
    schedule: pbpk.Schedule
    observations: Observations
    free: tuple[FreeParameter, ...]
    options: pbpk.SolverOptions = CALIBRATION_SOLVER
    segments: tuple["Segment", ...] = ()

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

    def parameters(self, theta) -> dict:
        return {name: theta[k] for k, name in enumerate(self.free_names)}

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


def predicted_activity(problem: Problem, theta):
    """Model activity (MBq) at every observation, and whether the solve succeeded."""
    o = problem.observations
    params = problem.parameters(theta)
    if problem.segments:
        pred = jnp.zeros(o.activity_mbq.shape)
        ok = jnp.asarray(True)
        for seg in problem.segments:
            traj = pbpk.simulate(seg.model, seg.schedule, seg.times_h, params, tia=False, options=problem.options,
                                 check=False)
            nuclide_index = np.array([traj.nuclides.index(o.nuclide[i]) for i in seg.rows], dtype=int)
            pred = pred.at[seg.rows].set(traj.region_activity_mbq[nuclide_index, o.region_index[seg.rows],
                                                                  seg.time_index])
            ok = ok & traj.solver_ok
    else:
        traj = pbpk.simulate(problem.model, problem.schedule, o.times_h, params, tia=False, options=problem.options,
                             check=False)
        nuclide_index = np.array([traj.nuclides.index(n) for n in o.nuclide], dtype=int)
        pred = traj.region_activity_mbq[nuclide_index, o.region_index, o.time_index]
        ok = traj.solver_ok
    ok = ok & jnp.all(jnp.isfinite(pred))
    return jnp.where(ok, jnp.maximum(pred, ACTIVITY_FLOOR_MBQ), 1.0), ok


def numpyro_model(problem: Problem, predicted=None):
    """The NumPyro model (see module docstring).  Sites: ``z`` (standard-normal free
    parameters), ``error_scale`` (used groups only), deterministic ``theta`` and
    ``solver_ok``, observed ``log_activity`` and a censoring factor.

    predicted: optional ``(activity_mbq, solver_ok)`` already computed for this ``z`` by
    `predicted_activity` (the fit's chain-rule gradient supplies them; the ODE is then
    not solved here)."""
    o = problem.observations
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([len(problem.free)]).to_event(1))
    theta = numpyro.deterministic("theta", problem.theta_from_z(z))
    used = problem.used_error_groups
    scale = error_scale_site(used)
    pred, ok = predicted_activity(problem, theta) if predicted is None else predicted

    group = np.searchsorted(np.asarray(used), problem.error_groups)
    observe(np.log(o.activity_mbq), o.relative_uncertainty, group, ~o.censored, o.censored, pred, ok, scale)


def error_scale_site(used: tuple[int, ...]):
    """The ``error_scale`` site: one log-normal proportional error sd per group in `used`
    (indices into ERROR_GROUPS), priors `priors.ERROR_SCALE_MEDIANS`."""
    medians = jnp.asarray(error_scale_medians(used))
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
