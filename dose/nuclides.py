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


def nuclide(name: str) -> Nuclide:
    """ICRP-107 data for `name` (e.g. "Lu-177", "177Lu"); UnknownNuclideError otherwise."""
    canonical = normalise_name(name)
    return Nuclide(canonical, half_life_h(canonical), MappingProxyType(energy_per_decay_mev(canonical)))
