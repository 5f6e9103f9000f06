"""Hierarchical cohort fits (calibration.fit_cohort) on the small receptor model.

A virtual population: each patient's receptor densities and clearance are log-normal
around population medians (between-patient sd 0.3 in log units) that differ from the
fit's prior medians; activities differ by patient (5-8 GBq, same ligand amount), data
are 8 % log-normal noise on kidney, lesion and blood activity.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro.infer.util import initialize_model

import calibration
import pbpk
from calibration.cohort import _cohort_potential, cohort_model, cohort_predictions
from calibration.fit import forward_mode, nuts_solver_potential
from toy_models import TOY_POPULATION, TRACER, receptor_toy_model, virtual_receptor_cohort

RICH_TIMES_H = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
POPULATION = TOY_POPULATION
# prior medians 0.3-0.4 log units from the population medians; default spread 0.5
FREE = {"kidneys_rden_nmol_l": (40.0, 0.5), "lesion_1_rden_nmol_l": (60.0, 0.5), "clearance_per_h": (0.3, 0.5)}
SOLVER = pbpk.SolverOptions(rtol=1e-4, atol=1e-7, max_steps=4096)


@pytest.fixture(scope="module")
def toy():
    return receptor_toy_model()


def virtual_patients(model, n, seed, times_h=RICH_TIMES_H, first=0):
    return virtual_receptor_cohort(model, n, seed, times_h, first)


@pytest.fixture(scope="module")
def cohort(toy):
    return virtual_patients(toy, 8, seed=11)


@pytest.fixture(scope="module")
def laplace_fit(toy, cohort):
    table, schedules, _ = cohort
    return calibration.fit_cohort(toy, table, schedules, "laplace", free=FREE, options=SOLVER, num_samples=500)


def true_tia(model, schedule, truth):
    trajectory = pbpk.simulate(model, schedule, [schedule.last_time_h], truth)
    return {r: float(trajectory.tia_mbq_h[r]) for r in ("kidneys", "lesion_1")}


# ------------------------------------------------------------------ the potential
def test_cohort_gradient_equals_finite_differences_of_numpyros_potential(toy):
    """Two solve groups (a patient with fewer observation times is solved apart): the
    cohort potential equals NumPyro's own, and its chain-rule gradient (one tangent per
    free parameter through the solver for the whole cohort) equals central differences
    of NumPyro's potential along random directions (tight solver tolerances, so the
    differences are not solver noise).  The single-patient test checks the same
    machinery against jacfwd."""
    table, schedules, _ = virtual_patients(toy, 1, seed=5)
    sparse, sparse_schedules, _ = virtual_patients(toy, 1, seed=6, times_h=RICH_TIMES_H[[0, 4]], first=1)
    table = pd.concat([table, sparse], ignore_index=True)
    schedules.update(sparse_schedules)
    options = pbpk.SolverOptions(rtol=1e-10, atol=1e-12, max_steps=20000, adjoint="forward")
    problem = calibration.make_cohort_problem(toy, table, schedules, free=FREE, options=options)
    assert [list(g.patients) for g in problem.groups] == [[0], [1]]
    potential = _cohort_potential(problem, seed=0)
    info = initialize_model(jax.random.PRNGKey(0), cohort_model, model_args=(problem,), validate_grad=False)
    numpyro_potential = jax.jit(lambda v: info.potential_fn(potential.unravel(v)))
    x = potential.x0 + np.linspace(-0.4, 0.5, potential.x0.size)
    value, grad = potential.value_and_grad(jnp.asarray(x))
    assert float(value) == pytest.approx(float(numpyro_potential(jnp.asarray(x))), rel=1e-12)
    step = 1e-5
    for d in np.random.default_rng(0).standard_normal((3, x.size)):
        fd = (float(numpyro_potential(jnp.asarray(x + step * d))) -
              float(numpyro_potential(jnp.asarray(x - step * d)))) / (2 * step)
        assert float(np.asarray(grad) @ d) == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_cohort_nuts_trajectories_solve_at_nuts_solver(toy):
    """fit_cohort without solver options gives NUTS the cohort problem at NUTS_SOLVER (as
    `fit`): the same structure, predictions within 0.1 of the smallest measurement error
    (5 %) of the cohort's own solve at rtol 1e-10."""
    table, schedules, _ = virtual_patients(toy, 2, seed=5)
    tight = pbpk.SolverOptions(rtol=1e-10, atol=1e-12, max_steps=20000, adjoint="forward")
    problem = calibration.make_cohort_problem(toy, table, schedules, free=FREE, options=tight)
    info = {}
    loose = nuts_solver_potential("nuts", None, problem, lambda c: c, info)
    assert loose.options == forward_mode(calibration.NUTS_SOLVER)
    assert info == {"nuts_solver_rtol": calibration.NUTS_SOLVER.rtol}
    assert loose.groups == problem.groups and np.array_equal(loose.log_y, problem.log_y)
    theta = jnp.asarray([[f.median for f in problem.free]] * 2)
    (pred, ok), (ref, ok_ref) = cohort_predictions(loose, theta), cohort_predictions(problem, theta)
    assert bool(jnp.all(ok)) and bool(jnp.all(ok_ref))
    assert float(np.max(np.abs(np.asarray(pred) / np.asarray(ref) - 1)[problem.valid])) < 0.1 * 0.05


