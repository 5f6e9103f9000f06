"""A lineax linear solver for the small dense Newton systems of implicit ODE steps.

Kvaerno5's chord iterations solve (I - h*gamma*J) x = b several times per step with the
same matrix.  `lineax.LU` calls `jax.scipy.linalg.lu_solve`, which rebuilds the row
permutation from the LAPACK pivots on every solve; on CPU, for the ~100-state PBPK
systems, that costs more than the two triangular solves themselves.  `PermutedLU`
factorises once per step, converts the pivots to a permutation once, and then solves
with one gather and two triangular solves.  Same arithmetic as `lineax.LU`.
"""

from __future__ import annotations

from typing import Any

import equinox.internal as eqxi
import jax.numpy as jnp
import jax.scipy as jsp
import lineax as lx
from jax.lax import linalg as lax_linalg
from lineax._solver.misc import pack_structures, ravel_vector, transpose_packed_structures, unravel_solution


def lu_factor_permuted(w: jnp.ndarray):
    """(LU factors, row permutation) of a dense square matrix (LAPACK getrf, partial
    pivoting), the pivots converted to a permutation once."""
    lu, pivots = jsp.linalg.lu_factor(w)
    return lu, lax_linalg.lu_pivots_to_permutation(pivots, lu.shape[0])


def lu_solve_permuted(lu: jnp.ndarray, permutation: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """x with P A x = L U x = P b (b of shape (n,) or (n, k)): one gather, two triangular solves."""
    z = lax_linalg.triangular_solve(lu, b[permutation], left_side=True, lower=True, unit_diagonal=True)
    return lax_linalg.triangular_solve(lu, z, left_side=True, lower=False)


class PermutedLU(lx.AbstractLinearSolver):
    """LU with partial pivoting; the permutation is computed once in `init`."""

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        if operator.in_size() != operator.out_size():
            raise ValueError("PermutedLU needs a square operator")
        return lu_factor_permuted(operator.as_matrix()), pack_structures(operator), eqxi.Static(False)

    def compute(self, state, vector, options):
        del options
        (lu, permutation), packed, transpose = state
        b = ravel_vector(vector, packed)[:, None]
        if transpose.value:  # A^T x = b with P A = L U:  U^T L^T P x = b
            z = lax_linalg.triangular_solve(lu, b, left_side=True, lower=False, transpose_a=True)
            z = lax_linalg.triangular_solve(lu, z, left_side=True, lower=True, unit_diagonal=True, transpose_a=True)
            x = jnp.zeros_like(z).at[permutation].set(z)
        else:  # L U x = P b
            x = lu_solve_permuted(lu, permutation, b)
        return unravel_solution(x[:, 0], packed), lx.RESULTS.successful, {}

    def transpose(self, state, options):
        factors, packed, transpose = state
        return (factors, transpose_packed_structures(packed), eqxi.Static(not transpose.value)), {}

    def conj(self, state, options):
        (lu, permutation), packed, transpose = state
        return ((lu.conj(), permutation), packed, transpose), {}

    def assume_full_rank(self):
        return True
