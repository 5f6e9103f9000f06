"""Region dose statistics, DVH/Dx and LQ radiobiology against independent computations."""

import math

import numpy as np
import pytest
from scipy import integrate

from dose import metrics
from dose.errors import GeometryError, InvalidDoseInputError


def test_mean_dose_by_label_matches_numpy():
    rng = np.random.default_rng(0)
    dose = rng.gamma(2.0, 3.0, size=(10, 11, 12))
    labels = rng.integers(0, 4, size=dose.shape)
    table = metrics.mean_dose_by_label(dose, labels, names={1: "kidneys", 2: "liver", 3: "tumour"})
    assert table["label"].tolist() == [1, 2, 3]
    assert table["region"].tolist() == ["kidneys", "liver", "tumour"]
    for row in table.itertuples():
        assert row.mean_gy == pytest.approx(dose[labels == row.label].mean(), rel=1e-12)
        assert row.n_voxels == np.count_nonzero(labels == row.label)
    with pytest.raises(GeometryError):
        metrics.mean_dose_by_label(dose, labels[:-1])


def test_dvh_and_dx_against_direct_numpy():
    rng = np.random.default_rng(1)
    dose = rng.lognormal(1.0, 0.5, size=(20, 20, 20))
    mask = np.zeros(dose.shape, bool)
    mask[3:15, 2:17, 5:12] = True
    d = dose[mask]
    levels = np.linspace(0, d.max(), 57)
    dvh = metrics.cumulative_dvh(dose, mask, bins_gy=levels)
    direct = np.array([(d >= level).mean() for level in levels])
    assert np.allclose(dvh["volume_fraction"], direct, atol=0)
    dx = metrics.dose_at_volume(dose, mask)
    for x in (2, 50, 90, 98):
        value = dx[f"D{x}"]
        # definition: the largest dose that at least x % of the region receives
        assert (d >= value).mean() >= x / 100
        assert (d > value).mean() < x / 100
    assert dx["D2"] > dx["D50"] > dx["D90"] > dx["D98"]
    with pytest.raises(InvalidDoseInputError, match="empty"):
        metrics.dose_at_volume(dose, np.zeros(dose.shape, bool))


def test_bed_single_fraction_without_repair_is_lq_formula():
    d, ab = 8.0, 2.6
    lq = d * (1 + d / ab)
    assert metrics.bed_gy(d, ab, g=1.0) == pytest.approx(lq, rel=1e-12)
    # instantaneous delivery (lambda -> inf) and no repair (T_rep -> inf) both give G = 1
    assert metrics.g_mono_exponential(math.inf, 0.3) == 1.0
    assert metrics.bed_mono_exponential(d, ab, effective_half_life_h=50.0, repair_half_time_h=math.inf) == pytest.approx(lq)
    assert metrics.bed_mono_exponential(d, ab, 1e-9, 2.8) == pytest.approx(lq, rel=1e-8)
    assert metrics.eqd2_gy(lq, ab) == pytest.approx(lq / (1 + 2 / ab))
    # EQD2 of 2-Gy fractions is their physical dose
    assert metrics.eqd2_gy(metrics.bed_gy(2.0, 3.0), 3.0) == pytest.approx(2.0)


def _g_numerical(rate, mu, t_max):
    """Lea-Catcheside G by nested quadrature: (2/D^2) int R(t) int_0^t R(s) e^{-mu(t-s)} ds dt."""
    total = integrate.quad(rate, 0, t_max, limit=200)[0]
    inner = lambda t: integrate.quad(lambda s: rate(s) * math.exp(-mu * (t - s)), 0, t, limit=200)[0]
    outer = integrate.quad(lambda t: rate(t) * inner(t), 0, t_max, limit=200)[0]
    return 2 * outer / total**2


def test_g_factors_against_numerical_integration():
    lam, mu = math.log(2) / 60.0, math.log(2) / 2.8  # 60 h effective half-life, kidney repair 2.8 h
    assert metrics.g_mono_exponential(lam, mu) == pytest.approx(lam / (lam + mu), rel=1e-12)
    assert metrics.g_factor_exponentials([1.0], [lam], mu) == pytest.approx(
        _g_numerical(lambda t: math.exp(-lam * t), mu, 2000.0), rel=1e-4)
    lu, lc = math.log(2) / 1.5, math.log(2) / 40.0  # uptake 1.5 h, clearance 40 h
    g_bi = metrics.g_bi_exponential(lu, lc, mu)
    assert g_bi == pytest.approx(_g_numerical(lambda t: math.exp(-lc * t) - math.exp(-lu * t), mu, 1500.0), rel=1e-4)
    # uptake makes the delivery slower, so more repair: G below the mono-exponential value
    assert g_bi < metrics.g_mono_exponential(lc, mu)
    with pytest.raises(InvalidDoseInputError, match="uptake"):
        metrics.g_bi_exponential(lc, lu, mu)


def test_multi_cycle_bed_is_additive():
    kidney = metrics.radiobiology("kidneys")
    assert (kidney.alpha_beta_gy, kidney.repair_half_time_h) == (2.6, 2.8)
    doses = np.array([[4.0, 5.0], [3.5, 4.2], [5.1, 3.3]])  # 3 cycles x 2 voxels
    per_cycle = [metrics.bed_mono_exponential(d, kidney.alpha_beta_gy, 45.0, kidney.repair_half_time_h) for d in doses]
    total = metrics.accumulate_bed(per_cycle)
    g = metrics.g_mono_exponential(math.log(2) / 45.0, kidney.repair_rate_per_h)
    expected = (doses + g * doses**2 / 2.6).sum(axis=0)
    assert np.allclose(total, expected, rtol=1e-12)
    # not the BED of the summed dose: fractionation spares late-responding tissue
    assert np.all(total < metrics.bed_gy(doses.sum(axis=0), 2.6, g))
    with pytest.raises(InvalidDoseInputError, match="no default"):
        metrics.radiobiology("spleen")


@pytest.mark.parametrize("half_life_h", [5.0, 40.0, 160.0])
def test_sampled_g_factor_matches_mono_exponential(half_life_h):
    """G of a sampled mono-exponential dose rate (geometric grid, physical-decay tail)
    agrees with Dale's lambda / (lambda + mu) to 1 %."""
    lam, mu = np.log(2) / half_life_h, np.log(2) / 2.8
    t = np.concatenate([[0.0], np.geomspace(0.05, 2000.0, 60)])
    g = metrics.g_factor_sampled(t, np.exp(-lam * t), mu, np.log(2) / 159.5)
    assert g == pytest.approx(metrics.g_mono_exponential(lam, mu), rel=1e-2)


def test_sampled_g_factor_matches_bi_exponential_and_vectorises():
    lu, lc, mu = np.log(2) / 1.5, np.log(2) / 50.0, np.log(2) / 2.8
    t = np.concatenate([[0.0], np.geomspace(0.02, 1500.0, 80)])
    rate = np.exp(-lc * t) - np.exp(-lu * t)
    g = metrics.g_factor_sampled(t, np.stack([rate, 3.0 * rate]), mu, np.log(2) / 159.5)
    np.testing.assert_allclose(g, metrics.g_bi_exponential(lu, lc, mu), rtol=1e-2)  # G is scale-free
    with pytest.raises(InvalidDoseInputError, match="dose_rate"):
        metrics.g_factor_sampled(t, -rate, mu, 0.01)