# ------------------------------------------------------------------ recovery
@pytest.mark.slow
def test_population_and_patients_recovered(laplace_fit, cohort):
    """The population medians' 90 % intervals hold the generating medians; the spread
    between patients is estimated near its true 0.3 rather than the prior's; every
    patient's parameters are recovered better than the prior gives them."""
    _, _, truths = cohort
    summary = laplace_fit.summary()
    for name, value in POPULATION.items():
        row = summary.loc[f"{name}:population_median"]
        assert row["q05"] < value < row["q95"], (name, row.to_dict())
        assert 0.1 < summary.loc[f"{name}:omega", "median"] < 0.6
    errors = [abs(math.log(summary.loc[f"{name}[{p}]", "median"] / truth[name]))
              for p, truth in truths.items() for name in POPULATION]
    assert np.median(errors) < 0.1 and max(errors) < 0.35
    assert laplace_fit.converged and laplace_fit.info["hessian_positive_definite"]


@pytest.mark.slow
def test_patient_view_predicts_therapy_tia_with_intervals(laplace_fit, cohort, toy):
    """`patient(name)` is that patient's posterior given the cohort: its predicted
    kidney and lesion TIA intervals for a schedule never given (two cycles) hold the
    truth for most patients."""
    _, schedules, truths = cohort
    inside = []
    for name in list(truths)[:4]:
        two_cycles = pbpk.Schedule(list(schedules[name]) + [pbpk.Administration(6 * 7 * 24.0, 7400.0, 90.0, TRACER)])
        tia = laplace_fit.patient(name).predict(two_cycles, max_draws=100).set_index("region")
        for region, value in true_tia(toy, two_cycles, truths[name]).items():
            inside.append(tia.loc[region, "tia_mbq_h_q05"] < value < tia.loc[region, "tia_mbq_h_q95"])
    assert np.mean(inside) >= 0.75
    with pytest.raises(calibration.CalibrationError, match="not in this cohort"):
        laplace_fit.patient("nobody")


@pytest.mark.slow
def test_population_prior_sharpens_a_sparse_new_patient(laplace_fit, toy):
    """The population prior is centred nearer the population than the weak default prior
    and is narrower, and the cohort's error scales are the data's 8 % noise; new patients
    with few data (kidneys and blood at 24 h, the lesion not measured) get parameters
    closer to the truth with both."""
    prior = laplace_fit.population_prior()
    for p in prior:
        assert abs(math.log(p.median / POPULATION[p.name])) < abs(math.log(FREE[p.name][0] / POPULATION[p.name]))
        assert p.sigma_log < FREE[p.name][1]
    scales = laplace_fit.population_error_scales()
    assert set(scales) == {calibration.ERROR_GROUPS[g] for g in laplace_fit.problem.used_error_groups}
    for group, scale in scales.items():
        assert 0.06 < scale < 0.10, (group, scale)  # ~100 values of 8 % noise per group
    table, schedules, truths = virtual_patients(toy, 2, seed=23, times_h=np.array([24.0]), first=100)
    table = table[table["region"] != "lesion_1"]
    errors = {"population": [], "default": []}
    for name, schedule in schedules.items():
        for label, free, error_scales in (("population", prior, scales), ("default", FREE, None)):
            post = calibration.fit(toy, table, schedule, "laplace", free=free, patient=name, options=SOLVER,
                                   num_samples=300, error_scales=error_scales)
            fitted = post.summary()["median"]
            errors[label] += [abs(math.log(fitted[k] / truths[name][k])) for k in POPULATION]
    assert np.mean(errors["population"]) < np.mean(errors["default"])


