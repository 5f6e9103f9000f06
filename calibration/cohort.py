"""`calibration.fit_cohort`: hierarchical (population) fits of many patients.

The NLME-style population model of the PBPK and single-time-point literature: each free
parameter has a population median and a between-patient spread, and every patient's
value is log-normal around them.  Non-centred, as NUTS needs for hierarchical models
(Betancourt & Girolami 2015, arXiv:1312.0906):

    mu_k ~ Normal(0, 1)              log m_pop,k = log m_k + s_k mu_k      (population median)
    omega_k ~ HalfNormal(s_k)        between-patient sd of log theta_k
    eta_ik ~ Normal(0, 1)            log theta_ik = log m_pop,k + omega_k eta_ik
    b_g ~ LogNormal(log m_g, 0.5)    proportional error sd per group, shared by the cohort
    log y_ij ~ Normal(log A_ij(theta_i), sqrt(b_g^2 + u_ij^2))   measured rows
    P(y_ij < LOD_ij) = Phi(...)                                   censored rows

(m_k, s_k) are the single-patient priors of `calibration.priors`: the hyperprior of the
population median is the prior an individual fit would use, and a priori the spread
between patients is at most of that size (half-normal with scale s_k).  The error
model is the single-patient one (`likelihood.observe`).

Solves: patients whose schedules share a structure (`pbpk.batch.schedule_structure`)
and whose tables have as many observation times share one solve, vmapped over the
patients (`pbpk.batch.solve_batch`: each with its own activities, ligand amounts, times
and parameters), so a cohort of one protocol compiles one solve program.  Gradients:
forward mode through the solve with one tangent per free parameter for the whole cohort
(`potential.ChainRulePotential`).

Methods.  NUTS samples this posterior exactly (up to Monte Carlo error).  A joint mode
(MAP) is a poor point for the between-patient spreads in this non-centred form: with
patient i's log parameter pinned by its data at d_i from the population centre,
eta_i = d_i / omega and the log density in u = log omega holds
-sum_i d_i^2 / (2 omega^2) - omega^2 / (2 s^2) + log omega (the last term the Jacobian of
omega = exp(u)), maximal at omega^2 = (1 + sqrt(1 + 4 sum_i d_i^2 / s^2)) s^2 / 4 rather
than ~ mean_i d_i^2 (0.78 instead of 0.3 for ten patients 0.3 apart and s = 0.5; the
centred form has the opposite fault, a mode at omega -> 0 when the data are sparse).
So every method starts from the empirical-Bayes point of NLME software: omega by EM
(`empirical_bayes_spreads`: patients' conditional modes and curvatures in the E-step,
the M-step for omega), the other sites at their mode given it.  ``laplace`` keeps omega
there (a point estimate, as NLME reports it) and is Gaussian in the other sites; ``svi``
and ``nuts`` start there.

`CohortPosterior.population_prior()` turns the population posterior into the prior of a
new patient: log theta_new ~ Normal(E[log m_pop], sqrt(Var[log m_pop] + E[omega^2])), the
posterior predictive of a new patient's log parameter matched by its first two moments,
as `FreeParameter`s for `calibration.fit(..., free=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro.distributions.transforms import biject_to

import pbpk
from pbpk.batch import BatchArrays, batch_arrays, schedule_structure, solve_batch

from .errors import CalibrationError, TableError
from .fit import (check_method, draw_posterior, find_map, forward_mode, hessian_columns, make_problem,
                  nuts_solver_potential)
from .likelihood import ACTIVITY_FLOOR_MBQ, CALIBRATION_SOLVER, ERROR_GROUPS, Problem, error_scale_site, observe
from .posterior import Posterior, SampleDiagnostics, error_scale_samples
from .potential import ChainRulePotential
from .priors import ERROR_SCALE_MEDIANS, FreeParameter, error_scale_medians, resolve_free_parameters

#: Start of the MAP search for each between-patient sd, as a fraction of its prior scale.
_OMEGA_START = 0.5


@dataclass(frozen=True)
class PatientGroup:
    """Patients solved together: one schedule structure and number of observation times.

    patients: indices into the cohort; structure: a schedule of that structure;
    arrays: `BatchArrays` stacked over the group's patients (leading axes (patient, 1));
    nuclide_name/region_index/time_index: (patients, max rows) gather indices of each
    patient's rows into its region activity (padding: index 0, masked elsewhere)."""

    patients: np.ndarray
    structure: pbpk.Schedule
    arrays: BatchArrays
    nuclide_name: np.ndarray
    region_index: np.ndarray
    time_index: np.ndarray


