"""Electron transport with multiple scattering: scaled energy-deposition curves of
monoenergetic electrons in water, from a condensed-history Monte Carlo done once and cached.

Straight tracks (continuous slowing down along a line) let every electron reach its full
CSDA range r₀; real electrons are turned by elastic scattering on nuclei and atomic
electrons and deposit their energy closer to the source.  The electron dose point kernels
therefore use, for an electron of initial energy E₀,

    deposited inside the sphere of mass radius t (g/cm²) = E₀ Φ_E₀(t / r₀(E₀)),

with Φ the cumulative absorbed-energy fraction in range-scaled distance x = t / r₀, from
:func:`transport_table` (x ≤ 1 always: no path is longer than the CSDA range).  Density
scaling is exact by construction (x depends on ρ r only).

Monte Carlo (class I condensed history, Berger 1963, "Monte Carlo calculation of the
penetration and diffusion of fast charged particles", Methods Comput. Phys. 1:135):

* energy ladder E_k = 1 keV × 2^(k/8): each step loses the energy E_k − E_{k−1}
  (≈ 8.3 %) over the CSDA path s_k = R(E_k) − R(E_{k−1}) (Bethe stopping power of
  :mod:`dose.stopping_power`); energy-loss straggling and bremsstrahlung transport are
  neglected (radiative yield < 1 % below 2 MeV in water);
* angular deflection per step from the screened-Rutherford (Wentzel) transport cross
  section: per atom

      σ₁ = 2π Z(Z+1) r_e² (m c² / (p c β))² [ln(1 + 1/η) − 1/(1 + η)],
      η = ¼ (α Z^(1/3) m c² / (0.885 p c))² (1.13 + 3.76 (α Z / β)²)

  (Molière's screening parameter; Z(Z+1) counts scattering on the atomic electrons),
  1/λ₁ = Σ_atoms n_i σ₁,i for liquid water (H 11.19 %, O 88.81 % by mass).  The
  multiple-scattering angle over a step is drawn from a Wentzel distribution
  p(μ) ∝ (1 − μ + 2A)⁻² whose screening A is chosen so that its mean reproduces the
  Goudsmit–Saunderson value ⟨cos θ⟩ = exp(−s/λ₁) (first moment exact, shape
  approximate — the "modified Wentzel" idea of Baró et al. 1994, NIM B 84:465);
* random hinge (Fernández-Varea et al. 1993, NIM B 73:447): the electron moves a uniform
  fraction τ of the step, deposits the step's energy loss there (uniform along the
  path), is deflected, and moves the rest;
* electrons at 1 keV deposit their remaining energy where they stop.

Other media use the water curves at their own CSDA range (composition affects scattering
per unit range only weakly between soft tissue and water; bone, with higher Z, scatters
more, so its kernels here are slightly too wide).  The curves are tabulated at
``SOURCE_ENERGIES_MEV`` (9.5 keV–9.7 MeV, half-octave steps) and interpolated in log E₀ at
fixed x; energies outside use the nearest curve.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq

from . import nuclides as _nuc
from .deflection import deflect
from .stopping_power import CLASSICAL_ELECTRON_RADIUS_CM, E_LOCAL_MEV, ELECTRON_MASS_MEV, csda_range_g_cm2

FINE_STRUCTURE = 7.2973525693e-3  # CODATA 2018
# Liquid water by mass (NIST ESTAR "Water, liquid"): (Z, A g/mol, mass fraction)
WATER_ELEMENTS = ((1, 1.00794, 0.111894), (8, 15.9994, 0.888106))

# 8 steps per octave (8.3 % energy loss per step, ETRAN's ladder): the 177Lu voxel
# S values agree with 16 and 32 steps per octave and with twice the histories to 0.3 %.
STEPS_PER_OCTAVE = 8
_TOP_INDEX = 106  # ladder top: 1 keV × 2^(106/8) ≈ 9.7 MeV
SOURCE_INDICES = np.arange(26, _TOP_INDEX + 1, 4)  # 9.5 keV ... 9.7 MeV, half-octave steps
HISTORIES = 5_000  # per source energy; statistical error of Φ(x) ≈ 0.5–1 %
SEED = 20261129  # fixed: the table (and every kernel) is reproducible
X_GRID = np.linspace(0.0, 1.0, 401)  # range-scaled radius x = t / r₀ of the tabulated Φ


def ladder_energies_mev() -> np.ndarray:
    """E_k = E_LOCAL × 2^(k / STEPS_PER_OCTAVE), k = 0 … top (MeV)."""
    return E_LOCAL_MEV * 2.0 ** (np.arange(_TOP_INDEX + 1) / STEPS_PER_OCTAVE)


SOURCE_ENERGIES_MEV = ladder_energies_mev()[SOURCE_INDICES]


def transport_mean_free_path_g_cm2(energy_mev) -> np.ndarray:
    """First transport mean free path λ₁ (g/cm²) of electrons in liquid water,
    screened Rutherford with Molière screening (formulas in the module docstring)."""
    e = np.asarray(energy_mev, dtype=float)
    pc = np.sqrt(e * (e + 2.0 * ELECTRON_MASS_MEV))
    beta = pc / (e + ELECTRON_MASS_MEV)
    inverse = np.zeros_like(e)
    for z, a, fraction in WATER_ELEMENTS:
        atoms_per_g = fraction * _nuc.AVOGADRO_PER_MOL / a
        eta = 0.25 * (FINE_STRUCTURE * z ** (1.0 / 3.0) * ELECTRON_MASS_MEV / (0.885 * pc)) ** 2 \
            * (1.13 + 3.76 * (FINE_STRUCTURE * z / beta) ** 2)
        sigma1 = 2.0 * math.pi * z * (z + 1) * CLASSICAL_ELECTRON_RADIUS_CM**2 \
            * (ELECTRON_MASS_MEV / (pc * beta)) ** 2 * (np.log1p(1.0 / eta) - 1.0 / (1.0 + eta))
        inverse += atoms_per_g * sigma1
    return 1.0 / inverse


def wentzel_mean_one_minus_cos(screening) -> np.ndarray:
    """⟨1 − cos θ⟩ of p(μ) ∝ (1 − μ + 2A)⁻² on [−1, 1]: 2A[(1 + A) ln(1 + 1/A) − 1]."""
    a = np.asarray(screening, dtype=float)
    return 2.0 * a * ((1.0 + a) * np.log1p(1.0 / a) - 1.0)


def wentzel_screening(mean_one_minus_cos: float) -> float:
    """The A for which the Wentzel distribution has ⟨1 − cos θ⟩ = the given value (0, 1)."""
    w = float(mean_one_minus_cos)
    if not 0.0 < w < 0.9999:
        raise ValueError(f"mean_one_minus_cos: expected a value in (0, 0.9999), got {w}")
    return math.exp(brentq(lambda log_a: float(wentzel_mean_one_minus_cos(math.exp(log_a))) - w, -60.0, 12.0,
                           xtol=1e-12, rtol=1e-12))


def sample_wentzel_cos(screening: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """cos θ from p(μ) ∝ (1 − μ + 2A)⁻² by inversion: 1 − μ = 2Aξ / (1 + A − ξ)."""
    xi = rng.random(np.shape(screening))
    return 1.0 - 2.0 * screening * xi / (1.0 + screening - xi)


def walk(step_g_cm2: np.ndarray, screening: np.ndarray, start_index: np.ndarray, rng: np.random.Generator,
         deposit_mev: np.ndarray | None = None, tally=None) -> np.ndarray:
    """Random-hinge walk down a ladder of steps; returns the final positions (n, 3), g/cm².

    Electron i starts at the origin along +z at ladder index ``start_index[i]`` and takes
    the steps k = start, start − 1, …, 1: a move τ s_k, a deflection drawn from the
    Wentzel distribution with screening ``screening[k]`` (no deflection where it is
    ``inf``), the move (1 − τ) s_k.  If ``tally`` is given it is called after each first
    move as ``tally(electron indices, positions, deposit_mev[k])``."""
    n = start_index.size
    position = np.zeros((n, 3))
    direction = np.zeros((n, 3))
    direction[:, 2] = 1.0
    index = start_index.copy()
    alive = np.flatnonzero(index > 0)
    while alive.size:
        k = index[alive]
        s = step_g_cm2[k]
        tau = rng.random(alive.size)
        position[alive] += direction[alive] * (tau * s)[:, None]
        if tally is not None:
            tally(alive, position[alive], deposit_mev[k])
        a = screening[k]
        turn = np.isfinite(a)
        if turn.any():
            moved = alive[turn]
            direction[moved] = deflect(direction[moved], sample_wentzel_cos(a[turn], rng), rng)
        position[alive] += direction[alive] * ((1.0 - tau) * s)[:, None]
        index[alive] -= 1
        alive = alive[index[alive] > 0]
    return position


def ladder_steps(scatter: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ladder index k ≥ 1: CSDA step s_k (g/cm²), energy lost E_k − E_{k−1} (MeV) and
    the Wentzel screening A_k matching ⟨cos θ⟩ = exp(−s_k / λ₁(√(E_k E_{k−1}))) (``inf``
    without scattering).  Index 0 is unused."""
    e = ladder_energies_mev()
    r = csda_range_g_cm2(e, "water")
    step = np.concatenate(([0.0], np.diff(r)))
    lost = np.concatenate(([0.0], np.diff(e)))
    screening = np.full(e.size, np.inf)
    if scatter:
        lam = transport_mean_free_path_g_cm2(np.sqrt(e[1:] * e[:-1]))
        mean_w = -np.expm1(-step[1:] / lam)
        screening[1:] = [wentzel_screening(w) for w in mean_w]
    return step, lost, screening


