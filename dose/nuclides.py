"""Nuclide data from ICRP Publication 107 (Eckerman & Endo 2008), via `icrp107-database`.

This module is the one source of nuclide data for the whole project: half-lives,
decay constants, carrier-free specific activity and mean energy emitted per decay by
emission type.  The ``icrp107-database`` package ships one JSON file per nuclide whose
content is a JSON *string* holding the JSON document (encoded twice); it is decoded
here once and cached.

Nuclide names follow ICRP-107: element symbol, hyphen, mass number, optional
metastable flag, e.g. ``"Lu-177"``, ``"Ga-68"``, ``"Tc-99m"``.  Common spellings such
as ``"177Lu"``, ``"Lu177"`` and ``"lu-177"`` are accepted and normalised.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Mapping

from .errors import UnknownNuclideError

AVOGADRO_PER_MOL = 6.02214076e23  # exact, SI 2019 definition
MEV_TO_J = 1.602176634e-13  # exact, SI 2019 definition (e = 1.602176634e-19 C)

# Length of the ICRP-107 time units in hours.  ICRP-107 tabulates half-lives with the
# year taken as 365.2422 d (tropical year; ICRP Publication 107, section 2).
_UNIT_H = {
    "us": 1e-6 / 3600.0,
    "ms": 1e-3 / 3600.0,
    "s": 1.0 / 3600.0,
    "m": 1.0 / 60.0,
    "h": 1.0,
    "d": 24.0,
    "y": 365.2422 * 24.0,
}

# Emission types of ICRP-107 whose energy is deposited within about a millimetre in
# tissue (electrons and alphas); photons (gamma, X, annihilation) are penetrating.
NON_PENETRATING = ("alpha", "beta-", "beta+", "auger", "IE", "alpha recoil")
PENETRATING = ("gamma", "X", "annihilation")

_NAME = re.compile(r"^\s*(?:(\d+)\s*-?\s*([A-Za-z]{1,2})|([A-Za-z]{1,2})\s*-?\s*(\d+))\s*(m\d?)?\s*$")


def normalise_name(nuclide: str) -> str:
    """Return the ICRP-107 spelling of a nuclide name ("177Lu" -> "Lu-177")."""
    if not isinstance(nuclide, str):
        raise UnknownNuclideError(f"nuclide name must be a string, got {nuclide!r}")
    match = _NAME.match(nuclide)
    if match is None:
        raise UnknownNuclideError(
            f"nuclide {nuclide!r} is not a nuclide name; expected e.g. 'Lu-177' or '177Lu'"
        )
    mass, symbol = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
    return f"{symbol.capitalize()}-{int(mass)}{match.group(5) or ''}"


@lru_cache(maxsize=None)
def _record(name: str) -> dict:
    path = resources.files("icrp107_database") / "icrp107" / f"{name}.json"
    if not path.is_file():
        raise UnknownNuclideError(f"nuclide {name!r} is not in the ICRP-107 data (icrp107-database)")
    with path.open("rb") as handle:
        text = json.load(handle)  # first decoding: the file holds a JSON string
    return json.loads(text)  # second decoding: the document itself


def _data(nuclide: str) -> dict:
    return _record(normalise_name(nuclide))


def half_life_h(nuclide: str) -> float:
    """Physical half-life in hours (ICRP-107)."""
    record = _data(nuclide)
    return float(record["half_life"]) * _UNIT_H[record["time_unit"]]


def decay_constant_per_h(nuclide: str) -> float:
    """Physical decay constant lambda = ln 2 / T_1/2, in 1/h."""
    return math.log(2.0) / half_life_h(nuclide)


def mbq_per_nmol(nuclide: str) -> float:
    """Carrier-free specific activity, MBq per nmol: lambda [1/s] * N_A * 1e-9 / 1e6."""
    return decay_constant_per_h(nuclide) / 3600.0 * AVOGADRO_PER_MOL * 1e-9 / 1e6


def energy_per_decay_mev(nuclide: str) -> dict[str, float]:
    """Mean energy emitted per decay (MeV) by ICRP-107 emission type.

    Sum over the discrete lines of energy x yield; for beta emitters ICRP-107 lists the
    mean energy of each beta branch with its yield, so the sum is the mean beta energy
    per decay.  Types without emissions are omitted.
    """
    out = {}
    for kind, lines in _data(nuclide)["emissions"].items():
        if kind in ("b-spectra", "betaD", "neutron", "fission") or not lines:
            continue
        out[kind] = float(sum(energy * yield_ for energy, yield_ in lines))
    return out


def non_penetrating_energy_mev(name: str) -> float:
    """Mean energy per decay of electrons and alphas (MeV): the local-deposition part."""
    return nuclide(name).non_penetrating_mev


@dataclass(frozen=True)
class Nuclide:
    """ICRP-107 data of one nuclide: half-life (h), decay constant (1/h), carrier-free
    specific activity (MBq/nmol) and mean energy per decay by emission type (MeV)."""

    name: str
    half_life_h: float
    energy_per_decay_mev: Mapping[str, float]
    # Members whose emissions are included (the parent alone unless built with
    # ``nuclide(name, in_situ_equilibrium=True)``).
    chain: tuple[str, ...] = ()

    @property
    def decay_constant_per_h(self) -> float:
        return math.log(2.0) / self.half_life_h

    @property
    def mbq_per_nmol(self) -> float:
        return self.decay_constant_per_h / 3600.0 * AVOGADRO_PER_MOL * 1e-9 / 1e6

    @property
    def non_penetrating_mev(self) -> float:
        """Electrons and alphas per decay (MeV): what local deposition absorbs."""
        return sum(self.energy_per_decay_mev.get(kind, 0.0) for kind in NON_PENETRATING)

    @property
    def penetrating_mev(self) -> float:
        """Photons per decay (MeV)."""
        return sum(self.energy_per_decay_mev.get(kind, 0.0) for kind in PENETRATING)


def nuclide(name: str, in_situ_equilibrium: bool = False, max_half_life_h: float | None = None) -> Nuclide:
    """ICRP-107 data for `name` (e.g. "Lu-177", "177Lu"); UnknownNuclideError otherwise.

    ``in_situ_equilibrium=True``: energies per decay of the parent summed over its decay
    chain with branching (:func:`equilibrium_energy_per_decay_mev`), i.e. all daughters
    decay where the parent decayed; the half-life stays the parent's.
    """
    canonical = normalise_name(name)
    if in_situ_equilibrium:
        keep = _kept_members(canonical, max_half_life_h)
        members = tuple(m.name for m in decay_chain(canonical) if m.name in keep)
        energies = equilibrium_energy_per_decay_mev(canonical, max_half_life_h)
        return Nuclide(canonical, half_life_h(canonical), MappingProxyType(energies), members)
    return Nuclide(canonical, half_life_h(canonical), MappingProxyType(energy_per_decay_mev(canonical)), (canonical,))


# ---------------------------------------------------------------------------------
# Emission lines and the beta spectrum
# ---------------------------------------------------------------------------------

ELECTRON_LINES = ("IE", "auger")  # discrete electrons: internal conversion and Auger
PHOTON_LINES = ("gamma", "X", "annihilation")
HEAVY_LOCAL = ("alpha", "alpha recoil")  # ranges < 0.1 mm in tissue: always local


def emission_lines(nuclide: str, kinds: tuple[str, ...]) -> tuple[tuple[float, float], ...]:
    """Discrete ICRP-107 lines ``(energy_mev, yield_per_decay)`` of the given emission
    types, concatenated (e.g. ``kinds=PHOTON_LINES``)."""
    emissions = _data(nuclide)["emissions"]
    return tuple((float(e), float(y)) for kind in kinds for e, y in (emissions.get(kind) or ()))


@dataclass(frozen=True)
class BetaSpectrum:
    """Continuous beta spectrum of ICRP-107 (``b-spectra``; beta- and beta+ together).

    ``energy_mev`` is the kinetic-energy grid and ``pdf_per_mev`` the probability
    density normalised to ``∫ pdf dE = 1`` (trapezoid rule on the ICRP grid);
    ``yield_per_decay = ∫ dN/dE dE`` is the number of beta particles per decay (the
    beta branching ratio) before normalisation.  The mean energy per beta particle is
    ``∫ E pdf dE`` and ``yield_per_decay × mean`` is the beta energy per decay.
    """

    nuclide: str
    energy_mev: tuple[float, ...]
    pdf_per_mev: tuple[float, ...]
    yield_per_decay: float

    @property
    def mean_mev(self) -> float:
        """Mean kinetic energy per beta particle, ∫ E pdf(E) dE (trapezoid), MeV."""
        e, p = self.energy_mev, self.pdf_per_mev
        return float(sum(0.5 * (e[i + 1] - e[i]) * (e[i] * p[i] + e[i + 1] * p[i + 1]) for i in range(len(e) - 1)))

    @property
    def max_energy_mev(self) -> float:
        """End-point energy: the end of the last grid interval with non-zero density, MeV."""
        last = max(i for i, p in enumerate(self.pdf_per_mev) if p > 0.0)
        return self.energy_mev[min(last + 1, len(self.energy_mev) - 1)]


@lru_cache(maxsize=None)
def beta_spectrum(nuclide: str) -> BetaSpectrum | None:
    """ICRP-107 beta spectrum of `nuclide` normalised to unit area, or None when the
    nuclide emits no beta particles (e.g. pure alpha or electron-capture nuclides)."""
    name = normalise_name(nuclide)
    pairs = _record(name)["emissions"].get("b-spectra") or []
    if not pairs:
        return None
    energy = [float(e) for e, _ in pairs]
    density = [max(float(n), 0.0) for _, n in pairs]
    area = sum(0.5 * (energy[i + 1] - energy[i]) * (density[i] + density[i + 1]) for i in range(len(energy) - 1))
    if not area > 0.0:
        return None
    return BetaSpectrum(name, tuple(energy), tuple(d / area for d in density), float(area))


# ---------------------------------------------------------------------------------
# Decay chains
# ---------------------------------------------------------------------------------

# Chemical element symbols in order of atomic number Z = 1 ... 103 (periodic table).
_ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge "
    "As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm "
    "Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U "
    "Np Pu Am Cm Bk Cf Es Fm Md No Lr"
).split()

# A remainder of the branching (1 - alpha - beta-) below this is taken as rounding of
# the ICRP-107 yields rather than a real electron-capture / isomeric branch.
_BRANCH_ROUNDING = 1e-3


def _split(name: str) -> tuple[int, int, bool]:
    symbol, rest = name.split("-")
    meta = "m" in rest
    mass = int(re.match(r"\d+", rest).group(0))
    return _ELEMENTS.index(symbol) + 1, mass, meta


def _exists(name: str) -> bool:
    return (resources.files("icrp107_database") / "icrp107" / f"{name}.json").is_file()


@lru_cache(maxsize=None)
def daughters(nuclide: str) -> tuple[tuple[str, float], ...]:
    """Radioactive daughters ``(name, branching fraction)`` of one decay of `nuclide`.

    The icrp107-database package carries no daughter table, so the decay modes are
    inferred from the ICRP-107 emissions of the parent:

    * alpha branch ``b_α = Σ alpha yields`` → (Z-2, A-4);
    * beta- branch ``b_β- = Σ beta- yields`` → (Z+1, A);
    * the remainder ``1 - b_α - b_β-`` (if above 1e-3): isomeric transition to the
      ground state for a metastable parent, otherwise electron capture / beta+ → (Z-1, A).

    A daughter counts only if ICRP-107 lists it (otherwise it is stable for the
    purpose of dosimetry).  Limitation: decays that feed a metastable daughter state
    (e.g. 99Mo → 99mTc) are assigned to the ground state.
    """
    name = normalise_name(nuclide)
    emissions = _record(name)["emissions"]
    z, a, meta = _split(name)
    b_alpha = float(sum(y for _, y in emissions.get("alpha") or ()))
    b_beta = float(sum(y for _, y in emissions.get("beta-") or ()))
    branches = [((z - 2, a - 4), b_alpha), ((z + 1, a), b_beta)]
    rest = 1.0 - b_alpha - b_beta
    if rest > _BRANCH_ROUNDING:
        branches.append(((z, a) if meta else (z - 1, a), rest))
    out = []
    for (zd, ad), fraction in branches:
        if fraction <= 0.0 or not 1 <= zd <= len(_ELEMENTS):
            continue
        daughter = f"{_ELEMENTS[zd - 1]}-{ad}"
        if daughter != name and _exists(daughter):
            out.append((daughter, fraction))
    return tuple(out)


@dataclass(frozen=True)
class ChainMember:
    """One member of a decay chain: ``decays_per_parent_decay`` is the number of its
    decays per decay of the chain parent (the product of branching fractions summed
    over all paths; 1 for the parent)."""

    name: str
    decays_per_parent_decay: float
    half_life_h: float


@lru_cache(maxsize=None)
def decay_chain(nuclide: str) -> tuple[ChainMember, ...]:
    """The parent and all its radioactive descendants, in decay order.

    ``n_k = Σ_paths Π b`` is the number of decays of member k per parent decay
    (e.g. 225Ac: 213Po 0.979, 209Tl 0.021, 209Pb 1.0).  With the time-integrated
    activity of the parent Ã_p, the time-integrated activity of member k is n_k Ã_p
    when all daughters decay where they are formed (in-situ), whatever their
    half-lives (every parent decay eventually produces n_k daughter decays).
    """
    parent = normalise_name(nuclide)
    _record(parent)  # UnknownNuclideError if absent
    counts: dict[str, float] = {parent: 1.0}
    # Process in topological order: a member is expanded once all paths into it are known.
    incoming: dict[str, int] = {}
    stack, seen = [parent], {parent}
    while stack:  # first pass: number of parents of every member
        current = stack.pop()
        for daughter, _ in daughters(current):
            incoming[daughter] = incoming.get(daughter, 0) + 1
            if daughter not in seen:
                seen.add(daughter)
                stack.append(daughter)
    ready = [parent]
    order = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for daughter, fraction in daughters(current):
            counts[daughter] = counts.get(daughter, 0.0) + counts[current] * fraction
            incoming[daughter] -= 1
            if incoming[daughter] == 0:
                ready.append(daughter)
    return tuple(ChainMember(m, counts[m], half_life_h(m)) for m in order)


def equilibrium_energy_per_decay_mev(nuclide: str, max_half_life_h: float | None = None) -> dict[str, float]:
    """Energy emitted per decay of the parent by emission type (MeV), summed over the
    decay chain in in-situ (secular) equilibrium: ``E_type = Σ_k n_k E_type,k``
    with n_k from :func:`decay_chain`.

    ``max_half_life_h``: members (and everything below them) with a longer half-life
    are left out, e.g. to exclude a long-lived daughter that would leave the site.
    """
    keep = _kept_members(normalise_name(nuclide), max_half_life_h)
    out: dict[str, float] = {}
    for member in decay_chain(nuclide):
        if member.name not in keep:
            continue
        for kind, energy in energy_per_decay_mev(member.name).items():
            out[kind] = out.get(kind, 0.0) + member.decays_per_parent_decay * energy
    return out


def _kept_members(parent: str, max_half_life_h: float | None) -> set[str]:
    if max_half_life_h is None:
        return {m.name for m in decay_chain(parent)}
    keep, stack = {parent}, [parent]
    while stack:
        for daughter, _ in daughters(stack.pop()):
            if daughter not in keep and half_life_h(daughter) <= max_half_life_h:
                keep.add(daughter)
                stack.append(daughter)
    return keep