@dataclass(frozen=True)
class CohortProblem:
    """Everything the cohort's NumPyro model needs; per-patient `Problem`s plus the
    observations padded to (patients, max rows)."""

    model: pbpk.Model
    patients: tuple[Problem, ...]
    free: tuple[FreeParameter, ...]
    options: pbpk.SolverOptions
    groups: tuple[PatientGroup, ...]
    used_error_groups: tuple[int, ...]
    log_y: np.ndarray
    relative_uncertainty: np.ndarray
    error_group: np.ndarray
    valid: np.ndarray
    censored: np.ndarray
    fixed_names: tuple[str, ...] = ()
    fixed_values: np.ndarray | None = None  # (patients, len(fixed_names)), model units
    error_scale_prior: tuple[float, ...] = ERROR_SCALE_MEDIANS

    @property
    def free_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.free)

    @property
    def patient_names(self) -> tuple[str, ...]:
        return tuple(p.observations.patient for p in self.patients)

    @property
    def prior_log_median(self) -> np.ndarray:
        return np.log([f.median for f in self.free])

    @property
    def prior_sigma(self) -> np.ndarray:
        return np.array([f.sigma_log for f in self.free])

    def theta(self, mu, omega, eta):
        """(patients, K) parameters from the population sites (see module docstring)."""
        return jnp.exp(self.prior_log_median + self.prior_sigma * mu + omega * eta)


def make_cohort_problem(model: pbpk.Model, table: pd.DataFrame, schedules, *, free=None,
                        options: pbpk.SolverOptions = CALIBRATION_SOLVER,
                        fixed: Mapping[str, Mapping[str, float]] | None = None,
                        error_scales: Mapping[str, float] | None = None) -> CohortProblem:
    """Validate a multi-patient table and its schedules (one per patient, or one for all)
    and group the patients for the solves.  fixed: patient -> its known parameters (the
    same names for every patient, e.g. measured covariates: `fit`'s ``fixed``);
    error_scales: error-scale prior medians by group (`fit`'s ``error_scales``)."""
    if not isinstance(table, pd.DataFrame) or "patient" not in table.columns:
        raise TableError("cohort time-activity table: expected a DataFrame with a 'patient' column")
    names = [str(p) for p in pd.unique(table["patient"].astype(str))]
    if len(names) < 2:
        raise TableError(f"cohort time-activity table holds {len(names)} patient(s); a cohort fit needs at least 2 "
                         "(use calibration.fit for one patient)")
    if isinstance(schedules, Mapping):
        by_patient = _one_per_patient(schedules, names, "schedules", "a schedule")
    else:
        by_patient = dict.fromkeys(names, schedules)
    free = resolve_free_parameters(model, free)
    fixed_of = _fixed_by_patient(fixed, names)
    problems = tuple(make_problem(model, table, by_patient[n], free=free, patient=n, options=options,
                                  fixed=fixed_of[n], error_scales=error_scales) for n in names)
    fixed_names = tuple(name for name, _ in problems[0].fixed)
    used = tuple(sorted({g for p in problems for g in p.used_error_groups}))
    n_max = max(p.observations.n for p in problems)

    def padded(values, fill):
        out = np.full((len(problems), n_max), fill, dtype=np.asarray(values[0]).dtype)
        for i, v in enumerate(values):
            out[i, :len(v)] = v
        return out

    obs = [p.observations for p in problems]
    valid = padded([np.ones(o.n, bool) for o in obs], False)
    censored = padded([o.censored for o in obs], False)
    return CohortProblem(
        model=model, patients=problems, free=free, options=options, groups=_group_patients(model, problems, n_max),
        used_error_groups=used, log_y=padded([np.log(o.activity_mbq) for o in obs], 0.0),
        relative_uncertainty=padded([o.relative_uncertainty for o in obs], 0.0),
        error_group=padded([np.searchsorted(used, p.error_groups) for p in problems], 0),
        valid=valid, censored=censored, fixed_names=fixed_names,
        fixed_values=np.array([[v for _, v in p.fixed] for p in problems], dtype=float).reshape(len(problems), -1),
        error_scale_prior=problems[0].error_scale_prior)


