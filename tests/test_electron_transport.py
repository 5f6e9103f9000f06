"""Electron multiple-scattering transport (dose.electron_transport): the Monte Carlo
machinery against closed forms (straight tracks = CSDA residual energy; Lewis's moments of
a scattering walk), energy conservation, and the physics of the scaled curves."""

import math

import numpy as np
import pytest

from dose import electron_kernel as ek
from dose import electron_transport as et
from dose import stopping_power as sp
from dose.errors import InvalidDoseInputError


def test_wentzel_sampling_and_screening_match_the_closed_form():
    rng = np.random.default_rng(1)
    for target in (1e-4, 0.02, 0.3, 0.9):
        a = et.wentzel_screening(target)
        assert float(et.wentzel_mean_one_minus_cos(a)) == pytest.approx(target, rel=1e-9)
        mu = et.sample_wentzel_cos(np.full(400_000, a), rng)
        assert np.all((mu >= -1.0) & (mu <= 1.0))
        # the distribution of 1 − μ is heavy-tailed (Rutherford): 5 standard errors
        w = 1.0 - mu
        assert w.mean() == pytest.approx(target, abs=5 * w.std() / math.sqrt(w.size))
    with pytest.raises(ValueError, match="mean_one_minus_cos"):
        et.wentzel_screening(1.0)


def test_walk_reproduces_lewis_moments():
    """Constant transport mean free path λ, total path S: Lewis (1950) theory gives
    ⟨z⟩ = λ(1 − e^(−S/λ)) and ⟨r²⟩ = 2λ² (S/λ − 1 + e^(−S/λ)) for any scattering law
    with ⟨cos θ⟩ = e^(−s/λ) per step s; the random hinge keeps them at coarse steps."""
    lam, s, steps, n = 1.0, 0.25, 12, 40_000
    a = et.wentzel_screening(-math.expm1(-s / lam))
    step = np.full(steps + 1, s)
    screening = np.full(steps + 1, a)
    final = et.walk(step, screening, np.full(n, steps), np.random.default_rng(2))
    big_s = steps * s
    z_mean = lam * -math.expm1(-big_s / lam)
    r2_mean = 2 * lam**2 * (big_s / lam - 1 + math.exp(-big_s / lam))
    z = final[:, 2]
    r2 = (final**2).sum(axis=1)
    assert z.mean() == pytest.approx(z_mean, abs=4 * z.std() / math.sqrt(n))
    assert r2.mean() == pytest.approx(r2_mean, rel=0.03)
    assert np.all(np.sqrt(r2) <= big_s + 1e-12)  # no displacement longer than the path


def test_straight_tracks_equal_the_csda_residual_energy():
    """Without scattering the Monte Carlo deposits along a line: Φ(x) = (E − E_res(E, x r₀)) / E."""
    energies, phi = et.transport_table(scatter=False)
    for j in range(0, energies.size, 4):
        r0 = sp.csda_range_g_cm2(energies[j])
        exact = (energies[j] - sp.residual_energy_mev(energies[j], et.X_GRID * r0)) / energies[j]
        np.testing.assert_allclose(phi[j], exact, atol=2e-3)


def test_scattered_curves_conserve_energy_and_stay_inside_the_straight_ones():
    energies, phi = et.transport_table()
    _, straight = et.transport_table(scatter=False)
    assert np.all(phi[:, 0] == 0.0)
    np.testing.assert_allclose(phi[:, -1], 1.0, rtol=1e-12)  # energy conservation
    assert np.all(np.diff(phi, axis=1) >= 0.0)
    # every deposit lies at most its path length from the source: Φ_scattered ≥ Φ_straight
    assert np.all(phi >= straight - 2e-3)
    x50 = np.array([np.interp(0.5, f, et.X_GRID) for f in phi])
    x90 = np.array([np.interp(0.9, f, et.X_GRID) for f in phi])
    # multiple scattering keeps half of the energy within about half the CSDA range
    assert np.all((x50 > 0.4) & (x50 < 0.6)) and np.all((x90 > 0.65) & (x90 < 0.9))


def test_transport_mean_free_path_is_of_the_order_of_the_range():
    """Screened Rutherford λ₁ in water grows with energy faster than the CSDA range
    below 1 MeV (λ₁ / r₀ ≈ 0.9 at 10 keV, 1.2 at 1 MeV)."""
    e = np.array([0.01, 0.1, 1.0])
    ratio = et.transport_mean_free_path_g_cm2(e) / sp.csda_range_g_cm2(e)
    assert np.all((ratio > 0.5) & (ratio < 2.0))
    assert ratio[2] > ratio[0]


def test_scattering_keeps_more_energy_near_a_beta_source():
    for name in ("Lu-177", "Y-90"):
        r_max = ek.max_range_mm(name, "soft_tissue")
        r = np.linspace(0.05, 1.0, 8) * r_max
        scattered = ek.cumulative_energy_mev(name, r, "soft_tissue")
        straight = ek.cumulative_energy_mev(name, r, "soft_tissue", tracks="straight")
        assert np.all(scattered >= straight - 1e-6)
        assert scattered[-1] == pytest.approx(straight[-1], rel=1e-9)
    with pytest.raises(InvalidDoseInputError, match="tracks"):
        ek.cumulative_energy_mev("Lu-177", 1.0, tracks="curved")
