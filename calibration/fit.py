"""`calibration.fit`: MAP, Laplace, SVI and NUTS fits of one patient.

Every method starts from the maximum a posteriori (MAP) point of NumPyro's potential
energy U (negative log joint density in unconstrained space), found by scipy's exact
trust-region method with the JAX gradient and the Gauss-Newton Hessian
(`ChainRulePotential.gauss_newton`: the same tangents through the solve as the gradient,
so an iteration costs about one gradient; 9-10 iterations where L-BFGS needs ~45 on the
reduced PSMA model; `find_map`):

* ``laplace``: Gaussian at the MAP with covariance H^-1, H the Hessian of the potential
  by central differences of the JAX gradient (step 1e-4 in unconstrained units;
  differentiating the adaptive solver twice is avoided on purpose);
* ``svi``: `numpyro.infer.autoguide.AutoMultivariateNormal` over the flat unconstrained
  vector, started from the Laplace approximation (MAP, Gauss-Newton Hessian), Adam steps
  until the ELBO stops improving (at most ``svi_steps``; `calibration.svi`);
* ``nuts`` (default): NumPyro NUTS on the same flat potential and gradient, chains
  started at the MAP with a small jitter, target acceptance 0.8 (``target_accept``).  Its
  metric (inverse mass matrix, dense) is by default the Laplace covariance H^-1, held
  fixed: warm-up then adapts the step size only (``nuts_metric="laplace"``; default
  warm-up 200 iterations, enough for NumPyro's step-size windows, whose last 50
  iterations set the final step size).  ``nuts_metric="adapt"`` runs NumPyro's windowed
  metric adaptation from the Laplace covariance instead (default warm-up 500).  On the
  reduced PSMA model (15 parameters + 4 error scales, rtol 1e-4, target 0.8) the fixed
  Laplace metric gave step size 0.59 and 7.1 leapfrog steps per draw against 0.40 and 12.3
  after 500 iterations of adaptation (`benchmarks/bench_calibration_speed.py
  --compare-metrics`); a Hessian that is not positive definite at the MAP falls back to
  adaptation (``info["nuts_metric"]``).  Without ``options`` from the caller, NUTS's
  trajectories solve at `NUTS_SOLVER` (rtol 1e-3: a gradient 2.5x cheaper on the reduced
  PSMA model, posterior unchanged within Monte Carlo error; see its comment) through a
  second compiled potential, while the MAP, the Laplace metric and the predictions keep
  `CALIBRATION_SOLVER`; ``info["nuts_solver_rtol"]`` records it.

Derivatives through the ODE solve are forward mode (diffrax ``ForwardMode``) for every
method, one tangent per free parameter only (`_Potential`): with a handful of free
parameters this avoids the checkpointed reverse pass (measured ~1.4x faster per gradient
on the test model); SVI's ELBO gradient gets it through the potential's custom VJP.

Chains run ``sequential`` by default (on a CPU ``parallel`` needs
``numpyro.set_host_device_count(n)`` before JAX starts; pass ``chain_method="parallel"``
then; its chains trace the solve into their own program, a second compilation, where the
other modes call the compiled one; ``vectorized`` is the option for a GPU: on a CPU its
chains' solves run one after the other, and every chain waits for the longest
trajectory).

All randomness comes from ``seed``; the same call gives the same samples.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize
from numpyro.infer import MCMC, NUTS

import pbpk

from .errors import CalibrationError, positive_number
from .likelihood import (CALIBRATION_SOLVER, ERROR_GROUPS, NUTS_SOLVER, Problem, ligand_segments, numpyro_model,
                         predicted_activity, predicted_activity_draws)
from .observations import observations_from_table
from .posterior import Posterior
from .potential import FAILED_SOLVE_VALUE, ChainRulePotential
from .svi import WINDOW, run_svi
from .svi import check_settings as check_svi_settings
from .priors import ERROR_SCALE_MEDIANS, FreeParameter, error_scale_medians, resolve_free_parameters

METHODS = ("nuts", "svi", "laplace")
NUTS_METRICS = ("laplace", "adapt")
_FD_STEP = 1e-4
#: |dU/dx| below which a trust-region stop for lack of predicted improvement counts as
#: converged (the solver's tolerance limits the gradient's precision); with posterior sds
#: of order 0.1-1 in x this is far inside the posterior.
_STATIONARY_GRADIENT = 1e-3


def make_problem(model: pbpk.Model, table: pd.DataFrame, schedule, *, free=None, patient=None,
                 options: pbpk.SolverOptions = CALIBRATION_SOLVER, separate_ligands: bool = False,
                 fixed: Mapping[str, float] | None = None,
                 error_scales: Mapping[str, float] | None = None) -> Problem:
    """Validate the inputs and bundle them for the NumPyro model.  `separate_ligands`:
    solve each ligand's administrations with the model restricted to that ligand
    (`likelihood.ligand_segments`; much faster for PET + therapy with different ligands).
    fixed: known patient parameters (`fixed_parameters`); error_scales: error-scale prior
    medians (`error_scale_prior`)."""
    if not isinstance(model, pbpk.Model):
        raise CalibrationError(f"model: expected a pbpk.Model, got {type(model).__name__}")
    try:
        schedule = pbpk.schedule.as_schedule(schedule)
    except pbpk.ScheduleError as exc:
        raise CalibrationError(f"schedule: {exc}") from None
    observations = observations_from_table(table, model, schedule, patient)
    segments = ligand_segments(model, schedule, observations) if separate_ligands else ()
    free_parameters = resolve_free_parameters(model, free)
    return Problem(model, schedule, observations, free_parameters, options, segments,
                   fixed_parameters(model, fixed, free_parameters), error_scale_prior(error_scales))


def error_scale_prior(error_scales: Mapping[str, float] | None) -> tuple[float, ...]:
    """Prior medians of the error scales, one per `ERROR_GROUPS` entry: the published
    defaults (`priors.ERROR_SCALE_MEDIANS`) with the groups named in `error_scales`
    (e.g. {"SPECT lesion": 0.15}: a site's measured quantification precision, relative
    sd) replaced.  Raises CalibrationError for an unknown group or a value that is not a
    positive finite number."""
    medians = dict(zip(ERROR_GROUPS, ERROR_SCALE_MEDIANS))
    for group, value in (error_scales or {}).items():
        if group not in medians:
            raise CalibrationError(f"error_scales: unknown group {group!r}; expected one of {ERROR_GROUPS}")
        medians[group] = positive_number(value, f"error_scales[{group!r}]")
    return tuple(medians[g] for g in ERROR_GROUPS)


def fixed_parameters(model: pbpk.Model, fixed: Mapping[str, float] | None,
                     free: tuple[FreeParameter, ...]) -> tuple[tuple[str, float], ...]:
    """Validated ``fixed``: parameters of `model` held at the patient's known values in every
    solve (covariates such as body_weight_kg, gfr_ml_min, lesion_1_volume_l), so that one
    model object, and what is compiled for it, serves many patients.  Raises
    CalibrationError for a name that is not a parameter, a name that is also free, or
    values that are not finite numbers within the parameters' bounds."""
    if not fixed:
        return ()
    if not isinstance(fixed, Mapping):
        raise CalibrationError(f"fixed: expected a mapping parameter name -> value, got {type(fixed).__name__}")
    unknown = sorted(set(fixed) - set(model.parameter_names))
    if unknown:
        raise CalibrationError(f"fixed: {unknown} are not parameters of model {model.name!r}")
    both = sorted(set(fixed) & {f.name for f in free})
    if both:
        raise CalibrationError(f"fixed: {both} are also free parameters; a parameter is either fitted or fixed")
    values = {}
    for name, value in fixed.items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            raise CalibrationError(f"fixed: {name} = {value!r}; expected a number") from None
    compiled = pbpk.compile_model(model)
    try:
        compiled.check_parameters(np.asarray(compiled.parameter_vector(values)))
    except pbpk.ParameterError as exc:
        raise CalibrationError(f"fixed: {exc}") from None
    return tuple(sorted(values.items()))