def _one_per_patient(mapping: Mapping, names: list[str], field: str, what: str) -> dict:
    """`mapping` keyed by patient name (str), checked to hold exactly the table's patients
    `names`; CalibrationError naming `field`, the patients left out and the extra keys."""
    by_patient = {str(k): v for k, v in mapping.items()}
    missing, extra = sorted(set(names) - set(by_patient)), sorted(set(by_patient) - set(names))
    if missing or extra:
        raise CalibrationError(f"{field}: patients of the table without {what} {missing}, entries for patients not in "
                               f"the table {extra}; expected {what} per patient of the table")
    return by_patient


def _fixed_by_patient(fixed, names: list[str]) -> dict[str, Mapping[str, float] | None]:
    """`fixed` checked to give every patient of the table, and only those, the same
    parameter names (values are checked per patient by `make_problem`)."""
    if fixed is None:
        return dict.fromkeys(names)
    if not isinstance(fixed, Mapping):
        raise CalibrationError(f"fixed: expected a mapping patient -> {{parameter: value}}, got {type(fixed).__name__}")
    by_patient = _one_per_patient(fixed, names, "fixed", "a mapping of known values")
    for n in names:
        if not isinstance(by_patient[n], Mapping):
            raise CalibrationError(f"fixed[{n!r}]: expected a mapping parameter name -> value")
    first = set(by_patient[names[0]])
    for n in names[1:]:
        if set(by_patient[n]) != first:
            raise CalibrationError(f"fixed[{n!r}]: names {sorted(by_patient[n])} differ from patient {names[0]!r}'s "
                                   f"{sorted(first)}; expected the same known parameters for every patient")
    return by_patient


def _group_patients(model: pbpk.Model, problems: tuple[Problem, ...], n_max: int) -> tuple[PatientGroup, ...]:
    keys: dict[tuple, list[int]] = {}
    for i, p in enumerate(problems):
        keys.setdefault((schedule_structure(p.schedule), p.observations.times_h.size), []).append(i)
    groups = []
    for members in keys.values():
        per_patient = [batch_arrays(model, [problems[i].schedule], problems[i].observations.times_h, tia=False)
                       for i in members]
        arrays = jax.tree_util.tree_map(lambda *a: np.stack(a), *per_patient)

        def index(field_of, fill):
            out = np.full((len(members), n_max), fill, dtype=object if isinstance(fill, str) else int)
            for j, i in enumerate(members):
                v = field_of(problems[i].observations)
                out[j, :len(v)] = v
            return out

        groups.append(PatientGroup(np.array(members), problems[members[0]].schedule, arrays,
                                   index(lambda o: np.array(o.nuclide, dtype=object), ""),
                                   index(lambda o: o.region_index, 0), index(lambda o: o.time_index, 0)))
    return tuple(groups)


def cohort_predictions(cohort: CohortProblem, theta):
    """Model activity (MBq) at every patient's rows, (patients, max rows) padded with 1.0,
    and (patients,) solver flags; patient i's values depend on theta[i] only."""
    values = jnp.ones(cohort.valid.shape, dtype=theta.dtype)
    ok = jnp.zeros(len(cohort.patients), dtype=bool)
    for g in cohort.groups:
        params = {name: cohort.fixed_values[g.patients, j] for j, name in enumerate(cohort.fixed_names)}
        params.update({name: theta[g.patients, k] for k, name in enumerate(cohort.free_names)})
        batch = jax.vmap(lambda p, a: solve_batch(cohort.model, g.structure, a, p, tia=False,
                                                  options=cohort.options))(params, g.arrays)
        nuclide_index = np.vectorize(lambda n: batch.nuclides.index(n) if n else 0, otypes=[int])(g.nuclide_name)
        rows = np.arange(len(g.patients))[:, None]
        pred = batch.region_activity_mbq[:, 0][rows, nuclide_index, g.region_index, g.time_index]
        valid = jnp.asarray(cohort.valid[g.patients])
        group_ok = batch.solver_ok[:, 0] & jnp.all(jnp.isfinite(pred) | ~valid, axis=1)
        pred = jnp.where(group_ok[:, None] & valid, jnp.maximum(pred, ACTIVITY_FLOOR_MBQ), 1.0)
        values = values.at[g.patients].set(pred)
        ok = ok.at[g.patients].set(group_ok)
    return values, ok


