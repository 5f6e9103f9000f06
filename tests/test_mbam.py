"""pbpk.mbam: FIM, geodesics and limits against the reference `mbam` package (0.1.0,
mktranstrum/MBAM, test dependency) on its own example models, and on the receptor toy
model against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import jax.numpy as jnp

import pbpk
from pbpk.mbam.fisher import fisher_from_jacobian, fisher_information
from pbpk.mbam.geodesic import geodesic, initial_velocity
from pbpk.mbam.limits import classify_direction, identify_limit
from pbpk.mbam.predictions import FunctionPredictions, MBAMError, Predictions
from toy_models import TRACER, limit_on, receptor_toy_model

mbam = pytest.importorskip("mbam")
from mbam.finite_difference import AvvCD4, Avv_func  # noqa: E402
from scipy.integrate import odeint  # noqa: E402


# ------------------------------------------------ mbam example 1: sum of two exponentials
# mbam examples/exp_example.py: r(x) = exp(-e^x0 t) + exp(-e^x1 t), t = 0.5, 1, 2, x = log(1, 2);
# analytic Jacobian and central-difference A_vv (h = 1e-4), as in the example.
T_EXP = np.array([0.5, 1.0, 2.0])


def exp_r_np(x):
    return np.exp(-np.exp(x[0]) * T_EXP) + np.exp(-np.exp(x[1]) * T_EXP)


def exp_j_np(x):
    return np.array([-T_EXP * np.exp(x[k]) * np.exp(-np.exp(x[k]) * T_EXP) for k in (0, 1)]).T


def exp_avv_np(x, v, h=1e-4):
    return (exp_r_np(x + h * v) + exp_r_np(x - h * v) - 2 * exp_r_np(x)) / h / h


EXP = FunctionPredictions(lambda x: jnp.exp(-jnp.exp(x[0]) * T_EXP) + jnp.exp(-jnp.exp(x[1]) * T_EXP), 2,
                          ("log_k0", "log_k1"))


class _Path:
    """A path of the mbam package seen through our limit identification."""

    def __init__(self, names, x, v):
        self.names, self.end, self.end_velocity = names, x, v / np.linalg.norm(v)


def _mbam_path(r, j, avv, x, v, t_end):
    geo = mbam.Geodesic(r, j, avv, x, v, atol=1e-8, rtol=1e-8)
    geo.integrate(t_end)
    return geo


def test_exp_fim_and_initial_velocity_match_mbam():
    x = np.log([1.0, 2.0])
    j = EXP.jacobian(x)
    np.testing.assert_allclose(j, exp_j_np(x), rtol=1e-12)
    np.testing.assert_allclose(EXP.avv(x, np.array([0.3, -0.8])), exp_avv_np(x, np.array([0.3, -0.8])), rtol=1e-5)
    fim = fisher_information(EXP, x)
    np.testing.assert_allclose(fim.matrix, exp_j_np(x).T @ exp_j_np(x), rtol=1e-12)
    np.testing.assert_allclose(fim.eigenvalues, np.linalg.eigvalsh(exp_j_np(x).T @ exp_j_np(x)), rtol=1e-10)
    v_ref = mbam.initial_velocity(x, exp_j_np, exp_avv_np)
    np.testing.assert_allclose(initial_velocity(EXP, x), v_ref, atol=1e-8)


def test_exp_geodesic_reaches_the_same_fold_as_mbam():
    x = np.log([1.0, 2.0])
    ours = geodesic(EXP, x, rtol=1e-8, atol=1e-8)
    assert ours.status == "boundary", ours.message
    ref = _mbam_path(exp_r_np, exp_j_np, exp_avv_np, x, mbam.initial_velocity(x, exp_j_np, exp_avv_np), ours.ts[-1])
    for k in range(2):  # same path, to the integrators' accuracy
        np.testing.assert_allclose(np.interp(ours.ts, ref.ts, ref.xs[:, k]), ours.xs[:, k], atol=1e-4)
    # the fold line k0 = k1 of mbam's exp_example ("singularity at the fold line x[0] = x[1]")
    lim = identify_limit(EXP, ours)
    end_ref = np.array([np.interp(ours.ts[-1], ref.ts, ref.xs[:, k]) for k in range(2)])
    v_ref = np.array([np.interp(ours.ts[-1], ref.ts, ref.vs[:, k]) for k in range(2)])
    lim_ref = identify_limit(EXP, _Path(EXP.free, end_ref, v_ref))
    assert lim.kind == lim_ref.kind == "equal"
    assert lim.parameters == lim_ref.parameters == ("log_k0", "log_k1")
    assert np.linalg.svd(exp_j_np(end_ref), compute_uv=False)[-1] ** 2 < 1e-4 * fisher_information(EXP, x).eigenvalues[0]


# ---------------------------------------------- mbam example 2: Michaelis-Menten reaction
# mbam examples/MMR.py: dy/dt = -e^x0 y / (e^x1 + y), y(0) = 1, observed at t = 1, 2, 5,
# x = log(1, 1); Jacobian from sensitivity ODEs (scipy odeint), A_vv by mbam's AvvCD4, h = 1e-2.
T_MMR = np.array([0.0, 1.0, 2.0, 5.0])


def mmr_r_np(x):
    return odeint(lambda y, t: -np.exp(x[0]) * y / (np.exp(x[1]) + y), [1.0], T_MMR, rtol=1e-12, atol=1e-12, mxstep=50_000)[1:, 0]


def mmr_j_np(x):
    def drhs(y, t):
        dfdy = -np.exp(x[0] + x[1]) / (np.exp(x[1]) + y[0]) ** 2
        return [-np.exp(x[0]) * y[0] / (np.exp(x[1]) + y[0]),
                dfdy * y[1] - np.exp(x[0]) * y[0] / (np.exp(x[1]) + y[0]),
                dfdy * y[2] + np.exp(x[0] + x[1]) * y[0] / (np.exp(x[1]) + y[0]) ** 2]

    return odeint(drhs, [1.0, 0.0, 0.0], T_MMR, rtol=1e-12, atol=1e-12, mxstep=50_000)[1:, 1:]


MMR_AVV_NP = Avv_func(mmr_r_np, AvvCD4, h=1e-2)


def _mmr_jax(x):
    import diffrax

    term = diffrax.ODETerm(lambda t, y, a: -jnp.exp(x[0]) * y / (jnp.exp(x[1]) + y))
    sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 5.0, 0.01, jnp.asarray(1.0),
                              saveat=diffrax.SaveAt(ts=jnp.asarray(T_MMR[1:])),
                              stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
                              adjoint=diffrax.ForwardMode())
    return sol.ys


MMR = FunctionPredictions(_mmr_jax, 2, ("log_vmax", "log_km"))


@pytest.mark.parametrize("forward, kind, params", [
    (True, "ratio", {"log_vmax", "log_km"}),  # K_M, V_max -> infinity at fixed V_max/K_M: first order
    (False, "zero", {"log_km"}),  # K_M -> 0: zero-order elimination
])
def test_mmr_geodesic_reaches_the_same_limit_as_mbam(forward, kind, params):
    x = np.zeros(2)
    np.testing.assert_allclose(MMR.jacobian(x), mmr_j_np(x), rtol=1e-6)
    np.testing.assert_allclose(fisher_information(MMR, x).matrix, mmr_j_np(x).T @ mmr_j_np(x), rtol=1e-6)
    v0 = mbam.initial_velocity(x, mmr_j_np, MMR_AVV_NP, forward=forward)
    np.testing.assert_allclose(initial_velocity(MMR, x, forward=forward), v0, atol=1e-5)
    ours = geodesic(MMR, x, forward=forward, rtol=1e-6, atol=1e-6)
    assert ours.status == "boundary", ours.message
    ref = _mbam_path(mmr_r_np, mmr_j_np, MMR_AVV_NP, x, v0, ours.ts[-1])
    for k in range(2):
        np.testing.assert_allclose(np.interp(ours.ts, ref.ts, ref.xs[:, k]), ours.xs[:, k], atol=2e-2)
    lim = identify_limit(MMR, ours)
    v_ref = np.array([np.interp(ours.ts[-1], ref.ts, ref.vs[:, k]) for k in range(2)])
    lim_ref = classify_direction(v_ref, MMR.free)
    assert (lim.kind, set(lim.parameters)) == (lim_ref.kind, set(lim_ref.parameters)) == (kind, params)
    assert lim.alignment > 0.99


def test_linear_model_geodesic_is_a_straight_line():
    """mbam tests/test_geodesic.py: for r = J x, A_vv = 0 and the velocity stays v0."""
    t = np.logspace(-4, 2, 10)
    jl = np.array([t**n for n in range(5)]).T
    lin = FunctionPredictions(lambda x: jnp.asarray(jl) @ x, 5)
    rng = np.random.default_rng(1717)
    x0, v0 = rng.standard_normal(5), rng.standard_normal(5)
    np.testing.assert_allclose(lin.avv(x0, v0), 0.0, atol=1e-12)
    path = geodesic(lin, x0, v0, t_max=3.0)
    assert path.status == "t_max"
    np.testing.assert_allclose(path.vs, np.broadcast_to(v0, path.vs.shape), atol=1e-10)
    np.testing.assert_allclose(path.xs[-1], x0 + 3.0 * v0, atol=1e-8)
    np.testing.assert_allclose(path.taus[-1], 3.0 * np.linalg.norm(jl @ v0), rtol=1e-8)


# ------------------------------------------------------------------ the receptor toy model
TIMES_H = [1.0, 4.0, 24.0, 96.0]


@pytest.fixture(scope="module")
def toy_predictions():
    model = receptor_toy_model()
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
    return Predictions.build(model, schedule, TIMES_H, regions=["kidneys", "lesion_1", "blood"],
                             options=pbpk.SolverOptions(rtol=1e-6, atol=1e-9, adjoint="forward"))


def test_toy_fim_equals_finite_difference_and_is_sloppy(toy_predictions):
    p = toy_predictions
    theta = p.theta0
    assert len(p.free) == 9 and "lambda_lu_177_per_h" not in p.free
    fim = fisher_information(p, theta)  # J from the compiled jet (`value_and_jacobian`, as refits use it)
    np.testing.assert_allclose(p.value_and_jacobian(theta)[0], p.r(theta), rtol=1e-10)
    h = 1e-4  # central differences of r in log-parameters, O(h^2) error
    jfd = np.stack([(p.r(theta + h * e) - p.r(theta - h * e)) / (2 * h) for e in np.eye(len(theta))], axis=1)
    fim_fd = jfd.T @ jfd
    assert np.abs(fim.matrix - fim_fd).max() <= 1e-4 * np.abs(fim_fd).max()
    # sloppy: eigenvalues over more than 6 decades (measured 4.8e-5 .. 1.75e3, 7.6 decades)
    assert fim.spread_decades > 6
    np.testing.assert_allclose(fim.eigenvalues, np.linalg.eigvalsh(fim_fd), rtol=1e-2, atol=1e-6)


def test_toy_geodesic_reaches_rapid_binding_equilibrium(toy_predictions):
    """Forward sloppiest geodesic: kon, koff -> infinity at fixed K_D (rapid binding
    equilibrium), which `apply_limit` refuses with a message (the binding flux is not linear
    in the amounts: its limit needs an algebraic isotherm, not implemented)."""
    from pbpk.mbam.reduce import apply_limit

    p = toy_predictions
    path = geodesic(p, rtol=1e-3, atol=1e-3)
    assert path.status == "boundary", path.message
    assert path.min_eigenvalues[-1] < 1e-4 * path.min_eigenvalues[0]
    lim = identify_limit(p, path)
    assert lim.kind == "ratio" and set(lim.parameters) == {"kon_l_nmol_h", "koff_per_h"} and lim.signs == (1, 1)
    assert lim.alignment > 0.95
    moved = path.end - path.xs[0]
    i_on, i_off = p.free.index("kon_l_nmol_h"), p.free.index("koff_per_h")
    assert moved[i_on] > 3 and abs(moved[i_on] - moved[i_off]) < 0.2
    with pytest.raises(MBAMError, match="not supported"):
        apply_limit(p.model, lim)


@pytest.mark.slow
def test_toy_reduction_step(toy_predictions, tmp_path):
    """Forward sloppiest geodesic: rapid binding equilibrium, refused (recorded, not
    raised); then the backward one: kon -> 0 while both receptor densities -> infinity at
    fixed kon*R (linear uptake): applied, refitted, checked with pbpk.simulate."""
    from pbpk.mbam.reduce import reduce

    p = toy_predictions
    full = p.model
    lines = []
    res = reduce(full, predictions=p, directions=((0, True), (0, False)), max_steps=1,
                 geodesic_options=dict(eig_drop=1e-2), log=lines.append)
    (_, _, _, _, first, refused), (_, _, fwd, path, lim, note) = res.attempts
    assert first.kind == "ratio" and "not linear in the amounts" in refused
    assert len(lines) == 2 and "applied" in lines[1]
    assert not fwd and path.status == "boundary" and note == "limit applied"
    assert lim.kind == "scaling" and lim.parameters[0] == "kon_l_nmol_h" and lim.signs == (-1, 1, 1)
    assert set(lim.parameters[1:]) == {"kidneys_rden_nmol_l", "lesion_1_rden_nmol_l"}
    # (4) one parameter fewer, simulates, reproduces the full model within the threshold
    assert len(res.steps) == 1 and res.message == "reached max_steps = 1"
    reduced = res.model
    assert len(reduced.parameters) == len(full.parameters) - 1
    assert "kon_l_nmol_h" not in reduced.parameter_names
    assert res.steps[0].rms_sigma <= 1.0
    assert len(res.free) == res.steps[0].n_free == len(p.free) - 1
    sched = p.schedules[0]
    a = np.asarray(pbpk.simulate(reduced, sched, TIMES_H, tia=False).region_activity_mbq)
    b = np.asarray(pbpk.simulate(full, sched, TIMES_H, tia=False).region_activity_mbq)
    regions = [full.region_names.index(r) for r in p.regions]
    rel = np.abs(a[:, regions] - b[:, regions]) / np.abs(b[:, regions])
    assert rel.max() < 0.05  # measured 1.1 % (RMS 0.05 sigma with sigma = 10 % of the activity)
    res.report(tmp_path / "reduction.txt")
    res.plot(tmp_path / "reduction.png")
    assert (tmp_path / "reduction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reduction.png", "reduction.txt"]  # no temporary files
    text = (tmp_path / "reduction.txt").read_text()
    assert "kon_l_nmol_h -> 0" in text and "limit applied" in text and "worst prediction" in text
    # the worst single prediction of the refit bounds its RMS; a tighter bound refuses the limit
    worst = res.steps[0].max_sigma
    assert res.steps[0].rms_sigma <= worst <= 1.0
    strict = reduce(full, predictions=p, directions=((0, False),), max_steps=1, max_prediction_sigma=0.5 * worst,
                    geodesic_options=dict(eig_drop=1e-2))
    assert not strict.steps and strict.model is full
    assert "max_prediction_sigma" in strict.message and "refit misses prediction schedule 1: " in strict.message


@pytest.mark.slow
def test_predictions_with_tia_and_two_schedules(toy_predictions):
    """Several schedules (PET-like tracer dose and therapy) and TIA as predictions: the
    unweighted vector is the concatenation of what pbpk.simulate returns."""
    m = toy_predictions.model
    low = pbpk.Schedule([pbpk.Administration(0.0, 100.0, 1.6, TRACER)])
    high = toy_predictions.schedules[0]
    pred = Predictions.build(m, [low, high], [[1.0], [4.0, 24.0]], regions=["kidneys"], include_tia=True,
                             options=pbpk.SolverOptions(rtol=1e-6, atol=1e-9, adjoint="forward"))
    raw = pred.raw(pred.theta0)
    expect = []
    for sched, t in ((low, [1.0]), (high, [4.0, 24.0])):
        tr = pbpk.simulate(m, sched, t, options=pbpk.SolverOptions(rtol=1e-6, atol=1e-9))
        expect += list(np.asarray(tr.region_activity_mbq)[0, 0]) + [float(np.asarray(tr.region_tia_mbq_h)[0, 0])]
    np.testing.assert_allclose(raw, expect, rtol=1e-4)
    np.testing.assert_allclose(pred.weights, 1.0 / (0.1 * raw + 1e-3), rtol=1e-6)
    nuc = tr.nuclides[0]
    assert pred.labels() == [f"schedule 1: {nuc} kidneys at 1 h", f"schedule 1: {nuc} kidneys TIA",
                             f"schedule 2: {nuc} kidneys at 4 h", f"schedule 2: {nuc} kidneys at 24 h",
                             f"schedule 2: {nuc} kidneys TIA"]
    # TIA of other regions than the imaged ones (e.g. every organ): appended per schedule
    wide = Predictions.build(m, [low, high], [[1.0], [4.0, 24.0]], regions=["kidneys"],
                             include_tia=["kidneys", "blood"], options=pred.options)
    wraw = wide.raw(wide.theta0)
    assert wide.labels()[2] == f"schedule 1: {nuc} blood TIA" and wraw.size == 7
    np.testing.assert_allclose(wraw[[0, 1, 3, 4, 5]], raw, rtol=1e-10)
    blood = [float(np.asarray(pbpk.simulate(m, s, [1.0], options=pred.options).region_tia_mbq_h)[0, m.region_names.index(
        "blood")]) for s in (low, high)]
    np.testing.assert_allclose(wraw[[2, 6]], blood, rtol=1e-4)
    with pytest.raises(MBAMError, match="include_tia: regions"):
        Predictions.build(m, low, [1.0], regions=["kidneys"], include_tia=["nowhere"])


# ------------------------------------------------------------------------- degenerate input
def test_failing_predictions_end_the_geodesic_with_a_message():
    """r becomes NaN (a failed solve) beyond theta_0 = 1: the path stops at the last good
    point with status 'failed' instead of raising."""
    bad = FunctionPredictions(lambda x: jnp.where(x[0] < 1.0, 1.0, jnp.nan) * jnp.stack([x[0], x[1], x[0] * x[1]]), 2)
    path = geodesic(bad, np.array([0.0, 1.0]), np.array([1.0, 0.0]), t_max=5.0)
    assert path.status == "failed" and "last good point" in path.message
    assert np.all(np.isfinite(path.xs)) and path.xs[-1, 0] < 1.0


def test_no_sloppy_direction_returns_the_model_with_a_message(toy_predictions):
    from pbpk.mbam.reduce import reduce

    res = reduce(toy_predictions.model, predictions=toy_predictions, min_eigenvalue=1e-6)
    assert res.model is toy_predictions.model and res.steps == []
    assert res.message.startswith("no sloppy direction left")


def test_bad_inputs_raise_mbam_error(toy_predictions):
    m = toy_predictions.model
    with pytest.raises(MBAMError, match="regions"):
        Predictions.build(m, toy_predictions.schedules, TIMES_H, regions=["liver"])
    with pytest.raises(MBAMError, match="free parameters"):
        Predictions.build(m, toy_predictions.schedules, TIMES_H, free=["nope"])
    with pytest.raises(MBAMError, match="finite M x N"):
        fisher_from_jacobian(np.full((3, 2), np.nan), np.zeros(2), ("a", "b"))
    with pytest.raises(MBAMError, match="initial velocity"):
        geodesic(EXP, np.zeros(2), np.zeros(2))
    with pytest.raises(MBAMError, match="give theta0"):
        geodesic(EXP)
    from pbpk.mbam.reduce import reduce

    with pytest.raises(MBAMError, match="schedules and times_h"):
        reduce(m)


# ------------------------------------------------------------- limits on the model (reduce)
def test_rate_constant_to_zero_removes_reactions_and_matches_the_full_model():
    import sympy as sp
    from pbpk.mbam.reduce import apply_limit

    full = receptor_toy_model()
    reduced = apply_limit(full, limit_on(full, {"koff_per_h": -1}))  # irreversible binding
    assert len(reduced.parameters) == len(full.parameters) - 1 and "koff_per_h" not in reduced.parameter_names
    assert {r.name for r in full.reactions} - {r.name for r in reduced.reactions} == {
        f"{t}_unbind_{f}" for t in ("kidneys", "lesion_1") for f in ("hot", "cold")}
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
    a = np.asarray(pbpk.simulate(reduced, schedule, TIMES_H, tia=False).region_activity_mbq)
    b = np.asarray(pbpk.simulate(full, schedule, TIMES_H, {"koff_per_h": 1e-9}, tia=False).region_activity_mbq)
    assert np.abs(a - b).max() <= 1e-6 * np.abs(b).max()
    # kon -> 0, kidney receptor density -> infinity at fixed kon * R: linear (unsaturable) uptake
    lin = apply_limit(full, limit_on(full, {"kon_l_nmol_h": -1, "kidneys_rden_nmol_l": 1}))
    (new,) = set(lin.parameter_names) - set(full.parameter_names)
    c = sp.Symbol(new)
    assert len(lin.parameters) == len(full.parameters) - 1 and set(full.parameter_names) - set(lin.parameter_names) == {
        "kon_l_nmol_h", "kidneys_rden_nmol_l"}
    assert lin.parameter(new).value == pytest.approx(2.76 * 40.0)  # kon * R at the toy model's values
    rate = {r.name: r.rate for r in lin.reactions}
    assert sp.simplify(rate["kidneys_bind_hot"] - c * sp.Symbol("kidneys_free_hot")) == 0
    assert "lesion_1_bind_hot" not in rate  # kon -> 0 switches off binding where R stays finite


def test_unsupported_limits_raise_a_clear_error():
    from pbpk.mbam.reduce import apply_limit

    full = receptor_toy_model()
    with pytest.raises(MBAMError, match="koff_per_h -> oo is not supported.*kidneys_bind"):
        apply_limit(full, limit_on(full, {"kon_l_nmol_h": 1, "koff_per_h": 1}))  # rapid equilibrium
    fold = classify_direction(np.ones(2), ("a", "b"))
    with pytest.raises(MBAMError, match="not supported"):
        apply_limit(full, type(fold)("equal", ("kon_l_nmol_h", "koff_per_h"), (0, 0), (), 1.0, ()))


def test_general_combination_is_approximated_by_its_dominant_parameters():
    from pbpk.mbam.reduce import _supported_form

    names = ("muscle_kps", "skin_kps", "rest_kps")
    lim = classify_direction(np.array([-0.29, 0.95, 0.08]), names)
    assert lim.kind == "combination"  # 0.29/0.95 >= 0.25 but the pair ratio 3.3 > 2
    simple = _supported_form(lim)
    assert (simple.kind, simple.parameters, simple.signs) == ("infinity", ("skin_kps",), (1,))
    pair = _supported_form(classify_direction(np.array([0.6, 0.7, -0.2]), names))
    assert pair.kind == "ratio" and set(pair.parameters) == {"muscle_kps", "skin_kps"}


@pytest.mark.slow
def test_flat_directions_take_their_limit_from_the_eigenvector(toy_predictions):
    """With every direction declared flat (flat_eigenvalue above the whole spectrum) no
    geodesic is integrated: the limits come from the eigenvectors and the refit decides.
    The toy's sloppiest direction is not flat (eigenvalue 5e-5): the limit read off its
    eigenvector (kon -> 0, densities -> infinity, taken from the start point rather than
    a geodesic's end) misses the full model, so the step is refused and the full model
    kept, with the reason."""
    from pbpk.mbam.reduce import reduce

    p = toy_predictions
    res = reduce(p.model, predictions=p, directions=((0, True), (0, False)), max_steps=1, flat_eigenvalue=1e9)
    assert [a[3].status for a in res.attempts] == ["flat", "flat"]
    assert "not linear" in res.attempts[0][5]  # kon, koff -> infinity: refused
    lim, note = res.attempts[1][4], res.attempts[1][5]
    assert lim.parameters[0] == "kon_l_nmol_h" and lim.signs[0] == -1
    assert note.startswith("refit misses the full model's predictions by RMS")
    assert res.steps == [] and res.model is p.model and res.message.startswith("no acceptable limit found")