def _Potential(problem: Problem, seed: int) -> ChainRulePotential:
    """The potential of one patient's `numpyro_model` on NumPyro's flat unconstrained
    vector x = (log error scales, z): with forward-mode options one tangent per free
    parameter goes through the solve (`potential.ChainRulePotential`), else reverse mode
    differentiates it directly.  The patient's values are the potential's data and the
    rest its structure key, so patients of one protocol and one model object share the
    compiled potential (traced and compiled once)."""
    init = {"z": jnp.zeros(len(problem.free)),
            "error_scale": jnp.asarray(error_scale_medians(problem.used_error_groups, problem.error_scale_prior))}
    return ChainRulePotential(numpyro_model, (problem,), init, seed, forward=problem.options.adjoint == "forward",
                              theta_of=lambda sites: problem.theta_from_z(sites["z"]),
                              predict=lambda theta, data: predicted_activity(problem, theta, data["fixed"]),
                              predict_draws=lambda theta: predicted_activity_draws(problem, theta),
                              data=problem.data(), cache_key=("patient", problem.structure_key()))


def find_map(potential: ChainRulePotential, max_iter: int = 500, *, start: np.ndarray | None = None,
             fixed: np.ndarray | None = None,
             newton: bool = False) -> tuple[np.ndarray, scipy.optimize.OptimizeResult]:
    """The unconstrained MAP from `start` (default: the prior centre) and scipy's result.
    fixed: boolean mask of coordinates held at their start values.  newton: scipy's
    exact trust-region method on the Gauss-Newton Hessian (`ChainRulePotential.gauss_newton`:
    one patient, forward mode; each iteration costs about one gradient), else L-BFGS-B."""
    start = potential.x0 if start is None else np.asarray(start, dtype=float)
    free = np.ones(start.size, bool) if fixed is None else ~np.asarray(fixed, bool)
    if newton:
        if fixed is not None or not potential.has_gauss_newton:
            raise ValueError("find_map(newton=True) needs a forward-mode potential and no fixed coordinates")
        res = _trust_region_newton(potential, start, max_iter)
        x = res.x
    else:
        def objective(x_free):
            x = start.copy()
            x[free] = x_free
            value, grad = potential.scipy_objective(x)
            return value, grad[free]

        res = scipy.optimize.minimize(objective, start[free], jac=True, method="L-BFGS-B",
                                      options=dict(maxiter=max_iter, gtol=1e-6))
        x = start.copy()
        x[free] = res.x
    if not np.all(np.isfinite(x)) or res.fun >= FAILED_SOLVE_VALUE / 10:
        raise CalibrationError("MAP search failed: every solve from the prior centre failed; check the "
                               "schedule, the table's units (MBq) and the free parameters' priors")
    return x, res


