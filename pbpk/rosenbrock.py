"""Rodas4: a linearly implicit (Rosenbrock) stiff solver written as a diffrax solver.

Hairer & Wanner, Solving Ordinary Differential Equations II, 2nd ed. (Springer 1996),
section IV.7, method RODAS (order 4 with embedded order 3, L-stable, stiffly accurate);
coefficients of Hairer's reference code rodas.f.  With W = I / (h gamma) - J(y0), each
stage solves

    W k_i = f(y0 + sum_{j<i} a_ij k_j) + sum_{j<i} (c_ij / h) k_j          (autonomous f)

and y1 = y0 + sum_{j<5} a_6j k_j + k_6; the error estimate is k_6.  A step costs one
Jacobian, one LU factorisation and six triangular solves; there are no Newton iterations,
so the step is straight-line code that `jax.vmap` batches without masking.  The Jacobian
is supplied by the caller (`pbpk` passes the model's analytic Jacobian), dense output is
the cubic Hermite interpolant on (y0, f0, y1, f1).

diffrax still runs the integration: step-size control (PID controller), SaveAt output,
event restarts and differentiation through the solve are diffrax's own.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .block_solve import DenseLU

GAMMA = 0.25
# a_ij (rows 2..6) and c_ij (rows 2..6) of RODAS4 (rodas.f, Hairer & Wanner 1996).
A = (
    (),
    (1.544,),
    (0.9466785280815826, 0.2557011698983284),
    (3.314825187068521, 2.896124015972201, 0.9986419139977817),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0),
)
C = (
    (),
    (-5.6688,),
    (-2.430093356833875, -0.2063599157091915),
    (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
    (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
    (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054),
)
STAGE_TIMES = (0.0, 0.386, 0.21, 0.63, 1.0, 1.0)


class Rodas4(diffrax.AbstractAdaptiveSolver):
    """Rosenbrock solver for dy/dt = f(t, y) with y a 1-D array.

    jacobian: (t, y, args) -> df/dy, in the form the linear solver takes (dense n x n
    for the default).  The method is exact for the Jacobian at the start of each step; any
    consistent Jacobian (analytic or `jax.jacfwd`) works.
    linear_solver: factorises W = I/(h gamma) - J once per step and solves the six stage
    systems; the default is a dense pivoted LU, `pbpk.block_solve.BlockArrowSolve`
    exploits a sparse arrow-shaped pattern (J given at its structural entries; same
    results to round-off, far fewer flops).  Both provide `factor`, `solve` and `matvec`.
    implicit_tangents: forward-mode derivatives of the stage solves by the implicit
    function rule (the factorisation is computed once and reused by every tangent) rather
    than by differentiating the factorisation; for `jax.jvp`/`jax.jacfwd` only.
    """

    jacobian: Callable = eqx.field(static=True)
    linear_solver: object = eqx.field(static=True, default=DenseLU())
    implicit_tangents: bool = eqx.field(static=True, default=False)
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation

    def order(self, terms):
        return 4

    def init(self, terms, t0, t1, y0, args):
        return terms.vf(t0, y0, args)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        h = t1 - t0
        f0 = jnp.where(made_jump, terms.vf(t0, y0, args), solver_state)
        jac, shift = self.jacobian(t0, y0, args), 1.0 / (h * GAMMA)
        if self.implicit_tangents:
            # forward-mode derivatives by the implicit-function rule dx = W^-1 (db - dW x)
            # (`jax.lax.custom_linear_solve`): tangents reuse the factorisation instead of
            # differentiating it; no transpose solve, so reverse mode is unavailable
            solver = self.linear_solver
            factors = solver.factor(jax.lax.stop_gradient(jac), jax.lax.stop_gradient(shift))

            def solve(b):
                return jax.lax.custom_linear_solve(lambda x: solver.matvec(jac, shift, x), b,
                                                   lambda _, r: solver.solve(factors, r))
        else:
            factors = self.linear_solver.factor(jac, shift)

            def solve(b):
                return self.linear_solver.solve(factors, b)

        ks = []
        for i in range(6):
            if i == 0:
                f = f0
            else:
                yi = y0 + sum(a * k for a, k in zip(A[i], ks))
                f = terms.vf(t0 + STAGE_TIMES[i] * h, yi, args)
            rhs = f + sum((c / h) * k for c, k in zip(C[i], ks)) if i else f
            ks.append(solve(rhs))
        y1 = y0 + sum(a * k for a, k in zip(A[5], ks)) + ks[5]
        f1 = terms.vf(t1, y1, args)
        dense_info = dict(y0=y0, y1=y1, k0=h * f0, k1=h * f1)
        return y1, ks[5], dense_info, f1, diffrax.RESULTS.successful
