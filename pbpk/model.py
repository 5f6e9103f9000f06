"""The PBPK model representation: a model is data, not code.

A `Model` holds

* `parameters`: named scalars with value, unit, bounds, optional log-normal prior and
  provenance (the literature source of the default);
* `assignments`: derived quantities (volumes, flows, receptor amounts) as SymPy
  expressions of parameters and of earlier assignments, in evaluation order;
* `compartments`: named spaces with a volume expression (litres);
* `species`: amounts (nmol) living in a compartment, tagged with the ligand they are and,
  for radiolabelled ("hot") species, the nuclide that labels them;
* `reactions`: a rate expression (nmol/h) of species amounts, parameters and assignments,
  with a stoichiometry (species -> coefficient);
* `regions`: named sets of species whose summed activity is an imaged or dosimetric
  region (e.g. ``kidneys``), with the region's volume expression (litres);
* `dose_targets`: the species that receive an injected dose, per (ligand, nuclide) form;
* `positive_assignments`: assignments that must stay > 0 for a valid parameter set
  (e.g. a flow that closes the cardiac-output balance).

Time is in hours throughout.  Concentration of a species is amount / compartment volume
(nmol/L = nM).  Rates are symbolic, parameters are substitutable symbols and species can
be merged by rewriting expressions, so SBML import and MBAM reduction produce the same
type.  `pbpk.compile` turns any `Model` into one pure JAX right-hand side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

import sympy as sp

from .errors import ModelError

HOT = "hot"
COLD = "cold"


def decay_parameter_name(nuclide: str) -> str:
    """Name of the parameter holding a nuclide's physical decay constant (1/h), e.g.
    "lambda_lu_177_per_h"; `pbpk.simulate` converts labelled amounts to activity with it."""
    import re

    return "lambda_" + re.sub(r"[^0-9A-Za-z]+", "_", nuclide).strip("_").lower() + "_per_h"


@dataclass(frozen=True)
class LogNormalPrior:
    """Log-normal prior: log(value) ~ Normal(log(median), sigma_log)."""

    median: float
    sigma_log: float
    source: str = ""


@dataclass(frozen=True)
class Parameter:
    """A named model parameter.  Bounds are inclusive; `source` cites the default."""

    name: str
    value: float
    unit: str
    description: str = ""
    source: str = ""
    lower: float = 0.0
    upper: float = math.inf
    prior: LogNormalPrior | None = None

    def __post_init__(self):
        if not (self.lower <= self.value <= self.upper) or not math.isfinite(self.value):
            raise ModelError(
                f"parameter {self.name!r}: default value {self.value} {self.unit} outside its "
                f"bounds [{self.lower}, {self.upper}]"
            )

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name)


@dataclass(frozen=True)
class Compartment:
    """A well-mixed space; `volume` is a SymPy expression in litres."""

    name: str
    volume: sp.Expr
    description: str = ""


@dataclass(frozen=True)
class Species:
    """An amount (nmol) of one ligand form in one compartment.

    `ligand` names the molecule; `nuclide` is the radiolabel for hot species and None for
    cold (unlabelled or decayed) ligand.
    """

    name: str
    compartment: str
    ligand: str | None = None
    nuclide: str | None = None

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name)

    @property
    def label(self) -> str:
        return HOT if self.nuclide is not None else COLD


@dataclass(frozen=True)
class Reaction:
    """A flux `rate` (nmol/h) moving amount with the given stoichiometry."""

    name: str
    rate: sp.Expr
    stoichiometry: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Region:
    """A set of species whose summed activity is reported, and its volume (litres)."""

    name: str
    species: tuple[str, ...]
    volume: sp.Expr | None = None


@dataclass(frozen=True)
class Model:
    """An immutable PBPK model.  Build one with `pbpk.ModelBuilder`."""

    name: str
    parameters: tuple[Parameter, ...]
    assignments: tuple[tuple[str, sp.Expr], ...]
    compartments: tuple[Compartment, ...]
    species: tuple[Species, ...]
    reactions: tuple[Reaction, ...]
    regions: tuple[Region, ...]
    dose_targets: Mapping[tuple[str, str | None], str] = field(default_factory=dict)
    positive_assignments: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "dose_targets", MappingProxyType(dict(self.dose_targets)))
        self._validate()

    # ------------------------------------------------------------------ lookup
    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def species_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.species)

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    @property
    def nuclides(self) -> tuple[str, ...]:
        return tuple(sorted({s.nuclide for s in self.species if s.nuclide is not None}))

    @property
    def ligands(self) -> tuple[str, ...]:
        return tuple(sorted({s.ligand for s in self.species if s.ligand is not None}))

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"model {self.name!r} has no parameter {name!r}")

    def compartment(self, name: str) -> Compartment:
        for c in self.compartments:
            if c.name == name:
                return c
        raise KeyError(f"model {self.name!r} has no compartment {name!r}")

    def with_parameter_values(self, **values: float) -> "Model":
        """Return a copy whose parameter defaults are replaced by `values`."""
        known = set(self.parameter_names)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"model {self.name!r} has no parameters {unknown}")
        params = tuple(replace(p, value=float(values[p.name])) if p.name in values else p for p in self.parameters)
        return replace(self, parameters=params)

    def parameter_table(self):
        """Parameters as a pandas DataFrame (name, value, unit, bounds, source)."""
        import pandas as pd

        return pd.DataFrame(
            [
                dict(name=p.name, value=p.value, unit=p.unit, lower=p.lower, upper=p.upper,
                     description=p.description, source=p.source)
                for p in self.parameters
            ]
        )

    # -------------------------------------------------------------- validation
    def _validate(self) -> None:
        names: dict[str, str] = {}
        for kind, items in (
            ("parameter", [p.name for p in self.parameters]),
            ("assignment", [a for a, _ in self.assignments]),
            ("species", [s.name for s in self.species]),
        ):
            for n in items:
                if n in names:
                    raise ModelError(f"model {self.name!r}: name {n!r} used by a {names[n]} and a {kind}")
                names[n] = kind
        compartments = {c.name for c in self.compartments}
        if len(compartments) != len(self.compartments):
            raise ModelError(f"model {self.name!r}: duplicate compartment names")
        for s in self.species:
            if s.compartment not in compartments:
                raise ModelError(f"species {s.name!r}: unknown compartment {s.compartment!r}")
        known = {sp.Symbol(p.name) for p in self.parameters}
        for a, expr in self.assignments:
            free = expr.free_symbols - known
            if free:
                raise ModelError(f"assignment {a!r} uses undefined symbols {sorted(map(str, free))}")
            known.add(sp.Symbol(a))
        for c in self.compartments:
            free = sp.sympify(c.volume).free_symbols - known
            if free:
                raise ModelError(f"compartment {c.name!r}: volume uses undefined symbols {sorted(map(str, free))}")
        species = set(self.species_names)
        rate_known = known | {sp.Symbol(s) for s in species}
        for r in self.reactions:
            free = r.rate.free_symbols - rate_known
            if free:
                raise ModelError(f"reaction {r.name!r}: rate uses undefined symbols {sorted(map(str, free))}")
            for s, _ in r.stoichiometry:
                if s not in species:
                    raise ModelError(f"reaction {r.name!r}: unknown species {s!r}")
        for reg in self.regions:
            missing = [s for s in reg.species if s not in species]
            if missing:
                raise ModelError(f"region {reg.name!r}: unknown species {missing}")
            if reg.volume is not None and sp.sympify(reg.volume).free_symbols - known:
                raise ModelError(f"region {reg.name!r}: volume uses undefined symbols")
        assigned = {a for a, _ in self.assignments}
        for a in self.positive_assignments:
            if a not in assigned:
                raise ModelError(f"positive constraint on unknown assignment {a!r}")
        for key, s in self.dose_targets.items():
            if s not in species:
                raise ModelError(f"dose target {key}: unknown species {s!r}")