def cohort_model(cohort: CohortProblem, predicted=None):
    """The hierarchical NumPyro model (module docstring).  Sites: ``mu``, ``omega``,
    ``eta`` (patients, K), ``error_scale``; deterministic ``theta`` (patients, K),
    ``population_median`` and ``solver_ok`` (patients,).  predicted: optional
    ``(values, ok)`` from `cohort_predictions` for these sites (then nothing is solved)."""
    n_free = len(cohort.free)
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([n_free]).to_event(1))
    omega = numpyro.sample("omega", dist.HalfNormal(jnp.asarray(cohort.prior_sigma)).to_event(1))
    eta = numpyro.sample("eta", dist.Normal(0.0, 1.0).expand([len(cohort.patients), n_free]).to_event(2))
    numpyro.deterministic("population_median", jnp.exp(cohort.prior_log_median + cohort.prior_sigma * mu))
    theta = numpyro.deterministic("theta", cohort.theta(mu, omega, eta))
    scale = error_scale_site(cohort.used_error_groups, cohort.error_scale_prior)
    pred, ok = cohort_predictions(cohort, theta) if predicted is None else predicted
    observe(cohort.log_y, cohort.relative_uncertainty, cohort.error_group, cohort.valid & ~cohort.censored,
            cohort.censored, pred, ok, scale)


def _cohort_potential(cohort: CohortProblem, seed: int) -> ChainRulePotential:
    positive = biject_to(dist.HalfNormal(1.0).support)
    init = {"mu": jnp.zeros(len(cohort.free)), "omega": jnp.asarray(_OMEGA_START * cohort.prior_sigma),
            "eta": jnp.zeros((len(cohort.patients), len(cohort.free))),
            "error_scale": jnp.asarray(error_scale_medians(cohort.used_error_groups, cohort.error_scale_prior))}
    return ChainRulePotential(cohort_model, (cohort,), init, seed, forward=cohort.options.adjoint == "forward",
                              theta_of=lambda u: cohort.theta(u["mu"], positive(u["omega"]), u["eta"]),
                              predict=lambda theta, data: cohort_predictions(cohort, theta))


