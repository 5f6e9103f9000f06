"""Organ-at-risk limits for schedule optimisation, each with its literature source.

A `Limit` says that a per-draw outcome of a dose region must stay at or below `value`:
``quantity`` is "dose_gy" (mean absorbed dose, Gy) or "bed_gy" (biologically effective
dose, Gy), both summed over all cycles of a schedule, as in `twin.outcomes.Outcomes`.
How a limit is turned into a constraint over posterior draws (a quantile) is up to the
optimiser (`twin.optimise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from .errors import TwinError

QUANTITIES = ("dose_gy", "bed_gy")
USER_SOURCE = "user-supplied limit"


@dataclass(frozen=True)
class Limit:
    """`quantity` of `region` (Gy) must be <= `value` (Gy); `source` cites where it comes from."""

    region: str
    quantity: str
    value: float
    source: str

    def __post_init__(self):
        if not isinstance(self.region, str) or not self.region:
            raise TwinError(f"Limit.region = {self.region!r}; expected a non-empty region name")
        if self.quantity not in QUANTITIES:
            raise TwinError(f"Limit {self.region!r}: quantity = {self.quantity!r}; expected one of {QUANTITIES}")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise TwinError(f"Limit {self.region!r} {self.quantity}: value = {value!r}; "
                            "expected a finite number > 0 (Gy)")
        object.__setattr__(self, "value", float(value))
        if not isinstance(self.source, str) or not self.source.strip():
            raise TwinError(f"Limit {self.region!r} {self.quantity}: source = {self.source!r}; expected a citation")

    @property
    def label(self) -> str:
        """"region quantity", e.g. "kidneys bed_gy"."""
        return f"{self.region} {self.quantity}"


DEFAULT_LIMITS: tuple[Limit, ...] = (
    # Kidneys, BED 40 Gy: Bodei L et al., Eur J Nucl Med Mol Imaging 2008;35(10):1847-1856,
    # abstract (verified with the search tool): "A 28-Gy BED threshold was observed in patients
    # with risk factors (mainly hypertension and diabetes), while it was 40 Gy in patients
    # without risk factors" (90Y-DOTATOC / 177Lu-DOTATATE PRRT).  Use 28 Gy for patients with
    # risk factors (`limits_from_mapping({"kidneys": {"bed_gy": 28}})`).  The same BED limits
    # are discussed in Wessels BW et al., MIRD Pamphlet No. 20, J Nucl Med 2008;49:1884-1899
    # [recalled from memory, not re-read].
    Limit("kidneys", "bed_gy", 40.0,
          "Bodei L et al. EJNMMI 2008;35:1847 (BED 40 Gy without risk factors, 28 Gy with); "
          "Wessels BW et al. MIRD Pamphlet 20, J Nucl Med 2008;49:1884"),
    # Red marrow, absorbed dose 2 Gy: the conventional blood/marrow limit of 131I therapy of
    # metastatic thyroid cancer, Benua RS et al., Am J Roentgenol Radium Ther Nucl Med
    # 1962;87:171-182 ("200 rad to the blood") [recalled from memory, not re-read]; the 2 Gy
    # blood (marrow surrogate) limit of radioiodine dosimetry is restated in e.g. the review
    # "Bone marrow dosimetry in radioiodine (I-131) treatment", Nucl Med Semin (Galenos) 2025,
    # doi:10.4274/nts.galenos.2025.91300 (abstract verified with the search tool), and in the
    # EANM dosimetry guidance for blood-based marrow dosimetry (Lassmann M et al., EJNMMI
    # 2008;35:1405) [recalled].
    Limit("red_marrow", "dose_gy", 2.0,
          "Benua RS et al. Am J Roentgenol 1962;87:171 (2 Gy blood/marrow limit of 131I therapy); "
          "EANM guidance (Lassmann M et al. EJNMMI 2008;35:1405)"),
    # Salivary glands, mean absorbed dose 25 Gy.  There is NO established limit for
    # radiopharmaceutical therapy; this is the external-beam (EBRT) constraint, used here as a
    # conservative stand-in: QUANTEC, Deasy JO et al., Int J Radiat Oncol Biol Phys
    # 2010;76(3 Suppl):S58-S63, abstract (verified with the search tool): severe xerostomia is
    # usually avoided "if both glands are spared to less than ~25 Gy (mean dose)".  EBRT doses
    # are given at high dose rate in 2 Gy fractions, so the equivalence with a low-dose-rate
    # radiopharmaceutical dose is an assumption.
    Limit("salivary_glands", "dose_gy", 25.0,
          "QUANTEC parotid mean dose, Deasy JO et al. Int J Radiat Oncol Biol Phys 2010;76(3 Suppl):S58 "
          "(EBRT constraint used as a conservative stand-in; no established radiopharmaceutical limit)"),
)
"""Default organ-at-risk limits (see the comments in the source for what was verified)."""


def limits_from_mapping(mapping: Mapping[str, Mapping[str, float]], *,
                        source: str = USER_SOURCE) -> tuple[Limit, ...]:
    """Limits from a mapping region -> {quantity: value_gy}, e.g. ``{"kidneys": {"bed_gy": 28}}``.

    Every limit gets `source` (default "user-supplied limit").  TwinError names the key at
    fault for an unknown quantity, a non-numeric or non-positive value, or a non-mapping entry.
    """
    if not isinstance(mapping, Mapping):
        raise TwinError(f"limits: expected a mapping region -> {{quantity: value}}, got {type(mapping).__name__}")
    out = []
    for region, quantities in mapping.items():
        if not isinstance(quantities, Mapping):
            raise TwinError(f"limits[{region!r}]: expected a mapping {{quantity: value}} with quantity in "
                            f"{QUANTITIES}, got {quantities!r}")
        for quantity, value in quantities.items():
            key = f"limits[{region!r}][{quantity!r}]"
            if quantity not in QUANTITIES:
                raise TwinError(f"{key}: unknown quantity {quantity!r}; expected one of {QUANTITIES}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise TwinError(f"{key} = {value!r}; expected a finite number > 0 (Gy)")
            out.append(Limit(str(region), quantity, float(value), source))
    return tuple(out)


def limits_for_regions(limits: Iterable[Limit], regions: Iterable[str]) -> tuple[Limit, ...]:
    """The limits whose region is in `regions` (an explicit filter the caller asks for;
    the optimiser itself refuses limits for regions it cannot evaluate)."""
    keep = set(regions)
    return tuple(lim for lim in limits if lim.region in keep)
