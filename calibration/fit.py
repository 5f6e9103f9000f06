"""`calibration.fit`: MAP, Laplace, SVI and NUTS fits of one patient.

Every method starts from the maximum a posteriori (MAP) point, found by L-BFGS
(scipy) on NumPyro's potential energy (negative log joint density in unconstrained
space) with JAX gradients:

* ``laplace``: Gaussian at the MAP with covariance H^-1, H the Hessian of the potential
  by central differences of the JAX gradient (step 1e-4 in unconstrained units;
  differentiating the adaptive solver twice is avoided on purpose);
* ``svi``: `numpyro.infer.autoguide.AutoMultivariateNormal` initialised at the MAP,
  Adam, non-finite updates skipped (``stable_update``);
* ``nuts`` (default): NumPyro NUTS on the same flat potential and gradient, dense mass
  matrix (warm-up starts from the Laplace covariance), target acceptance 0.9, chains
  started at the MAP with a small jitter.

Derivatives through the ODE solve are forward mode (diffrax ``ForwardMode``) for MAP,
Laplace and NUTS, one tangent per free parameter only (`_Potential`): with a handful of
free parameters this avoids the checkpointed reverse pass (measured ~1.4x faster per
gradient on the test model); SVI uses reverse mode, which its ELBO gradient requires.  Chains run ``sequential`` by default (on a CPU
  ``parallel`` needs ``numpyro.set_host_device_count(n)`` before JAX starts; pass
  ``chain_method="parallel"`` then; ``vectorized`` is the option for a GPU).

All randomness comes from ``seed``; the same call gives the same samples.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize
from jax.flatten_util import ravel_pytree
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, init_to_value
from numpyro.infer.autoguide import AutoMultivariateNormal
from numpyro.infer.util import initialize_model, potential_energy
from numpyro.optim import Adam

import pbpk

from .errors import CalibrationError
from .likelihood import CALIBRATION_SOLVER, Problem, ligand_segments, numpyro_model, predicted_activity
from .observations import observations_from_table
from .posterior import Posterior
from .priors import ERROR_SCALE_MEDIANS, resolve_free_parameters

METHODS = ("nuts", "svi", "laplace")
_FD_STEP = 1e-4


def make_problem(model: pbpk.Model, table: pd.DataFrame, schedule, *, free=None, patient=None,
                 options: pbpk.SolverOptions = CALIBRATION_SOLVER, separate_ligands: bool = False) -> Problem:
    """Validate the inputs and bundle them for the NumPyro model.  `separate_ligands`:
    solve each ligand's administrations with the model restricted to that ligand
    (`likelihood.ligand_segments`; much faster for PET + therapy with different ligands)."""
    if not isinstance(model, pbpk.Model):
        raise CalibrationError(f"model: expected a pbpk.Model, got {type(model).__name__}")
    try:
        schedule = pbpk.schedule.as_schedule(schedule)
    except pbpk.ScheduleError as exc:
        raise CalibrationError(f"schedule: {exc}") from None
    observations = observations_from_table(table, model, schedule, patient)
    segments = ligand_segments(model, schedule, observations) if separate_ligands else ()
    return Problem(model, schedule, observations, resolve_free_parameters(model, free), options, segments)


class _Potential:
    """Potential energy U (negative log density) on a flat unconstrained vector
    x = (log error scales, z), and its gradient.

    Forward mode (MAP, Laplace, NUTS) uses the chain rule through the predictions
    p(z) = `predicted_activity` (the only part that solves the ODE):

        dU/dz = dU/dz|_p + J_p(z)^T dU/dp,     dU/d(error scale) = dU/d(error scale)|_p,

    with J_p from one jvp per free parameter (vmapped, primal solved once) and the
    partial derivatives of U given p by reverse mode (no solve).  Only len(z) tangents
    travel through the solver instead of len(x) (the error scales do not enter it).
    Reverse mode (SVI) differentiates U directly.
    """

    def __init__(self, problem: Problem, seed: int):
        forward = problem.options.adjoint == "forward"
        info = initialize_model(jax.random.PRNGKey(seed), numpyro_model, model_args=(problem,),
                                init_strategy=init_to_value(values=self._prior_centre(problem)),
                                forward_mode_differentiation=forward)
        flat0, self.unravel = ravel_pytree(info.param_info.z)
        self.x0 = np.asarray(flat0)
        self.postprocess = info.postprocess_fn
        if forward:
            self.value_and_grad = jax.jit(self._chain_rule_value_and_grad(problem))
        else:
            potential = info.potential_fn
            self.value_and_grad = jax.jit(jax.value_and_grad(lambda x: potential(self.unravel(x))))
        # unconstrained draws (n, dim) -> constrained sites, one compiled program rather
        # than hundreds of eagerly dispatched operations
        self.constrained_draws = jax.jit(jax.vmap(lambda x: self.postprocess(self.unravel(x))))

    def _chain_rule_value_and_grad(self, problem: Problem):
        unravel = self.unravel
        n_z = len(problem.free)
        # positions of z in the flat vector (ravel_pytree orders the sites by name)
        marker = ravel_pytree({k: (jnp.arange(1.0, n_z + 1.0) if k == "z" else jnp.zeros_like(v))
                               for k, v in unravel(jnp.zeros(self.x0.size)).items()})[0]
        z_index = np.array([int(np.flatnonzero(np.asarray(marker) == k + 1)[0]) for k in range(n_z)])

        def given_predictions(x, pred, ok):
            return potential_energy(numpyro_model, (problem,), {"predicted": (pred, ok)}, unravel(x))

        def predictions(z):
            return predicted_activity(problem, problem.theta_from_z(z))

        def value_and_grad(x):
            z = x[z_index]
            basis = jnp.eye(n_z, dtype=x.dtype)
            (pred, ok), (d_pred, _) = jax.vmap(lambda v: jax.jvp(predictions, (z,), (v,)),
                                               out_axes=((None, None), (0, None)))(basis)
            value, (g_x, g_pred) = jax.value_and_grad(given_predictions, argnums=(0, 1))(x, pred, ok)
            return value, g_x.at[z_index].add(d_pred @ g_pred)

        return value_and_grad

    def differentiable(self):
        """U(x) as a JAX function whose reverse-mode derivative is this potential's
        gradient (for NUTS given a ``potential_fn``)."""
        value_and_grad = self.value_and_grad

        @jax.custom_vjp
        def potential(x):
            return value_and_grad(x)[0]

        # residual of the forward pass: the gradient itself
        potential.defvjp(value_and_grad, lambda grad, cotangent: (cotangent * grad,))
        return potential

    @staticmethod
    def _prior_centre(problem: Problem) -> dict:
        return {"z": jnp.zeros(len(problem.free)),
                "error_scale": jnp.asarray([ERROR_SCALE_MEDIANS[g] for g in problem.used_error_groups])}

    def scipy_objective(self, x):
        v, g = self.value_and_grad(jnp.asarray(x))
        v, g = float(v), np.asarray(g, dtype=float)
        if not (np.isfinite(v) and np.all(np.isfinite(g))):
            return 1e10, np.zeros_like(g)
        return v, g


def find_map(potential: _Potential, max_iter: int = 500) -> tuple[np.ndarray, scipy.optimize.OptimizeResult]:
    """L-BFGS from the prior centre; returns the unconstrained MAP and scipy's result."""
    res = scipy.optimize.minimize(potential.scipy_objective, potential.x0, jac=True, method="L-BFGS-B",
                                  options=dict(maxiter=max_iter, gtol=1e-6))
    if not np.all(np.isfinite(res.x)) or res.fun >= 1e9:
        raise CalibrationError("MAP search failed: every solve from the prior centre failed; check the "
                               "schedule, the table's units (MBq) and the free parameters' priors")
    return res.x, res


