"""Fast linear reactions in the limit k -> infinity: lumping species (singular perturbation).

When a rate constant k (the limit's driver) goes to infinity, a reaction whose rate
grows like k is *fast*: rate = k E1(x) + E0(x) + o(1).  For fast reactions linear in the
amounts x (first-order transfer and exchange, e.g. vascular <-> interstitial exchange
PS (c_vas - c_int) with PS -> infinity, or an irreversible transfer k x_a), the fast
dynamics are dx/dt = k F x with the compartmental matrix F = sum_r S_r dE1_r/dx.  As
k -> infinity (Tikhonov; Kokotovic, Khalil & O'Reilly 1986, ch. 1; the lumping of
Transtrum & Qiu's MBAM for first-order fast steps) the state stays on ker F and

    z = L x,    x = R z,    L F = 0,  F R = 0,  L R = I,
    dz/dt = L g(R z)           (g: the slow reactions),

with R the right null vectors of F (the equilibrium distribution inside each closed,
fast-connected group of species: amounts in proportion to the partition coefficients,
e.g. to the volumes for PS exchange) and L the left null vectors (conserved totals; a
species only emptied by a fast irreversible step has R = 0 and passes all its inflow to
where that step leads).  Each null vector g becomes one lumped species z_g: every slow
rate is rewritten with x_i -> sum_g R_ig z_g, and a slow reaction's stoichiometric
coefficient c on member i moves to c L_gi on z_g.  Groups are the connected components of
the fast reactions, so each group's null spaces are small symbolic problems (SymPy).

Refused (`MBAMError` naming the reaction, region or dose target): fast reactions that are
not linear in the amounts (rapid binding equilibrium needs an algebraic isotherm, not
implemented), rates growing faster than k, a region holding only part of a lumped
species' members (its content would be a parameter-dependent fraction of z_g), a dose
target whose amount would be split between lumped species, and lumped members of
different ligand/nuclide forms.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import sympy as sp

from ..model import Compartment, Model, Reaction, Species
from .predictions import MBAMError


def split_fast(rate: sp.Expr, k: sp.Symbol, what: str):
    """(E1, E0) with rate = k E1 + E0 + o(1) as k -> infinity (E1 = 0 for a slow rate)."""
    if k not in rate.free_symbols:
        return sp.Integer(0), rate
    e1 = sp.limit(rate / k, k, sp.oo)
    if e1.has(sp.oo, -sp.oo, sp.zoo, sp.nan) or k in e1.free_symbols:
        raise MBAMError(f"limit {k} -> oo is not supported here: {what} = {rate} grows faster than {k}")
    e0 = sp.limit(sp.expand(rate - k * e1), k, sp.oo)
    if e0.has(sp.oo, -sp.oo, sp.zoo, sp.nan) or k in e0.free_symbols:
        raise MBAMError(f"limit {k} -> oo is not supported here: {what} = {rate} has no finite slow part")
    return sp.simplify(e1), sp.simplify(e0)


def _linear_coefficients(expr: sp.Expr, species: list[sp.Symbol], k: sp.Symbol, what: str) -> dict[sp.Symbol, sp.Expr]:
    """d expr / d x_j for an expression homogeneous linear in the species amounts."""
    used = [s for s in species if s in expr.free_symbols]
    coeffs = {s: sp.simplify(sp.diff(expr, s)) for s in used}
    rest = sp.simplify(expr - sum(c * s for s, c in coeffs.items()))
    if rest != 0 or any(c.free_symbols & set(used) for c in coeffs.values()):
        raise MBAMError(f"limit {k} -> oo is not supported here: fast reaction {what} is not linear in the amounts "
                        f"({expr}); its rapid-equilibrium limit needs an algebraic isotherm (not implemented)")
    return coeffs


def _is_value(expr: sp.Expr, value: int) -> bool:
    """expr == value exactly, or to 1e-12 when it is a floating-point number."""
    return bool(sp.simplify(expr - value) == 0) or (expr.is_number and abs(complex(expr) - value) < 1e-12)


def _components(edges: list[set[str]], order: dict[str, int]) -> list[list[str]]:
    """Connected components of the species linked by the fast reactions (each set in
    `edges`: the species of one fast reaction), each in model order (`order`: species
    name -> index), ordered by their first species."""
    involved = sorted({s for group in edges for s in group}, key=order.get)
    index = {s: i for i, s in enumerate(involved)}
    pairs = np.array([(index[a], index[b]) for group in edges for a in group for b in group if a != b],
                     dtype=int).reshape(-1, 2)
    graph = scipy.sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                                    shape=(len(involved), len(involved)))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    components: dict[int, list[str]] = {}
    for s in involved:  # model order, so each component is too
        components.setdefault(int(labels[index[s]]), []).append(s)
    return sorted(components.values(), key=lambda c: order[c[0]])


def _merged_name(names: list[str], taken: set[str]) -> str:
    """'liver_vas' + 'liver_int' -> 'liver_vas_int'; 'a__x' + 'b__x' -> 'a_b__x'."""
    suffixes = {n.split("__", 1)[1] if "__" in n else "" for n in names}
    if len(suffixes) == 1 and suffixes != {""}:
        base = _merged_name([n.split("__", 1)[0] for n in names], set()) + "__" + suffixes.pop()
    else:
        prefix = names[0]
        for n in names[1:]:
            while not n.startswith(prefix):
                prefix = prefix[: prefix.rstrip("_").rfind("_") + 1] if "_" in prefix.rstrip("_") else ""
        base = prefix + "_".join(n[len(prefix):] for n in names)
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def lump_fast_reactions(model: Model, k: sp.Symbol, fast: list[tuple[Reaction, sp.Expr]],
                        slow: list[Reaction]) -> Model:
    """The model with the fast reactions `fast` ((reaction, E1) pairs: rate ~ k E1) taken to
    equilibrium (module docstring); `slow` are the remaining reactions with their
    k -> infinity rates (including the finite remainders E0 of the fast ones)."""
    by_name = {s.name: s for s in model.species}
    symbols = [s.symbol for s in model.species]
    # fast matrix F restricted to each connected group
    terms: dict[tuple[str, str], sp.Expr] = {}
    edges = []
    for r, e1 in fast:
        coeffs = _linear_coefficients(e1, symbols, k, r.name)
        edges.append({s for s, _ in r.stoichiometry} | {str(x) for x in coeffs})
        for s, c in r.stoichiometry:
            for x, d in coeffs.items():
                terms[(s, str(x))] = terms.get((s, str(x)), 0) + sp.nsimplify(c) * d
    taken = set(model.species_names) | set(model.parameter_names) | {a for a, _ in model.assignments}
    comp_taken = {c.name for c in model.compartments}
    new_compartments: dict[tuple[str, ...], Compartment] = {}
    subs: dict[sp.Symbol, sp.Expr] = {}
    to_lumped: dict[str, list[tuple[str, sp.Expr]]] = {}  # member -> [(lumped species, L_g,member)]
    lumped_species: list[Species] = []
    support_of: dict[str, list[tuple[str, sp.Expr]]] = {}  # lumped -> [(member, R_member,g)]
    groups = _components(edges, {n: i for i, n in enumerate(model.species_names)})
    for group in groups:
        f = sp.Matrix(len(group), len(group), lambda i, j: sp.simplify(terms.get((group[i], group[j]), 0)))
        right, left = f.nullspace(simplify=True), f.T.nullspace(simplify=True)
        if not right or len(right) != len(left):
            raise MBAMError(f"fast reactions among {group}: no equilibrium subspace (right/left null spaces of "
                            f"dimension {len(right)}/{len(left)})")
        rmat, lmat = sp.Matrix.hstack(*right), sp.Matrix.hstack(*left).T
        m = sp.simplify(lmat * rmat)
        if m.det() == 0:
            raise MBAMError(f"fast reactions among {group}: degenerate equilibrium subspace")
        rmat = sp.simplify(rmat * m.inv())
        names = []
        for g in range(rmat.shape[1]):
            support = [group[i] for i in range(len(group)) if sp.simplify(rmat[i, g]) != 0]
            forms = {(by_name[s].ligand, by_name[s].nuclide) for s in support}
            if len(forms) != 1:
                raise MBAMError(f"fast reactions would lump species of different ligand forms: {support}")
            if len(support) == 1:
                name, compartment = support[0], by_name[support[0]].compartment
            else:
                name = _merged_name(support, taken)
                comps = tuple(dict.fromkeys(by_name[s].compartment for s in support))
                if len(comps) == 1:
                    compartment = comps[0]
                elif comps in new_compartments:
                    compartment = new_compartments[comps].name
                else:
                    compartment = _merged_name(list(comps), comp_taken)
                    comp_taken.add(compartment)
                    volume = sp.Add(*[model.compartment(c).volume for c in comps])
                    new_compartments[comps] = Compartment(compartment, volume,
                                                          f"lumped {', '.join(comps)} (MBAM, {k} -> oo)")
            taken.add(name)
            names.append(name)
            ligand, nuclide = forms.pop()
            lumped_species.append(Species(name, compartment, ligand, nuclide))
            support_of[name] = [(group[i], rmat[i, g]) for i in range(len(group)) if group[i] in support]
            for i, member in enumerate(group):
                if lmat[g, i] != 0:
                    to_lumped.setdefault(member, []).append((name, sp.simplify(lmat[g, i])))
        for i, member in enumerate(group):
            subs[sp.Symbol(member)] = sp.Add(*[rmat[i, g] * sp.Symbol(n) for g, n in enumerate(names)])
    members = set().union(*map(set, groups))
    reactions = []
    for r in slow:
        rate = sp.simplify(r.rate.xreplace(subs))
        kept, extra = {}, []
        for s, c in r.stoichiometry:
            for target, weight in to_lumped.get(s, []) if s in members else [(s, sp.Integer(1))]:
                if weight.is_number:
                    kept[target] = kept.get(target, 0.0) + float(c * weight)
                else:  # a parameter-dependent share (branching transient): its own reaction
                    extra.append(Reaction(f"{r.name}__to_{target}", sp.simplify(c * weight * rate), ((target, 1.0),)))
        stoich = tuple((s, c) for s, c in kept.items() if c != 0)
        if stoich and rate != 0:
            reactions.append(Reaction(r.name, rate, stoich))
        reactions += [e for e in extra if e.rate != 0]
    regions = []
    for reg in model.regions:
        inside = set(reg.species)
        species = [s for s in reg.species if s not in members]
        for name, support in support_of.items():
            share = sp.simplify(sp.Add(*[w for s, w in support if s in inside]))
            if _is_value(share, 1):
                species.append(name)
            elif not _is_value(share, 0):
                raise MBAMError(f"region {reg.name!r} holds only part of the lumped species {name} "
                                f"(share {share}); not supported")
        regions.append(replace(reg, species=tuple(species)))
    targets = {}
    for key, s in model.dose_targets.items():
        if s not in members:
            targets[key] = s
            continue
        dest = to_lumped.get(s, [])
        if len(dest) != 1 or not _is_value(dest[0][1], 1):
            raise MBAMError(f"dose target {key} = {s!r} would be split between lumped species {dest}; not supported")
        targets[key] = dest[0][0]
    species = [s for s in model.species if s.name not in members] + lumped_species
    used = {s.compartment for s in species}
    compartments = tuple(c for c in (*model.compartments, *new_compartments.values()) if c.name in used)
    return replace(model, species=tuple(species), compartments=compartments, reactions=tuple(reactions),
                   regions=tuple(regions), dose_targets=targets)
