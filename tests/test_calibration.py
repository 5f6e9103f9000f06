"""Bayesian calibration (calibration.fit) on a small receptor model.

The virtual patient's parameters are drawn away from the prior centres (the prior is
never centred on the truth), data are 8 % log-normal noise on kidney, lesion and blood
activity at six SPECT time points.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import calibration
import pbpk
from calibration.fit import (_Potential, find_map, forward_mode, laplace_covariance, make_problem,
                             nuts_solver_potential, run_nuts)
from calibration.likelihood import predicted_activity
from calibration.svi import WINDOW, elbo_converged
from toy_models import TRACER, receptor_toy_model

TIMES_H = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
TRUTH = {"kidneys_rden_nmol_l": 55.0, "lesion_1_rden_nmol_l": 40.0, "clearance_per_h": 0.22}
# prior medians differ from the truth by 0.3-0.4 in log units (~0.7 prior sd)
FREE = {"kidneys_rden_nmol_l": (40.0, 0.5), "lesion_1_rden_nmol_l": (60.0, 0.5), "clearance_per_h": (0.3, 0.5)}
REGIONS = ("kidneys", "lesion_1", "blood")


@pytest.fixture(scope="module")
def toy():
    return receptor_toy_model()


def one_cycle_schedule() -> pbpk.Schedule:
    """7.4 GBq / 90 nmol of the toy's tracer at 0 h."""
    return pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])


def noisy_table(trajectory) -> pd.DataFrame:
    """SPECT rows of REGIONS at TIMES_H from `trajectory` with 8 % log-normal noise (seed 1)."""
    rng = np.random.default_rng(1)
    rows = []
    for region in REGIONS:
        for t, a in zip(TIMES_H, np.asarray(trajectory.activity_mbq[region])):
            rows.append(dict(patient="p1", modality="NM", tracer="177Lu-PSMA-617", time_h=t, region=region,
                             activity_mbq=a * math.exp(0.08 * rng.standard_normal())))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def schedule():
    return one_cycle_schedule()


@pytest.fixture(scope="module")
def truth_trajectory(toy, schedule):
    return pbpk.simulate(toy, schedule, TIMES_H, TRUTH)


@pytest.fixture(scope="module")
def table(truth_trajectory):
    return noisy_table(truth_trajectory)


# rtol 1e-4: numerical error three orders below the 8 % noise, and ~1.8x fewer steps than
# the library default (1e-5) to keep the three fits within the CI budget
TEST_SOLVER = pbpk.SolverOptions(rtol=1e-4, atol=1e-7, max_steps=4096)


@pytest.fixture(scope="module")
def fits(toy, table, schedule):
    kw = dict(free=FREE, seed=0)
    return {
        "laplace": calibration.fit(toy, table, schedule, "laplace", num_samples=1000, options=TEST_SOLVER, **kw),
        "svi": calibration.fit(toy, table, schedule, "svi", num_samples=1000, svi_steps=600, options=TEST_SOLVER,
                               **kw),
        # the default solver settings: NUTS's trajectories at NUTS_SOLVER
        "nuts": calibration.fit(toy, table, schedule, "nuts", num_warmup=150, num_samples=150, num_chains=2, **kw),
    }


# ------------------------------------------------------------------ fits
@pytest.mark.slow
def test_methods_agree_and_recover_truth(fits):
    """NUTS, SVI and Laplace agree on posterior means within their stated uncertainty,
    and the truth lies within 3 posterior sd of each."""
    summaries = {m: f.summary() for m, f in fits.items()}
    for name, true in TRUTH.items():
        means = {m: s.loc[name, "mean"] for m, s in summaries.items()}
        sds = {m: s.loc[name, "sd"] for m, s in summaries.items()}
        for m in means:
            assert abs(means[m] - true) < 3 * sds[m], (name, m, means[m], sds[m], true)
            assert abs(means[m] - means["nuts"]) < 2 * max(sds[m], sds["nuts"]), (name, m, means)
            assert 0.5 < sds[m] / sds["nuts"] < 2.0, (name, m, sds)