def empirical_bayes_spreads(potential: ChainRulePotential, *, max_iter: int = 50,
                            tol: float = 1e-3) -> tuple[np.ndarray, dict]:
    """The population spreads omega by EM (the NLME estimate), the other sites at their
    mode given omega.

    Iteration: (1) the joint mode of (mu, eta, error scales) with omega fixed (L-BFGS, warm
    started); (2) each patient's conditional covariance of eta_i from its K x K Hessian
    block H_i (patients are independent given the population sites, so the 2K gradient
    evaluations that perturb parameter k of every patient at once give every block);
    (3) the M-step for the scale of log theta_ik - log m_pop,k = omega_k eta_ik:

        omega_k <- omega_k sqrt( mean_i( eta_ik^2 + [H_i^-1]_kk ) ),

    until every factor is within `tol` of 1.  Returns the flat unconstrained point and
    {"em_iterations", "em_converged", "map_iterations", "map_success"} (of the last mode)."""
    omega_at = potential.positions("omega")
    eta_at = potential.positions("eta")  # (patients, K)
    fixed = np.zeros(potential.x0.size, bool)
    fixed[omega_at] = True
    x = potential.x0.copy()
    converged = False
    for iteration in range(1, max_iter + 1):
        x, opt = find_map(potential, start=x, fixed=fixed)
        n_patients, n_free = eta_at.shape
        directions = np.zeros((n_free, x.size))
        for k in range(n_free):
            directions[k, eta_at[:, k]] = 1.0
        columns = hessian_columns(potential, x, directions)  # (K, n): column k of every block
        blocks = np.stack([columns[:, eta_at[i]].T for i in range(n_patients)])  # (patients, K, K)
        blocks = 0.5 * (blocks + np.swapaxes(blocks, 1, 2))
        variance = np.diagonal(np.linalg.inv(blocks), axis1=1, axis2=2)
        if not np.all(np.isfinite(variance)) or np.any(variance <= 0):
            raise CalibrationError("cohort fit: a patient's Hessian block is not positive definite at the mode "
                                   "(a free parameter is not identified by that patient's data and prior); free "
                                   "fewer parameters")
        factor = np.sqrt(np.mean(x[eta_at] ** 2 + variance, axis=0))
        x[omega_at] += np.log(factor)
        if np.max(np.abs(np.log(factor))) < tol:
            converged = True
            break
    x, opt = find_map(potential, start=x, fixed=fixed)
    return x, {"em_iterations": iteration, "em_converged": converged, "map_iterations": int(opt.nit),
               "map_success": bool(opt.success)}


_SITES = ("mu", "omega", "eta", "error_scale")
_DERIVED = ("theta", "population_median", "solver_ok")


def fit_cohort(model: pbpk.Model, table: pd.DataFrame, schedules, method: str = "nuts", *, free=None,
               seed: int = 0, num_warmup: int | None = None, num_samples: int = 1000, num_chains: int = 4,
               chain_method: str = "sequential", nuts_metric: str = "laplace", target_accept: float = 0.8,
               svi_steps: int = 2000, svi_learning_rate: float = 0.01,
               em_max_iter: int = 50, options: pbpk.SolverOptions | None = None,
               fixed: Mapping[str, Mapping[str, float]] | None = None,
               error_scales: Mapping[str, float] | None = None) -> "CohortPosterior":
    """Hierarchical fit of every patient in `table` (module docstring).

    schedules: one `pbpk.Schedule` for all patients, or a mapping patient -> schedule
      covering exactly the table's patients.
    free, method, the sampler and solver settings: as `calibration.fit`; every method starts from
      the empirical-Bayes point of `empirical_bayes_spreads` (at most `em_max_iter` EM
      iterations), Laplace keeps its between-patient spreads there (module docstring).
    fixed: patient -> known parameters (model units; the same names for every patient),
      e.g. measured covariates, held at each patient's values in its solves.
    error_scales: error-scale prior medians by group name (as `calibration.fit`).
    Returns a `CohortPosterior`.
    """
    check_method(method, svi_steps, svi_learning_rate, nuts_metric, target_accept)
    cohort = make_cohort_problem(model, table, schedules, free=free,
                                 options=forward_mode(options or CALIBRATION_SOLVER), fixed=fixed,
                                 error_scales=error_scales)
    potential = _cohort_potential(cohort, seed)
    x_map, em = empirical_bayes_spreads(potential, max_iter=em_max_iter)
    info = {"map_unconstrained": x_map, **em}
    nuts_potential = nuts_solver_potential(method, options, cohort, lambda c: _cohort_potential(c, seed), info)
    # Laplace keeps omega at its EM estimate (module docstring)
    omega = np.zeros(x_map.size, bool)
    omega[potential.positions("omega")] = True
    samples, chains, stats = draw_posterior(potential, x_map, method, info, seed=seed, num_warmup=num_warmup,
                                            num_samples=num_samples, num_chains=num_chains,
                                            chain_method=chain_method, nuts_metric=nuts_metric,
                                            target_accept=target_accept, svi_steps=svi_steps,
                                            svi_learning_rate=svi_learning_rate, laplace_fixed=omega,
                                            nuts_potential=nuts_potential)
    return CohortPosterior.from_draws(cohort, method, samples, chains=chains, info=info, sample_stats=stats)


