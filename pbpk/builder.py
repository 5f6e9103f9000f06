"""A small builder API for writing `Model`s in code (used by the reference ligand models).

Example (one-compartment clearance)::

    b = ModelBuilder("toy")
    k = b.parameter("k_per_h", 0.1, "1/h", source="illustration")
    v = b.parameter("v_l", 3.0, "L", lower=1e-6)
    b.compartment("plasma", v)
    a = b.species("drug_plasma", "plasma", ligand="drug")
    b.reaction("clearance", k * a, {"drug_plasma": -1})
    model = b.build()
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import sympy as sp

from .errors import ModelError
from .model import Compartment, LogNormalPrior, Model, Parameter, Reaction, Region, Species


class ModelBuilder:
    """Accumulates model elements and returns an immutable, validated `Model`."""

    def __init__(self, name: str, description: str = ""):
        self.name = name
        self.description = description
        self._parameters: dict[str, Parameter] = {}
        self._assignments: dict[str, sp.Expr] = {}
        self._compartments: dict[str, Compartment] = {}
        self._species: dict[str, Species] = {}
        self._reactions: list[Reaction] = []
        self._regions: dict[str, Region] = {}
        self._dose_targets: dict[tuple[str, str | None], str] = {}
        self._positive: list[str] = []

    @property
    def compartment_names(self) -> tuple[str, ...]:
        return tuple(self._compartments)

    # ----------------------------------------------------------- elements
    def parameter(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        description: str = "",
        source: str = "",
        lower: float = 0.0,
        upper: float = math.inf,
        prior: LogNormalPrior | None = None,
    ) -> sp.Symbol:
        if name in self._parameters:
            raise ModelError(f"model {self.name!r}: parameter {name!r} defined twice")
        self._parameters[name] = Parameter(name, float(value), unit, description, source, lower, upper, prior)
        return sp.Symbol(name)

    def assign(self, name: str, expr, *, positive: bool = False) -> sp.Symbol:
        """Define a derived quantity; it may use parameters and earlier assignments.

        `positive=True` declares a constraint checked for every parameter set (e.g. a
        flow that closes a balance and must stay > 0).
        """
        if name in self._assignments:
            raise ModelError(f"model {self.name!r}: assignment {name!r} defined twice")
        self._assignments[name] = sp.sympify(expr)
        if positive:
            self._positive.append(name)
        return sp.Symbol(name)

    def compartment(self, name: str, volume_l, description: str = "") -> sp.Expr:
        """Add a compartment of the given volume (litres); returns the volume expression."""
        if name in self._compartments:
            raise ModelError(f"model {self.name!r}: compartment {name!r} defined twice")
        volume = sp.sympify(volume_l)
        self._compartments[name] = Compartment(name, volume, description)
        return volume

    def species(self, name: str, compartment: str, *, ligand: str | None = None, nuclide: str | None = None) -> sp.Symbol:
        if name in self._species:
            raise ModelError(f"model {self.name!r}: species {name!r} defined twice")
        if compartment not in self._compartments:
            raise ModelError(f"species {name!r}: compartment {compartment!r} not defined yet")
        self._species[name] = Species(name, compartment, ligand, nuclide)
        return sp.Symbol(name)

    def concentration(self, species: str) -> sp.Expr:
        """Concentration (nmol/L) of a species: amount / volume of its compartment."""
        s = self._species[species]
        return sp.Symbol(species) / self._compartments[s.compartment].volume

    def reaction(self, name: str, rate, stoichiometry: Mapping[str, float]) -> None:
        """Add a flux `rate` (nmol/h) with stoichiometry {species: coefficient}."""
        stoich = tuple((s, float(c)) for s, c in stoichiometry.items() if c != 0)
        self._reactions.append(Reaction(name, sp.sympify(rate), stoich))

    def transfer(self, name: str, rate, source: str, target: str | None) -> None:
        """Move amount at `rate` (nmol/h) from `source` to `target` (None: leaves the model)."""
        stoich = {source: -1.0}
        if target is not None:
            stoich[target] = 1.0
        self.reaction(name, rate, stoich)

    def region(self, name: str, species: Iterable[str], volume_l=None) -> None:
        if name in self._regions:
            raise ModelError(f"model {self.name!r}: region {name!r} defined twice")
        vol = None if volume_l is None else sp.sympify(volume_l)
        self._regions[name] = Region(name, tuple(species), vol)

    def dose_target(self, ligand: str, nuclide: str | None, species: str) -> None:
        """Injected ligand `ligand` labelled with `nuclide` (None: cold) goes into `species`."""
        self._dose_targets[(ligand, nuclide)] = species

    # ------------------------------------------------------------------ build
    def build(self) -> Model:
        return Model(
            name=self.name,
            parameters=tuple(self._parameters.values()),
            assignments=tuple(self._assignments.items()),
            compartments=tuple(self._compartments.values()),
            species=tuple(self._species.values()),
            reactions=tuple(self._reactions),
            regions=tuple(self._regions.values()),
            dose_targets=dict(self._dose_targets),
            positive_assignments=tuple(self._positive),
            description=self.description,
        )