@pytest.mark.slow
def test_nuts_diagnostics(fits):
    post = fits["nuts"]
    d = post.diagnostics()
    assert d["divergences"] == 0
    assert d["max_r_hat"] < 1.05  # short test chains; `converged` uses 1.01 and ESS >= 400
    assert d["failed_solve_fraction"] == 0.0
    assert post.info["nuts_metric"] == "laplace" and np.all(np.asarray(post.info["nuts_step_size"]) > 0)
    assert post.info["nuts_solver_rtol"] == calibration.NUTS_SOLVER.rtol
    assert post.problem.options.rtol == calibration.CALIBRATION_SOLVER.rtol  # predictions keep the tight solve
    data = post.to_arviz()
    assert set(data.posterior.data_vars) == set(post.parameter_samples())
    assert data.posterior["kidneys_rden_nmol_l"].shape == (2, 150)
    assert "diverging" in data.sample_stats


@pytest.mark.slow
def test_predicted_tia_covers_truth_and_answers_unobserved_schedules(fits, toy, schedule, truth_trajectory):
    post = fits["nuts"]
    pred = post.predict(schedule, max_draws=100).set_index("region")
    # the draws are solved in lockstep: the same quantiles as each draw simulated alone
    options = post.problem.options
    alone = jax.vmap(lambda th: pbpk.simulate(toy, schedule, [0.0], post.problem.parameters(th), options=options,
                                              check=False).tia_mbq_h["kidneys"])(jnp.asarray(post._thinned_theta(100, 0)))
    np.testing.assert_allclose(pred.loc["kidneys", ["tia_mbq_h_q05", "tia_mbq_h_q50", "tia_mbq_h_q95"]].to_numpy(float),
                               np.quantile(np.asarray(alone), [0.05, 0.5, 0.95]), rtol=2e-5)
    for region in ("kidneys", "lesion_1"):
        true = float(truth_trajectory.tia_mbq_h[region])
        assert pred.loc[region, "tia_mbq_h_q05"] <= true <= pred.loc[region, "tia_mbq_h_q95"], region
        assert abs(pred.loc[region, "tia_mbq_h_q50"] / true - 1) < 0.05, region
    # an unobserved schedule: the same activity with 4.5x less ligand saturates the receptors
    # less, so more activity per MBq binds (kidney and lesion TIA rise)
    high_sa = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 20.0, TRACER)])
    pred_sa = post.predict(high_sa, max_draws=100).set_index("region")
    for region in ("kidneys", "lesion_1"):
        assert pred_sa.loc[region, "tia_mbq_h_q50"] > 1.05 * pred.loc[region, "tia_mbq_h_q50"], region
    ppc = post.check_observations(max_draws=100)
    assert ppc["inside"].mean() >= 0.8  # 90 % predictive intervals


@pytest.mark.slow
def test_svi_starts_from_laplace_and_stops_when_the_elbo_settles(fits, toy, table, schedule):
    info = fits["svi"].info
    assert info["svi_laplace_start"] and info["svi_converged"]
    assert 3 * WINDOW <= info["svi_steps_run"] < 600 and info["svi_steps_run"] % WINDOW == 0
    # too few steps to check convergence: the fit says so
    with pytest.warns(calibration.CalibrationWarning, match="SVI not converged"):
        short = calibration.fit(toy, table, schedule, "svi", free=FREE, seed=0, options=TEST_SOLVER, svi_steps=30,
                                num_samples=50)
    assert short.info["svi_steps_run"] == 30 and not short.info["svi_converged"]