@lru_cache(maxsize=2)
def transport_table(scatter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative absorbed-energy fractions Φ_E₀(x) of monoenergetic electrons in water.

    Returns (source energies E₀ in MeV, Φ of shape (energies, X_GRID.size)), Φ(x) the
    fraction of E₀ absorbed inside the sphere of mass radius x r₀(E₀), from
    ``HISTORIES`` electrons per energy (fixed seed).  Φ(1) = 1 exactly (energy
    conservation).  ``scatter=False`` gives straight tracks (a check of the machinery
    against :func:`dose.stopping_power.residual_energy_mev`)."""
    rng = np.random.default_rng(SEED)
    step, lost, screening = ladder_steps(scatter)
    e = ladder_energies_mev()
    group = np.repeat(np.arange(SOURCE_INDICES.size), HISTORIES)
    r0 = csda_range_g_cm2(SOURCE_ENERGIES_MEV, "water")
    n_bins = X_GRID.size - 1
    hist = np.zeros(SOURCE_INDICES.size * n_bins)

    def tally(electrons, position, deposit):
        g = group[electrons]
        x = np.sqrt((position * position).sum(axis=1)) / r0[g]
        b = np.minimum((x * n_bins).astype(int), n_bins - 1)
        hist[:] += np.bincount(g * n_bins + b, weights=deposit, minlength=hist.size)

    final = walk(step, screening, SOURCE_INDICES[group], rng, lost, tally)
    tally(np.arange(group.size), final, np.full(group.size, e[0]))  # the last 1 keV where it stops
    # a deposit in bin b lies in (x_b, x_{b+1}]: counting it at x_{b+1} makes Φ(x_b) exact at the grid points
    cumulative = np.cumsum(hist.reshape(SOURCE_INDICES.size, n_bins), axis=1) / (HISTORIES * SOURCE_ENERGIES_MEV[:, None])
    phi = np.concatenate((np.zeros((SOURCE_INDICES.size, 1)), cumulative), axis=1)
    phi.setflags(write=False)
    return SOURCE_ENERGIES_MEV, phi


def absorbed_fraction(energy_mev, x) -> np.ndarray:
    """Φ_E(x): fraction of the energy of an electron of `energy_mev` absorbed inside
    range-scaled radius `x` (broadcast), linear in x and in log E between tabulated curves."""
    energies, phi = transport_table()
    e = np.asarray(energy_mev, dtype=float)
    # energies below the first curve (down to 0, the spectrum's first point) use that curve
    u = np.interp(np.log(np.maximum(e, energies[0])), np.log(energies), np.arange(energies.size, dtype=float))
    lo = np.minimum(np.floor(u).astype(int), energies.size - 2)
    we = u - lo
    pos = np.clip(np.asarray(x, dtype=float), 0.0, 1.0) * (X_GRID.size - 1)
    i = np.minimum(np.floor(pos).astype(int), X_GRID.size - 2)
    wx = pos - i
    f_lo = phi[lo, i] * (1.0 - wx) + phi[lo, i + 1] * wx
    f_hi = phi[lo + 1, i] * (1.0 - wx) + phi[lo + 1, i + 1] * wx
    return f_lo * (1.0 - we) + f_hi * we
