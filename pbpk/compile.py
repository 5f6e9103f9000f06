"""Compile a `Model` into pure JAX functions (the one back end of every model).

For a model with species amounts y (nmol), parameters p and assignments d(p),

    dy/dt = S r(y, p, d(p))

with S the (n_species x n_reactions) stoichiometry matrix and r the vector of reaction
rates (nmol/h).  SymPy expressions are turned into JAX code with `sympy.lambdify`
(modules="jax") from the model's own symbolic expressions; no text from files is ever
evaluated.  The result is traceable by `jax.jit`, `jax.vmap` and `jax.grad`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from .errors import ParameterError
from .model import Model

jax.config.update("jax_enable_x64", True)


def _lambdify(args, exprs) -> Callable:
    """SymPy -> JAX: a function of arrays (one per symbol list in `args`, symbols along the
    first axis, any trailing batch axes) returning the stacked values of `exprs`.  Arrays
    are split along the first axis with static indices before the generated code unpacks
    them (iterating a traced array is not always allowed)."""
    fn = sp.lambdify(args, list(exprs), modules="jax", cse=True)

    def stacked(*arrays):
        scalars = [[a[i] for i in range(len(syms))] for a, syms in zip(arrays, args)]
        out = [jnp.asarray(v, dtype=jnp.float64) for v in fn(*scalars)]
        if not out:
            return jnp.zeros((0,))
        shape = jnp.broadcast_shapes(*(v.shape for v in out))  # constants next to batched values
        return jnp.stack([jnp.broadcast_to(v, shape) for v in out])

    return stacked


@dataclass(frozen=True, eq=False)
class CompiledModel:
    """JAX callables and index tables for one `Model`; `plans` caches the static
    simulation plans (one per schedule structure) built by `pbpk.simulate`, `restricted`
    the models restricted to some ligands (`pbpk.restrict.restrict_ligands`)."""

    model: Model
    plans: dict = field(default_factory=dict, repr=False)
    restricted: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ symbols
    @cached_property
    def parameter_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.model.parameter_names)}

    @cached_property
    def species_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.model.species_names)}

    @cached_property
    def default_parameters(self) -> np.ndarray:
        return np.array([p.value for p in self.model.parameters], dtype=np.float64)

    @cached_property
    def _p_syms(self):
        return [sp.Symbol(n) for n in self.model.parameter_names]

    @cached_property
    def _d_syms(self):
        return [sp.Symbol(n) for n, _ in self.model.assignments]

    @cached_property
    def _y_syms(self):
        return [sp.Symbol(n) for n in self.model.species_names]

    # ---------------------------------------------------------- functions
    @cached_property
    def _assignment_fn(self) -> Callable:
        # Substitute earlier assignments so that each is an expression of parameters only.
        resolved: dict[sp.Symbol, sp.Expr] = {}
        exprs = []
        for name, expr in self.model.assignments:
            full = expr.xreplace(resolved)
            resolved[sp.Symbol(name)] = full
            exprs.append(full)
        return _lambdify([self._p_syms], exprs)

    def assignments(self, p: jnp.ndarray) -> jnp.ndarray:
        """Values of all assignments (in model order) for parameter vector `p`."""
        if not self.model.assignments:
            return jnp.zeros((0,), jnp.float64)
        return self._assignment_fn(p)

    @cached_property
    def _terms(self):
        """Decompose every rate into polynomial terms in the species amounts.

        rate_j = sum_k c_jk(p, d) * (monomial in y of degree 0, 1 or 2).  Mass-action and
        saturable-binding fluxes of PBPK models are all of this form; a rate that is not a
        polynomial of degree <= 2 in the amounts (e.g. Michaelis-Menten) is kept whole and
        evaluated symbolically.  Returns (constant, linear, quadratic, other) where
        constant = [(j, c)], linear = [(j, i, c)], quadratic = [(j, i1, i2, c)], other = [j].
        """
        ys = set(self._y_syms)
        constant, linear, quadratic, other = [], [], [], []
        for j, r in enumerate(self.model.reactions):
            gens = sorted(r.rate.free_symbols & ys, key=str)
            if not gens:
                constant.append((j, r.rate))
                continue
            try:
                poly = sp.Poly(r.rate, *gens)
            except sp.PolynomialError:
                other.append(j)
                continue
            if poly.total_degree() > 2:
                other.append(j)
                continue
            for monom, coeff in poly.terms():
                idx = [self.species_index[str(g)] for g, e in zip(gens, monom) for _ in range(e)]
                coeff = coeff.as_expr() if hasattr(coeff, "as_expr") else sp.sympify(coeff)
                if not idx:
                    constant.append((j, coeff))
                elif len(idx) == 1:
                    linear.append((j, idx[0], coeff))
                else:
                    quadratic.append((j, idx[0], idx[1], coeff))
        return constant, linear, quadratic, other

    @cached_property
    def _coefficient_fn(self) -> Callable:
        constant, linear, quadratic, _ = self._terms
        exprs = [t[-1] for t in constant] + [t[-1] for t in linear] + [t[-1] for t in quadratic]
        return _lambdify([self._p_syms, self._d_syms], exprs)

    @cached_property
    def _other_species(self) -> np.ndarray:
        """Indices of the species that appear in non-polynomial rates."""
        used = set()
        for j in self._terms[3]:
            used |= {str(x) for x in self.model.reactions[j].rate.free_symbols}
        return np.array([i for i, n in enumerate(self.model.species_names) if n in used], dtype=int)

    @cached_property
    def _other_rates(self):
        """(rate function, (entries, Jacobian function)) for the non-polynomial rates."""
        other = self._terms[3]
        y_used = [self._y_syms[i] for i in self._other_species]
        rates = [self.model.reactions[j].rate for j in other]
        rate_fn = _lambdify([y_used, self._p_syms, self._d_syms], rates)
        entries, exprs = [], []
        for k, rate in enumerate(rates):
            for i in self._other_species:
                if self._y_syms[i] in rate.free_symbols:
                    entries.append((k, int(i)))
                    exprs.append(sp.diff(rate, self._y_syms[i]))
        jac_fn = _lambdify([y_used, self._p_syms, self._d_syms], exprs)
        return rate_fn, np.array(entries, dtype=int).reshape(-1, 2), jac_fn

    @cached_property
    def stoichiometry(self) -> np.ndarray:
        s = np.zeros((len(self.model.species), len(self.model.reactions)))
        for j, r in enumerate(self.model.reactions):
            for name, coef in r.stoichiometry:
                s[self.species_index[name], j] += coef
        return s

    @cached_property
    def jacobian_pattern(self) -> np.ndarray:
        """Structural pattern of J = d(dy/dt)/dy (n x n bool, diagonal included): J_ij may
        be non-zero when species i takes part in a reaction whose rate contains species j."""
        ys = {s: i for i, s in enumerate(self._y_syms)}
        depends = np.zeros((len(self.model.reactions), len(ys)), dtype=bool)
        for j, r in enumerate(self.model.reactions):
            for sym in r.rate.free_symbols & ys.keys():
                depends[j, ys[sym]] = True
        pattern = (self.stoichiometry != 0).astype(np.int64) @ depends.astype(np.int64) > 0
        return pattern | np.eye(len(ys), dtype=bool)

    @cached_property
    def jacobian_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the structural Jacobian entries, row-major: the order of
        `Kinetics.jacobian_values`."""
        rows, cols = np.nonzero(self.jacobian_pattern)
        return rows, cols

    @cached_property
    def _sparse_tables(self) -> dict:
        """Constant index tables of the sparse kinetics (see `Kinetics`).

        lin_to_entry (n_entries, n_linear) maps the first-order rate coefficients to A's
        entries (A y is then a segment sum over the row-sorted entries); quad_rows /
        quad_terms / quad_coef (sorted by row): where each quadratic flux enters dy/dt;
        quad_entries / quad_slots / quad_entry_coef (sorted by entry): where the
        derivatives (c y[i2], c y[i1]) of each quadratic flux enter J; other_to_entry
        (n_entries, n_other_jac) maps the non-polynomial rates' partial derivatives to
        J's entries.
        """
        rows, cols = self.jacobian_entries
        entry = {(int(r), int(c)): e for e, (r, c) in enumerate(zip(rows, cols))}
        _, linear, quadratic, other = self._terms
        st = self.stoichiometry
        lin_to_entry = np.zeros((rows.size, len(linear)))
        for t, (j, i, _) in enumerate(linear):
            for r in np.flatnonzero(st[:, j]):
                lin_to_entry[entry[(r, i)], t] += st[r, j]
        # quadratic flux t enters species r with stoichiometry st[r, j_t] (field), and
        # its derivatives c y[i2], c y[i1] enter the entries (r, i1), (r, i2) (Jacobian)
        quad_rows, quad_terms, quad_coef, quad_entries, quad_slots, quad_entry_coef = [], [], [], [], [], []
        for t, (j, i1, i2, _) in enumerate(quadratic):
            for r in np.flatnonzero(st[:, j]):
                quad_rows.append(r), quad_terms.append(t), quad_coef.append(st[r, j])
                quad_entries += [entry[(r, i1)], entry[(r, i2)]]
                quad_slots += [t, len(quadratic) + t]
                quad_entry_coef += [st[r, j], st[r, j]]
        by_row = np.argsort(quad_rows, kind="stable")
        by_entry = np.argsort(quad_entries, kind="stable")
        other_entries = self._other_rates[1] if other else np.zeros((0, 2), dtype=int)
        other_to_entry = np.zeros((rows.size, other_entries.shape[0]))
        for m, (k, i) in enumerate(other_entries):
            for r in np.flatnonzero(st[:, other[k]]):
                other_to_entry[entry[(r, int(i))], m] += st[r, other[k]]
        return dict(rows=rows, cols=cols, lin_to_entry=lin_to_entry,
                    quad_rows=np.array(quad_rows, dtype=int)[by_row], quad_terms=np.array(quad_terms, dtype=int)[by_row],
                    quad_coef=np.array(quad_coef, dtype=float)[by_row],
                    quad_entries=np.array(quad_entries, dtype=int)[by_entry],
                    quad_slots=np.array(quad_slots, dtype=int)[by_entry],
                    quad_entry_coef=np.array(quad_entry_coef, dtype=float)[by_entry],
                    other_to_entry=other_to_entry)

    @cached_property
    def _rate_fn(self) -> Callable:
        return _lambdify([self._y_syms, self._p_syms, self._d_syms], [r.rate for r in self.model.reactions])

    def rates(self, y: jnp.ndarray, p: jnp.ndarray, d: jnp.ndarray) -> jnp.ndarray:
        """All reaction rates (nmol/h), in model order, evaluated directly from the symbolic
        rates (the reference path; `vector_field` is the fast one)."""
        return self._rate_fn(y, p, d)

    def kinetics(self, p: jnp.ndarray, d: jnp.ndarray) -> "Kinetics":
        """Numerical form of dy/dt for one parameter set (see `Kinetics`)."""
        constant, linear, quadratic, other = self._terms
        n = len(self.model.species)
        c = self._coefficient_fn(p, d) if (constant or linear or quadratic) else jnp.zeros((0,))
        n_c, n_l = len(constant), len(linear)
        st = self.stoichiometry
        b = jnp.zeros(n)
        if constant:
            b = jnp.asarray(st[:, [t[0] for t in constant]]) @ c[:n_c]
        tables = self._sparse_tables
        a_values = jnp.asarray(tables["lin_to_entry"]) @ c[n_c:n_c + n_l] if linear else jnp.zeros(tables["rows"].size)
        return self.kinetics_from((a_values, b, c[n_c + n_l:], p, d))

    def kinetics_from(self, arrays: tuple) -> "Kinetics":
        """`Kinetics` from its parameter-dependent arrays (`Kinetics.arrays`: a_values, b,
        cq, p, d), e.g. those of many parameter sets stacked along a trailing axis by
        `jax.vmap(..., out_axes=-1)`: `field` and `jacobian_values` then take amounts of
        shape (n_species, n_sets) and evaluate every set at once."""
        _, _, quadratic, other = self._terms
        q_idx = np.array([[t[1], t[2]] for t in quadratic], dtype=int).reshape(-1, 2)
        a_values, b, cq, p, d = arrays
        return Kinetics(a_values, b, cq, q_idx, self.stoichiometry[:, other], self._other_species,
                        self._other_rates if other else None, p, d, self._sparse_tables)

    def vector_field(self, p: jnp.ndarray, d: jnp.ndarray) -> Callable[[jnp.ndarray], jnp.ndarray]:
        """Return y -> dy/dt (nmol/h) for fixed parameters (plain JAX: exact jvp/grad)."""
        return self.kinetics(p, d).field

    def rhs(self, y: jnp.ndarray, p: jnp.ndarray, d: jnp.ndarray) -> jnp.ndarray:
        """dy/dt (nmol/h) = S r(y, p, d) (fast path)."""
        return self.vector_field(p, d)(y)

    @cached_property
    def _volume_fn(self) -> Callable:
        exprs = [c.volume for c in self.model.compartments]
        exprs += [r.volume if r.volume is not None else sp.nan for r in self.model.regions]
        return _lambdify([self._p_syms, self._d_syms], exprs)

    def compartment_volumes_l(self, p: jnp.ndarray, d: jnp.ndarray) -> jnp.ndarray:
        return self._volume_fn(p, d)[: len(self.model.compartments)]

    def region_volumes_l(self, p: jnp.ndarray, d: jnp.ndarray) -> jnp.ndarray:
        return self._volume_fn(p, d)[len(self.model.compartments):]

    # --------------------------------------------------------- parameters
    def parameter_vector(self, overrides: Mapping[str, object] | None = None) -> jnp.ndarray:
        """Default parameter vector with `overrides` (name -> value, traceable) applied."""
        p = jnp.asarray(self.default_parameters)
        if not overrides:
            return p
        vals = jnp.stack([jnp.asarray(v, dtype=jnp.float64) for v in overrides.values()])
        return p.at[self._parameter_indices(overrides)].set(vals)

    def parameter_vectors(self, names: Sequence[str], values: np.ndarray) -> np.ndarray:
        """Concrete default parameter vectors (n_sets, n_parameters), numpy, with the
        parameters `names` set to the columns of `values` (n_sets, len(names)): many
        concrete sets at once, without a JAX update per set."""
        vectors = np.tile(np.asarray(self.default_parameters, dtype=np.float64), (len(values), 1))
        vectors[:, self._parameter_indices(names)] = values
        return vectors

    def _parameter_indices(self, names) -> np.ndarray:
        unknown = sorted(set(names) - set(self.parameter_index))
        if unknown:
            raise ParameterError(f"model {self.model.name!r} has no parameters {unknown}")
        return np.array([self.parameter_index[n] for n in names])

    @cached_property
    def _checked_quantities(self) -> Callable:
        def quantities(p):
            d = self.assignments(p)
            return d, self.compartment_volumes_l(p, d)

        return jax.jit(quantities)

    def check_parameters(self, p: np.ndarray) -> None:
        """Raise `ParameterError` for a concrete parameter vector outside bounds or non-finite,
        and for non-positive compartment volumes."""
        for prm, v in zip(self.model.parameters, np.asarray(p)):
            if not np.isfinite(v) or not (prm.lower <= v <= prm.upper):
                raise ParameterError(
                    f"parameter {prm.name!r} = {v} {prm.unit} is outside its bounds [{prm.lower}, {prm.upper}]"
                )
        d, vols = (np.asarray(x) for x in self._checked_quantities(jnp.asarray(p)))
        for c, v in zip(self.model.compartments, vols):
            if not np.isfinite(v) or v <= 0:
                raise ParameterError(
                    f"compartment {c.name!r} has volume {v} L with these parameters; expected a positive volume"
                )
        names = [a for a, _ in self.model.assignments]
        for a in self.model.positive_assignments:
            v = d[names.index(a)]
            if not np.isfinite(v) or v <= 0:
                raise ParameterError(f"{a} = {v} with these parameters; expected > 0 (a balance no longer closes)")