def test_svi_stopping_rule_tells_a_plateau_from_a_noisy_descent():
    rng = np.random.default_rng(0)
    steps = np.arange(10 * WINDOW)
    noise = 3.0 * rng.standard_normal(steps.size)  # sd of one-draw ELBO estimates
    assert elbo_converged(5.0 + noise)[0]
    assert not elbo_converged(5.0 + noise[:3 * WINDOW - 1])[0]  # fewer than three windows: not checked
    # a steady descent of 0.5 nats per window, a sixth of one step's noise, is seen over
    # the last half of 200 steps (slope sd ~0.2 nats per window)
    descent = 5.0 - 0.5 * steps / WINDOW + noise
    converged, per_window = elbo_converged(descent)
    assert not converged and per_window == pytest.approx(0.5, abs=0.3)
    # a descent below the tolerance on a quiet plateau: converged
    quiet = 1e-3 * rng.standard_normal(steps.size)
    assert elbo_converged(5.0 - 0.05 * steps / WINDOW + quiet)[0]
    assert not elbo_converged(5.0 - 0.2 * steps / WINDOW + quiet)[0]
    assert elbo_converged(np.where(steps % 7 == 0, np.nan, 5.0 + noise))[0]  # skipped steps left out


@pytest.mark.slow
def test_failed_solves_give_a_finite_penalty(toy, table, schedule):
    """With a step budget too small for any solve, the log density stays finite (the
    failed-solve penalty) and its gradient finite: no NaN reaches a sampler."""
    problem = make_problem(toy, table, schedule, free=FREE,
                           options=pbpk.SolverOptions(rtol=1e-5, max_steps=4, adjoint="forward"))
    potential = _Potential(problem, seed=0)
    value, grad = potential.value_and_grad(jnp.asarray(potential.x0))
    assert np.isfinite(float(value)) and float(value) > 1e9
    assert np.all(np.isfinite(np.asarray(grad)))
    for newton in (False, True):
        with pytest.raises(calibration.CalibrationError, match="MAP search failed"):
            find_map(potential, max_iter=5, newton=newton)


def test_chain_rule_gradient_equals_the_full_forward_mode_gradient(toy, table, schedule):
    """The fit's gradient (tangents through the solve for z only, chain rule for the
    rest) equals jacfwd of NumPyro's own potential over every site, away from the MAP."""
    import jax
    from numpyro.infer.util import initialize_model

    from calibration.likelihood import numpyro_model

    options = pbpk.SolverOptions(rtol=1e-4, atol=1e-7, max_steps=4096, adjoint="forward")
    problem = make_problem(toy, table, schedule, free=FREE, options=options)
    potential = _Potential(problem, seed=0)
    info = initialize_model(jax.random.PRNGKey(0), numpyro_model, model_args=(problem,),
                            forward_mode_differentiation=True)
    x = jnp.asarray(potential.x0 + np.linspace(-0.4, 0.5, potential.x0.size))
    full = jax.jacfwd(lambda v: info.potential_fn(potential.unravel(v)))(x)
    value, grad = potential.value_and_grad(x)
    assert float(value) == pytest.approx(float(info.potential_fn(potential.unravel(x))), rel=1e-12)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(full), rtol=1e-8, atol=1e-8)
    # and the custom-VJP wrapper NUTS and SVI differentiate (a host call of the compiled
    # program) gives the same gradient, eagerly, jitted and vmapped (vectorised chains)
    u = potential.differentiable()
    np.testing.assert_allclose(np.asarray(jax.grad(u)(x)), np.asarray(full), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(u))(x)), np.asarray(full), rtol=1e-8, atol=1e-8)
    batched = jax.jit(jax.vmap(jax.value_and_grad(u)))(jnp.stack([x, x + 0.1]))
    for k, v in enumerate((x, x + 0.1)):
        direct = potential.value_and_grad(v)
        assert float(batched[0][k]) == pytest.approx(float(direct[0]), rel=1e-12)
        np.testing.assert_allclose(np.asarray(batched[1][k]), np.asarray(direct[1]), rtol=1e-12, atol=1e-12)
    # nested batches
    grid = jnp.stack([jnp.stack([x, x + 0.1]), jnp.stack([x - 0.1, x + 0.2])])
    nested = jax.jit(jax.vmap(jax.vmap(jax.value_and_grad(u))))(grid)
    direct = potential.value_and_grad(grid[1, 0])
    assert nested[1].shape == grid.shape and float(nested[0][1, 0]) == pytest.approx(float(direct[0]), rel=1e-12)
    np.testing.assert_allclose(np.asarray(nested[1][1, 0]), np.asarray(direct[1]), rtol=1e-12, atol=1e-12)