def test_known_covariates_enter_each_patients_solve(toy):
    """`fixed`: each patient's known parameters (here the kidney uptake rate, different per
    patient) enter that patient's solve: the cohort's predictions at given free parameters
    equal `pbpk.simulate` of each patient alone with its values."""
    table, schedules, truths = virtual_patients(toy, 2, seed=31, times_h=RICH_TIMES_H[[1, 4]])
    known = {"v000": {"kidneys_k_in_per_h": 0.6}, "v001": {"kidneys_k_in_per_h": 1.7}}
    problem = calibration.make_cohort_problem(toy, table, schedules, free=FREE, options=SOLVER, fixed=known,
                                              error_scales={"SPECT lesion": 0.1})
    assert problem.fixed_names == ("kidneys_k_in_per_h",) and problem.error_scale_prior[-1] == 0.1
    theta = jnp.asarray([[truths[n][k] for k in FREE] for n in problem.patient_names])
    values, ok = cohort_predictions(problem, theta)
    assert np.all(np.asarray(ok))
    for i, name in enumerate(problem.patient_names):
        obs = problem.patients[i].observations
        alone = pbpk.simulate(toy, schedules[name], obs.times_h, {**truths[name], **known[name]}, options=SOLVER)
        expected = [float(alone.activity_mbq[region][t]) for region, t in
                    zip(np.asarray(toy.region_names)[obs.region_index], obs.time_index)]
        # rtol: the solver's (rtol 1e-4); the cohort's batched solve takes its own steps
        np.testing.assert_allclose(np.asarray(values[i, :obs.n]), expected, rtol=1e-4)
    # another kidney uptake changes the predictions by far more than that
    other = calibration.make_cohort_problem(toy, table, schedules, free=FREE, options=SOLVER,
                                            fixed={n: {"kidneys_k_in_per_h": 1.0} for n in known})
    change = np.abs(np.asarray(cohort_predictions(other, theta)[0]) / np.asarray(values) - 1)
    assert change.max() > 1e-2
    for bad, match in (({"v000": known["v000"]}, r"fixed: patients of the table without a mapping of known values \['v001'\]"),
                       ({**known, "v009": known["v000"]}, r"not in the table \['v009'\]"),
                       ({"v000": known["v000"], "v001": {"kidneys_k_out_per_h": 1.0}}, "differ"),
                       ({"v000": known["v000"], "v001": 1.7}, "expected a mapping"),
                       ({"v000": known["v000"], "v001": {"kidneys_k_in_per_h": -1.0}}, "kidneys_k_in_per_h")):
        with pytest.raises(calibration.CalibrationError, match=match):
            calibration.make_cohort_problem(toy, table, schedules, free=FREE, fixed=bad)


# ------------------------------------------------------------------ bad input
def test_bad_cohort_input(toy):
    table, schedules, _ = virtual_patients(toy, 2, seed=1, times_h=RICH_TIMES_H[:2])
    with pytest.raises(calibration.CalibrationError, match=r"without a schedule \['v001'\]"):
        calibration.make_cohort_problem(toy, table, {"v000": schedules["v000"]}, free=FREE)
    with pytest.raises(calibration.CalibrationError, match=r"schedules: .* not in the table \['x'\]"):
        calibration.make_cohort_problem(toy, table, dict(schedules, x=schedules["v000"]), free=FREE)
    with pytest.raises(calibration.TableError, match="at least 2"):
        calibration.make_cohort_problem(toy, table[table["patient"] == "v000"], schedules["v000"], free=FREE)
    with pytest.raises(calibration.TableError, match="time_h"):
        calibration.make_cohort_problem(toy, table.assign(time_h=-1.0), schedules, free=FREE)
    with pytest.raises(calibration.CalibrationError, match="method"):
        calibration.fit_cohort(toy, table, schedules, method="em", free=FREE)


@pytest.mark.slow
def test_cohort_svi_runs_on_the_flat_potential(toy, cohort, laplace_fit):
    """SVI's guide lives on the flat unconstrained vector and reaches the solves through
    the forward-mode chain-rule gradient: draws of every site, finite, solves succeeded.
    (The Laplace fit's cohort: its compiled potential and draws serve SVI too.)"""
    table, schedules, _ = cohort
    with pytest.warns(calibration.CalibrationWarning, match="SVI not converged"):  # 30 steps: said loudly
        post = calibration.fit_cohort(toy, table, schedules, "svi", free=FREE, options=SOLVER, svi_steps=30,
                                      num_samples=50)
    assert post.samples["theta"].shape == (1, 50, 8, 3)
    assert np.all(np.isfinite(post.samples["population_median"])) and np.all(post.samples["solver_ok"])
    assert np.isfinite(post.info["elbo_loss_final"])
