"""A model restricted to some of its ligands.

`restrict_ligands(model, ligands)` removes every species of the other ligands: their
amounts are set to 0 in every rate (SymPy substitution), reactions that move only removed
species are dropped, stoichiometry entries and region members of removed species are
removed, and dose targets of the other ligands are dropped.  Parameters and assignments
stay (same names, same values), so parameter draws carry over unchanged.

The restricted model is exact for schedules that never give the removed ligands.  For a
schedule that gives several ligands (e.g. a 68Ga-PSMA-11 PET a week before
177Lu-PSMA-617 therapy), simulating each ligand's administrations with its own restricted
model neglects the competition *between* ligands for the same receptors (competition
within a ligand, hot against cold, is kept); with a tracer amount of the PET ligand
(a few nmol) this is a small effect, and each restricted model is much cheaper to solve
(the dense linear algebra of an implicit step scales with the cube of the state size).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import sympy as sp

from .compile import compile_model
from .errors import ModelError
from .model import Model


def restrict_ligands(model: Model, ligands: Iterable[str]) -> Model:
    """`model` with only the species of `ligands` (and ligand-free species) (see module doc).

    The result is cached on the model's compiled form: restricting one model object again
    returns the same object, so what is compiled for it (`pbpk.simulate`'s solve programs)
    is reused, e.g. by the fits of many patients that share one model."""
    keep = frozenset(ligands)
    unknown = sorted(keep - set(model.ligands))
    if unknown:
        raise ModelError(f"model {model.name!r}: no ligand(s) {unknown}; it has {list(model.ligands)}")
    cache = compile_model(model).restricted
    if keep not in cache:
        cache[keep] = _restrict(model, keep)
    return cache[keep]


def _restrict(model: Model, keep: frozenset) -> Model:
    removed = {s.name for s in model.species if s.ligand is not None and s.ligand not in keep}
    if not removed:
        return model
    zero = {sp.Symbol(n): 0 for n in removed}
    reactions = []
    for r in model.reactions:
        stoich = tuple((s, c) for s, c in r.stoichiometry if s not in removed)
        if not stoich:
            continue
        rate = sp.sympify(r.rate).xreplace(zero)
        if rate == 0:
            continue
        reactions.append(dataclasses.replace(r, rate=rate, stoichiometry=stoich))
    regions = tuple(dataclasses.replace(reg, species=tuple(s for s in reg.species if s not in removed))
                    for reg in model.regions)  # every region kept (empty ones report 0), so region names match
    targets = {k: v for k, v in model.dose_targets.items() if k[0] in keep}
    extra = {}
    if hasattr(model, "initial_amounts"):  # an imported SBMLModel: its initial amounts go with their species
        nonzero = [s for s, a in model.initial_amounts if s in removed and not sp.sympify(a).is_zero]
        if nonzero:
            raise ModelError(f"model {model.name!r}: cannot remove species {nonzero[:3]} of the other ligands: "
                             f"they have non-zero initial amounts")
        extra["initial_amounts"] = tuple((s, a) for s, a in model.initial_amounts if s not in removed)
    return dataclasses.replace(
        model, name=f"{model.name}[{','.join(sorted(keep))}]",
        species=tuple(s for s in model.species if s.name not in removed), reactions=tuple(reactions),
        regions=tuple(regions), dose_targets=targets, **extra)
