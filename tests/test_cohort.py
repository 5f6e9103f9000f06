"""pbpk.simulate_cohort (many parameter sets, one schedule, one lockstep solve) against
separate `simulate` calls, and its lockstep linear algebra against the per-set solver."""

import jax.numpy as jnp
import numpy as np
import pytest

import pbpk
from conftest import LU, TIMES_H
from pbpk.block_solve import BlockArrowSolve, DenseLU, LockstepSolve
from toy_models import TRACER, michaelis_menten_model, receptor_toy_model


def test_psma_cohort_equals_separate_simulations(lu_model):
    """Five virtual patients of the PSMA model (kidney and lesion receptor densities and
    GFR varied, saturating therapy): every row equals its own solve (both at rtol 1e-6),
    activities and TIA to infinity; hot + cold ligand balance holds per row."""
    rng = np.random.default_rng(3)
    params = {"kidneys_rden_nmol_l": 40.0 * rng.lognormal(0.0, 0.4, 5),
              "lesion_1_rden_nmol_l": 60.0 * rng.lognormal(0.0, 0.4, 5),
              "gfr_ml_min": 100.0 * rng.lognormal(0.0, 0.2, 5)}
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, LU)])
    cohort = pbpk.simulate_cohort(lu_model, schedule, TIMES_H, params)
    assert cohort.region_activity_mbq.shape[0] == 5 and cohort.solver_ok.shape == (5,)
    assert np.asarray(cohort.solver_ok).all()
    tia = np.asarray(cohort.region_tia_mbq_h)
    for k in range(5):
        alone = pbpk.simulate(lu_model, schedule, TIMES_H, {n: v[k] for n, v in params.items()})
        np.testing.assert_allclose(tia[k], alone.region_tia_mbq_h, rtol=2e-5)
        act, ref = np.asarray(cohort.region_activity_mbq[k]), np.asarray(alone.region_activity_mbq)
        np.testing.assert_allclose(act, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
        total = np.asarray(cohort.amounts_nmol[k]).sum(axis=1)  # nmol of ligand in the body + urine
        np.testing.assert_allclose(total, 90.0, rtol=1e-6)
    kidney_tia = tia[:, 0, lu_model.region_names.index("kidneys")]
    assert np.ptp(kidney_tia) > 0.05 * kidney_tia.mean()  # the patients differ: not one solve repeated


def test_cohort_of_non_polynomial_model_and_shared_values():
    """Michaelis-Menten rates (the general rate path) under the lockstep solve, with one
    parameter shared (scalar) and one varied."""
    model = michaelis_menten_model()
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 727.0, 5.0, "Lu-177-PSMA-617")])
    times = np.linspace(0.5, 24.0, 6)
    vmax = np.array([0.5, 2.0, 8.0])
    cohort = pbpk.simulate_cohort(model, schedule, times, {"vmax_nmol_h": vmax, "km_nmol": 1.0}, tia=False)
    for k, v in enumerate(vmax):
        alone = pbpk.simulate(model, schedule, times, {"vmax_nmol_h": v, "km_nmol": 1.0}, tia=False)
        np.testing.assert_allclose(cohort.amounts_nmol[k], alone.amounts_nmol, rtol=1e-5, atol=1e-9)
    uptake = np.asarray(cohort.activity_mbq["tissue"])[:, 0]
    assert uptake[0] < uptake[1] < uptake[2]  # faster saturable uptake, more in the tissue early


def test_cohort_errors():
    model = receptor_toy_model()
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
    with pytest.raises(pbpk.ParameterError, match="parameter set 1:.*kidneys_rden_nmol_l"):
        pbpk.simulate_cohort(model, schedule, [1.0, 24.0], {"kidneys_rden_nmol_l": [40.0, -1.0]})
    with pytest.raises(pbpk.ParameterError, match="differ in length"):
        pbpk.simulate_cohort(model, schedule, [1.0], {"kidneys_rden_nmol_l": [40.0, 50.0], "clearance_per_h": [0.3]})
    with pytest.raises(pbpk.ParameterError, match="1-D array"):
        pbpk.simulate_cohort(model, schedule, [1.0], {"kidneys_rden_nmol_l": 40.0})
    with pytest.raises(pbpk.ParameterError, match="no parameters"):
        pbpk.simulate_cohort(model, schedule, [1.0], {"kidney_rden": [40.0, 50.0]})
    with pytest.raises(pbpk.PBPKError, match="Rodas4"):
        pbpk.simulate_cohort(model, schedule, [1.0], {"kidneys_rden_nmol_l": [40.0]},
                             options=pbpk.SolverOptions(method="kvaerno5"))
    with pytest.raises(pbpk.ScheduleError, match="before the first administration"):
        pbpk.simulate_cohort(model, pbpk.Schedule([pbpk.Administration(5.0, 7400.0, 90.0, TRACER)]), [1.0],
                             {"kidneys_rden_nmol_l": [40.0]})
    few_steps = pbpk.SolverOptions(max_steps=3)
    with pytest.raises(pbpk.SolverError, match="lockstep solve of 2 parameter sets"):
        pbpk.simulate_cohort(model, schedule, [1.0, 24.0], {"kidneys_rden_nmol_l": [40.0, 50.0]}, options=few_steps)
    failed = pbpk.simulate_cohort(model, schedule, [1.0, 24.0], {"kidneys_rden_nmol_l": [40.0, 50.0]},
                                  options=few_steps, check=False)
    assert not np.asarray(failed.solver_ok).any()


@pytest.mark.parametrize("dense", [False, True])
def test_lockstep_solve_equals_per_set_solves(lu_model, dense):
    """W x = b for 6 parameter sets at once (sets on the last axis) equals each set's own
    dense solve, on the PSMA model's Jacobian pattern (block-arrow plan: blocks, hubs and
    the TIA quadratures as sinks) with random entries, and for the dense LU (vmapped)."""
    from pbpk.simulate import _plan

    plan = _plan(lu_model, pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, LU)]))
    solver, rows, cols, _ = plan.linear_system(True)
    assert isinstance(solver, BlockArrowSolve)
    n = solver.n
    if dense:
        solver = DenseLU(rows, cols, n)
    rng = np.random.default_rng(0)
    values = rng.uniform(-1.0, 1.0, size=(rows.size, 6))
    b = rng.normal(size=(n, 6))
    lockstep = LockstepSolve(solver)
    shift = 20.0  # diagonally dominant enough for the unpivoted blocks
    x = np.asarray(lockstep.solve(lockstep.factor(jnp.asarray(values), shift), jnp.asarray(b)))
    for k in range(6):
        w = np.zeros((n, n))
        w[rows, cols] = -values[:, k]
        w += shift * np.eye(n)
        np.testing.assert_allclose(x[:, k], np.linalg.solve(w, b[:, k]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(lockstep.matvec(jnp.asarray(values), shift, jnp.asarray(x)), b, rtol=1e-9, atol=1e-12)
