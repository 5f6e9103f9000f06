"""Electron (and other non-penetrating) dose point kernels from ICRP-107 emissions.

An electron of kinetic energy E emitted at the origin deposits, inside the sphere of
mass radius t = ρ r (g/cm²),

    D(E, t) = E Φ_E(t / r₀(E))          (``tracks="scattered"``, the default), or
    D(E, t) = E − E_res(E, t)           (``tracks="straight"``),

where r₀ is the CSDA range, Φ the range-scaled absorbed-energy fraction from the
multiple-scattering Monte Carlo of :mod:`dose.electron_transport`, and E_res(E, t) =
R⁻¹(R(E) − t) the residual energy of continuous slowing down along a straight line
(:mod:`dose.stopping_power`; straight tracks ignore scattering, so electrons reach their
full CSDA range and the kernel is too wide — kept as a bound and for comparison).
For a nuclide, summing over the ICRP-107 beta spectrum N(E) (normalised, times the beta
yield) and the discrete conversion / Auger lines gives the cumulative energy per decay

    C_e(r) = Σ_lines y_k D(E_k, ρr) + Y_β ∫ N(E) D(E, ρr) dE + local   [MeV]

and the dose point kernel K_e(r) = (dC_e/dr) / (4π r² ρ) (MeV/g per decay).  Both track
models give ∫ 4π r² ρ K_e dr = C_e(∞) = the electron energy per decay (energy
conservation), and the kernel scales with density as K_ρ(r) = ρ² K_1(ρ r).

Simplifications (documented limits of the model):

* radiative losses counted as local (radiative yield of a 1 MeV electron in water
  ≈ 0.4 %; NIST ESTAR);
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
from .electron_transport import absorbed_fraction
from .errors import InvalidDoseInputError
from .media import medium as _medium
from .stopping_power import E_LOCAL_MEV, csda_range_g_cm2, residual_energy_mev

TRACKS = ("scattered", "straight")


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


def deposited_inside_mev(energy_mev, path_g_cm2, medium_name="water", tracks: str = "scattered") -> np.ndarray:
    """D(E, t): energy (MeV) an electron of `energy_mev` deposits inside the sphere of mass
    radius `path_g_cm2` around its origin (broadcast), for the `tracks` model."""
    e = np.asarray(energy_mev, dtype=float)
    t = np.asarray(path_g_cm2, dtype=float)
    if tracks == "straight":
        return e - residual_energy_mev(e, t, medium_name)
    if tracks == "scattered":
        r0 = csda_range_g_cm2(e, medium_name)
        # electrons below E_LOCAL_MEV (zero range in the table) deposit at the decay point
        x = np.where(r0 > 0.0, t / np.where(r0 > 0.0, r0, 1.0), 1.0)
        return e * absorbed_fraction(e, x)
    raise InvalidDoseInputError(f"tracks: expected one of {TRACKS}, got {tracks!r}")


def cumulative_energy_mev(nuclide: str, r_mm, medium_name="water", in_situ_equilibrium: bool = False,
                          tracks: str = "scattered") -> np.ndarray:
    """C_e(r): non-penetrating energy per decay (MeV) deposited inside the sphere of
    radius r_mm around a point source (local part included for every r ≥ 0)."""
    src = electron_source(nuclide, in_situ_equilibrium)
    m = _medium(medium_name)
    r = np.asarray(r_mm, dtype=float)
    t = r.reshape(-1, 1) * (m.density_g_cm3 / 10.0)  # g/cm²
    out = np.empty(t.shape[0])
    chunk = max(1, 2_000_000 // max(src.energy_mev.size, 1))
    for i in range(0, t.shape[0], chunk):
        inside = deposited_inside_mev(src.energy_mev[None, :], t[i : i + chunk], m, tracks)
        out[i : i + chunk] = (inside * src.number_per_decay[None, :]).sum(axis=1)
    return (out + src.local_mev).reshape(r.shape)


def point_kernel_mev_per_g(nuclide: str, r_mm, medium_name="water", in_situ_equilibrium: bool = False,
                           tracks: str = "scattered") -> np.ndarray:
    """K_e(r) = (dC_e/dr) / (4π r² ρ) in MeV/g per decay (r > 0), by central differences
    of :func:`cumulative_energy_mev` (step 1e-3 r)."""
    m = _medium(medium_name)
    r = np.asarray(r_mm, dtype=float)
    h = 1e-3 * r
    dc = cumulative_energy_mev(nuclide, r + h, m, in_situ_equilibrium, tracks) \
        - cumulative_energy_mev(nuclide, r - h, m, in_situ_equilibrium, tracks)
    r_cm = r / 10.0
    return dc / (2 * h / 10.0) / (4.0 * math.pi * r_cm**2 * m.density_g_cm3)