def laplace_covariance(potential: _Potential, x_map: np.ndarray) -> tuple[np.ndarray, bool]:
    """H^-1 at the MAP from a central-difference Hessian of the gradient; also whether H
    was positive definite (if not, it is regularised by its smallest eigenvalue + 1e-6)."""
    n = x_map.size
    h = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = _FD_STEP
        h[:, j] = (np.asarray(potential.value_and_grad(jnp.asarray(x_map + e))[1]) -
                   np.asarray(potential.value_and_grad(jnp.asarray(x_map - e))[1])) / (2 * _FD_STEP)
    h = 0.5 * (h + h.T)
    eig = np.linalg.eigvalsh(h)
    positive = bool(np.all(np.isfinite(h)) and eig[0] > 0)
    if not positive:
        h = np.nan_to_num(h) + (abs(np.nanmin(eig)) + 1e-6) * np.eye(n)
    return np.linalg.inv(h), positive


def fit(model: pbpk.Model, table: pd.DataFrame, schedule, method: str = "nuts", *, free=None,
        patient: str | None = None, seed: int = 0, num_warmup: int = 500, num_samples: int = 1000,
        num_chains: int = 4, chain_method: str = "sequential", svi_steps: int = 2000,
        svi_learning_rate: float = 0.01, options: pbpk.SolverOptions = CALIBRATION_SOLVER,
        separate_ligands: bool = False) -> Posterior:
    """Fit `model` to one patient's time-activity `table` under `schedule`.

    method: "nuts" (default), "svi" or "laplace" (see module docstring).
    free: names of the parameters to fit (default priors), `FreeParameter`s, or a mapping
      name -> (median, sigma_log); default `calibration.priors.default_free_parameters`.
    separate_ligands: solve each ligand's administrations with its own restricted model
      (`make_problem`).
    Returns a `Posterior` with `num_samples` draws per chain (Laplace and SVI: one chain).
    """
    if method not in METHODS:
        raise CalibrationError(f"method {method!r}; expected one of {METHODS}")
    # forward-mode derivatives through the solve for NUTS/Laplace (few parameters, no
    # checkpointed reverse pass); SVI's ELBO gradient needs reverse mode
    options = dataclasses.replace(options, adjoint="reverse" if method == "svi" else "forward")
    problem = make_problem(model, table, schedule, free=free, patient=patient, options=options,
                           separate_ligands=separate_ligands)
    potential = _Potential(problem, seed)
    x_map, opt = find_map(potential)
    key = jax.random.PRNGKey(seed)
    info = {"map_unconstrained": x_map, "map_iterations": int(opt.nit), "map_success": bool(opt.success)}

    if method in ("laplace", "nuts"):
        cov, positive = laplace_covariance(potential, x_map)
        info["hessian_positive_definite"] = positive
    if method == "laplace":
        draws = np.random.default_rng(seed).multivariate_normal(x_map, cov, size=num_samples)
        samples = potential.constrained_draws(jnp.asarray(draws))
        return Posterior.from_draws(problem, method, samples, chains=1, info=info)

    map_values = jax.tree_util.tree_map(lambda v: v[0], potential.constrained_draws(jnp.asarray(x_map[None, :])))
    init = init_to_value(values={"z": map_values["z"], "error_scale": map_values["error_scale"]})
    if method == "svi":
        guide = AutoMultivariateNormal(numpyro_model, init_loc_fn=init, init_scale=0.05)
        svi = SVI(numpyro_model, guide, Adam(svi_learning_rate), Trace_ELBO())
        result = svi.run(key, svi_steps, problem, progress_bar=False, stable_update=True)
        draws = guide.sample_posterior(jax.random.fold_in(key, 1), result.params, sample_shape=(num_samples,))
        draws = {k: draws[k] for k in ("z", "error_scale")}
        predictive = Predictive(numpyro_model, posterior_samples=draws, return_sites=["theta", "solver_ok"])
        samples = dict(draws, **jax.jit(lambda k: predictive(k, problem))(key))
        info["elbo_loss_final"] = float(np.mean(np.asarray(result.losses)[-100:]))
        return Posterior.from_draws(problem, method, samples, chains=1, info=info)

    # warm-up starts from the Laplace covariance as inverse mass matrix (same flat order:
    # ravel_pytree and NumPyro both sort the site names), so its early, unadapted
    # trajectories are short; NumPyro's windowed adaptation then replaces it
    # NUTS on the flat potential with its chain-rule gradient; warm-up starts from the
    # Laplace covariance as inverse mass matrix, so its early, unadapted trajectories are
    # short (NumPyro's windowed adaptation then replaces it)
    kernel = NUTS(potential_fn=potential.differentiable(), dense_mass=True, target_accept_prob=0.9,
                  max_tree_depth=8, inverse_mass_matrix=jnp.asarray(cov) if positive else None)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=False)
    jitter = 0.05 * np.random.default_rng(seed).standard_normal((num_chains, x_map.size))
    mcmc.run(key, init_params=jnp.asarray(x_map[None, :] + jitter), extra_fields=("diverging", "energy", "num_steps"))
    flat = np.asarray(mcmc.get_samples(group_by_chain=True))
    sites = potential.constrained_draws(jnp.asarray(flat.reshape(-1, flat.shape[-1])))
    samples = {k: np.asarray(v).reshape(flat.shape[:2] + np.shape(v)[1:]) for k, v in sites.items()}
    stats = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    return Posterior.from_draws(problem, method, samples, chains=num_chains, info=info, sample_stats=stats)