def test_gauss_newton_hessian_is_the_hessian_where_predictions_meet_the_data(toy, schedule, truth_trajectory):
    """Noise-free data, evaluated at the truth: every residual is zero, so the only term
    the Gauss-Newton Hessian drops vanishes and it equals central differences of the
    exact gradient (tight solver); its value and gradient are the potential's."""
    rows = [dict(patient="p1", modality="NM", tracer="177Lu-PSMA-617", time_h=t, region=region, activity_mbq=a)
            for region in REGIONS for t, a in zip(TIMES_H, np.asarray(truth_trajectory.activity_mbq[region]))]
    options = pbpk.SolverOptions(rtol=1e-10, atol=1e-12, max_steps=20000, adjoint="forward")
    problem = make_problem(toy, pd.DataFrame(rows), schedule, free=FREE, options=options)
    potential = _Potential(problem, seed=0)
    x = potential.x0.copy()
    x[potential.positions("z")] = [math.log(TRUTH[n] / FREE[n][0]) / FREE[n][1] for n in problem.free_names]
    value, grad, hessian = (np.asarray(a) for a in potential.gauss_newton(jnp.asarray(x)))
    exact_value, exact_grad = potential.value_and_grad(jnp.asarray(x))
    assert float(value) == pytest.approx(float(exact_value), rel=1e-12)
    np.testing.assert_allclose(grad, np.asarray(exact_grad), rtol=1e-10, atol=1e-10)
    def exact_gradient(v):
        return np.asarray(potential.value_and_grad(jnp.asarray(v))[1])

    step = 1e-4
    by_differences = np.stack([(exact_gradient(x + step * e) - exact_gradient(x - step * e)) / (2 * step)
                               for e in np.eye(x.size)])
    np.testing.assert_allclose(hessian, 0.5 * (by_differences + by_differences.T), rtol=1e-5,
                               atol=1e-5 * np.abs(hessian).max())


_PARALLEL_CHAINS_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import calibration, pbpk
from toy_models import receptor_toy_model
import test_calibration as T
toy = receptor_toy_model()
schedule = T.one_cycle_schedule()
table = T.noisy_table(pbpk.simulate(toy, schedule, T.TIMES_H, T.TRUTH))
means = {{}}
for method in ("parallel", "sequential", "vectorized"):
    post = calibration.fit(toy, table, schedule, "nuts", free=T.FREE, num_warmup=20, num_samples=20, num_chains=2,
                           chain_method=method, options=T.TEST_SOLVER, seed=0)
    means[method] = post.summary()["mean"].tolist()
print(json.dumps(means))
"""


@pytest.mark.slow
def test_nuts_parallel_chains_run_on_two_host_devices():
    """chain_method="parallel" (pmap over two host devices) runs the chains through the
    solve traced into their program (a host callback would deadlock under pmap) and gives
    the sequential chains' samples (same seed; the two programs differ in rounding only),
    as do the vectorised chains.
    In a subprocess: the device count is fixed when JAX starts; the timeout turns a hang
    into a failure."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", _PARALLEL_CHAINS_SCRIPT.format(tests=tests)], env=env,
                          cwd=str(Path(tests).parent), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    means = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(means["parallel"], means["sequential"], rtol=1e-5)
    # vectorised chains: batched host calls of the compiled solve (same samples)
    np.testing.assert_allclose(means["vectorized"], means["sequential"], rtol=1e-5)


