"""The Rodas4 diffrax solver: order of convergence, stiff stability, nonlinear problems."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from pbpk.rosenbrock import Rodas4

M = jnp.array([[-1.0, 0.5, 0.0], [0.2, -3.0, 1.0], [0.0, 0.0, -2.0]])
Y0 = jnp.array([1.0, 2.0, -1.0])


def _solve_fixed(dt):
    solver = Rodas4(jacobian=lambda t, y, args: M)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, args: M @ y), solver, 0.0, 1.0, dt, Y0,
                              stepsize_controller=diffrax.ConstantStepSize(), max_steps=1000)
    return np.asarray(sol.ys[-1])


def test_fourth_order_convergence():
    exact = expm(np.asarray(M)) @ np.asarray(Y0)
    errors = [np.max(np.abs(_solve_fixed(dt) - exact)) for dt in (0.2, 0.1, 0.05)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 3.7), orders


def test_stiff_decay_is_stable_with_huge_steps():
    """L-stability: y' = -1e6 (y - cos t) with steps 1e5 times the stiff time scale."""
    f = lambda t, y, args: -1e6 * (y - jnp.cos(t))
    jac = lambda t, y, args: jnp.array([[-1e6]])
    sol = diffrax.diffeqsolve(diffrax.ODETerm(f), Rodas4(jacobian=jac), 0.0, 2.0, 0.1, jnp.array([0.0]),
                              stepsize_controller=diffrax.ConstantStepSize())
    assert float(sol.ys[-1, 0]) == pytest.approx(np.cos(2.0), abs=1e-4)


def test_robertson_against_scipy_radau():
    """The classic stiff chemical kinetics problem (Robertson 1966) with adaptive steps."""
    def f(t, y, args):
        return jnp.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                          0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                          3e7 * y[1] ** 2])

    jac = jax.jacfwd(lambda y: f(0.0, y, None))
    ts = jnp.array([1.0, 10.0, 100.0, 1000.0])
    sol = diffrax.diffeqsolve(diffrax.ODETerm(f), Rodas4(jacobian=lambda t, y, a: jac(y)), 0.0, 1000.0, None,
                              jnp.array([1.0, 0.0, 0.0]), saveat=diffrax.SaveAt(ts=ts),
                              stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-12), max_steps=100000)
    ref = solve_ivp(lambda t, y: np.asarray(f(t, jnp.asarray(y), None)), (0, 1000), [1.0, 0.0, 0.0],
                    method="Radau", t_eval=np.asarray(ts), rtol=1e-11, atol=1e-16)
    np.testing.assert_allclose(np.asarray(sol.ys), ref.y.T, rtol=1e-5, atol=1e-12)
