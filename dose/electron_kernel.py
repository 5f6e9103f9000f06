"""Electron (and other non-penetrating) dose point kernels from ICRP-107 emissions.

Model: continuous slowing down (CSDA) along straight tracks.
An electron of kinetic energy E0 starting at the origin slows down with the collision
stopping power S(E)/ρ and travels radially; after a mass path t = ρ r (g/cm²) it has
the residual energy

    E_res(E0, t) = R⁻¹( R(E0) − t ),          R(E) = ∫_{E_min}^{E} dE' / (S/ρ)(E') + R(E_min),

so the energy it has deposited inside the sphere of radius r is E0 − E_res(E0, ρ r).
For a nuclide, summing over the ICRP-107 beta spectrum N(E) (normalised, times the beta
yield) and the discrete conversion / Auger lines gives the cumulative energy per decay

    C_e(r) = Σ_lines y_k (E_k − E_res(E_k, ρr)) + Y_β ∫ N(E) (E − E_res(E, ρr)) dE   [MeV]

and the dose point kernel K_e(r) = (dC_e/dr) / (4π r² ρ) (MeV/g per decay).  By
construction ∫ 4π r² ρ K_e dr = C_e(∞) = the electron energy per decay (energy
conservation), and the kernel scales with density as K_ρ(r) = ρ² K_1(ρ r).

Stopping power: Bethe formula for electrons as written in ICRU Report 37 (1984, eq. 2.4
with the Møller term F⁻):

    S/ρ = 2π r_e² m c² N_A (Z/A) / β² [ ln( τ²(τ+2) / (2 (I/mc²)²) ) + F⁻(τ) − δ ],
    F⁻(τ) = 1 − β² + (τ²/8 − (2τ+1) ln 2) / (τ+1)²,   τ = E / mc².

Simplifications (documented limits of the model):

* density-effect correction δ = 0 (it lowers S/ρ of water by ~1 % at 1 MeV, ~3 % at
  2 MeV; ICRU 37), radiative losses counted as local (radiative yield of a 1 MeV
  electron in water ≈ 0.4 %; NIST ESTAR);
* straight tracks: multiple scattering is ignored, so electrons penetrate up to their
  full CSDA range and the kernel is somewhat too wide (real mean penetration is about
  0.5–0.8 of the CSDA range; Berger 1973, NBSIR 73-107).  The energy budget is exact;
  the spatial spread is an upper bound;
* electrons below ``E_LOCAL_MEV`` (1 keV, CSDA range ≈ 0.03 µm in water) and alpha
  particles / recoil nuclei (ranges < 0.1 mm) deposit their energy at the point of
  decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import nuclides as _nuc
from .media import Medium, medium as _medium

ELECTRON_MASS_MEV = 0.51099895000  # CODATA 2018
CLASSICAL_ELECTRON_RADIUS_CM = 2.8179403262e-13  # CODATA 2018
# 2π r_e² m c² N_A = 0.153536 MeV cm²/mol (ICRU 37, eq. 2.4 prefactor; from CODATA constants)
_BETHE_K = 2.0 * math.pi * CLASSICAL_ELECTRON_RADIUS_CM**2 * ELECTRON_MASS_MEV * _nuc.AVOGADRO_PER_MOL

E_LOCAL_MEV = 1e-3  # electrons below 1 keV deposit locally (range ~ 0.03 µm)
_E_TABLE = np.geomspace(E_LOCAL_MEV, 20.0, 2400)  # range-table grid, MeV


def collision_stopping_power_mev_cm2_g(energy_mev, medium_name="water"):
    """Electron mass collision stopping power S/ρ (MeV cm²/g), Bethe (ICRU 37), δ = 0."""
    m = _medium(medium_name)
    tau = np.asarray(energy_mev, dtype=float) / ELECTRON_MASS_MEV
    beta2 = 1.0 - 1.0 / (tau + 1.0) ** 2
    i_rel = m.mean_excitation_ev * 1e-6 / ELECTRON_MASS_MEV
    f_minus = 1.0 - beta2 + (tau**2 / 8.0 - (2.0 * tau + 1.0) * math.log(2.0)) / (tau + 1.0) ** 2
    bracket = np.log(tau**2 * (tau + 2.0) / (2.0 * i_rel**2)) + f_minus
    return _BETHE_K * m.z_over_a / beta2 * bracket


@lru_cache(maxsize=None)
def _range_table(m: Medium) -> tuple[np.ndarray, np.ndarray]:
    s = collision_stopping_power_mev_cm2_g(_E_TABLE, m)
    inv = 1.0 / s
    # trapezoid in E; R(E_min) ≈ E_min / S(E_min) (a 1 keV electron, < 1e-5 g/cm²)
    r = np.concatenate(([0.0], np.cumsum(0.5 * (inv[1:] + inv[:-1]) * np.diff(_E_TABLE)))) + _E_TABLE[0] * inv[0]
    r.setflags(write=False)
    return _E_TABLE, r


def csda_range_g_cm2(energy_mev, medium_name="water"):
    """CSDA range R(E) = ∫ dE / (S/ρ) in g/cm² (multiply by 10/ρ for mm)."""
    e, r = _range_table(_medium(medium_name))
    return np.interp(np.asarray(energy_mev, dtype=float), e, r, left=0.0)


def residual_energy_mev(energy_mev, path_g_cm2, medium_name="water"):
    """E_res(E0, t) = R⁻¹(R(E0) − t), 0 once t ≥ R(E0)."""
    e, r = _range_table(_medium(medium_name))
    remaining = np.interp(np.asarray(energy_mev, dtype=float), e, r, left=0.0) - np.asarray(path_g_cm2, dtype=float)
    return np.where(remaining > r[0], np.interp(remaining, r, e), 0.0)


@dataclass(frozen=True)
class ElectronSource:
    """Non-penetrating emissions of one decay: electrons as (energy_mev, number per
    decay) pairs (the beta spectrum on its ICRP-107 grid with trapezoid weights, plus the
    conversion and Auger lines; the spectrum normalised to the ICRP-107 beta yield) and the energy deposited at the decay point
    ``local_mev`` (alpha, recoil, electrons below 1 keV)."""

    energy_mev: np.ndarray
    number_per_decay: np.ndarray
    local_mev: float

    @property
    def total_mev(self) -> float:
        """Non-penetrating energy per decay, MeV."""
        return float(self.local_mev + np.sum(self.energy_mev * self.number_per_decay))


def _spectrum_weights(spectrum: _nuc.BetaSpectrum, beta_yield: float) -> tuple[np.ndarray, np.ndarray]:
    # Trapezoid weights on the ICRP-107 grid itself (interpolating the density onto a
    # finer grid would change the mean energy by ~0.4 % for 177Lu, whose tail grid is coarse).
    fine = np.asarray(spectrum.energy_mev)
    pdf = np.asarray(spectrum.pdf_per_mev)
    # trapezoid weights: ∫ f dE ≈ Σ w_j f(E_j)
    w = np.zeros_like(fine)
    d = np.diff(fine)
    w[:-1] += 0.5 * d
    w[1:] += 0.5 * d
    number = w * pdf
    number *= beta_yield / number.sum()  # ∫ N dE = number of betas per decay
    return fine, number


@lru_cache(maxsize=None)
def electron_source(nuclide: str, in_situ_equilibrium: bool = False) -> ElectronSource:
    """The non-penetrating emissions of `nuclide` (optionally its whole chain in
    in-situ equilibrium, each member weighted by its decays per parent decay)."""
    name = _nuc.normalise_name(nuclide)
    members = _nuc.decay_chain(name) if in_situ_equilibrium else (_nuc.ChainMember(name, 1.0, _nuc.half_life_h(name)),)
    energies, numbers, local = [], [], 0.0
    for member in members:
        weight = member.decays_per_parent_decay
        heavy = _nuc.energy_per_decay_mev(member.name)
        local += weight * sum(heavy.get(k, 0.0) for k in _nuc.HEAVY_LOCAL)
        spectrum = _nuc.beta_spectrum(member.name)
        if spectrum is not None:
            # shape from the spectrum, number of betas per decay from the ICRP-107 branch yields
            betas = _nuc.emission_lines(member.name, ("beta-", "beta+"))
            beta_yield = sum(y for _, y in betas) or spectrum.yield_per_decay
            e, n = _spectrum_weights(spectrum, beta_yield)
            energies.append(e)
            numbers.append(weight * n)
        lines = np.array(_nuc.emission_lines(member.name, _nuc.ELECTRON_LINES)).reshape(-1, 2)
        low = lines[:, 0] < E_LOCAL_MEV
        local += weight * float(np.sum(lines[low, 0] * lines[low, 1]))
        energies.append(lines[~low, 0])
        numbers.append(weight * lines[~low, 1])
    e = np.concatenate(energies) if energies else np.zeros(0)
    n = np.concatenate(numbers) if numbers else np.zeros(0)
    keep = n > 0
    e, n = e[keep], n[keep]
    e.setflags(write=False)
    n.setflags(write=False)
    return ElectronSource(e, n, float(local))


def max_range_mm(nuclide: str, medium_name="water", in_situ_equilibrium: bool = False) -> float:
    """Largest CSDA range (mm) of the electrons of `nuclide` in the medium."""
    src = electron_source(nuclide, in_situ_equilibrium)
    m = _medium(medium_name)
    if src.energy_mev.size == 0:
        return 0.0
    return float(csda_range_g_cm2(src.energy_mev.max(), m)) * 10.0 / m.density_g_cm3


def cumulative_energy_mev(nuclide: str, r_mm, medium_name="water", in_situ_equilibrium: bool = False) -> np.ndarray:
    """C_e(r): non-penetrating energy per decay (MeV) deposited inside the sphere of
    radius r_mm around a point source (local part included for every r ≥ 0)."""
    src = electron_source(nuclide, in_situ_equilibrium)
    m = _medium(medium_name)
    r = np.asarray(r_mm, dtype=float)
    t = r.reshape(-1, 1) * (m.density_g_cm3 / 10.0)  # g/cm²
    out = np.empty(t.shape[0])
    chunk = max(1, 2_000_000 // max(src.energy_mev.size, 1))
    for i in range(0, t.shape[0], chunk):
        res = residual_energy_mev(src.energy_mev[None, :], t[i : i + chunk], m)
        out[i : i + chunk] = ((src.energy_mev[None, :] - res) * src.number_per_decay[None, :]).sum(axis=1)
    return (out + src.local_mev).reshape(r.shape)


def point_kernel_mev_per_g(nuclide: str, r_mm, medium_name="water", in_situ_equilibrium: bool = False) -> np.ndarray:
    """K_e(r) = (dC_e/dr) / (4π r² ρ) in MeV/g per decay (r > 0), by central differences
    of :func:`cumulative_energy_mev` (step 1e-3 r)."""
    m = _medium(medium_name)
    r = np.asarray(r_mm, dtype=float)
    h = 1e-3 * r
    dc = cumulative_energy_mev(nuclide, r + h, m, in_situ_equilibrium) - cumulative_energy_mev(nuclide, r - h, m, in_situ_equilibrium)
    r_cm = r / 10.0
    return dc / (2 * h / 10.0) / (4.0 * math.pi * r_cm**2 * m.density_g_cm3)
