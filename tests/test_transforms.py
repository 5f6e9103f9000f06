"""simulate under jax.jit, jax.vmap (virtual cohort) and jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pbpk

from conftest import TIMES_H, therapy


def test_jit_equals_eager(lu_model, therapy_trajectory):
    jitted = jax.jit(lambda r: pbpk.simulate(lu_model, therapy(), TIMES_H, {"kidneys_rden_nmol_l": r}))
    traj = jitted(lu_model.parameter("kidneys_rden_nmol_l").value)
    np.testing.assert_allclose(traj.region_activity_mbq, therapy_trajectory.region_activity_mbq, rtol=1e-12)
    np.testing.assert_allclose(traj.region_tia_mbq_h, therapy_trajectory.region_tia_mbq_h, rtol=1e-12)


def test_vmap_over_a_virtual_cohort(lu_model):
    """vmap over receptor density and GFR: kidney TIA rises with receptor density; each
    batched member equals its own unbatched simulation."""
    rden = jnp.array([10.0, 20.0, 40.0, 80.0])
    gfr = jnp.array([60.0, 90.0, 90.0, 120.0])
    batched = jax.vmap(lambda r, g: pbpk.simulate(
        lu_model, therapy(), TIMES_H, {"kidneys_rden_nmol_l": r, "gfr_ml_min": g}))(rden, gfr)
    kidney_tia = np.asarray(batched.tia_mbq_h["kidneys"])
    assert kidney_tia.shape == (4,)
    assert kidney_tia[1] < kidney_tia[2] < kidney_tia[3]
    single = pbpk.simulate(lu_model, therapy(), TIMES_H, {"kidneys_rden_nmol_l": 80.0, "gfr_ml_min": 120.0})
    np.testing.assert_allclose(kidney_tia[3], float(single.tia_mbq_h["kidneys"]), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("adjoint", ["reverse", "forward"])
def test_gradients_equal_finite_differences(lu_model, adjoint):
    """d(kidney TIA)/d(parameter) through diffrax vs central differences: jax.grad
    (reverse, differentiating the block factorisation) and jax.jacfwd (forward, stage
    solves differentiated by the implicit-function rule, reusing the factorisation)."""
    names = ["kidneys_rden_nmol_l", "gfr_ml_min", "kidneys_lambda_rel_per_h"]
    opts = pbpk.SolverOptions(rtol=1e-10, atol=1e-13, adjoint=adjoint)

    def kidney_tia(x):
        params = dict(zip(names, x))
        return pbpk.simulate(lu_model, therapy(), TIMES_H, params, options=opts).tia_mbq_h["kidneys"]

    x0 = jnp.array([lu_model.parameter(n).value for n in names])
    grad = np.asarray((jax.grad if adjoint == "reverse" else jax.jacfwd)(kidney_tia)(x0))
    for i, n in enumerate(names):
        h = 1e-4 * float(x0[i])
        fd = (float(kidney_tia(x0.at[i].add(h))) - float(kidney_tia(x0.at[i].add(-h)))) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-5), n
