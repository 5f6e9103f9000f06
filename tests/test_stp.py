"""Classical TIA baselines (calibration.stp) against analytic results and scipy.

Activities include physical decay (not decay corrected); TIA in MBq*h; times in h.
"""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import quad
from scipy.optimize import curve_fit

from calibration import stp
from calibration.errors import (
    CalibrationError, EmptyTableError, IllPosedFitError, InvalidActivityError, InvalidTimeError,
    MissingColumnError, TableError, UnknownPopulationValueError, UnknownRegionError,
)
from dose import nuclides

LU = "Lu-177-PSMA-617"
LAM_PHYS = nuclides.decay_constant_per_h("Lu-177")
LN2 = math.log(2.0)
TIMES_H = np.array([4.0, 24.0, 48.0, 72.0, 96.0, 168.0])


def mono(a0, t_eff_h, t):
    return a0 * np.exp(-LN2 / t_eff_h * np.asarray(t, dtype=float))


def uptake(a0, lc, lu, t):
    t = np.asarray(t, dtype=float)
    return a0 * (np.exp(-lc * t) - np.exp(-lu * t))


def make_table(series, tracer=LU, sigma_rel=None):
    """Long table in the imaging.time_activity format: series = {(patient, region): (t, a)}."""
    rows = []
    for (patient, region), (t, a) in series.items():
        for k, (ti, ai) in enumerate(zip(t, a)):
            rows.append(dict(patient=patient, scan_id=f"s{k}", modality="SPECT", tracer=tracer, time_h=ti,
                             region=region, activity_mbq=ai, volume_ml=100.0, mean_bqml=ai * 1e4,
                             max_bqml=ai * 2e4,
                             activity_uncertainty_mbq=(sigma_rel * ai if sigma_rel is not None else np.nan)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- mono fit


def test_mono_fit_recovers_exact_parameters_and_tia():
    a0, t_eff = 520.0, 35.5
    lam = LN2 / t_eff
    table = make_table({("p1", "kidney"): (TIMES_H, mono(a0, t_eff, TIMES_H))})
    fit = stp.fit_mono_exponential(table, patient="p1", region="kidney")
    assert fit.params["a0_mbq"] == pytest.approx(a0, rel=1e-6)
    assert fit.params["lambda_eff_per_h"] == pytest.approx(lam, rel=1e-6)
    assert fit.tia_mbq_h == pytest.approx(a0 / lam, rel=1e-6)
    # TIA also equals the numerical integral of the fitted curve (independent check)
    integral, _ = quad(fit.activity_mbq, 0, np.inf)
    assert fit.tia_mbq_h == pytest.approx(integral, rel=1e-8)
    assert fit.flags == ()


def test_mono_fit_covariance_matches_curve_fit_and_monte_carlo():
    rng = np.random.default_rng(1)
    a0, t_eff = 300.0, 40.0
    truth = mono(a0, t_eff, TIMES_H)
    sigma = 0.05 * truth
    noisy = truth + rng.normal(0, sigma)
    fit = stp.fit_mono_exponential(TIMES_H, noisy, nuclide="Lu-177", sigma_mbq=sigma)
    popt, pcov = curve_fit(lambda t, a, l: a * np.exp(-l * t), TIMES_H, noisy, p0=[a0, LN2 / t_eff],
                           sigma=sigma, absolute_sigma=True)
    assert [fit.params["a0_mbq"], fit.params["lambda_eff_per_h"]] == pytest.approx(popt, rel=1e-6)
    np.testing.assert_allclose(fit.covariance, pcov, rtol=1e-4)
    # the first-order TIA uncertainty agrees with the spread of refits of noisy replicates
    tias = [stp.fit_mono_exponential(TIMES_H, truth + rng.normal(0, sigma), nuclide="Lu-177",
                                     sigma_mbq=sigma).tia_mbq_h for _ in range(200)]
    assert np.std(tias) == pytest.approx(fit.tia_sd_mbq_h, rel=0.15)
    assert np.mean(tias) == pytest.approx(a0 * t_eff / LN2, rel=0.02)


def test_fit_weightings_match_curve_fit():
    rng = np.random.default_rng(5)
    truth = mono(300.0, 40.0, TIMES_H)
    noisy = truth * (1 + 0.08 * rng.normal(size=TIMES_H.size))

    def model(t, a, lam):
        return a * np.exp(-lam * t)

    # default without uncertainties: proportional ("relative") weights, covariance scaled by s^2
    fit = stp.fit_mono_exponential(TIMES_H, noisy, nuclide="Lu-177")
    popt, pcov = curve_fit(model, TIMES_H, noisy, p0=[300.0, 0.02], sigma=noisy, absolute_sigma=False)
    assert list(fit.params.values()) == pytest.approx(popt, rel=1e-6)
    np.testing.assert_allclose(fit.covariance, pcov, rtol=1e-4)
    uni = stp.fit_mono_exponential(TIMES_H, noisy, nuclide="Lu-177", weighting="uniform")
    popt, pcov = curve_fit(model, TIMES_H, noisy, p0=[300.0, 0.02])
    assert list(uni.params.values()) == pytest.approx(popt, rel=1e-6)
    np.testing.assert_allclose(uni.covariance, pcov, rtol=1e-4)
    with pytest.raises(IllPosedFitError, match="uncertainties"):
        stp.fit_mono_exponential(TIMES_H, noisy, nuclide="Lu-177", weighting="uncertainty")


def test_mono_fit_respects_physical_decay_bound():
    # biological uptake still rising slowly: apparent decay slower than physical
    t = TIMES_H
    a = 100.0 * np.exp(-0.5 * LAM_PHYS * t)
    fit = stp.fit_mono_exponential(t, a, nuclide="Lu-177")
    assert fit.params["lambda_eff_per_h"] == pytest.approx(LAM_PHYS, rel=1e-9)
    assert "at_bound:lambda_eff_per_h" in fit.flags
    assert fit.params["lambda_eff_per_h"] >= LAM_PHYS


def test_two_point_mono_fit_interpolates_and_says_uncertainty_undefined():
    t = np.array([24.0, 96.0])
    a = mono(200.0, 30.0, t)
    fit = stp.fit_mono_exponential(t, a, nuclide="Lu-177")
    assert fit.tia_mbq_h == pytest.approx(200.0 * 30.0 / LN2, rel=1e-8)
    assert fit.dof == 0 and math.isnan(fit.tia_sd_mbq_h) and "no_degrees_of_freedom" in fit.flags


# --------------------------------------------------------------------------- bi-exponential


def test_biexponential_uptake_recovery_on_noise_free_data():
    a0, lc, lu = 800.0, LN2 / 42.0, 0.35
    t = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    fit = stp.fit_biexponential(t, uptake(a0, lc, lu, t), nuclide="Lu-177", form="uptake")
    assert fit.params["a0_mbq"] == pytest.approx(a0, rel=1e-5)
    assert fit.params["lambda_clearance_per_h"] == pytest.approx(lc, rel=1e-5)
    assert fit.params["lambda_uptake_per_h"] == pytest.approx(lu, rel=1e-5)
    exact = a0 * (1 / lc - 1 / lu)
    assert fit.tia_mbq_h == pytest.approx(exact, rel=1e-6)
    assert quad(fit.activity_mbq, 0, np.inf, limit=200)[0] == pytest.approx(exact, rel=1e-6)


def test_biexponential_sum_recovery_on_noise_free_data():
    af, lf, as_, ls = 300.0, 0.3, 200.0, LN2 / 50.0
    t = np.array([0.5, 1.0, 2.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    a = af * np.exp(-lf * t) + as_ * np.exp(-ls * t)
    fit = stp.fit_biexponential(t, a, nuclide="Lu-177", form="sum")
    for name, value in (("a_fast_mbq", af), ("lambda_fast_per_h", lf), ("a_slow_mbq", as_),
                        ("lambda_slow_per_h", ls)):
        assert fit.params[name] == pytest.approx(value, rel=1e-5), name
    assert fit.tia_mbq_h == pytest.approx(af / lf + as_ / ls, rel=1e-6)


def test_biexponential_tia_uncertainty_matches_monte_carlo():
    rng = np.random.default_rng(7)
    a0, lc, lu = 800.0, LN2 / 42.0, 0.35
    t = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    truth = uptake(a0, lc, lu, t)
    sigma = 0.03 * truth
    fit = stp.fit_biexponential(t, truth, nuclide="Lu-177", sigma_mbq=sigma)
    tias = [stp.fit_biexponential(t, truth + rng.normal(0, sigma), nuclide="Lu-177", sigma_mbq=sigma).tia_mbq_h
            for _ in range(150)]
    assert np.std(tias) == pytest.approx(fit.tia_sd_mbq_h, rel=0.2)


def test_unidentified_fast_uptake_is_flagged_and_tia_uncertainty_stays_finite():
    # uptake complete long before the first scan: lambda_u is not identified by the data
    rng = np.random.default_rng(3)
    a0, lc, lu = 800.0, LN2 / 35.0, 60.0
    t = TIMES_H[:4]
    truth = uptake(a0, lc, lu, t)
    noisy = truth * (1 + 0.05 * rng.normal(size=t.size))
    fit = stp.fit_biexponential(t, noisy, nuclide="Lu-177", sigma_mbq=0.05 * truth)
    assert "unidentified:delta_lambda_per_h" in fit.flags
    assert math.isnan(fit.param_sd["lambda_uptake_per_h"])
    assert np.isfinite(fit.param_sd["lambda_clearance_per_h"])
    mono_fit = stp.fit_mono_exponential(t, noisy, nuclide="Lu-177", sigma_mbq=0.05 * truth)
    # the bi-exponential collapses onto the mono-exponential: same TIA and uncertainty
    assert fit.tia_mbq_h == pytest.approx(mono_fit.tia_mbq_h, rel=1e-3)
    assert fit.tia_sd_mbq_h == pytest.approx(mono_fit.tia_sd_mbq_h, rel=1e-2)


# --------------------------------------------------------------------------- trapezoid


def test_trapezoid_hand_computed_value():
    t = np.array([2.0, 10.0])
    a = np.array([10.0, 6.0])
    r = stp.trapezoid_tia(t, a, nuclide="Lu-177", sigma_mbq=[1.0, 1.0])
    assert r.uptake_mbq_h == pytest.approx(10.0 * 2.0 / 2)
    assert r.body_mbq_h == pytest.approx(8.0 * 8.0)
    assert r.tail_mbq_h == pytest.approx(6.0 / LAM_PHYS)
    assert r.tia_mbq_h == pytest.approx(10.0 + 64.0 + 6.0 / LAM_PHYS)
    # linear in A: sd^2 = sum w_i^2 sigma_i^2 with w = (1 + 4, 4 + 1/lambda_phys)
    assert r.tia_sd_mbq_h == pytest.approx(math.hypot(5.0, 4.0 + 1.0 / LAM_PHYS))
    c = stp.trapezoid_tia(t, a, nuclide="Lu-177", uptake="constant")
    assert c.uptake_mbq_h == pytest.approx(20.0)


def test_trapezoid_with_tail_converges_to_analytic_tia():
    a0, lc, lu = 800.0, LN2 / 42.0, 0.35
    exact = a0 * (1 / lc - 1 / lu)
    errors = {}
    for tail in ("fit", "physical"):
        errs = []
        for n in (50, 100, 200, 400, 800):
            t = np.linspace(336.0 / n, 336.0, n)  # two weeks, first scan at 336/n h
            r = stp.trapezoid_tia(t, uptake(a0, lc, lu, t), nuclide="Lu-177", tail=tail)
            errs.append(abs(r.tia_mbq_h / exact - 1))
        errors[tail] = errs
    fit_tail = errors["fit"]
    assert all(e2 < e1 for e1, e2 in zip(fit_tail, fit_tail[1:]))
    assert fit_tail[-1] < 1e-4
    # second-order convergence of the trapezoid rule: ~4x per doubling
    assert fit_tail[-2] / fit_tail[-1] > 3.0
    # the physical tail overestimates (no biological clearance), by a fixed amount at fixed end time
    t = np.linspace(1.0, 336.0, 400)
    phys = stp.trapezoid_tia(t, uptake(a0, lc, lu, t), nuclide="Lu-177", tail="physical")
    a_end = uptake(a0, lc, lu, 336.0)
    assert phys.tail_mbq_h == pytest.approx(a_end / LAM_PHYS)
    assert phys.tia_mbq_h > exact
    # longer sampling makes the physical tail negligible too
    t = np.geomspace(0.05, 3000.0, 2000)
    long_phys = stp.trapezoid_tia(t, uptake(a0, lc, lu, t), nuclide="Lu-177", tail="physical")
    assert long_phys.tia_mbq_h == pytest.approx(exact, rel=1e-4)


def test_trapezoid_fit_tail_flags_rising_last_segment_and_uncertainty_matches_finite_differences():
    t = np.array([4.0, 24.0, 48.0])
    a = np.array([50.0, 80.0, 90.0])  # still rising: tail falls back to physical decay
    r = stp.trapezoid_tia(t, a, nuclide="Lu-177", tail="fit")
    assert "tail_at_physical" in r.flags and r.lambda_tail_per_h == LAM_PHYS
    a = np.array([80.0, 60.0, 30.0])
    sig = np.array([2.0, 3.0, 1.5])
    r = stp.trapezoid_tia(t, a, nuclide="Lu-177", tail="fit", sigma_mbq=sig)
    assert r.lambda_tail_per_h == pytest.approx(math.log(2.0) / 24.0)
    grad = []
    for i in range(3):
        h = 1e-6 * a[i]
        up, dn = a.copy(), a.copy()
        up[i] += h
        dn[i] -= h
        grad.append((stp.trapezoid_tia(t, up, nuclide="Lu-177", tail="fit").tia_mbq_h
                     - stp.trapezoid_tia(t, dn, nuclide="Lu-177", tail="fit").tia_mbq_h) / (2 * h))
    assert r.tia_sd_mbq_h == pytest.approx(float(np.sqrt(np.sum((np.array(grad) * sig) ** 2))), rel=1e-6)


# --------------------------------------------------------------------------- single time point


def test_haenscheid_exact_at_teff_and_twice_teff_and_error_grows_away():
    a0, t_eff = 400.0, 36.0
    true_tia = a0 * t_eff / LN2
    for t in (t_eff, 2 * t_eff):
        est = stp.haenscheid(float(mono(a0, t_eff, t)), t)
        assert est.tia_mbq_h == pytest.approx(true_tia, rel=1e-12)
    # maximum overestimate 2/(e ln2) - 1 at t = T_eff / ln2
    peak = stp.haenscheid(float(mono(a0, t_eff, t_eff / LN2)), t_eff / LN2).tia_mbq_h
    assert peak / true_tia - 1 == pytest.approx(2 / (math.e * LN2) - 1, rel=1e-12)
    assert 0.06 < peak / true_tia - 1 < 0.062
    # below T_eff and above 2 T_eff the (under)estimate error grows monotonically with distance
    early = np.linspace(0.05, 1.0, 40) * t_eff
    late = np.linspace(2.0, 8.0, 40) * t_eff
    err_early = np.abs(stp.haenscheid(mono(a0, t_eff, early), early).tia_mbq_h / true_tia - 1)
    err_late = np.abs(stp.haenscheid(mono(a0, t_eff, late), late).tia_mbq_h / true_tia - 1)
    assert np.all(np.diff(err_early) < 0) and np.all(np.diff(err_late) > 0)
    np.testing.assert_allclose(err_late, np.abs(stp.stp_relative_error("haenscheid", late, t_eff)),
                               rtol=1e-10, atol=1e-14)


def test_haenscheid_from_table_uses_nearest_scan():
    a0, t_eff = 400.0, 36.0
    table = make_table({("p1", "kidney"): (TIMES_H, mono(a0, t_eff, TIMES_H))}, sigma_rel=0.1)
    est = stp.haenscheid(table, 70.0, patient="p1", region="kidney")
    assert est.time_h == 72.0
    a72 = float(mono(a0, t_eff, 72.0))
    assert est.tia_mbq_h == pytest.approx(2 * 72.0 * a72 / LN2)
    assert est.tia_sd_mbq_h == pytest.approx(0.1 * est.tia_mbq_h)
    with pytest.raises(InvalidTimeError):
        stp.haenscheid(table, 130.0, patient="p1", region="kidney", max_offset_h=12.0)


def test_madsen_exact_with_true_half_life_and_insensitive_at_one_over_lambda():
    a0, t_eff = 400.0, 36.0
    true_tia = a0 * t_eff / LN2
    for t in (4.0, 24.0, 96.0, 168.0):
        est = stp.madsen(float(mono(a0, t_eff, t)), t, t_eff_h=t_eff)
        assert est.tia_mbq_h == pytest.approx(true_tia, rel=1e-12)

    def estimate(t, t_pop):
        return stp.madsen(float(mono(a0, t_eff, t)), t, t_eff_h=t_pop).tia_mbq_h

    h = 1e-4 * t_eff
    best_t = t_eff / LN2
    slope_best = (estimate(best_t, t_eff + h) - estimate(best_t, t_eff - h)) / (2 * h)
    slope_early = (estimate(4.0, t_eff + h) - estimate(4.0, t_eff - h)) / (2 * h)
    assert abs(slope_best) < 1e-6 * abs(slope_early)
    # analytic error formula agrees with the estimator for a wrong population half-life
    wrong = stp.madsen(float(mono(a0, t_eff, 96.0)), 96.0, t_eff_h=50.0).tia_mbq_h / true_tia - 1
    assert wrong == pytest.approx(float(stp.stp_relative_error("madsen", 96.0, t_eff, 50.0)), rel=1e-10)


def test_madsen_uncertainty_propagation_matches_finite_difference():
    est = stp.madsen(100.0, 48.0, t_eff_h=40.0, t_eff_sd_h=4.0, sigma_mbq=5.0)
    h = 1e-5
    d_t = (stp.madsen(100.0, 48.0, t_eff_h=40.0 + h).tia_mbq_h
           - stp.madsen(100.0, 48.0, t_eff_h=40.0 - h).tia_mbq_h) / (2 * h)
    d_a = est.tia_mbq_h / 100.0
    assert est.tia_sd_mbq_h == pytest.approx(math.hypot(d_t * 4.0, d_a * 5.0), rel=1e-6)


def test_madsen_population_defaults():
    t = TIMES_H
    table = make_table({("p1", "kidney_left"): (t, mono(300.0, 35.5, t)),
                        ("p1", "lesion_1"): (t, mono(50.0, 60.0, t))})
    est = stp.madsen(table, 96.0, patient="p1", region="kidney_left")
    assert est.t_eff_h == 35.5 and "default_t_eff" in est.flags
    assert est.tia_mbq_h == pytest.approx(300.0 * 35.5 / LN2, rel=1e-12)
    assert stp.population_half_life("parotid_r", LU).t_eff_h == 42.2
    with pytest.warns(UserWarning, match="not verified"):
        stp.madsen(table, 96.0, patient="p1", region="lesion_1")
    with pytest.raises(UnknownPopulationValueError):
        stp.population_half_life("kidney", "Lu-177-DOTATATE")
    with pytest.raises(UnknownPopulationValueError):
        stp.population_half_life("liver", LU)


def test_stp_error_over_lognormal_population_matches_monte_carlo():
    rng = np.random.default_rng(11)
    median, gsd = 35.5, 1.5
    sample = median * gsd ** rng.standard_normal(200_000)
    times = np.array([24.0, 48.0, 96.0])
    for method, pop in (("haenscheid", None), ("madsen", 40.0)):
        table = stp.stp_error_lognormal(method, times, median, gsd, t_eff_population_h=pop)
        for row in table.itertuples():
            mc = stp.stp_relative_error(method, row.time_h, sample, pop)
            assert row.mean_error == pytest.approx(mc.mean(), abs=3e-3)
            assert row.mean_abs_error == pytest.approx(np.abs(mc).mean(), abs=3e-3)
            assert row.q95 == pytest.approx(np.quantile(mc, 0.95), abs=5e-3)
    # no spread: the error is the single-patient error
    point = stp.stp_error_lognormal("haenscheid", 72.0, 30.0, 1.0)
    assert point.q05[0] == pytest.approx(float(stp.stp_relative_error("haenscheid", 72.0, 30.0)), abs=1e-12)
    with pytest.raises(CalibrationError):
        stp.stp_error_lognormal("haenscheid", 72.0, 30.0, 0.5)


# --------------------------------------------------------------------------- table helper


def test_decay_corrected_table_gives_the_same_tia():
    t = TIMES_H
    a = uptake(500.0, LN2 / 40.0, 0.4, t)
    phys = make_table({("p1", "kidney"): (t, a)}, sigma_rel=0.05)
    corrected = phys.copy()
    corrected["activity_mbq"] = a * np.exp(LAM_PHYS * t)
    corrected["activity_uncertainty_mbq"] = corrected["activity_mbq"] * 0.05
    r1 = stp.trapezoid_tia(phys)
    r2 = stp.trapezoid_tia(corrected, decay_corrected=True)
    assert r2.tia_mbq_h == pytest.approx(r1.tia_mbq_h, rel=1e-12)
    assert r2.tia_sd_mbq_h == pytest.approx(r1.tia_sd_mbq_h, rel=1e-12)


def test_tia_table_applies_every_method_to_every_series():
    t = TIMES_H
    lc, lu = LN2 / 40.0, 0.4
    table = make_table({("p1", "kidney"): (t, uptake(500.0, lc, lu, t)),
                        ("p2", "kidney"): (t, uptake(450.0, LN2 / 30.0, 0.5, t)),
                        ("p2", "parotid"): (t[:3], mono(40.0, 42.0, t[:3]))}, sigma_rel=0.05)
    out = stp.tia_table(table, stp_time_h=96.0)
    assert list(out.columns) == ["patient", "tracer", "region", "cycle", "method", "tia_mbq_h", "tia_sd_mbq_h",
                                 "n_points", "time_h", "notes", "error"]
    assert len(out) == 3 * 7
    row = out[(out.patient == "p1") & (out.method == "bi_uptake")].iloc[0]
    assert row.tia_mbq_h == pytest.approx(500.0 * (1 / lc - 1 / lu), rel=1e-5)
    assert row.error == "" and row.tia_sd_mbq_h > 0
    direct = stp.haenscheid(table, 96.0, patient="p2", region="kidney")
    row = out[(out.patient == "p2") & (out.region == "kidney") & (out.method == "haenscheid")].iloc[0]
    assert row.tia_mbq_h == pytest.approx(direct.tia_mbq_h) and row.time_h == 96.0
    # 3-point parotid series: 4-parameter fit recorded as ill-posed, not silently NaN
    row = out[(out.region == "parotid") & (out.method == "bi_sum")].iloc[0]
    assert math.isnan(row.tia_mbq_h) and row.error.startswith("IllPosedFitError")
    # its STP scan is the nearest one (48 h)
    row = out[(out.region == "parotid") & (out.method == "madsen")].iloc[0]
    assert row.time_h == 48.0 and row.tia_mbq_h == pytest.approx(40.0 * 42.2 / LN2 * math.exp(
        LN2 * 48.0 * (1 / 42.2 - 1 / 42.0)), rel=1e-12)
    with pytest.raises(IllPosedFitError):
        stp.tia_table(table, methods=["bi_sum"], regions="parotid", on_error="raise")
    # a bad series is recorded for every method; the other series are still computed
    bad = table.copy()
    bad.loc[(bad.patient == "p2") & (bad.region == "parotid") & (bad.time_h == 24.0), "activity_mbq"] = -1.0
    out = stp.tia_table(bad, methods=["trapezoid", "mono"])
    failed = out[(out.patient == "p2") & (out.region == "parotid")]
    assert failed.error.str.startswith("InvalidActivityError").all() and failed.tia_mbq_h.isna().all()
    assert (out[out.region == "kidney"].error == "").all()
    with pytest.raises(InvalidActivityError):
        stp.tia_table(bad, methods=["trapezoid"], on_error="raise")
    with pytest.raises(CalibrationError):
        stp.tia_table(table, methods=["haenscheid"])  # no stp_time_h


def test_cycles_are_separate_series_and_below_detection_rows_are_dropped():
    t = TIMES_H
    c1 = make_table({("p1", "kidney"): (t, mono(300.0, 35.0, t))}, sigma_rel=0.05).assign(cycle=1)
    c2 = make_table({("p1", "kidney"): (t, mono(250.0, 30.0, t))}, sigma_rel=0.05).assign(cycle=2)
    table = pd.concat([c1, c2], ignore_index=True)
    with pytest.raises(TableError, match="cycle"):
        stp.trapezoid_tia(table)
    with pytest.raises(UnknownRegionError):
        stp.trapezoid_tia(table, cycle=3)
    fit2 = stp.fit_mono_exponential(table, cycle=2)
    assert fit2.tia_mbq_h == pytest.approx(250.0 * 30.0 / LN2, rel=1e-6)
    out = stp.tia_table(table, methods=["mono"])
    assert list(out["cycle"]) == [1, 2]
    assert out["tia_mbq_h"].tolist() == pytest.approx([300.0 * 35.0 / LN2, 250.0 * 30.0 / LN2], rel=1e-6)
    # a row below the detection limit is not a measurement: dropped (and said so) or refused
    censored = c1.assign(below_detection=False)
    censored.loc[5, "below_detection"] = True
    censored.loc[5, "activity_mbq"] = 1.0
    r = stp.fit_mono_exponential(censored)
    assert r.series.n_points == 5 and "dropped_below_detection:1" in r.flags
    assert r.tia_mbq_h == pytest.approx(300.0 * 35.0 / LN2, rel=1e-6)
    with pytest.raises(TableError, match="detection"):
        stp.trapezoid_tia(censored, below_detection="raise")
    assert "dropped_below_detection:1" in stp.tia_table(censored, methods=["trapezoid"])["notes"].iloc[0]


def test_baselines_on_pbpk_model_output(therapy_trajectory):
    """On the PSMA PBPK model's own 12-point kidney/salivary/lesion TACs (0.25-168 h), the
    classical TIAs are compared with the ODE's integral to infinity (independent)."""
    frame = therapy_trajectory.to_frame()
    frame = frame[frame.region.isin(["kidneys", "salivary_glands", "lesion_1"])].assign(
        patient="v1", tracer=LU, scan_id="s", modality="NM")
    out = stp.tia_table(frame, methods=["trapezoid", "trapezoid_fit_tail", "bi_uptake", "mono"])
    assert (out.error == "").all()
    truth = {r: float(v) for r, v in therapy_trajectory.tia_mbq_h.items()}
    rel = {(row.region, row.method): row.tia_mbq_h / truth[row.region] - 1 for row in out.itertuples()}
    for region in ("kidneys", "salivary_glands", "lesion_1"):
        # dense early sampling + effective last-segment tail: close to the ODE integral
        assert abs(rel[(region, "trapezoid_fit_tail")]) < 0.02, region
        # a physical-decay tail assumes no biological clearance after 168 h: overestimate
        assert rel[(region, "trapezoid")] > 0.05, region
        # the PBPK curve is not exactly bi-exponential, but close
        assert abs(rel[(region, "bi_uptake")]) < 0.10, region


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_specific_errors():
    good = make_table({("p1", "kidney"): (TIMES_H, mono(100.0, 40.0, TIMES_H))})
    with pytest.raises(EmptyTableError):
        stp.trapezoid_tia(good.iloc[0:0])
    with pytest.raises(MissingColumnError):
        stp.trapezoid_tia(good.drop(columns="time_h"))
    bad = good.copy()
    bad.loc[2, "activity_mbq"] = 0.0
    with pytest.raises(InvalidActivityError):
        stp.fit_mono_exponential(bad)
    bad = good.copy()
    bad.loc[1, "activity_mbq"] = -5.0
    with pytest.raises(InvalidActivityError):
        stp.haenscheid(bad, 96.0)
    bad = good.copy()
    bad.loc[0, "time_h"] = 0.0
    with pytest.raises(InvalidTimeError):
        stp.trapezoid_tia(bad)
    bad = good.copy()
    bad.loc[0, "time_h"] = -1.0
    with pytest.raises(InvalidTimeError):
        stp.fit_mono_exponential(bad)
    bad = good.copy()
    bad.loc[3, "time_h"] = 24.0  # duplicate of the second scan, out of order
    with pytest.raises(InvalidTimeError, match="repeated"):
        stp.trapezoid_tia(bad)
    with pytest.raises(UnknownRegionError, match="liver"):
        stp.trapezoid_tia(good, region="liver")
    with pytest.raises(UnknownRegionError):
        stp.tia_table(good, patients=["p9"])
    with pytest.raises(IllPosedFitError, match="3 parameters"):
        stp.fit_biexponential(TIMES_H[:2], mono(100.0, 40.0, TIMES_H[:2]), nuclide="Lu-177")
    with pytest.raises(IllPosedFitError):
        stp.fit_mono_exponential([24.0], [10.0], nuclide="Lu-177")
    partial = make_table({("p1", "kidney"): (TIMES_H, mono(100.0, 40.0, TIMES_H))}, sigma_rel=0.1)
    partial.loc[2, "activity_uncertainty_mbq"] = np.nan
    with pytest.raises(InvalidActivityError, match="activity_uncertainty_mbq"):
        stp.trapezoid_tia(partial)
    with pytest.raises(TableError, match="nuclide"):
        stp.trapezoid_tia(TIMES_H, mono(100.0, 40.0, TIMES_H))
    negative = make_table({("p1", "kidney"): (TIMES_H, mono(100.0, 40.0, TIMES_H))}, sigma_rel=-0.1)
    with pytest.raises(InvalidActivityError, match="negative"):
        stp.trapezoid_tia(negative)
    with pytest.raises(TableError):
        stp.trapezoid_tia(good, nuclide="Xx-999")
    with pytest.raises(InvalidActivityError):
        stp.haenscheid(float("nan"), 96.0)
    with pytest.raises(InvalidTimeError):
        stp.madsen(10.0, 0.0, t_eff_h=40.0)
    with pytest.raises(CalibrationError, match="physical half-life"):
        stp.madsen(good, 96.0, t_eff_h=200.0)  # 177Lu decays with T_phys = 159.5 h
    with pytest.raises(CalibrationError, match="broadcast"):
        stp.haenscheid([10.0, 20.0, 30.0], [24.0, 48.0])
    two_tracers = pd.concat([good, good.assign(tracer="Ga-68-PSMA-11")])
    with pytest.raises(TableError, match="tracer"):
        stp.trapezoid_tia(two_tracers)
    # all of them are ValueErrors of the project hierarchy
    assert issubclass(UnknownRegionError, CalibrationError) and issubclass(CalibrationError, ValueError)


def test_unsorted_input_is_sorted_not_rejected():
    order = np.array([3, 0, 5, 1, 4, 2])
    a = mono(100.0, 40.0, TIMES_H)
    r1 = stp.trapezoid_tia(TIMES_H[order], a[order], nuclide="Lu-177")
    r2 = stp.trapezoid_tia(TIMES_H, a, nuclide="Lu-177")
    assert r1.tia_mbq_h == r2.tia_mbq_h


def test_nuclide_column_and_zero_uncertainties_of_imaging_tables():
    t = TIMES_H
    table = make_table({("p1", "kidney"): (t, mono(100.0, 40.0, t))}, tracer="PSMA-617 therapy", sigma_rel=0.0)
    with pytest.raises(TableError, match="nuclide"):
        stp.trapezoid_tia(table)  # neither a nuclide column nor a nuclide in the tracer name
    table["nuclide"] = "Lu-177"
    r = stp.fit_mono_exponential(table)
    assert r.series.nuclide == "Lu-177" and not r.weighted and "zero_uncertainty_ignored" in r.flags
    assert r.tia_mbq_h == pytest.approx(100.0 * 40.0 / LN2, rel=1e-6)


def test_nuclide_read_from_tracer_name():
    assert stp.nuclide_of_tracer("Lu-177-PSMA-617") == "Lu-177"
    assert stp.nuclide_of_tracer("177Lu-DOTATATE") == "Lu-177"
    assert stp.nuclide_of_tracer("Ga-68-PSMA-11") == "Ga-68"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TableError):
            stp.nuclide_of_tracer("PSMA-617")