def _rowwise(coefficients: np.ndarray, like) -> np.ndarray:
    """Constant per-row coefficients shaped to multiply arrays like `like` (rows first,
    then any batch axes)."""
    return coefficients.reshape(coefficients.shape + (1,) * (like.ndim - 1))


class Kinetics:
    """dy/dt = A y + b + Q (c * y[i1] * y[i2]) + S_o r_o(y) for one parameter set (or for
    many, stacked along trailing axes of every array: see `with_arrays`).

    A (1/h) holds the first-order fluxes, kept as its values at the structural Jacobian
    entries (`a_values`), b the zero-order ones, the quadratic terms (e.g. ligand x free
    receptor) are scattered into dy/dt with their stoichiometry, and r_o are the
    remaining non-polynomial rates.  The analytic Jacobian is
    J(y) = A + d(quadratic)/dy + S_o dr_o/dy.

    A y and the quadratic terms are segment sums over row-sorted entries (`tables` of
    `CompiledModel._sparse_tables`), and `jacobian_values` gives J at the structural
    entries without forming a dense matrix: under `jax.vmap` over a cohort a dense
    per-patient A would be read from memory at every evaluation.
    """

    def __init__(self, a_values, b, cq, q_idx, s_other, other_species, other_rates, p, d, tables):
        self.a_values, self.b, self.cq = a_values, b, cq
        self.i1, self.i2 = q_idx[:, 0], q_idx[:, 1]
        self.s_other, self.other_species, self.other_rates = s_other, other_species, other_rates
        self.p, self.d = p, d
        self.tables = tables

    @property
    def arrays(self) -> tuple:
        """(a_values, b, cq, p, d): the parameter-dependent arrays, a pytree that can be
        vmapped over parameter sets (`CompiledModel.kinetics_from` puts them back)."""
        return self.a_values, self.b, self.cq, self.p, self.d

    def jacobian_values(self, y):
        """J(y) at the structural entries `CompiledModel.jacobian_entries` (1/h)."""
        t = self.tables
        values = self.a_values
        if self.cq.shape[0]:
            slopes = jnp.concatenate([self.cq * y[self.i2], self.cq * y[self.i1]])
            values = values + jax.ops.segment_sum(_rowwise(t["quad_entry_coef"], y) * slopes[t["quad_slots"]],
                                                  t["quad_entries"], values.shape[0], indices_are_sorted=True)
        if self.other_rates is not None:
            values = values + t["other_to_entry"] @ self.other_rates[2](y[self.other_species], self.p, self.d)
        return values

    def jacobian(self, y):
        """J(y) = d(dy/dt)/dy (1/h), dense."""
        n = y.shape[0]
        t = self.tables
        return jnp.zeros((n, n), y.dtype).at[t["rows"], t["cols"]].add(self.jacobian_values(y))

    @property
    def field(self) -> Callable[[jnp.ndarray], jnp.ndarray]:
        """y -> dy/dt (nmol/h).  Plain JAX code (a polynomial in y plus any
        non-polynomial rates), so `jax.jvp`/`jax.grad` through it are exact; derivatives
        with respect to the parameters flow through A, b and c, which are JAX functions
        of p."""
        t = self.tables
        a_values, b, cq, p, d = self.a_values, self.b, self.cq, self.p, self.d
        n = b.shape[0]

        def field(y):
            # sparse products summed per row (segment sums over row-sorted entries)
            out = jax.ops.segment_sum(a_values * y[t["cols"]], t["rows"], n, indices_are_sorted=True) + b
            if cq.shape[0]:
                flux = cq * y[self.i1] * y[self.i2]
                out = out + jax.ops.segment_sum(_rowwise(t["quad_coef"], y) * flux[t["quad_terms"]], t["quad_rows"], n,
                                                indices_are_sorted=True)
            if self.other_rates is not None:
                out = out + self.s_other @ self.other_rates[0](y[self.other_species], p, d)
            return out

        return field


def region_volumes_ml(model: Model, params: Mapping[str, float] | None = None) -> dict[str, float]:
    """Region name -> volume (mL) for the model's default parameters with `params` applied
    (e.g. kidneys, lesion_1, whole_body); the denominators for dose per activity."""
    c = compile_model(model)
    p = c.parameter_vector(params)
    volumes = np.asarray(c.region_volumes_l(p, c.assignments(p))) * 1000.0
    return {name: float(v) for name, v in zip(model.region_names, volumes)}


def compile_model(model: Model) -> CompiledModel:
    """Compile a model to JAX callables, cached on the model object itself (so the cache
    lives exactly as long as the model)."""
    compiled = model.__dict__.get("_compiled")
    if compiled is None:
        compiled = CompiledModel(model)
        object.__setattr__(model, "_compiled", compiled)  # frozen dataclass: cache only
    return compiled