@dataclass
class CohortPosterior(SampleDiagnostics):
    """Samples of a cohort fit, arrays (chain, draw, ...): ``population_median`` (K, model
    units), ``omega`` (K, between-patient sd of log theta), ``theta`` (patients, K),
    ``error_scale``, ``mu``, ``eta``, ``solver_ok`` (patients)."""

    problem: CohortProblem
    method: str
    samples: dict
    info: dict = field(default_factory=dict)
    sample_stats: dict = field(default_factory=dict)

    SITES: ClassVar[tuple[str, ...]] = _SITES + _DERIVED

    @property
    def label(self) -> str:
        return f"a cohort of {len(self.problem.patients)} patients"

    @property
    def patient_names(self) -> tuple[str, ...]:
        return self.problem.patient_names

    def parameter_samples(self) -> dict[str, np.ndarray]:
        """Population medians ``<name>:population_median`` (model units), between-patient
        sds ``<name>:omega`` (log units), each patient's ``<name>[<patient>]``, error scales."""
        s = self.samples
        out = {}
        for k, name in enumerate(self.free_names):
            out[f"{name}:population_median"] = s["population_median"][..., k]
            out[f"{name}:omega"] = s["omega"][..., k]
        for i, patient in enumerate(self.patient_names):
            out.update({f"{name}[{patient}]": s["theta"][..., i, k] for k, name in enumerate(self.free_names)})
        out.update(error_scale_samples(s["error_scale"], self.problem.used_error_groups))
        return out

    def problems(self) -> list[str]:
        msgs = super().problems()
        if not self.info.get("em_converged", True):
            msgs.append(f"the EM estimate of the between-patient spreads did not converge in "
                        f"{self.info['em_iterations']} iterations (raise em_max_iter)")
        return msgs

    def population_prior(self) -> tuple[FreeParameter, ...]:
        """The prior of a new patient from this population (module docstring), for
        `calibration.fit(..., free=cohort_posterior.population_prior())`."""
        log_median = np.log(self.samples["population_median"].reshape(-1, len(self.free_names)))
        omega = self.samples["omega"].reshape(-1, len(self.free_names))
        centre = log_median.mean(axis=0)
        spread = np.sqrt(log_median.var(axis=0) + np.mean(omega ** 2, axis=0))
        n = len(self.patient_names)
        return tuple(FreeParameter(name, float(np.exp(centre[k])), float(spread[k]),
                                   f"population posterior of a {self.method} cohort fit of {n} patients "
                                   "(calibration.fit_cohort)")
                     for k, name in enumerate(self.free_names))

    def population_error_scales(self) -> dict[str, float]:
        """Posterior medians of the cohort's proportional error scales by group
        (`ERROR_GROUPS` name): the quantification precision this cohort's data show, as a
        new patient's error-scale prior medians, ``calibration.fit(...,
        error_scales=cohort_posterior.population_error_scales())``, in place of the
        published defaults (groups the cohort did not observe keep those)."""
        groups = self.problem.used_error_groups
        flat = self.samples["error_scale"].reshape(-1, len(groups))
        return {ERROR_GROUPS[g]: float(np.median(flat[:, k])) for k, g in enumerate(groups)}

    def patient(self, name: str) -> Posterior:
        """Patient `name`'s parameters given the whole cohort, as a single-patient
        `Posterior` (its `predict(schedule)` answers any schedule for that patient)."""
        if name not in self.patient_names:
            raise CalibrationError(f"patient {name!r} is not in this cohort; patients: {list(self.patient_names)}")
        i = self.patient_names.index(name)
        problem = self.problem.patients[i]
        theta = self.samples["theta"][..., i, :]
        columns = np.searchsorted(self.problem.used_error_groups, problem.used_error_groups)
        samples = {"theta": theta, "error_scale": self.samples["error_scale"][..., columns],
                   "z": (np.log(theta) - self.problem.prior_log_median) / self.problem.prior_sigma,
                   "solver_ok": self.samples["solver_ok"][..., i]}
        return Posterior(problem, self.method, samples, dict(self.info, cohort_patients=len(self.patient_names)),
                         dict(self.sample_stats))
