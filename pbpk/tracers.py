"""Ligands and tracers (nuclide + ligand) with sourced binding parameters.

A *ligand* is the molecule (e.g. PSMA-617); its receptor-binding parameters are shared
by every nuclide that labels it.  A *tracer* is a labelled ligand, named
"<nuclide>-<ligand>", e.g. ``"Lu-177-PSMA-617"``, ``"Ga-68-PSMA-11"``.  Half-lives come
from ICRP-107 through `dose.nuclides`, the project's one source of nuclide data.

Units: kon in L/(nmol*h), KD in nM (nmol/L), internalisation rate in 1/h.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dose import nuclides as _nuclides
from dose.errors import UnknownNuclideError

from .errors import UnknownTracerError

PER_MIN = 60.0  # multiply a rate in 1/min by this to get 1/h


@dataclass(frozen=True)
class Ligand:
    """Receptor-binding properties of one ligand.

    kon_l_per_nmol_h: association rate constant; kd_nm: equilibrium dissociation constant
    (koff = KD * kon); lambda_int_per_h: internalisation rate of the receptor-bound ligand;
    unbound_fraction_plasma: fraction of plasma ligand not bound to plasma proteins (only
    the unbound fraction is filtered by the glomeruli).
    """

    name: str
    kon_l_per_nmol_h: float
    kd_nm: float
    lambda_int_per_h: float
    unbound_fraction_plasma: float
    source: str

    @property
    def koff_per_h(self) -> float:
        return self.kd_nm * self.kon_l_per_nmol_h


# kon: no published association rate exists for these ligands; the Ulm PBPK family uses
# 0.046 L/nmol/min (Kletting P et al. PLoS One 2016;11:e0162303, as encoded in the
# public SBML of Fele-Paranj A et al. EJNMMI Radiopharm Chem 2024;9:6, qurit/PyCNO
# PSMA.sbml) and the same value is used here for all PSMA ligands.
# lambda_int: 0.001 /min for all PSMA ligands and tissues (Kletting 2016; Begum NJ et al.
# Sci Rep 2019;9:20041, same value in the Amsterdam PSMA-617 code, Bartelink/Siebinga).
_KON = 0.046 * PER_MIN
_LAMBDA_INT = 0.001 * PER_MIN
LIGANDS: dict[str, Ligand] = {
    "PSMA-617": Ligand(
        "PSMA-617", _KON, 5.4, _LAMBDA_INT, 0.25,
        "KD 5.4 nM: natIn-PSMA-617 saturation binding, LNCaP (Gourni E et al. PLoS One "
        "2015;10:e0145755); unbound plasma fraction 0.25 set so that urinary excretion at 24 h "
        "(61 %) lies in the range of Kabasakal L et al. Mol Imaging Radionucl Ther 2017;26:62 "
        "(41.5-65.4 %); the PLUVICTO label reports about 60-70 % plasma-protein binding "
        "(recalled, not re-verified), i.e. 0.3-0.4 unbound.",
    ),
    "PSMA-I&T": Ligand(
        "PSMA-I&T", _KON, 7.9, _LAMBDA_INT, 0.18,
        "KD 7.9 nM: IC50 of natLu-PSMA-I&T (Weineisen M et al. J Nucl Med 2015;56:1169; "
        "Schottelius M et al. J Nucl Med 2019 Table 1); plasma-protein binding 82.1 % of "
        "177Lu-PSMA-I&T in human plasma (same table) -> unbound 0.18.",
    ),
    "PSMA-11": Ligand(
        "PSMA-11", _KON, 2.9, _LAMBDA_INT, 0.7,
        "KD 2.9 nM: natGa-PSMA-HBED-CC saturation binding, LNCaP (Gourni 2015); plasma-"
        "protein binding of 68Ga-PSMA-11 not found in the literature: unbound fraction 0.7 "
        "is an assumption (fast blood clearance, 91 % with T1/2 6.5 min, EJNMMI Phys "
        "2019, doi:10.1186/s40658-018-0239-2).",
    ),
    "DCFPyL": Ligand(
        "DCFPyL", _KON, 1.1, _LAMBDA_INT, 0.7,
        "KD 1.1 nM: Ki of DCFPyL (Chen Y et al. Clin Cancer Res 2011;17:7645; recalled, not "
        "re-verified); unbound fraction 0.7 assumed as for PSMA-11.",
    ),
}


@dataclass(frozen=True)
class Tracer:
    """A ligand labelled with a nuclide.  `name` is "<nuclide>-<ligand>"."""

    nuclide: str
    ligand: Ligand

    @property
    def name(self) -> str:
        return f"{self.nuclide}-{self.ligand.name}"

    @property
    def half_life_h(self) -> float:
        return _nuclides.half_life_h(self.nuclide)

    @property
    def decay_constant_per_h(self) -> float:
        return _nuclides.decay_constant_per_h(self.nuclide)

    @property
    def mbq_per_nmol(self) -> float:
        """Carrier-free specific activity (MBq/nmol) = lambda N_A."""
        return _nuclides.mbq_per_nmol(self.nuclide)

    def hot_nmol(self, activity_mbq: float) -> float:
        """Amount of labelled ligand (nmol) carrying `activity_mbq`: A / (lambda N_A)."""
        return activity_mbq / self.mbq_per_nmol


_TRACER_NAME = re.compile(r"^\s*(\d{1,3}[A-Za-z]{1,2}|[A-Za-z]{1,2}-?\d{1,3}m?)-(.+)$")


def ligand(name: str) -> Ligand:
    try:
        return LIGANDS[name]
    except KeyError:
        raise UnknownTracerError(f"unknown ligand {name!r}; known: {sorted(LIGANDS)}") from None


def tracer(name: str) -> Tracer:
    """Look up a tracer by name, e.g. ``tracer("Lu-177-PSMA-617")`` or ``"Ga-68-PSMA-11"``."""
    if isinstance(name, Tracer):
        return name
    match = _TRACER_NAME.match(str(name))
    if match is None:
        raise UnknownTracerError(f"tracer {name!r}: expected '<nuclide>-<ligand>', e.g. 'Lu-177-PSMA-617'")
    try:
        nuclide = _nuclides.normalise_name(match.group(1))
        _nuclides.half_life_h(nuclide)
    except UnknownNuclideError as exc:
        raise UnknownTracerError(f"tracer {name!r}: {exc}") from None
    lig = LIGANDS.get(match.group(2))
    if lig is None:
        raise UnknownTracerError(f"tracer {name!r}: unknown ligand {match.group(2)!r}; known: {sorted(LIGANDS)}")
    return Tracer(nuclide, lig)