def test_newton_and_lbfgs_find_the_same_map(toy, table, schedule):
    potential = _Potential(make_problem(toy, table, schedule, free=FREE,
                                        options=forward_mode(TEST_SOLVER)), seed=0)
    x_lbfgs, res_lbfgs = find_map(potential)
    x_newton, res_newton = find_map(potential, newton=True)
    assert res_newton.success and res_lbfgs.success
    assert float(res_newton.fun) <= float(res_lbfgs.fun) + 1e-8
    np.testing.assert_allclose(x_newton, x_lbfgs, atol=2e-4)
    # the search hands back H_GN at its point: SVI's Laplace start need not evaluate it again
    from calibration.fit import laplace_scale_tril
    np.testing.assert_allclose(laplace_scale_tril(potential, x_newton, res_newton.hess),
                               laplace_scale_tril(potential, x_newton), rtol=1e-10, atol=1e-12)


def test_nuts_holds_the_laplace_metric_or_adapts_it(toy, table, schedule):
    """run_nuts with the Laplace covariance: held fixed (the warm-up adapts the step size
    only), or the start of NumPyro's windowed adaptation (adapt_metric)."""
    potential = _Potential(make_problem(toy, table, schedule, free=FREE,
                                        options=forward_mode(TEST_SOLVER)), seed=0)
    x_map, _ = find_map(potential, newton=True)
    cov, positive = laplace_covariance(potential, x_map)
    assert positive
    settings = dict(num_warmup=40, num_samples=10, num_chains=1, chain_method="sequential")
    _, stats, fixed = run_nuts(potential, x_map, cov, jax.random.PRNGKey(0), 0, **settings)
    _, _, adapted = run_nuts(potential, x_map, cov, jax.random.PRNGKey(0), 0, adapt_metric=True, **settings)
    np.testing.assert_array_equal(fixed.inverse_mass[0], cov)
    assert np.max(np.abs(adapted.inverse_mass[0] - cov)) > 1e-2 * np.max(np.abs(cov))
    assert fixed.step_size.shape == (1,) and 0 < fixed.step_size[0] < 10
    assert stats["num_steps"].shape == (1, 10)


def test_nuts_trajectories_solve_at_nuts_solver_unless_options_are_given(toy, table, schedule):
    """Without the caller's solver options NUTS gets its own potential at NUTS_SOLVER (the
    rest of the problem unchanged); with them, every solve keeps them.  NUTS_SOLVER's
    predictions stay within 0.1 of the smallest measurement error (5 %) of a tight solve."""
    problem = make_problem(toy, table, schedule, free=FREE, options=forward_mode(calibration.CALIBRATION_SOLVER))
    built, info = [], {}
    assert nuts_solver_potential("nuts", None, problem, lambda p: built.append(p) or "nuts potential",
                                 info) == "nuts potential"
    assert built[0].options == forward_mode(calibration.NUTS_SOLVER)
    assert dataclasses.replace(built[0], options=problem.options) == problem
    assert info == {"nuts_solver_rtol": calibration.NUTS_SOLVER.rtol}
    info = {}
    assert nuts_solver_potential("nuts", TEST_SOLVER, problem, built.append, info) is None
    assert info == {"nuts_solver_rtol": problem.options.rtol} and len(built) == 1
    assert nuts_solver_potential("laplace", None, problem, built.append, info) is None and len(built) == 1

    theta = jnp.asarray([f.median for f in problem.free])
    tight = dataclasses.replace(problem, options=pbpk.SolverOptions(rtol=1e-9, atol=1e-12, max_steps=16384))
    (loose, ok), (ref, ok_ref) = (predicted_activity(p, theta) for p in (built[0], tight))
    assert bool(ok) and bool(ok_ref)
    assert float(jnp.max(jnp.abs(loose / ref - 1))) < 0.1 * 0.05


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("change, error, match", [
    (lambda t: t.iloc[0:0], calibration.TableError, "empty"),
    (lambda t: t.drop(columns="tracer"), calibration.TableError, "tracer"),
    (lambda t: t.assign(region="pancreas"), calibration.TableError, "pancreas"),
    (lambda t: t.assign(time_h=-1.0), calibration.TableError, "time_h"),
    (lambda t: t.assign(activity_mbq=0.0), calibration.TableError, "activity_mbq"),
    (lambda t: t.assign(tracer="68Ga-PSMA-11"), calibration.TableError, "never administered"),
    (lambda t: t.assign(cycle=2), calibration.TableError, "cycle 2"),
    (lambda t: t.assign(modality="MR"), calibration.TableError, "modality"),
    (lambda t: pd.concat([t, t.assign(patient="p2")]), calibration.TableError, "patient"),
])
def test_bad_tables_raise_specific_errors(toy, table, schedule, change, error, match):
    with pytest.raises(error, match=match):
        make_problem(toy, change(table), schedule, free=FREE)


