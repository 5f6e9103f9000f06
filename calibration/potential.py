"""The potential energy of a NumPyro model whose likelihood needs ODE solves, with a
gradient that sends only the model parameters' tangents through the solver.

U(x) is NumPyro's potential (negative log joint density) on the flat unconstrained
vector x of all sample sites.  Only the patients' model parameters theta(x) (shape
(..., K): K free parameters, leading axes = patients) enter the solve, through the
predictions p(theta) (`predict`).  With forward-mode derivatives through the solver
(MAP, Laplace, NUTS):

    dU/dx = dU/dx|_p + (dtheta/dx)^T [ J_p(theta)^T dU/dp ],

with J_p from K jvps of `predict` (one per free parameter, each perturbing that
parameter in every patient at once: a patient's predictions depend on its own theta
only), vmapped with the primal solved once; dU/dx|_p and dU/dp by reverse mode with the
predictions held fixed (no solve); (dtheta/dx)^T by a vjp of the cheap map x -> theta.
So K tangents travel through the solver however many sites the model has (error scales,
population means and spreads, one eta per patient and parameter).  Reverse mode
(``forward=False``) differentiates U directly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer import init_to_value
from numpyro.infer.util import constrain_fn, initialize_model, potential_energy


#: Compiled potentials by structure key (`ChainRulePotential` ``cache_key``), least recently
#: used first; a handful suffices (one per protocol of a study).
_COMPILED: OrderedDict = OrderedDict()
_COMPILED_MAX = 8


class _Compiled(NamedTuple):
    """The jitted functions of one model structure; every one takes the data explicitly."""

    x0: np.ndarray
    unravel: Callable
    value_and_grad: Callable  # (x, data) -> (U, dU/dx)
    constrain_solving: Callable  # (draws, data) -> sites, solving each draw
    constrain_given: Callable  # (draws, values, ok, data) -> sites, predictions given
    thetas: Callable  # draws -> theta (n, ..., K)


class ChainRulePotential:
    """U(x) and dU/dx for `model(*model_args, predicted=None[, data=data])`.

    model: a NumPyro model that solves through ``predict`` unless given
      ``predicted=(values, ok)`` (then it must not solve);
    init_values: site -> value where x0 (the optimiser's start) lies;
    theta_of: unconstrained sites (dict) -> model parameters (..., K), pure JAX;
    predict: (theta (..., K), data) -> (values, ok), every leaf of ``values`` with theta's
      leading axes first (patient i's values depend on theta[i] only), ``ok`` boolean;
    predict_draws: optional, concrete theta (n, ..., K) of n draws -> `predict`'s outputs
      with a leading draw axis, computed outside JIT (e.g. lockstep solves); default: a
      jitted vmap of the model's own solve;
    data: optional pytree of arrays given to the model as its ``data`` argument and to
      `predict`: what differs between problems of one structure (a patient's measured
      values, known covariates), an argument of the compiled functions, not a constant;
    cache_key: optional hashable key of everything else the model reads (its structure):
      potentials built with an equal key reuse the first one's compiled functions (no new
      tracing or compilation), so the key must change whenever anything but `data` does.
    Attributes: ``x0``, ``unravel`` (flat -> sites), ``value_and_grad`` (jitted),
    ``constrained_draws`` ((n, dim) unconstrained draws -> constrained sites).
    """

    def __init__(self, model: Callable, model_args: tuple, init_values: dict, seed: int, *, forward: bool,
                 theta_of: Callable, predict: Callable, predict_draws: Callable | None = None, data=None,
                 cache_key=None):
        compiled = _COMPILED.get(cache_key) if cache_key is not None else None
        if compiled is None:
            compiled = _compile(model, model_args, init_values, seed, forward, theta_of, predict, data)
            if cache_key is not None:
                _COMPILED[cache_key] = compiled
                while len(_COMPILED) > _COMPILED_MAX:
                    _COMPILED.popitem(last=False)
        else:
            _COMPILED.move_to_end(cache_key)
        self.x0, self.unravel = compiled.x0.copy(), compiled.unravel
        self._compiled, self._data, self._predict_draws = compiled, data, predict_draws

    def value_and_grad(self, x):
        """(U(x), dU/dx) for this potential's data (jitted)."""
        return self._compiled.value_and_grad(x, self._data)

    def constrained_draws(self, flat) -> dict:
        """(n, dim) unconstrained draws -> constrained and deterministic sites (leading n)."""
        flat = jnp.asarray(flat)
        c = self._compiled
        if self._predict_draws is None:
            return c.constrain_solving(flat, self._data)
        values, ok = self._predict_draws(np.asarray(c.thetas(flat)))
        return c.constrain_given(flat, values, ok, self._data)

    def positions(self, site: str) -> np.ndarray:
        """Indices into the flat vector of every element of `site`, shaped like the site."""
        sites = self.unravel(jnp.zeros(self.x0.size))
        marker = ravel_pytree({k: (jnp.arange(1.0, v.size + 1.0).reshape(v.shape) if k == site else
                                   jnp.zeros_like(v)) for k, v in sites.items()})[0]
        marker = np.asarray(marker)
        flat = np.array([int(np.flatnonzero(marker == m + 1)[0]) for m in range(sites[site].size)])
        return flat.reshape(np.shape(sites[site]))

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

    def scipy_objective(self, x):
        """(value, gradient) as floats for scipy; a non-finite value or gradient becomes a
        large finite value with zero gradient (the optimiser backs off)."""
        v, g = self.value_and_grad(jnp.asarray(x))
        v, g = float(v), np.asarray(g, dtype=float)
        if not (np.isfinite(v) and np.all(np.isfinite(g))):
            return 1e10, np.zeros_like(g)
        return v, g


def _model_kwargs(data, **extra) -> dict:
    return extra if data is None else {"data": data, **extra}


def _compile(model, model_args, init_values, seed, forward, theta_of, predict, data) -> _Compiled:
    """Trace `model` once at `init_values` (NumPyro's flat layout) and jit its potential,
    gradient and constraining maps, each taking the data as an argument."""
    info = initialize_model(jax.random.PRNGKey(seed), model, model_args=model_args, model_kwargs=_model_kwargs(data),
                            init_strategy=init_to_value(values=init_values), forward_mode_differentiation=forward,
                            validate_grad=False)
    flat0, unravel = ravel_pytree(info.param_info.z)
    if forward:
        value_and_grad = _chain_rule(model, model_args, unravel, theta_of, predict)
    else:
        def value_and_grad(x, d):
            return jax.value_and_grad(lambda v: potential_energy(model, model_args, _model_kwargs(d), unravel(v)))(x)

    def constrain(x, d, **predicted):
        return constrain_fn(model, model_args, _model_kwargs(d, **predicted), unravel(x), return_deterministic=True)

    # one compiled program each rather than hundreds of eagerly dispatched operations
    return _Compiled(
        np.asarray(flat0), unravel, jax.jit(value_and_grad),
        jax.jit(jax.vmap(constrain, in_axes=(0, None))),
        jax.jit(jax.vmap(lambda x, values, ok, d: constrain(x, d, predicted=(values, ok)), in_axes=(0, 0, 0, None))),
        jax.jit(jax.vmap(lambda x: theta_of(unravel(x)))))


def _chain_rule(model, model_args, unravel, theta_of, predict):
    """(x, data) -> (U, dU/dx) by the chain rule of the module docstring."""

    def given_predictions(x, values, ok, d):
        return potential_energy(model, model_args, _model_kwargs(d, predicted=(values, ok)), unravel(x))

    def value_and_grad(x, d):
        theta, theta_vjp = jax.vjp(lambda v: theta_of(unravel(v)), x)
        n_free = theta.shape[-1]
        batch_ndim = theta.ndim - 1
        # tangent k: parameter k of every patient
        basis = jnp.broadcast_to(jnp.eye(n_free, dtype=theta.dtype).reshape((n_free,) + (1,) * batch_ndim
                                                                              + (n_free,)),
                                 (n_free,) + theta.shape)
        (values, ok), (d_values, _) = jax.vmap(lambda v: jax.jvp(lambda th: predict(th, d), (theta,), (v,)),
                                               out_axes=((None, None), (0, None)))(basis)
        value, (g_x, g_values) = jax.value_and_grad(given_predictions, argnums=(0, 1))(x, values, ok, d)

        def contract(t, g):  # (K, *batch, *rest) x (*batch, *rest) -> (K, *batch)
            prod = t * g[None]
            return prod.reshape(prod.shape[:1 + batch_ndim] + (-1,)).sum(-1)

        g_theta = sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(contract, d_values, g_values)))
        return value, g_x + theta_vjp(jnp.moveaxis(g_theta, 0, -1))[0]

    return value_and_grad
