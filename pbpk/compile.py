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
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from .errors import ParameterError
from .model import Model

jax.config.update("jax_enable_x64", True)


def _lambdify(args, exprs) -> Callable:
    """SymPy -> JAX: a function of 1-D arrays (one per symbol list in `args`) returning the
    stacked values of `exprs`.  Arrays are split into scalars with static indices before
    the generated code unpacks them (iterating a traced array is not always allowed)."""
    fn = sp.lambdify(args, list(exprs), modules="jax", cse=True)

    def stacked(*arrays):
        scalars = [[a[i] for i in range(len(syms))] for a, syms in zip(arrays, args)]
        out = fn(*scalars)
        return jnp.stack([jnp.asarray(v, dtype=jnp.float64) for v in out]) if out else jnp.zeros((0,))

    return stacked


@dataclass(frozen=True, eq=False)
class CompiledModel:
    """JAX callables and index tables for one `Model`; `plans` caches the static
    simulation plans (one per schedule structure) built by `pbpk.simulate`."""

    model: Model
    plans: dict = field(default_factory=dict, repr=False)

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
        a = jnp.zeros((n, n))
        if linear:
            cols = np.array([t[0] for t in linear])
            src = np.array([t[1] for t in linear])
            a = a.at[:, src].add(jnp.asarray(st[:, cols]) * c[n_c:n_c + n_l][None, :])
        q_idx = np.array([[t[1], t[2]] for t in quadratic], dtype=int).reshape(-1, 2)
        q_stoich = st[:, [t[0] for t in quadratic]] if quadratic else np.zeros((n, 0))
        return Kinetics(a, b, c[n_c + n_l:], q_idx, q_stoich, st[:, other], self._other_species,
                        self._other_rates if other else None, p, d)

    def vector_field(self, p: jnp.ndarray, d: jnp.ndarray) -> Callable[[jnp.ndarray], jnp.ndarray]:
        """Return y -> dy/dt (nmol/h) for fixed parameters, with its analytic Jacobian."""
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
        unknown = sorted(set(overrides) - set(self.parameter_index))
        if unknown:
            raise ParameterError(f"model {self.model.name!r} has no parameters {unknown}")
        idx = np.array([self.parameter_index[n] for n in overrides])
        vals = jnp.stack([jnp.asarray(v, dtype=jnp.float64) for v in overrides.values()])
        return p.at[idx].set(vals)

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


class Kinetics:
    """dy/dt = A y + b + Q (c * y[i1] * y[i2]) + S_o r_o(y) for one parameter set.

    A (n x n, 1/h) holds the first-order fluxes, b the zero-order ones, the quadratic
    terms (e.g. ligand x free receptor) are gathered and scattered with the stoichiometry
    Q, and r_o are the remaining non-polynomial rates.  `field` carries the analytic
    Jacobian J(y) = A + d(quadratic)/dy + S_o dr_o/dy as a custom JVP; derivatives with
    respect to the parameters flow through A, b and c, which are JAX functions of p.
    """

    def __init__(self, a, b, cq, q_idx, q_stoich, s_other, other_species, other_rates, p, d):
        self.a, self.b, self.cq = a, b, cq
        self.i1, self.i2 = q_idx[:, 0], q_idx[:, 1]
        self.q = q_stoich
        self.s_other, self.other_species, self.other_rates = s_other, other_species, other_rates
        self.p, self.d = p, d

    def _eval(self, y, a, b, cq, p, d):
        out = a @ y + b
        if self.cq.shape[0]:
            out = out + self.q @ (cq * y[self.i1] * y[self.i2])
        if self.other_rates is not None:
            out = out + self.s_other @ self.other_rates[0](y[self.other_species], p, d)
        return out

    def jacobian(self, y):
        """J(y) = d(dy/dt)/dy (1/h)."""
        return self._jacobian(y, self.a, self.cq, self.p, self.d)

    def _jacobian(self, y, a, cq, p, d):
        jac = a
        if self.cq.shape[0]:
            jac = jac.at[:, self.i1].add(self.q * (cq * y[self.i2])[None, :])
            jac = jac.at[:, self.i2].add(self.q * (cq * y[self.i1])[None, :])
        if self.other_rates is not None:
            _, entries, jac_fn = self.other_rates
            dr = jnp.zeros((self.s_other.shape[1], y.shape[0]))
            dr = dr.at[entries[:, 0], entries[:, 1]].add(jac_fn(y[self.other_species], p, d))
            jac = jac + self.s_other @ dr
        return jac

    @property
    def field(self) -> Callable[[jnp.ndarray], jnp.ndarray]:
        ev, jacobian = self._eval, self._jacobian

        @jax.custom_jvp
        def field(y, a, b, cq, p, d):
            return ev(y, a, b, cq, p, d)

        def field_jvp(primals, tangents):
            zero = jax.custom_derivatives.SymbolicZero
            out = field(*primals)
            y, a, b, cq, p, d = primals
            if isinstance(tangents[0], zero):
                t = jnp.zeros_like(out)
            else:
                t = jacobian(y, a, cq, p, d) @ tangents[0]
            rest = tangents[1:]
            if not all(isinstance(v, zero) for v in rest):
                rest = tuple(jnp.zeros_like(x) if isinstance(v, zero) else v for x, v in zip(primals[1:], rest))
                t = t + jax.jvp(lambda *args: ev(y, *args), primals[1:], rest)[1]
            return out, t

        field.defjvp(field_jvp, symbolic_zeros=True)
        a, b, cq, p, d = self.a, self.b, self.cq, self.p, self.d
        return lambda y: field(y, a, b, cq, p, d)


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