def test_bad_fit_arguments(toy, table, schedule):
    with pytest.raises(calibration.CalibrationError, match="method"):
        calibration.fit(toy, table, schedule, method="mcmc")
    for steps, rate, match in ((0, 0.01, "svi_steps"), (2.5, 0.01, "svi_steps"), (100, -0.1, "svi_learning_rate")):
        with pytest.raises(calibration.CalibrationError, match=match):
            calibration.fit(toy, table, schedule, method="svi", svi_steps=steps, svi_learning_rate=rate)
    for settings, match in ((dict(nuts_metric="diagonal"), "nuts_metric"), (dict(target_accept=1.0), "target_accept"),
                            (dict(target_accept="high"), "target_accept")):
        with pytest.raises(calibration.CalibrationError, match=match):
            calibration.fit(toy, table, schedule, method="nuts", **settings)
    with pytest.raises(calibration.CalibrationError, match="not a parameter"):
        make_problem(toy, table, schedule, free=["kidney_rden"])
    with pytest.raises(calibration.CalibrationError, match="sigma_log"):
        calibration.FreeParameter("clearance_per_h", 0.3, 0.0)


def test_fixed_parameters_enter_every_solve(toy, table, schedule):
    """fixed= holds known patient parameters in the solves of the likelihood: the problem's
    predictions equal a direct simulation with those values; bad fixed values are refused."""
    from calibration.likelihood import predicted_activity

    fixed = {"kon_l_nmol_h": 2.0, "koff_per_h": 0.03}
    free = {k: v for k, v in FREE.items() if k != "clearance_per_h"}
    problem = make_problem(toy, table, schedule, free=free, fixed=fixed, options=TEST_SOLVER)
    theta = jnp.asarray([55.0, 40.0])
    pred, ok = predicted_activity(problem, theta)
    direct = pbpk.simulate(toy, schedule, TIMES_H, {**fixed, **problem.parameters(theta)}, tia=False,
                           options=TEST_SOLVER)
    expected = np.concatenate([np.asarray(direct.activity_mbq[r]) for r in REGIONS])
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(pred), expected, rtol=1e-12)
    default = pbpk.simulate(toy, schedule, TIMES_H, problem.parameters(theta) | {"kon_l_nmol_h": 2.76,
                                                                               "koff_per_h": 0.015},
                            options=TEST_SOLVER)
    assert abs(float(default.activity_mbq["kidneys"][-1]) / expected[len(TIMES_H) - 1] - 1) > 0.05
    for bad, match in (({"no_such": 1.0}, "not parameters"), ({"clearance_per_h": 0.2}, "also free"),
                       ({"koff_per_h": -1.0}, "outside its bounds"), ({"koff_per_h": "fast"}, "expected a number")):
        with pytest.raises(calibration.CalibrationError, match=match):
            make_problem(toy, table, schedule, free=FREE if "clearance_per_h" in bad else free, fixed=bad)