def _trust_region_newton(potential: ChainRulePotential, start: np.ndarray,
                         max_iter: int) -> scipy.optimize.OptimizeResult:
    """scipy ``trust-exact`` on (U, dU/dx, H_GN), each point evaluated once (scipy asks for
    the Hessian separately).  A failed solve gives a large finite value (the step is
    rejected and the trust radius shrinks: `ChainRulePotential.scipy_gauss_newton`)."""
    cache = {}

    def evaluate(x):
        key = x.tobytes()
        if key not in cache:
            cache.clear()
            cache[key] = potential.scipy_gauss_newton(x)
        return cache[key]

    res = scipy.optimize.minimize(lambda x: evaluate(x)[:2], start, jac=True, hess=lambda x: evaluate(x)[2],
                                  method="trust-exact", options=dict(maxiter=max_iter, gtol=1e-6))
    if res.status == 2 and np.max(np.abs(res.jac)) < _STATIONARY_GRADIENT:
        # no predicted improvement is left above the solver's numerical noise: converged
        res.success, res.message = True, f"converged to the solver's precision ({res.message})"
    return res


def hessian_columns(potential: ChainRulePotential, x: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """H d for each row d of `directions` (n_dir, n): central differences of the JAX
    gradient, step `_FD_STEP` along d (H: Hessian of the potential at x).  The gradient
    comes from `gauss_newton` where the potential has it (the program the MAP search
    compiled), else from `value_and_grad`."""
    def grad(v):
        if potential.has_gauss_newton:
            return np.asarray(potential.gauss_newton(jnp.asarray(v))[1])
        return np.asarray(potential.value_and_grad(jnp.asarray(v))[1])

    return np.stack([(grad(x + _FD_STEP * d) - grad(x - _FD_STEP * d)) / (2 * _FD_STEP) for d in directions])


def laplace_covariance(potential: ChainRulePotential, x_map: np.ndarray, *,
                       fixed: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """H^-1 at the MAP from a central-difference Hessian of the gradient; also whether H
    was positive definite (if not, it is regularised by its smallest eigenvalue + 1e-6).
    fixed: coordinates held fixed (zero rows and columns in the covariance)."""
    n = x_map.size
    free = np.flatnonzero(np.ones(n, bool) if fixed is None else ~np.asarray(fixed, bool))
    h = hessian_columns(potential, x_map, np.eye(n)[free])[:, free]
    h = 0.5 * (h + h.T)
    eig = np.linalg.eigvalsh(h)
    positive = bool(np.all(np.isfinite(h)) and eig[0] > 0)
    if not positive:
        h = np.nan_to_num(h) + (abs(np.nanmin(eig)) + 1e-6) * np.eye(free.size)
    cov = np.zeros((n, n))
    cov[np.ix_(free, free)] = np.linalg.inv(h)
    return cov, positive


def fit(model: pbpk.Model, table: pd.DataFrame, schedule, method: str = "nuts", *, free=None,
        patient: str | None = None, seed: int = 0, num_warmup: int | None = None, num_samples: int = 1000,
        num_chains: int = 4, chain_method: str = "sequential", nuts_metric: str = "laplace",
        target_accept: float = 0.8, svi_steps: int = 2000,
        svi_learning_rate: float = 0.01, options: pbpk.SolverOptions | None = None,
        separate_ligands: bool = False, fixed: Mapping[str, float] | None = None,
        error_scales: Mapping[str, float] | None = None) -> Posterior:
    """Fit `model` to one patient's time-activity `table` under `schedule`.

    method: "nuts" (default), "svi" or "laplace" (see module docstring).
    free: names of the parameters to fit (default priors), `FreeParameter`s, or a mapping
      name -> (median, sigma_log); default `calibration.priors.default_free_parameters`.
    separate_ligands: solve each ligand's administrations with its own restricted model
      (`make_problem`).
    fixed: parameters held at the patient's known values (name -> value, model units;
      e.g. measured covariates), so one model object serves a whole study
      (`fixed_parameters`).
    error_scales: prior medians of the proportional error scales by group name (ERROR_GROUPS),
      replacing the published defaults for the groups given (`error_scale_prior`).
    nuts_metric, target_accept, num_warmup (NUTS): "laplace" (fixed Laplace metric) or
      "adapt", NUTS's target acceptance probability in (0, 1), warm-up iterations per
      chain (default `default_warmup(nuts_metric)`); see the module docstring.
    options: the ODE solver settings of every solve; default `CALIBRATION_SOLVER`, with
      NUTS's trajectories at `NUTS_SOLVER` (module docstring).
    Returns a `Posterior` with `num_samples` draws per chain (Laplace and SVI: one chain).
    """
    check_method(method, svi_steps, svi_learning_rate, nuts_metric, target_accept)
    problem = make_problem(model, table, schedule, free=free, patient=patient,
                           options=forward_mode(options or CALIBRATION_SOLVER), separate_ligands=separate_ligands,
                           fixed=fixed, error_scales=error_scales)
    potential = _Potential(problem, seed)
    x_map, opt = find_map(potential, newton=True)
    info = {"map_unconstrained": x_map, "map_iterations": int(opt.nit), "map_success": bool(opt.success)}
    nuts_potential = nuts_solver_potential(method, options, problem, lambda p: _Potential(p, seed), info)
    samples, chains, stats = draw_posterior(potential, x_map, method, info, seed=seed, num_warmup=num_warmup,
                                            num_samples=num_samples, num_chains=num_chains,
                                            chain_method=chain_method, nuts_metric=nuts_metric,
                                            target_accept=target_accept, svi_steps=svi_steps,
                                            svi_learning_rate=svi_learning_rate,
                                            gauss_newton_at_map=getattr(opt, "hess", None),
                                            nuts_potential=nuts_potential)
    return Posterior.from_draws(problem, method, samples, chains=chains, info=info, sample_stats=stats)


def forward_mode(options: pbpk.SolverOptions) -> pbpk.SolverOptions:
    """`options` with forward-mode derivatives through the solve: few parameters, no
    checkpointed reverse pass, for every method (SVI's ELBO reaches the solve through the
    chain-rule gradient)."""
    return dataclasses.replace(options, adjoint="forward")


def nuts_solver_potential(method: str, given: pbpk.SolverOptions | None, problem, build, info: dict):
    """NUTS's own potential: `build(problem)` with `NUTS_SOLVER` (forward mode) when the
    caller gave no solver options (`given` None), else None (NUTS then uses the potential
    of every other solve, at ``problem.options``).  Records the rtol of NUTS's solves in
    ``info["nuts_solver_rtol"]``.  problem: a `Problem` or `CohortProblem` (its ``options``
    replaced); `fit`, `fit_cohort`."""
    if method != "nuts":
        return None
    info["nuts_solver_rtol"] = (problem.options if given is not None else NUTS_SOLVER).rtol
    return None if given is not None else build(dataclasses.replace(problem, options=forward_mode(NUTS_SOLVER)))


def check_method(method: str, svi_steps, svi_learning_rate, nuts_metric="laplace", target_accept=0.8) -> None:
    """CalibrationError for an unknown `method`, or for SVI or NUTS settings the samplers
    cannot use, before any work starts (`fit`, `fit_cohort`)."""
    if method not in METHODS:
        raise CalibrationError(f"method {method!r}; expected one of {METHODS}")
    if method == "svi":
        check_svi_settings(svi_steps, svi_learning_rate)
    if method == "nuts":
        if nuts_metric not in NUTS_METRICS:
            raise CalibrationError(f"nuts_metric {nuts_metric!r}; expected one of {NUTS_METRICS}")
        if not (isinstance(target_accept, (int, float)) and 0.0 < target_accept < 1.0):
            raise CalibrationError(f"target_accept = {target_accept!r}; expected a number in (0, 1)")


def default_warmup(nuts_metric: str) -> int:
    """NUTS warm-up iterations per chain when the caller gives none: 200 with the fixed
    Laplace metric (NumPyro's windows 0-74, 75-99, 100-149, 150-199 restart the step-size
    adaptation at each window end; the last 50 iterations set the step size, as for any
    longer warm-up), 500 with metric adaptation."""
    return 200 if nuts_metric == "laplace" else 500


def draw_posterior(potential: ChainRulePotential, x_map: np.ndarray, method: str, info: dict, *, seed: int,
                   num_warmup: int | None, num_samples: int, num_chains: int, chain_method: str,
                   nuts_metric: str, target_accept: float, svi_steps: int,
                   svi_learning_rate: float, laplace_fixed: np.ndarray | None = None,
                   gauss_newton_at_map: np.ndarray | None = None,
                   nuts_potential: ChainRulePotential | None = None):
    """Posterior draws by `method` from the optimiser's point `x_map`: Laplace (Gaussian,
    coordinates in `laplace_fixed` held at x_map), SVI or NUTS (its warm-up mass matrix the
    full Laplace covariance: fixed, or where adaptation starts, by `nuts_metric`; warm-up
    `num_warmup` or `default_warmup`).  gauss_newton_at_map: H_GN at x_map where the MAP search
    already has it (SVI's start; else evaluated here).  nuts_potential: the same potential
    with other solver settings for NUTS's trajectories (`NUTS_SOLVER`); default `potential`.
    Adds diagnostics to `info`;
    returns (constrained samples, number of chains, NUTS sample statistics or None)."""
    key = jax.random.PRNGKey(seed)
    if method == "svi":
        scale_tril = laplace_scale_tril(potential, x_map, gauss_newton_at_map)
        result = run_svi(potential, x_map, key, svi_steps, svi_learning_rate, num_samples, scale_tril=scale_tril)
        info.update(svi_laplace_start=scale_tril is not None, svi_steps_run=int(result.losses.size),
                    svi_converged=result.converged, svi_elbo_descent_per_window=result.descent_per_window,
                    elbo_loss_final=float(np.nanmean(result.losses[-WINDOW:])))
        return potential.constrained_draws(jnp.asarray(result.draws)), 1, None
    cov, positive = laplace_covariance(potential, x_map, fixed=laplace_fixed if method == "laplace" else None)
    info["hessian_positive_definite"] = positive
    if method == "laplace":
        return laplace_draws(potential, x_map, cov, num_samples, seed), 1, None
    metric = nuts_metric if positive else "adapt"
    info["nuts_metric"] = metric if positive else "adapt (the Laplace Hessian is not positive definite)"
    samples, stats, adapted = run_nuts(nuts_potential or potential, x_map, cov if positive else None, key, seed,
                                       num_warmup=default_warmup(metric) if num_warmup is None else num_warmup,
                                       num_samples=num_samples, num_chains=num_chains, chain_method=chain_method,
                                       adapt_metric=metric == "adapt", target_accept=target_accept)
    info["nuts_step_size"] = adapted.step_size
    return samples, num_chains, stats


def laplace_draws(potential: ChainRulePotential, x_map: np.ndarray, cov: np.ndarray, num_samples: int,
                  seed: int) -> dict:
    """`num_samples` constrained draws of the Gaussian N(x_map, cov) in unconstrained space."""
    draws = np.random.default_rng(seed).multivariate_normal(x_map, cov, size=num_samples)
    return potential.constrained_draws(jnp.asarray(draws))


def laplace_scale_tril(potential: ChainRulePotential, x_map: np.ndarray,
                       hessian: np.ndarray | None = None) -> np.ndarray | None:
    """chol(H_GN^-1) at the MAP (the Laplace approximation's scale, SVI's start), or None
    when the potential has no Gauss-Newton Hessian or it is not positive definite there.
    hessian: H_GN at x_map as the trust-region search left it (``OptimizeResult.hess``),
    so it is not evaluated again."""
    if not potential.has_gauss_newton:
        return None
    if hessian is None:
        hessian = potential.gauss_newton(jnp.asarray(x_map))[2]
    hess = np.asarray(hessian, dtype=float)
    hess = 0.5 * (hess + hess.T)
    if not (np.all(np.isfinite(hess)) and np.linalg.eigvalsh(hess)[0] > 0):
        return None
    return np.linalg.cholesky(np.linalg.inv(hess))


class NutsAdaptation(NamedTuple):
    """What NUTS's warm-up left for sampling, per chain: ``step_size`` (chain,) and the
    dense ``inverse_mass`` (chain, d, d) (the Laplace covariance itself when it was held
    fixed)."""

    step_size: np.ndarray
    inverse_mass: np.ndarray


def run_nuts(potential: ChainRulePotential, x_map: np.ndarray, inverse_mass, key, seed: int, *, num_warmup: int,
             num_samples: int, num_chains: int, chain_method: str, adapt_metric: bool = False,
             target_accept: float = 0.8) -> tuple[dict, dict, NutsAdaptation]:
    """NUTS on the flat potential with its chain-rule gradient, chains started at the MAP
    with a small jitter.  inverse_mass: the dense metric (the Laplace covariance, same flat
    order: ravel_pytree and NumPyro both sort the site names), held fixed unless
    `adapt_metric` (then NumPyro's windowed adaptation starts from it, so its early,
    unadapted trajectories are short); None: adapted from the identity.
    Returns constrained samples (chain, draw, ...), the sample statistics (chain, draw)
    and the warm-up's result: `NutsAdaptation` (per chain)."""
    # under pmap ("parallel") the solve is traced into the chains' program (a host callback
    # would deadlock there: `ChainRulePotential.differentiable_in_data`)
    kernel = NUTS(potential_fn=potential.differentiable(in_graph=chain_method == "parallel"), dense_mass=True,
                  target_accept_prob=target_accept, max_tree_depth=8,
                  inverse_mass_matrix=None if inverse_mass is None else jnp.asarray(inverse_mass),
                  adapt_mass_matrix=adapt_metric or inverse_mass is None)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=False)
    jitter = 0.05 * np.random.default_rng(seed).standard_normal((num_chains, x_map.size))
    init = x_map[None, :] + jitter
    # NumPyro takes one chain's start without the chain axis
    mcmc.run(key, init_params=jnp.asarray(init[0] if num_chains == 1 else init),
             extra_fields=("diverging", "energy", "num_steps"))
    flat = np.asarray(mcmc.get_samples(group_by_chain=True))
    sites = potential.constrained_draws(jnp.asarray(flat.reshape(-1, flat.shape[-1])))
    samples = {k: np.asarray(v).reshape(flat.shape[:2] + np.shape(v)[1:]) for k, v in sites.items()}
    stats = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    adapted = mcmc.last_state.adapt_state
    return samples, stats, NutsAdaptation(
        step_size=np.asarray(adapted.step_size, dtype=float).reshape(num_chains),
        inverse_mass=np.asarray(adapted.inverse_mass_matrix, dtype=float).reshape(num_chains, x_map.size, x_map.size))
