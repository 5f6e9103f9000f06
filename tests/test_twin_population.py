"""Virtual population sampler (twin.population): reproducibility, marginals, copula,
truncation, config errors, psma_model parameter names, the lesion-density fit, round trips.

Independent references: direct draws from the patient's own generator, scipy.stats
(truncnorm, lognorm.fit, kstest, spearmanr), the analytic Spearman correlation of a Gaussian
copula 6/pi asin(rho/2), d2(2) = 2/sqrt(pi) and tabulated d2(25) = 3.931.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import pbpk
from twin.errors import ConfigError
from twin.population import (
    COVARIATES, LESION_RDEN_1_NMOL_L, LESION_RDEN_2_NMOL_L, MIN_ACCEPTANCE, Distribution, Population,
    cv_to_sd_log, expected_normal_range, patient_parameters,
)

N = 20_000


@pytest.fixture(scope="module")
def default():
    return Population.default()


def fixed(value, unit=""):
    return {"distribution": "fixed", "value": value, **({"unit": unit} if unit else {})}


def only_weight_random(**weight):
    """All covariates fixed except weight (so patient i's draw is one standard normal)."""
    table = {name: fixed(v) for name, v in [
        ("height_cm", 175.0), ("haematocrit", 0.4), ("gfr_ml_min", 80.0), ("kidneys_rden_nmol_l", 40.0),
        ("salivary_glands_rden_nmol_l", 38.0), ("tumour_rest_rden_nmol_l", 70.0), ("n_lesions", 0),
        ("lesion_volume_ml", 10.0), ("lesion_rden_nmol_l", 50.0)]}
    table["weight_kg"] = {"distribution": "normal", "low": 20, "high": 300, **weight}
    return Population.from_dict(table)


# --------------------------------------------------------------------------- reproducibility
def test_chunks_and_order_do_not_change_a_patients_values(default):
    full = default.sample(11, range(10))
    part = default.sample(11, [3, 4, 5])
    pd.testing.assert_frame_equal(part, full.iloc[3:6].reset_index(drop=True))
    reordered = default.sample(11, [7, 2])
    pd.testing.assert_frame_equal(reordered, full.iloc[[7, 2]].reset_index(drop=True))
    assert not np.allclose(default.sample(12, [3])["weight_kg"], part["weight_kg"].iloc[0])
    assert list(full.columns) == list(default.columns)
    assert full.columns[:2].tolist() == ["patient_id", "weight_kg"]


def test_chunk_independence_survives_rejection():
    # acceptance about 0.05 per attempt: most patients need several attempts
    pop = only_weight_random(mean=80.0, sd=10.0, low=96.0, high=120.0)
    full = pop.sample(5, range(40))
    for chunk in ([0, 1, 2], list(range(17, 40)), [39]):
        pd.testing.assert_frame_equal(pop.sample(5, chunk), full.iloc[chunk].reset_index(drop=True))
    assert full["weight_kg"].between(96.0, 120.0).all()


def test_patient_draw_comes_only_from_its_own_seed_sequence():
    pop = only_weight_random(mean=80.0, sd=10.0)
    out = pop.sample(2024, [0, 7, 123456])
    for i, w in zip([0, 7, 123456], out["weight_kg"]):
        rng = np.random.default_rng(np.random.SeedSequence([2024, i]))
        assert w == pytest.approx(80.0 + 10.0 * rng.standard_normal(1)[0], rel=1e-14)


# --------------------------------------------------------------------------- marginals
def test_default_marginals_match_their_distributions(default):
    df = default.sample(1, range(N))
    cov = default.covariates
    for name in ("weight_kg", "height_cm", "haematocrit", "gfr_ml_min"):  # normal, bounds ~never hit
        d, x = cov[name], df[name].to_numpy()
        assert abs(x.mean() - d.mean) < 4 * d.sd / math.sqrt(N), name
        assert x.std(ddof=1) == pytest.approx(d.sd, rel=0.03), name
        assert x.min() >= d.low and x.max() <= d.high
    for name in ("kidneys_rden_nmol_l", "salivary_glands_rden_nmol_l", "tumour_rest_rden_nmol_l"):
        d, logs = cov[name], np.log(df[name].to_numpy())
        assert abs(np.median(logs) - math.log(d.median)) < 4 * 1.2533 * d.sd_log / math.sqrt(N), name
        assert logs.std(ddof=1) == pytest.approx(d.sd_log, rel=0.03), name
    rden = np.log(df[["lesion_1_rden_nmol_l", "lesion_2_rden_nmol_l"]].to_numpy().ravel())
    assert rden.std(ddof=1) == pytest.approx(cov["lesion_rden_nmol_l"].sd_log, rel=0.03)
    vol = df[["lesion_1_volume_ml", "lesion_2_volume_ml"]].to_numpy().ravel()
    assert vol.min() >= 0.33 and vol.max() <= 92.0
    assert (df["n_lesions"] == 2).all() and df["n_lesions"].dtype == np.int64


def test_truncated_normal_matches_scipy_truncnorm():
    mean, sd, low, high = 80.0, 12.0, 70.0, 100.0
    x = only_weight_random(mean=mean, sd=sd, low=low, high=high).sample(3, range(N))["weight_kg"].to_numpy()
    ref = stats.truncnorm((low - mean) / sd, (high - mean) / sd, loc=mean, scale=sd)
    assert x.min() >= low and x.max() <= high
    assert abs(x.mean() - ref.mean()) < 4 * ref.std() / math.sqrt(N)
    assert stats.kstest(x, ref.cdf).statistic < 1.63 / math.sqrt(N)  # 1 % critical value


def test_uniform_choice_and_lesion_columns():
    pop = Population.from_dict({
        "haematocrit": {"distribution": "uniform", "low": 0.3, "high": 0.5},
        "n_lesions": {"distribution": "choice", "values": [0, 1, 3], "probabilities": [0.2, 0.5, 0.3]},
        "lesion_rden_nmol_l": {"distribution": "choice", "values": [20.0, 80.0]},
    })
    assert pop.max_lesions == 3
    df = pop.sample(9, range(N))
    h = df["haematocrit"].to_numpy()
    assert h.min() >= 0.3 and h.max() <= 0.5
    assert abs(h.mean() - 0.4) < 4 * (0.2 / math.sqrt(12)) / math.sqrt(N)
    assert h.var(ddof=1) == pytest.approx(0.2**2 / 12, rel=0.04)
    for count, p in zip([0, 1, 3], [0.2, 0.5, 0.3]):
        assert abs((df["n_lesions"] == count).mean() - p) < 4 * math.sqrt(p * (1 - p) / N)
    for k in (1, 2, 3):
        present = df["n_lesions"] >= k
        cols = [f"lesion_{k}_volume_ml", f"lesion_{k}_rden_nmol_l"]
        assert df.loc[present, cols].notna().all().all() and df.loc[~present, cols].isna().all().all()
    r = df.loc[df["n_lesions"] >= 1, "lesion_1_rden_nmol_l"]
    assert set(r.unique()) == {20.0, 80.0} and abs((r == 80.0).mean() - 0.5) < 0.03
    assert "lesion_4_volume_ml" not in df.columns


# --------------------------------------------------------------------------- copula
def spearman(df, a, b):
    return stats.spearmanr(df[a], df[b]).statistic


@pytest.mark.parametrize("rho", [0.6, -0.5])
def test_copula_reaches_the_rank_correlation(rho):
    # untruncated lesion volumes: truncation of one member changes a pair's rank correlation
    pop = Population.from_dict({
        "haematocrit": {"distribution": "uniform", "low": 0.3, "high": 0.5},
        "lesion_volume_ml": {"distribution": "lognormal", "median": 12.0, "sd_log": 1.0},
        "correlations": [{"between": ["weight_kg", "height_cm"], "rho": rho},
                         {"between": ["kidneys_rden_nmol_l", "haematocrit"], "rho": rho / 2},
                         {"between": ["lesion_volume_ml", "lesion_rden_nmol_l"], "rho": rho}],
    })
    df = pop.sample(4, range(N))
    target = lambda r: 6 / math.pi * math.asin(r / 2)  # noqa: E731
    assert spearman(df, "weight_kg", "height_cm") == pytest.approx(target(rho), abs=0.03)
    assert spearman(df, "kidneys_rden_nmol_l", "haematocrit") == pytest.approx(target(rho / 2), abs=0.03)
    assert spearman(df, "weight_kg", "gfr_ml_min") == pytest.approx(0.0, abs=0.03)
    for k in (1, 2):   # per-lesion pair: within the same lesion only
        assert spearman(df, f"lesion_{k}_volume_ml", f"lesion_{k}_rden_nmol_l") == pytest.approx(target(rho), abs=0.03)
    assert spearman(df, "lesion_1_volume_ml", "lesion_2_rden_nmol_l") == pytest.approx(0.0, abs=0.03)


# --------------------------------------------------------------------------- errors
NORMAL = {"distribution": "normal", "mean": 80.0, "sd": 10.0, "low": 20.0, "high": 300.0}

BAD = [
    ({"weight": NORMAL}, r"unknown covariate 'weight'.*known: \['weight_kg'"),
    ({"weight_kg": NORMAL | {"sd": 0.0}}, r"population\.weight_kg\.sd = 0\.0; expected > 0"),
    ({"weight_kg": NORMAL | {"sd": -1}}, r"weight_kg\.sd"),
    ({"kidneys_rden_nmol_l": {"distribution": "lognormal", "median": 40, "sd_log": 0}}, r"kidneys_rden_nmol_l\.sd_log"),
    ({"kidneys_rden_nmol_l": {"distribution": "lognormal", "median": -4, "sd_log": 0.3}}, r"kidneys_rden_nmol_l\.median"),
    ({"haematocrit": {"distribution": "uniform", "low": 0.5, "high": 0.3}}, r"haematocrit: low = 0\.5 >= high"),
    ({"weight_kg": NORMAL | {"low": 90.0, "high": 90.0}}, r"weight_kg: low = 90\.0 >= high"),
    ({"n_lesions": {"distribution": "choice", "values": [1, 2], "probabilities": [1.2, -0.2]}}, r"probabilities\[1\] = -0\.2"),
    ({"n_lesions": {"distribution": "choice", "values": [1, 2], "probabilities": [0.5, 0.49]}}, r"n_lesions\.probabilities sum"),
    ({"n_lesions": {"distribution": "choice", "values": [1, 2], "probabilities": [1.0]}}, r"1 entries for 2 values"),
    ({"n_lesions": {"distribution": "choice", "values": [1, 2.5]}}, r"n_lesions: lesion count 2\.5"),
    ({"n_lesions": fixed(11)}, r"lesion count 11"),
    ({"n_lesions": NORMAL}, r"n_lesions must be 'fixed' or 'choice'"),
    ({"weight_kg": NORMAL | {"sd": True}}, r"weight_kg\.sd = True; expected a finite number"),
    ({"weight_kg": NORMAL | {"mean": "80"}}, r"weight_kg\.mean = '80'"),
    ({"weight_kg": NORMAL | {"mean": float("nan")}}, r"weight_kg\.mean = nan"),
    ({"weight_kg": NORMAL | {"scale": 1.0}}, r"weight_kg\.scale: unknown key"),
    ({"weight_kg": {"distribution": "gamma", "shape": 2}}, r"weight_kg\.distribution = 'gamma'"),
    ({"weight_kg": {"mean": 80, "sd": 10}}, r"weight_kg: missing 'distribution'"),
    ({"weight_kg": {"distribution": "normal", "mean": 80}}, r"weight_kg: a normal distribution needs 'sd'"),
    ({"weight_kg": 80}, r"weight_kg = 80; expected a table"),
    ({"weight_kg": {"distribution": "normal", "mean": 80, "sd": 10}}, r"weight_kg: .*outside the physical range.*give low/high"),
    ({"weight_kg": {"distribution": "uniform", "low": 10, "high": 90}}, r"weight_kg: .*physical range \[20\.0, 300\.0\]"),
    ({"lesion_volume_ml": fixed(0.0)}, r"lesion_volume_ml: .*physical range \(0\.0, inf\]"),
    ({"weight_kg": NORMAL | {"unit": "lb"}}, r"weight_kg\.unit = 'lb'"),
    ({"height_cm": fixed("tall")}, r"height_cm: height_cm takes numbers"),
    ({"weight_kg": NORMAL | {"low": 140.0}}, r"fraction .* of the draws"),
    ({"correlations": [{"between": ["weight_kg", "height_cm"], "rho": 0.9},
                       {"between": ["weight_kg", "gfr_ml_min"], "rho": 0.9},
                       {"between": ["height_cm", "gfr_ml_min"], "rho": -0.9}]}, r"not positive definite"),
    ({"correlations": [{"between": ["weight_kg", "n_lesions"], "rho": 0.3}]}, r"n_lesions is 'fixed'"),
    ({"n_lesions": {"distribution": "choice", "values": [1, 2]},
      "correlations": [{"between": ["n_lesions", "weight_kg"], "rho": 0.3}]}, r"n_lesions is 'choice'"),
    ({"correlations": [{"between": ["weight_kg", "lesion_volume_ml"], "rho": 0.3}]}, r"per-lesion and a per-patient"),
    ({"correlations": [{"between": ["weight_kg", "height_cm"], "rho": 1.0}]}, r"rho = 1\.0; expected -1 < rho < 1"),
    ({"correlations": [{"between": ["weight_kg", "height_cm"], "rho": 0.1},
                       {"between": ["height_cm", "weight_kg"], "rho": 0.2}]}, r"pair given twice"),
    ({"correlations": [{"between": ["weight_kg", "bmi"], "rho": 0.1}]}, r"unknown covariate 'bmi'"),
    ({"correlations": [{"between": ["weight_kg"], "rho": 0.1}]}, r"between = \['weight_kg'\]; expected two"),
    ({"correlations": [{"between": ["weight_kg", "height_cm"], "r": 0.1}]}, r"exactly the keys"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_population_config_raises_config_error(data, message):
    with pytest.raises(ConfigError, match=message):
        Population.from_dict(data)


def test_error_names_the_callers_location_and_bad_arguments():
    with pytest.raises(ConfigError, match=r"trial\.toml \[population\]\.weight_kg\.sd"):
        Population.from_dict({"weight_kg": NORMAL | {"sd": -2}}, where="trial.toml [population]")
    pop = Population.default()
    for seed, ids in [(-1, [0]), (1.5, [0]), (1, [-3]), (1, [True])]:
        with pytest.raises(ConfigError):
            pop.sample(seed, ids)
    with pytest.raises(ConfigError, match="missing column 'lesion_2_volume_ml'"):
        patient_parameters({**{c: 1.0 for c in COVARIATES}, "n_lesions": 2, "lesion_1_volume_ml": 5.0,
                            "lesion_1_rden_nmol_l": 5.0, "weight_kg": 70.0})
    with pytest.raises(ConfigError, match="n_lesions = 1.5"):
        patient_parameters({**{c: 1.0 for c in COVARIATES}, "n_lesions": 1.5})


def test_acceptance_threshold_is_the_product_of_marginal_masses():
    # one covariate with mass just above / below MIN_ACCEPTANCE, located by scipy.stats.norm
    z_hi = stats.norm.isf(2 * MIN_ACCEPTANCE)
    ok = only_weight_random(mean=80.0, sd=10.0, low=80.0 + 10.0 * z_hi, high=300.0)
    assert ok.covariates["weight_kg"].mass == pytest.approx(2 * MIN_ACCEPTANCE, rel=1e-9)
    with pytest.raises(ConfigError, match="fraction"):
        only_weight_random(mean=80.0, sd=10.0, low=80.0 + 10.0 * stats.norm.isf(MIN_ACCEPTANCE / 2), high=300.0)


# --------------------------------------------------------------------------- model parameters
@pytest.mark.parametrize("n", [0, 2])
def test_patient_parameters_are_psma_model_parameters(n):
    pop = Population.from_dict({"n_lesions": fixed(n)})
    df = pop.sample(0, range(50))
    model = pbpk.psma_model(lesion_volumes_ml=(10.0,) * n)
    compiled = pbpk.compile_model(model)
    for _, row in df.iterrows():
        params = patient_parameters(row)
        assert set(params) <= set(model.parameter_names)
        assert len(params) == 7 + 2 * n
        for k in range(1, n + 1):
            assert params[f"lesion_{k}_volume_l"] == pytest.approx(row[f"lesion_{k}_volume_ml"] / 1000.0)
        assert params["body_weight_kg"] == row["weight_kg"]
        # a valid parameter set: bounds, positive volumes, closed flow balance
        compiled.check_parameters(np.asarray(compiled.parameter_vector(params)))


def test_default_medians_are_read_from_psma_model(default):
    model = pbpk.psma_model(lesion_volumes_ml=())
    for name in ("kidneys_rden_nmol_l", "salivary_glands_rden_nmol_l", "tumour_rest_rden_nmol_l"):
        assert default.covariates[name].median == model.parameter(name).value
    assert default.covariates["height_cm"].mean == model.parameter("height_cm").value
    assert (default.covariates["weight_kg"].low, default.covariates["weight_kg"].high) == (
        model.parameter("body_weight_kg").lower, model.parameter("body_weight_kg").upper)
    for d in default.covariates.values():
        assert d.source and d.unit


# --------------------------------------------------------------------------- fits
def test_lesion_rden_fit_equals_scipy_lognorm_fit(default):
    data = np.array(LESION_RDEN_1_NMOL_L + LESION_RDEN_2_NMOL_L)
    assert data.size == 26
    s, loc, scale = stats.lognorm.fit(data, floc=0)     # maximum likelihood: ddof = 0
    d = default.covariates["lesion_rden_nmol_l"]
    assert loc == 0.0
    assert d.median == pytest.approx(scale, rel=1e-6)
    assert d.sd_log == pytest.approx(s * math.sqrt(26 / 25), rel=1e-6)   # sample sd: ddof = 1
    assert default.covariates["tumour_rest_rden_nmol_l"].sd_log == d.sd_log


def test_helper_formulas_against_references():
    assert expected_normal_range(2) == pytest.approx(2 / math.sqrt(math.pi), rel=1e-8)
    assert expected_normal_range(25) == pytest.approx(3.931, abs=1e-3)   # d2 control-chart table
    for cv in (0.1, 0.3, 0.63):
        dist = stats.lognorm(cv_to_sd_log(cv))
        assert dist.std() / dist.mean() == pytest.approx(cv, rel=1e-12)


# --------------------------------------------------------------------------- round trips
def test_population_round_trips_through_json(default):
    custom = Population.from_dict({
        "weight_kg": {"distribution": "lognormal", "median": 85, "sd_log": 0.18, "low": 40, "high": 200,
                      "source": "assumption: test"},
        "n_lesions": {"distribution": "choice", "values": [1, 2, 4], "probabilities": [0.25, 0.25, 0.5]},
        "correlations": [{"between": ["weight_kg", "height_cm"], "rho": 0.4}],
    })
    for pop in (default, custom):
        text = json.dumps(pop.to_dict())
        back = Population.from_dict(json.loads(text))
        assert back == pop
        pd.testing.assert_frame_equal(back.sample(3, range(20)), pop.sample(3, range(20)))
    assert custom.covariates["weight_kg"].unit == "kg"   # filled in from the covariate
    d = Distribution.from_dict({"distribution": "choice", "values": ["a", "b"]}, "x")
    assert Distribution.from_dict(d.to_dict(), "x") == d and d.probabilities == (0.5, 0.5)


def test_covariates_listed_once_and_complete(default):
    assert len(set(COVARIATES)) == len(COVARIATES) == 10
    assert set(default.covariates) == set(COVARIATES)
    with pytest.raises(ConfigError, match="missing covariate"):
        Population({k: v for k, v in default.covariates.items() if k != "weight_kg"}, {})