def test_patients_of_one_protocol_share_the_compiled_potential(toy, table, schedule):
    """A second patient with the same design (other measured values, other fixed values)
    reuses the first one's compiled potential, and its value and gradient equal those of
    a potential compiled for it alone."""
    from calibration.fit import ChainRulePotential, numpyro_model, predicted_activity
    from calibration.priors import error_scale_medians

    options = pbpk.SolverOptions(rtol=1e-5, atol=1e-8, max_steps=4096, adjoint="forward")
    free = {k: v for k, v in FREE.items() if k != "clearance_per_h"}
    first = make_problem(toy, table, schedule, free=free, fixed={"clearance_per_h": 0.25}, options=options)
    other_table = table.assign(activity_mbq=table["activity_mbq"] * np.linspace(0.8, 1.3, len(table)))
    second = make_problem(toy, other_table, schedule, free=free, fixed={"clearance_per_h": 0.18}, options=options)
    assert first.structure_key() == second.structure_key()
    a, b = _Potential(first, seed=0), _Potential(second, seed=0)
    assert b._compiled is a._compiled
    init = {"z": jnp.zeros(2), "error_scale": jnp.asarray(error_scale_medians(second.used_error_groups))}
    alone = ChainRulePotential(numpyro_model, (second,), init, 0,
                               forward=True, theta_of=lambda sites: second.theta_from_z(sites["z"]),
                               predict=lambda theta, data: predicted_activity(second, theta))
    x = b.x0 + 0.1 * np.arange(b.x0.size) - 0.15
    (v_b, g_b), (v_alone, g_alone), (v_a, _) = b.value_and_grad(x), alone.value_and_grad(x), a.value_and_grad(x)
    np.testing.assert_allclose(float(v_b), float(v_alone), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g_b), np.asarray(g_alone), rtol=1e-9)
    assert abs(float(v_a) - float(v_b)) > 1.0  # other data, other potential
    other_design = make_problem(toy, table[table["time_h"] < 100], schedule, free=free,
                                fixed={"clearance_per_h": 0.25}, options=options)
    assert other_design.structure_key() != first.structure_key()


def test_error_scale_priors_can_be_set_per_group(toy, table, schedule):
    """error_scales= replaces the published prior medians of the groups named (the fit
    starts at them), the others keep theirs; unknown groups and bad values are refused."""
    problem = make_problem(toy, table, schedule, free=FREE, error_scales={"SPECT lesion": 0.1})
    assert problem.error_scale_prior == (0.35, 0.27, 0.16, 0.1)
    potential = _Potential(problem, seed=0)
    start = potential.unravel(jnp.asarray(potential.x0))["error_scale"]  # log of the medians (SPECT organ, lesion)
    np.testing.assert_allclose(np.exp(np.asarray(start)), [0.16, 0.1], rtol=1e-12)
    assert problem.structure_key() != make_problem(toy, table, schedule, free=FREE).structure_key()
    for bad, match in (({"MRI organ": 0.1}, "unknown group"), ({"PET organ": 0.0}, "positive"),
                       ({"PET organ": "low"}, "positive")):
        with pytest.raises(calibration.CalibrationError, match=match):
            make_problem(toy, table, schedule, free=FREE, error_scales=bad)


def test_observations_index_the_schedule_clock(toy, table):
    """time_h is after the row's own injection: with the therapy given at 10 h, the
    schedule-clock times shift by 10 h; uncertainty becomes relative."""
    late = pbpk.Schedule([pbpk.Administration(10.0, 7400.0, 90.0, TRACER)])
    t = table.assign(activity_uncertainty_mbq=0.1 * table["activity_mbq"])
    obs = calibration.observations_from_table(t, toy, late)
    np.testing.assert_allclose(obs.times_h, TIMES_H + 10.0)
    np.testing.assert_allclose(obs.relative_uncertainty, 0.1)
    assert obs.is_lesion.sum() == len(TIMES_H)  # the lesion rows
    assert [toy.region_names[i] for i in obs.region_index[:1]] == ["kidneys"]


def test_separate_ligands_accepts_tracer_aliases(toy, table, schedule):
    """The table names the tracer by an alias (177Lu-PSMA-617, the schedule's tracer is
    Lu-177-PSMA-617): ligand segments still take every row, at its own time."""
    assert set(table["tracer"]) == {"177Lu-PSMA-617"} and TRACER != "177Lu-PSMA-617"
    problem = make_problem(toy, table, schedule, free=FREE, separate_ligands=True)
    (segment,) = problem.segments
    np.testing.assert_array_equal(segment.rows, np.arange(len(table)))
    np.testing.assert_allclose(segment.times_h[segment.time_index], table["time_h"].to_numpy())
