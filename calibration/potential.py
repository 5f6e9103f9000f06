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

The same K tangents give a Gauss-Newton Hessian (`ChainRulePotential.gauss_newton`, one
patient, forward mode): with q = log p (the error model is log-normal, so q enters the
likelihood as a location) and P(x) = q(theta(x)),

    H_GN = U_xx + U_xq P' + P'^T U_qx + P'^T U_qq P' + sum_k (dU/dtheta_k) d2theta_k/dx2,

P' = J_q dtheta/dx.  It drops only sum_i (dU/dq_i) d2q_i/dtheta2 (second derivatives of
the solve), whose weights dU/dq_i are the scaled residuals: H_GN is the Hessian itself
where the predictions meet the data and close to it at a MAP with small residuals.
U_qq is positive semi-definite (1/s^2 for measured rows; -log Phi is convex for censored
ones), so Newton steps on H_GN head downhill where the error scales are near their fit.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
import numpyro
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
    gauss_newton: Callable | None  # (x, data) -> (U, dU/dx, H_GN); forward mode only


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
        self.cache_key = cache_key

    @property
    def data(self):
        """The data given to the compiled functions (the argument `differentiable_in_data`'s
        function takes)."""
        return self._data

    def value_and_grad(self, x):
        """(U(x), dU/dx) for this potential's data (jitted).  Called inside another NumPyro
        model (SVI's flat model), the first call traces `model`: `numpyro.handlers.block`
        keeps its sites from the enclosing handlers (which would otherwise record them,
        leaking tracers)."""
        with numpyro.handlers.block():
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

    @property
    def has_gauss_newton(self) -> bool:
        """Whether `gauss_newton` is available (forward-mode potentials of one patient)."""
        return self._compiled.gauss_newton is not None

    def gauss_newton(self, x):
        """(U(x), dU/dx, H_GN(x)) for this potential's data (jitted; module docstring).
        One patient's potential only: theta of shape (K,), predictions positive."""
        if self._compiled.gauss_newton is None:
            raise ValueError("gauss_newton needs a forward-mode potential of one patient")
        with numpyro.handlers.block():  # as in value_and_grad
            return self._compiled.gauss_newton(x, self._data)

    def differentiable(self, *, in_graph: bool = False):
        """U(x) as a JAX function whose reverse-mode derivative is this potential's
        gradient (for NUTS given a ``potential_fn``); the data are constants of it.
        in_graph: see `differentiable_in_data`."""
        in_data, data = self.differentiable_in_data(in_graph=in_graph), self._data
        return lambda x: in_data(x, data)

    def differentiable_in_data(self, *, in_graph: bool = False):
        """(x, data) -> U(x) for those data, as a JAX function whose reverse-mode derivative
        in x is the potential's gradient (no derivative in the data).  Depends on the
        compiled functions only, so a program built on it (e.g. an SVI step) serves every
        potential of the same ``cache_key`` with that potential's `data` as an argument.

        By default a jitted caller reaches the compiled program through a host callback
        (no second compilation of the solve).  in_graph=True traces the program into the
        caller instead (compiled again there): needed under ``pmap`` (NUTS with
        ``chain_method="parallel"``), where a callback that starts a computation of its
        own while every device runs the mapped program never returns."""
        compiled_value_and_grad = self._compiled.value_and_grad
        if in_graph:
            def traced_value_and_grad(x, data):
                with numpyro.handlers.block():  # as in `value_and_grad`
                    return compiled_value_and_grad(x, data)
            return _with_gradient_as_vjp(traced_value_and_grad)

        def host_value_and_grad(x, data):
            # the program compiled for direct calls: numpy arguments (the callback's are
            # committed to a device) and no default device (JAX sets one for callbacks);
            # either would be a new jit cache key and a second compilation
            x, data = np.asarray(x), jax.tree_util.tree_map(np.asarray, data)
            with numpyro.handlers.block(), jax.default_device(None):  # block: as in `value_and_grad`
                value, grad = compiled_value_and_grad(x, data)
            return np.asarray(value, dtype=np.float64), np.asarray(grad, dtype=np.float64)

        def value_and_grad(x, data):
            # a host call of the already compiled program: a jitted caller (an SVI step, a
            # NUTS kernel) does not inline and recompile the solve; batched callers
            # (vectorised chains) call it once per element
            shapes = (jax.ShapeDtypeStruct((), jnp.float64), jax.ShapeDtypeStruct(jnp.shape(x), jnp.float64))
            return jax.pure_callback(host_value_and_grad, shapes, x, data, vmap_method="sequential")

        return _with_gradient_as_vjp(value_and_grad)

    def scipy_objective(self, x):
        """(value, gradient) as floats for scipy; a non-finite value or gradient becomes a
        large finite value with zero gradient (the optimiser backs off)."""
        return _for_scipy(*self.value_and_grad(jnp.asarray(x)))

    def scipy_gauss_newton(self, x):
        """(value, gradient, symmetric H_GN) as floats for scipy, a failed solve as in
        `scipy_objective` (and an identity Hessian)."""
        return _for_scipy(*self.gauss_newton(jnp.asarray(x)))


def _with_gradient_as_vjp(value_and_grad):
    """(x, data) -> U(x) with the custom VJP cotangent * dU/dx from `value_and_grad`
    (x, data) -> (U, dU/dx); no derivative in the data."""
    @jax.custom_vjp
    def potential(x, data):
        return value_and_grad(x, data)[0]

    # residual of the forward pass: the gradient itself; None: no cotangent for the data
    potential.defvjp(value_and_grad, lambda grad, cotangent: (cotangent * grad, None))
    return potential


