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

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer import init_to_value
from numpyro.infer.util import initialize_model, potential_energy


class ChainRulePotential:
    """U(x) and dU/dx for `model(*model_args, predicted=None)`.

    model: a NumPyro model that solves through ``predict`` unless given
      ``predicted=(values, ok)`` (then it must not solve);
    init_values: site -> value where x0 (the optimiser's start) lies;
    theta_of: unconstrained sites (dict) -> model parameters (..., K), pure JAX;
    predict: theta (..., K) -> (values, ok), every leaf of ``values`` with theta's leading
      axes first (patient i's values depend on theta[i] only), ``ok`` boolean.
    Attributes: ``x0``, ``unravel`` (flat -> sites), ``value_and_grad`` (jitted),
    ``constrained_draws`` ((n, dim) unconstrained draws -> constrained sites, jitted).
    """

    def __init__(self, model: Callable, model_args: tuple, init_values: dict, seed: int, *, forward: bool,
                 theta_of: Callable, predict: Callable):
        info = initialize_model(jax.random.PRNGKey(seed), model, model_args=model_args,
                                init_strategy=init_to_value(values=init_values),
                                forward_mode_differentiation=forward, validate_grad=False)
        flat0, self.unravel = ravel_pytree(info.param_info.z)
        self.x0 = np.asarray(flat0)
        self.postprocess = info.postprocess_fn
        if forward:
            self.value_and_grad = jax.jit(self._chain_rule(model, model_args, theta_of, predict))
        else:
            potential = info.potential_fn
            self.value_and_grad = jax.jit(jax.value_and_grad(lambda x: potential(self.unravel(x))))
        # one compiled program rather than hundreds of eagerly dispatched operations
        self.constrained_draws = jax.jit(jax.vmap(lambda x: self.postprocess(self.unravel(x))))

    def _chain_rule(self, model, model_args, theta_of, predict):
        unravel = self.unravel

        def given_predictions(x, values, ok):
            return potential_energy(model, model_args, {"predicted": (values, ok)}, unravel(x))

        def value_and_grad(x):
            theta, theta_vjp = jax.vjp(lambda v: theta_of(unravel(v)), x)
            n_free = theta.shape[-1]
            batch_ndim = theta.ndim - 1
            # tangent k: parameter k of every patient
            basis = jnp.broadcast_to(jnp.eye(n_free, dtype=theta.dtype).reshape((n_free,) + (1,) * batch_ndim
                                                                                  + (n_free,)),
                                     (n_free,) + theta.shape)
            (values, ok), (d_values, _) = jax.vmap(lambda v: jax.jvp(predict, (theta,), (v,)),
                                                   out_axes=((None, None), (0, None)))(basis)
            value, (g_x, g_values) = jax.value_and_grad(given_predictions, argnums=(0, 1))(x, values, ok)

            def contract(d, g):  # (K, *batch, *rest) x (*batch, *rest) -> (K, *batch)
                prod = d * g[None]
                return prod.reshape(prod.shape[:1 + batch_ndim] + (-1,)).sum(-1)

            g_theta = sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(contract, d_values, g_values)))
            return value, g_x + theta_vjp(jnp.moveaxis(g_theta, 0, -1))[0]

        return value_and_grad

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
