import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from pbpk.linear_solver import PermutedLU


def test_permuted_lu_matches_numpy_and_transpose():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 9)) + 3 * np.eye(9)
    b = rng.standard_normal(9)
    op = lx.MatrixLinearOperator(jnp.asarray(a))
    x = lx.linear_solve(op, jnp.asarray(b), PermutedLU()).value
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-12)
    xt = lx.linear_solve(op.T, jnp.asarray(b), PermutedLU()).value
    np.testing.assert_allclose(xt, np.linalg.solve(a.T, b), rtol=1e-12)
    # reverse-mode through the solve uses the transposed solver state
    g = jax.grad(lambda bb: lx.linear_solve(op, bb, PermutedLU()).value.sum())(jnp.asarray(b))
    np.testing.assert_allclose(g, np.linalg.solve(a.T, np.ones(9)), rtol=1e-12)