#: `scipy_objective`'s value for a failed solve
FAILED_SOLVE_VALUE = 1e10


def _for_scipy(value, grad, hessian=None):
    """numpy float64 (value, grad[, symmetrised hessian]); anything non-finite ->
    (`FAILED_SOLVE_VALUE`, zeros[, identity])."""
    v, g = float(value), np.asarray(grad, dtype=float)
    h = None if hessian is None else np.asarray(hessian, dtype=float)
    if not (np.isfinite(v) and np.all(np.isfinite(g)) and (h is None or np.all(np.isfinite(h)))):
        v, g, h = FAILED_SOLVE_VALUE, np.zeros_like(g), None if h is None else np.eye(g.size)
    return (v, g) if h is None else (v, g, 0.5 * (h + h.T))


def _model_kwargs(data, **extra) -> dict:
    return extra if data is None else {"data": data, **extra}


def _compile(model, model_args, init_values, seed, forward, theta_of, predict, data) -> _Compiled:
    """Trace `model` once at `init_values` (NumPyro's flat layout) and jit its potential,
    gradient and constraining maps, each taking the data as an argument."""
    info = initialize_model(jax.random.PRNGKey(seed), model, model_args=model_args, model_kwargs=_model_kwargs(data),
                            init_strategy=init_to_value(values=init_values), forward_mode_differentiation=forward,
                            validate_grad=False)
    flat0, unravel = ravel_pytree(info.param_info.z)
    gauss_newton = None
    if forward:
        value_and_grad = _chain_rule(model, model_args, unravel, theta_of, predict)
        if np.ndim(theta_of(unravel(flat0))) == 1:  # one patient
            gauss_newton = jax.jit(_gauss_newton(model, model_args, unravel, theta_of, predict))
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
        jax.jit(jax.vmap(lambda x: theta_of(unravel(x)))), gauss_newton)


def _given_predictions(model, model_args, unravel):
    """(x, values, ok, data) -> U(x) with the predictions given (no solve)."""

    def given_predictions(x, values, ok, d):
        return potential_energy(model, model_args, _model_kwargs(d, predicted=(values, ok)), unravel(x))

    return given_predictions


def _tangents(predict, theta, d):
    """(values, ok) of `predict` at theta and the K tangents of values, tangent k
    perturbing parameter k of every patient (leading axis K)."""
    n_free = theta.shape[-1]
    batch_ndim = theta.ndim - 1
    basis = jnp.broadcast_to(jnp.eye(n_free, dtype=theta.dtype).reshape((n_free,) + (1,) * batch_ndim + (n_free,)),
                             (n_free,) + theta.shape)
    return jax.vmap(lambda v: jax.jvp(lambda th: predict(th, d), (theta,), (v,)),
                    out_axes=((None, None), (0, None)))(basis)


def _gauss_newton(model, model_args, unravel, theta_of, predict):
    """(x, data) -> (U, dU/dx, H_GN) of the module docstring, for theta of shape (K,)."""
    given_predictions = _given_predictions(model, model_args, unravel)

    def value_grad_hessian(x, d):
        theta_fn = lambda v: theta_of(unravel(v))  # noqa: E731
        theta = theta_fn(x)
        (values, ok), (d_values, _) = _tangents(predict, theta, d)
        flat_values, unflatten = ravel_pytree(values)
        log_p = jnp.log(flat_values)
        # J_q (K, R): tangents of q = log p
        j_q = jax.vmap(lambda t: ravel_pytree(t)[0])(d_values) / flat_values

        def u_of(v, q):
            return given_predictions(v, unflatten(jnp.exp(q)), ok, d)

        theta_jac = jax.jacfwd(theta_fn)(x)  # (K, n)
        q_jac = j_q.T @ theta_jac  # (R, n)
        value, (u_x, u_q) = jax.value_and_grad(u_of, argnums=(0, 1))(x, log_p)
        (u_xx, u_xq), (_, u_qq) = jax.hessian(u_of, argnums=(0, 1))(x, log_p)
        u_theta = j_q @ u_q  # (K,)
        curvature_of_theta = jnp.einsum("k,kij->ij", u_theta, jax.hessian(theta_fn)(x))
        cross = u_xq @ q_jac
        hessian = u_xx + cross + cross.T + q_jac.T @ u_qq @ q_jac + curvature_of_theta
        return value, u_x + theta_jac.T @ u_theta, hessian

    return value_grad_hessian


def _chain_rule(model, model_args, unravel, theta_of, predict):
    """(x, data) -> (U, dU/dx) by the chain rule of the module docstring."""
    given_predictions = _given_predictions(model, model_args, unravel)

    def value_and_grad(x, d):
        theta, theta_vjp = jax.vjp(lambda v: theta_of(unravel(v)), x)
        batch_ndim = theta.ndim - 1
        (values, ok), (d_values, _) = _tangents(predict, theta, d)
        value, (g_x, g_values) = jax.value_and_grad(given_predictions, argnums=(0, 1))(x, values, ok, d)

        def contract(t, g):  # (K, *batch, *rest) x (*batch, *rest) -> (K, *batch)
            prod = t * g[None]
            return prod.reshape(prod.shape[:1 + batch_ndim] + (-1,)).sum(-1)

        g_theta = sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(contract, d_values, g_values)))
        return value, g_x + theta_vjp(jnp.moveaxis(g_theta, 0, -1))[0]

    return value_and_grad
