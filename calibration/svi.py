"""Stochastic variational inference on a `ChainRulePotential`, started from the Laplace
approximation and stopped when the ELBO no longer improves.

The guide is NumPyro's `AutoMultivariateNormal`, q(x) = N(m, L L^T) over the potential's
flat unconstrained vector x, and the model the potential itself (``factor(-U(x))``, x with
an improper flat prior), so the reparameterised ELBO gradient,

    d/dm ELBO = -E_q[dU/dx],   d/dL ELBO = -E_q[dU/dx eps^T] + diag(1/L_ii),   x = m + L eps,

reaches the ODE solve through the potential's chain-rule gradient (forward mode through
the solver where the potential was built so).  One Monte Carlo draw per step, Adam,
non-finite updates skipped (NumPyro's ``stable_update``).

Start: m = the MAP and, where the caller gives it, L = chol(H^-1) (H: the Gauss-Newton
Hessian at the MAP), i.e. the Laplace approximation, which is the ELBO's optimum for a
Gaussian posterior; SVI then corrects what the posterior's non-Gaussian shape moves.
Without it L = `INIT_SCALE` I.

Stop: every `WINDOW` steps a least-squares line is fitted to the losses (negative ELBO,
nats) of the last half of the run; the run stops when the fitted descent per `WINDOW`
steps is below max(`TOLERANCE`, 2 standard errors of it) -- what is left is below what
one draw per step can resolve, and the longer the run the smaller the drift it resolves
(a run from a poor start does not stop on a noisy slope) -- or after ``max_steps`` (then
reported as not converged).  A run takes at least 3 `WINDOW` steps.

The compiled SVI step takes the potential's data as an argument and is kept per potential
structure (``cache_key``), so the patients of one protocol share it; steps run one jitted
call each (about one gradient of the potential).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO, init_to_value
from numpyro.infer.autoguide import AutoMultivariateNormal
from numpyro.optim import Adam

from .errors import CalibrationError
from .potential import ChainRulePotential

#: steps per convergence check
WINDOW = 20
#: ELBO improvement per window (nats) below which SVI counts as converged
TOLERANCE = 0.1
#: guide scale (unconstrained units) without a Laplace start
INIT_SCALE = 0.05

_PROGRAMS: OrderedDict = OrderedDict()
_PROGRAMS_MAX = 8


class SVIProgram(NamedTuple):
    svi: SVI
    guide: AutoMultivariateNormal
    step: Callable  # (state, data) -> (state, loss), jitted


class SVIResult(NamedTuple):
    draws: np.ndarray  # (num_samples, dim) unconstrained
    losses: np.ndarray  # loss (negative ELBO, nats) of every step run
    converged: bool
    descent_per_window: float  # fitted loss descent per WINDOW steps over the last half of the run (nats)


def svi_program(potential: ChainRulePotential, learning_rate: float) -> SVIProgram:
    """The SVI objects and jitted step for `potential`'s structure (cached by its
    ``cache_key`` and the learning rate; built anew when the key is None)."""
    key = None if potential.cache_key is None else (potential.cache_key, float(learning_rate))
    if key is not None and key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    u = potential.differentiable_in_data()
    dim = potential.x0.size

    def flat_model(data):
        x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real_vector, (), (dim,)))
        numpyro.factor("log_density", -u(x, data))

    guide = AutoMultivariateNormal(flat_model, init_loc_fn=init_to_value(values={"x": jnp.asarray(potential.x0)}),
                                   init_scale=INIT_SCALE)
    svi = SVI(flat_model, guide, Adam(learning_rate), Trace_ELBO())
    program = SVIProgram(svi, guide, jax.jit(svi.stable_update))
    if key is not None:
        _PROGRAMS[key] = program
        while len(_PROGRAMS) > _PROGRAMS_MAX:
            _PROGRAMS.popitem(last=False)
    return program


def elbo_converged(losses: np.ndarray) -> tuple[bool, float]:
    """Whether the run's `losses` meet the stopping rule (module docstring), and the
    fitted descent per `WINDOW` steps over the last half of the run (nats; inf before 3
    windows).  Non-finite losses (skipped steps) are left out."""
    if losses.size < 3 * WINDOW:
        return False, np.inf
    recent = losses[-(losses.size // 2):]
    steps = np.arange(recent.size, dtype=float)
    keep = np.isfinite(recent)
    steps, recent = steps[keep], recent[keep]
    if recent.size < 3:
        return False, np.inf
    centred = steps - steps.mean()
    slope = float(centred @ (recent - recent.mean()) / (centred @ centred))
    residual = recent - recent.mean() - slope * centred
    slope_se = float(np.sqrt(residual @ residual / (recent.size - 2) / (centred @ centred)))
    descent = -slope * WINDOW
    return descent < max(TOLERANCE, 2 * slope_se * WINDOW), descent


def check_settings(max_steps, learning_rate) -> None:
    """CalibrationError unless `max_steps` (``svi_steps``) is an integer >= 1 and
    `learning_rate` (``svi_learning_rate``) a positive number; the fits call it before
    their MAP search."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise CalibrationError(f"svi_steps {max_steps!r}: expected an integer >= 1 (the most SVI steps; the run stops "
                               f"earlier when the ELBO settles, checked every {WINDOW} steps)")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating)) \
            or not (np.isfinite(learning_rate) and learning_rate > 0):
        raise CalibrationError(f"svi_learning_rate {learning_rate!r}: expected a positive number (Adam's step size)")


def run_svi(potential: ChainRulePotential, loc: np.ndarray, key, max_steps: int, learning_rate: float,
            num_samples: int, *, scale_tril: np.ndarray | None = None) -> SVIResult:
    """SVI from q = N(loc, scale_tril scale_tril^T) (module docstring); returns
    `num_samples` unconstrained draws of the fitted guide and the run's record."""
    check_settings(max_steps, learning_rate)
    program = svi_program(potential, learning_rate)
    init = {"auto_loc": jnp.asarray(loc, dtype=jnp.float64)}
    if scale_tril is not None:
        init["auto_scale_tril"] = jnp.asarray(scale_tril, dtype=jnp.float64)
    state = program.svi.init(key, potential.data, init_params=init)
    losses = np.full(max_steps, np.nan)
    descent, converged, n = np.inf, False, 0
    for i in range(max_steps):
        state, loss = program.step(state, potential.data)
        losses[i] = float(loss)
        n = i + 1
        if n % WINDOW == 0:
            converged, descent = elbo_converged(losses[:n])
            if converged:
                break
    losses = losses[:n]
    params = program.svi.get_params(state)
    draws = program.guide.sample_posterior(jax.random.fold_in(key, 1), params, sample_shape=(num_samples,))["x"]
    return SVIResult(np.asarray(draws), losses, converged, descent)
