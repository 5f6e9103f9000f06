"""SBML import (python-libsbml) into the `pbpk` model representation.

`from_sbml(path)` reads an SBML file (any level/version libsbml reads) and returns an
`SBMLModel`, a `Model` that also keeps the SBML display names and the species' initial
amounts.  Maths is converted by walking libsbml's AST into SymPy; no text from the file
is ever evaluated or sympified.

Semantics and units.  The IR works in nmol, hours and litres; the file's numbers are kept
in the file's own units and converted where they meet the state:

* f_a,i = nmol per substance unit of species i, f_x = nmol per extent unit, f_t = hours
  per time unit, f_v = litres per volume unit (from the model's substanceUnits,
  extentUnits, timeUnits, volumeUnits, species' substanceUnits and compartments' units;
  SBML L1/L2: the built-in second, mole, litre or their redefinitions; where the file
  declares none, the keyword arguments `substance_unit`, `time_unit`, `volume_unit`
  say what to assume, default nmol, h, L);
* state y_i (nmol) = f_a,i n_i; in maths a species symbol means its amount n_i = y_i/f_a,i
  when hasOnlySubstanceUnits is true, else its concentration n_i / size(compartment);
* reaction j with SBML rate v_j (extent/time): IR rate = (f_x/f_t) v_j (nmol/h) and IR
  stoichiometry of species i = s_ij f_a,i/f_x, so dy_i/dt_h = f_a,i/f_t sum_j s_ij v_j;
* compartment volume (IR, litres) = f_v size; the compartment id in maths is its size;
* csymbol time t (file units) = clock/f_t, where `sbml_time_h` is a species added (only
  when time appears) that grows at 1 nmol/h from 0, i.e. it holds the hours since the
  start of the simulation.

Element mapping.  Global parameters -> `Parameter` (value as in the file; unit, bounds and
source read back from the notes that `to_sbml` writes, else the unit definition id and
bounds [0, inf) or (-inf, inf) for negative values); initial assignments and assignment
rules of parameters and compartments that depend on parameters only -> assignments (in
dependency order); assignment rules that depend on species or time are inlined into the
rates (kept in `SBMLModel.rules` for inspection); local parameters -> `Parameter`
"<reaction>__<parameter>"; function definitions are inlined (lambda bodies converted with
the call arguments bound to the bound variables); boundary or constant species (no rule)
are constant amounts -> a `Parameter` of that id in nmol; reactions -> `Reaction` (the
rate law carries reversibility; boundary species are left out of the stoichiometry); rate
rules -> a reaction "rate_rule__<id>" of stoichiometry 1 (species: rate f_a/f_t x the rule,
times the compartment size for concentrations; parameters: a state of that id, rate
rule/f_t, in the added compartment `sbml_rate_rules` of volume 1).  Not supported, each
raising `SBMLError` naming the construct and the element id: events, delay, rateOf,
algebraic rules, fast reactions, variable stoichiometry, variable-size compartments,
initial assignments that depend on species, required SBML packages (comp, ...),
conversion factors.  SBML constraints are ignored (they do not change the dynamics).

Dosing.  `pbpk.simulate` doses a (ligand, nuclide) form into `model.dose_targets[(ligand,
nuclide)]` and converts labelled amounts to activity with the parameter
`decay_parameter_name(nuclide)` (1/h).  For a file written by `to_sbml` both come from its
``rpt`` annotations; for any other file pass `dose_targets` (species by name or id),
`decay_parameters` (nuclide -> the file's decay-constant parameter, renamed to the
conventional name and converted to 1/h) and, for activity per region, `species_tags` and
`regions`.  Species initial amounts are kept on the model (`SBMLModel.initial_amounts`)
but `pbpk.simulate` starts from zero amounts plus the doses of its schedule.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np
import sympy as sp
from xml.sax.saxutils import unescape

from .errors import SBMLError
from .model import Compartment, LogNormalPrior, Model, Parameter, Reaction, Region, Species, decay_parameter_name
from .sbml import NAMESPACE, _libsbml

AVOGADRO_PER_MOL = 6.02214076e23  # exact, SI 2019 definition
CLOCK_SPECIES = "sbml_time_h"
CLOCK_COMPARTMENT = "sbml_clock"
RATE_RULE_COMPARTMENT = "sbml_rate_rules"

SUBSTANCE_UNITS_NMOL = {"mol": 1e9, "mmol": 1e6, "umol": 1e3, "µmol": 1e3, "nmol": 1.0, "pmol": 1e-3}
TIME_UNITS_H = {"s": 1.0 / 3600.0, "min": 1.0 / 60.0, "h": 1.0, "d": 24.0}
VOLUME_UNITS_L = {"L": 1.0, "mL": 1e-3, "uL": 1e-6, "µL": 1e-6}

_NOTES = re.compile(r"unit:\s*(.*?);\s*bounds:\s*\[([^,\]]+),\s*([^\]]+)\];\s*source:\s*(.*)", re.S)
_PRIOR = re.compile(r"prior: lognormal; median:\s*([^;]+); sigma_log:\s*([^;]+); source:\s*(.*)", re.S)


# ---------------------------------------------------------------------- model type
@dataclass(frozen=True)
class SBMLModel(Model):
    """A `Model` imported from SBML, with what SBML adds to the representation.

    display_names: IR name -> SBML `name` attribute (species, parameters, compartments,
      reactions, where the file gives one);
    initial_amounts: (species, amount in nmol as an expression of parameters) for the
      species whose initial amount in the file is not zero;
    rules: inlined assignment-rule variables -> their expression (SBML units) of species
      amounts (nmol), parameters and assignments;
    source: the file read.
    Model elements added by the import (the `sbml_time_h` clock, parameters with rate rules)
    are ordinary species.
    """

    display_names: Mapping[str, str] = field(default_factory=dict)
    initial_amounts: tuple[tuple[str, sp.Expr], ...] = ()
    rules: Mapping[str, sp.Expr] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        object.__setattr__(self, "display_names", MappingProxyType(dict(self.display_names)))
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        super().__post_init__()
        species = set(self.species_names)
        known = {sp.Symbol(n) for n in self.parameter_names} | {sp.Symbol(a) for a, _ in self.assignments}
        for s, expr in self.initial_amounts:
            if s not in species:
                raise SBMLError(f"model {self.name!r}: initial amount of unknown species {s!r}")
            if sp.sympify(expr).free_symbols - known:
                raise SBMLError(f"model {self.name!r}: initial amount of {s!r} uses undefined symbols")

    def _lookup(self, key: str, names: Sequence[str], kind: str) -> str:
        if key in names:
            return key
        hits = [n for n in names if self.display_names.get(n) == key]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise SBMLError(f"model {self.name!r}: {kind} name {key!r} is ambiguous (ids {hits}); use the id")
        raise SBMLError(f"model {self.name!r} has no {kind} with id or name {key!r}")

    def species_by_name(self, key: str) -> str:
        """The species (IR name = SBML id) with SBML id or name `key`."""
        return self._lookup(key, self.species_names, "species")

    def parameter_by_name(self, key: str) -> str:
        """The parameter or assignment (IR name) with SBML id or name `key`."""
        return self._lookup(key, self.parameter_names + tuple(a for a, _ in self.assignments), "parameter")

    def initial_amounts_nmol(self, params: Mapping[str, float] | None = None) -> np.ndarray:
        """Initial species amounts (nmol, model species order) for the default parameters
        with `params` applied."""
        values = {sp.Symbol(p.name): p.value for p in self.parameters}
        for k, v in (params or {}).items():
            values[sp.Symbol(self.parameter_by_name(k))] = float(v)
        for a, expr in self.assignments:
            values[sp.Symbol(a)] = float(sp.sympify(expr).xreplace(values))
        y0 = np.zeros(len(self.species))
        index = {n: i for i, n in enumerate(self.species_names)}
        for s, expr in self.initial_amounts:
            y0[index[s]] = float(sp.sympify(expr).xreplace(values))
        return y0


# ---------------------------------------------------------------------------- units
def _unit_signature(libsbml, model, uid: str):
    """(factor to SI-like base, {kind: exponent}) of a unit id (built-in kind or definition)."""
    ud = model.getUnitDefinition(uid)
    if ud is None:
        kind = libsbml.UnitKind_forName(uid)
        if kind == libsbml.UNIT_KIND_INVALID:
            return None
        return 1.0, {libsbml.UnitKind_toString(kind): 1.0}
    factor, kinds = 1.0, {}
    for i in range(ud.getNumUnits()):
        u = ud.getUnit(i)
        e = u.getExponentAsDouble()
        factor *= (u.getMultiplier() * 10.0 ** u.getScale()) ** e
        k = libsbml.UnitKind_toString(u.getKind())
        kinds[k] = kinds.get(k, 0.0) + e
    return factor, {k: e for k, e in kinds.items() if e != 0}


def _factor(libsbml, model, uid: str, quantity: str, user: str | None, where: str) -> float:
    """nmol per substance unit, hours per time unit or litres per volume unit."""
    tables = dict(substance=SUBSTANCE_UNITS_NMOL, time=TIME_UNITS_H, volume=VOLUME_UNITS_L)
    user_factor = None
    if user is not None:
        if user not in tables[quantity]:
            raise SBMLError(f"{quantity}_unit={user!r}; expected one of {sorted(tables[quantity])}")
        user_factor = tables[quantity][user]
    if not uid:
        return 1.0 if user_factor is None else user_factor
    sig = _unit_signature(libsbml, model, uid)
    factor = None
    if sig is not None:
        f, kinds = sig
        if quantity == "substance" and kinds == {"mole": 1.0}:
            factor = f * 1e9
        elif quantity == "substance" and kinds == {"item": 1.0}:
            factor = f / AVOGADRO_PER_MOL * 1e9
        elif quantity == "time" and kinds == {"second": 1.0}:
            factor = f / 3600.0
        elif quantity == "volume" and kinds == {"litre": 1.0}:
            factor = f
        elif quantity == "volume" and kinds == {"metre": 3.0}:
            factor = f * 1000.0
    if factor is None:
        raise SBMLError(f"{where}: {quantity} unit {uid!r} is not a {quantity} unit the importer converts "
                        f"(mole/item, second, litre/metre^3 with scale and multiplier)")
    if user_factor is not None and not math.isclose(user_factor, factor, rel_tol=1e-12):
        raise SBMLError(f"{where}: the file declares {quantity} unit {uid!r} but {quantity}_unit={user!r} was given")
    return factor


def _scaled(factor: float, expr: sp.Expr) -> sp.Expr:
    return expr if factor == 1.0 else sp.Float(factor) * expr


# ------------------------------------------------------------------------- importer
class _Importer:
    def __init__(self, libsbml, doc, path: str, units: dict):
        self.L = libsbml
        self.doc = doc
        self.m = doc.getModel()
        self.path = path
        self.time = sp.Symbol("__sbml_time__")
        m = self.m
        where = f"{path}: model"
        if doc.getLevel() >= 3:
            declared = {q: (getattr(m, f"get{q.title()}Units")() if getattr(m, f"isSet{q.title()}Units")() else "")
                        for q in ("time", "substance", "volume")}
        else:  # SBML L1/L2: built-in units second, mole, litre unless the file redefines them
            declared = {q: q if m.getUnitDefinition(q) is not None else "" for q in ("time", "substance", "volume")}
            level2 = dict(time="s", substance="mol", volume="L")
            units = {q: units[q] if units[q] is not None or declared[q] else level2[q] for q in units}
        self.f_t = _factor(libsbml, m, declared["time"], "time", units["time"], where)
        self.f_sub = _factor(libsbml, m, declared["substance"], "substance", units["substance"], where)
        self.f_v = _factor(libsbml, m, declared["volume"], "volume", units["volume"], where)
        ext = m.getExtentUnits() if doc.getLevel() >= 3 and m.isSetExtentUnits() else ""
        self.f_x = _factor(libsbml, m, ext, "substance", None, where) if ext else self.f_sub

        self.functions = {}
        for i in range(m.getNumFunctionDefinitions()):
            fd = m.getFunctionDefinition(i)
            if fd.getMath() is None:
                self.fail("function definition without maths", fd.getId())
            self.functions[fd.getId()] = fd
        self.assignment_rules, self.rate_rules = {}, {}
        for i in range(m.getNumRules()):
            r = m.getRule(i)
            if r.isAlgebraic():
                self.fail("algebraic rule", f"rule #{i + 1}")
            if r.isRate():
                self.rate_rules[r.getVariable()] = r.getMath()
                continue
            self.assignment_rules[r.getVariable()] = r.getMath()
        self.initial = {m.getInitialAssignment(i).getSymbol(): m.getInitialAssignment(i).getMath()
                        for i in range(m.getNumInitialAssignments())}

        self.parameters: dict[str, Parameter] = {}
        self.assignments: dict[str, sp.Expr] = {}
        self.rules: dict[str, sp.Expr] = {}
        self.display: dict[str, str] = {}
        self.state: dict[str, object] = {}  # state species id -> libsbml Species
        self.resolved: dict[str, sp.Expr] = {}
        self.busy: set[str] = set()
        self.local: dict[str, sp.Expr] | None = None
        self.decay_rename: dict[str, str] = {}
        self.parameter_states: dict[str, object] = {}  # parameters with a rate rule -> libsbml Parameter

    # ------------------------------------------------------------------ helpers
    def fail(self, construct: str, element: str, detail: str = ""):
        raise SBMLError(f"{self.path}: unsupported SBML construct {construct!r} (element {element!r})"
                        + (f": {detail}" if detail else ""))

    def ir_symbols(self) -> set:
        return {sp.Symbol(n) for n in self.parameters} | {sp.Symbol(n) for n in self.assignments}

    def name_of(self, sbase):
        if sbase.isSetName() and sbase.getName():
            self.display[sbase.getId()] = sbase.getName()

    # ---------------------------------------------------------------------- maths
    def math(self, ast, where: str, bound: Mapping[str, sp.Expr] | None = None, depth: int = 0) -> sp.Expr:
        """libsbml ASTNode -> SymPy, resolving names; `bound` maps lambda variables."""
        L = self.L
        if ast is None:
            self.fail("missing maths", where)
        t = ast.getType()
        kids = [ast.getChild(i) for i in range(ast.getNumChildren())]

        def args():
            return [self.math(k, where, bound, depth) for k in kids]

        if t == L.AST_INTEGER:
            return sp.Integer(ast.getInteger())
        if t in (L.AST_REAL, L.AST_REAL_E):
            v = ast.getReal()
            if not math.isfinite(v):
                self.fail("non-finite number", where, str(v))
            # MathML <cn> is real by default: keep integral values exact (1, 60, 1000)
            return sp.Integer(int(v)) if v == int(v) and abs(v) < 2 ** 53 else sp.Float(v)
        if t == L.AST_RATIONAL:
            return sp.Rational(ast.getNumerator(), ast.getDenominator())
        if t == L.AST_NAME:
            name = ast.getName()
            if bound is not None and name in bound:
                return bound[name]
            return self.symbol(name, where)
        if t == L.AST_NAME_TIME:
            return self.time
        if t == L.AST_NAME_AVOGADRO:
            return sp.Float(AVOGADRO_PER_MOL)
        if t == L.AST_CONSTANT_E:
            return sp.E
        if t == L.AST_CONSTANT_PI:
            return sp.pi
        if t == L.AST_CONSTANT_TRUE:
            return sp.true
        if t == L.AST_CONSTANT_FALSE:
            return sp.false
        if t == L.AST_PLUS:
            return sp.Add(*args()) if kids else sp.Integer(0)
        if t == L.AST_TIMES:
            return sp.Mul(*args()) if kids else sp.Integer(1)
        if t == L.AST_MINUS:
            a = args()
            return -a[0] if len(a) == 1 else a[0] - a[1]
        if t == L.AST_DIVIDE:
            a = args()
            return a[0] / a[1]
        if t in (L.AST_POWER, L.AST_FUNCTION_POWER):
            a = args()
            return a[0] ** a[1]
        if t == L.AST_FUNCTION_ROOT:
            a = args()
            return a[1] ** (1 / a[0]) if len(a) == 2 else sp.sqrt(a[0])
        if t == L.AST_FUNCTION_LOG:
            a = args()
            return sp.log(a[1], a[0]) if len(a) == 2 else sp.log(a[0], 10)
        if t == L.AST_FUNCTION_PIECEWISE:
            a = args()
            pieces = [(a[i], a[i + 1]) for i in range(0, len(a) - 1, 2)]
            pieces.append((a[-1], sp.true) if len(a) % 2 else (sp.nan, sp.true))
            return sp.Piecewise(*pieces)
        simple = {
            L.AST_FUNCTION_EXP: sp.exp, L.AST_FUNCTION_LN: sp.log, L.AST_FUNCTION_ABS: sp.Abs,
            L.AST_FUNCTION_FLOOR: sp.floor, L.AST_FUNCTION_CEILING: sp.ceiling, L.AST_FUNCTION_SIN: sp.sin,
            L.AST_FUNCTION_COS: sp.cos, L.AST_FUNCTION_TAN: sp.tan, L.AST_FUNCTION_SINH: sp.sinh,
            L.AST_FUNCTION_COSH: sp.cosh, L.AST_FUNCTION_TANH: sp.tanh, L.AST_FUNCTION_ARCSIN: sp.asin,
            L.AST_FUNCTION_ARCCOS: sp.acos, L.AST_FUNCTION_ARCTAN: sp.atan, L.AST_FUNCTION_MAX: sp.Max,
            L.AST_FUNCTION_MIN: sp.Min, L.AST_LOGICAL_AND: sp.And, L.AST_LOGICAL_OR: sp.Or,
            L.AST_LOGICAL_XOR: sp.Xor, L.AST_LOGICAL_NOT: sp.Not, L.AST_RELATIONAL_EQ: sp.Eq,
            L.AST_RELATIONAL_NEQ: sp.Ne, L.AST_RELATIONAL_GT: sp.Gt, L.AST_RELATIONAL_LT: sp.Lt,
            L.AST_RELATIONAL_GEQ: sp.Ge, L.AST_RELATIONAL_LEQ: sp.Le,
        }
        if t in simple:
            a = args()
            if t in (L.AST_RELATIONAL_GT, L.AST_RELATIONAL_LT, L.AST_RELATIONAL_GEQ, L.AST_RELATIONAL_LEQ,
                     L.AST_RELATIONAL_EQ) and len(a) > 2:
                return sp.And(*[simple[t](a[i], a[i + 1]) for i in range(len(a) - 1)])
            return simple[t](*a)
        if t == L.AST_FUNCTION:
            return self.call(ast.getName(), args(), where, depth)
        if t == L.AST_FUNCTION_DELAY:
            self.fail("delay", where)
        if t == L.AST_FUNCTION_RATE_OF:
            self.fail("rateOf", where)
        self.fail("MathML element", where, f"{L.formulaToL3String(ast)} (libsbml AST type {t})")

    def call(self, fid: str, arguments: list, where: str, depth: int) -> sp.Expr:
        fd = self.functions.get(fid)
        if fd is None:
            self.fail("undefined function", where, fid)
        if depth > 50:
            self.fail("recursive function definition", fid)
        lam = fd.getMath()
        nb = lam.getNumBvars()
        if nb != len(arguments):
            raise SBMLError(f"{self.path}: {where} calls function {fid!r} with {len(arguments)} arguments, "
                            f"expected {nb}")
        bound = {lam.getChild(i).getName(): arguments[i] for i in range(nb)}
        return self.math(lam.getChild(lam.getNumChildren() - 1), f"function {fid!r}", bound, depth + 1)

    # ------------------------------------------------------------------- symbols
    def symbol(self, name: str, where: str) -> sp.Expr:
        """Value (file units) of SBML symbol `name` as an expression of IR symbols."""
        if self.local is not None and name in self.local:
            return self.local[name]
        if name in self.resolved:
            return self.resolved[name]
        if name in self.busy:
            raise SBMLError(f"{self.path}: circular definition involving {name!r} (in {where})")
        self.busy.add(name)
        outer, self.local = self.local, None  # global definitions do not see local parameters
        try:
            value = self._resolve(name, where)
        finally:
            self.busy.discard(name)
            self.local = outer
        self.resolved[name] = value
        return value

    def _param_only(self, expr) -> bool:
        return not (expr.free_symbols - self.ir_symbols())

    def _resolve(self, name: str, where: str) -> sp.Expr:
        m = self.m
        if name in self.assignment_rules:
            expr = self.math(self.assignment_rules[name], f"assignment rule for {name!r}")
            sbml = m.getElementBySId(name)
            if sbml is not None and sbml.getTypeCode() == self.L.SBML_COMPARTMENT and not self._param_only(expr):
                self.fail("variable-size compartment", name)
            if sbml is not None and sbml.getTypeCode() == self.L.SBML_SPECIES_REFERENCE:
                self.fail("variable stoichiometry", name)
            if self._param_only(expr) and (sbml is None or sbml.getTypeCode() != self.L.SBML_SPECIES):
                self.assignments[name] = expr
                return sp.Symbol(name)
            self.rules[name] = expr
            return expr
        p = m.getParameter(name)
        if p is not None and name in self.rate_rules:
            self.parameter_states[name] = p
            return sp.Symbol(name)
        if p is not None:
            if name in self.decay_rename:
                return _scaled(self.f_t, sp.Symbol(self.decay_rename[name]))  # 1/h -> 1/(time unit)
            if name in self.initial:
                expr = self.math(self.initial[name], f"initial assignment of {name!r}").xreplace({self.time: 0})
                if not self._param_only(expr):
                    self.fail("initial assignment depending on species or time", name)
                self.assignments[name] = expr
                return sp.Symbol(name)
            if not p.isSetValue() or not math.isfinite(p.getValue()):
                raise SBMLError(f"{self.path}: parameter {name!r} has no value (nor initial assignment or rule)")
            self.parameters[name] = self._parameter(name, p.getValue(), p)
            return sp.Symbol(name)
        c = m.getCompartment(name)
        if c is not None:
            if name in self.initial:
                expr = self.math(self.initial[name], f"initial assignment of {name!r}").xreplace({self.time: 0})
                if not self._param_only(expr):
                    self.fail("initial assignment depending on species or time", name)
                return expr
            if not c.isSetSize() or not math.isfinite(c.getSize()):
                raise SBMLError(f"{self.path}: compartment {name!r} has no size")
            return sp.Float(c.getSize()) if c.getSize() != int(c.getSize()) else sp.Integer(int(c.getSize()))
        s = m.getSpecies(name)
        if s is not None:
            return self._species_value(s)
        r = m.getReaction(name)
        if r is not None:
            return self.rate(r)
        ref = m.getElementBySId(name)
        if ref is not None and ref.getTypeCode() == self.L.SBML_SPECIES_REFERENCE:
            if name in self.rate_rules:
                self.fail("variable stoichiometry", name)
            return sp.Float(ref.getStoichiometry()) if ref.isSetStoichiometry() else sp.Integer(1)
        raise SBMLError(f"{self.path}: undefined symbol {name!r} in {where}")

    def _parameter(self, name: str, value: float, sbase, unit: str | None = None) -> Parameter:
        self.name_of(sbase)
        unit = unit if unit is not None else (sbase.getUnits() if sbase.isSetUnits() else "")
        lower, upper, source, description, prior = (0.0 if value >= 0 else -math.inf), math.inf, "", "", None
        if sbase.isSetNotes():
            notes = self.L.XMLNode.convertXMLNodeToString(sbase.getNotes())
            entities = {"&quot;": '"', "&apos;": "'"}
            for para in re.findall(r"<p[^>]*>(.*?)</p>", notes, re.S):
                text = unescape(re.sub(r"<[^>]+>", "", para).strip(), entities)
                try:
                    if hit := _NOTES.fullmatch(text):
                        unit, source = hit.group(1).strip(), hit.group(4).strip()
                        lower, upper = float(hit.group(2)), float(hit.group(3))
                    elif hit := _PRIOR.fullmatch(text):
                        prior = LogNormalPrior(float(hit.group(1)), float(hit.group(2)), hit.group(3).strip())
                    elif text.startswith("description: "):
                        description = text[len("description: "):]
                except ValueError:
                    pass  # free-text notes of another tool: not ours
        return Parameter(name, float(value), unit, description, source, min(lower, value), max(upper, value), prior)

    def size(self, cid: str) -> sp.Expr:
        return self.symbol(cid, f"compartment {cid!r}")

    def species_factor(self, s) -> float:
        if s.isSetConversionFactor():
            self.fail("conversionFactor", s.getId())
        if s.isSetSubstanceUnits() and s.getSubstanceUnits() not in ("", "substance"):
            return _factor(self.L, self.m, s.getSubstanceUnits(), "substance", None, f"{self.path}: species {s.getId()!r}")
        return self.f_sub

    def _species_value(self, s) -> sp.Expr:
        sid = s.getId()
        f_a = self.species_factor(s)
        if sid in self.state:
            amount = sp.Symbol(sid) / sp.Float(f_a) if f_a != 1 else sp.Symbol(sid)
        else:  # boundary or constant species without rule: a constant amount (nmol) parameter
            amount_nmol = self.initial_amount(s)
            if amount_nmol.is_number:
                self.parameters[sid] = Parameter(sid, float(amount_nmol), "nmol", "constant amount of a boundary "
                                                 "or constant SBML species", lower=min(0.0, float(amount_nmol)))
                self.name_of(s)
            else:
                self.assignments[sid] = amount_nmol
            amount = sp.Symbol(sid) / sp.Float(f_a) if f_a != 1 else sp.Symbol(sid)
        if s.getHasOnlySubstanceUnits():
            return amount
        return amount / self.size(s.getCompartment())

    def initial_amount(self, s) -> sp.Expr:
        """Initial amount (nmol) of species `s` as an expression of IR parameters."""
        sid = s.getId()
        f_a = self.species_factor(s)
        conc = not s.getHasOnlySubstanceUnits()
        if sid in self.initial:
            expr = self.math(self.initial[sid], f"initial assignment of {sid!r}").xreplace({self.time: 0})
            if not self._param_only(expr):
                self.fail("initial assignment depending on species or time", sid)
            value = expr * self.size(s.getCompartment()) if conc else expr
        elif s.isSetInitialAmount():
            value = sp.Float(s.getInitialAmount())
        elif s.isSetInitialConcentration():
            value = sp.Float(s.getInitialConcentration()) * self.size(s.getCompartment())
        else:
            raise SBMLError(f"{self.path}: species {sid!r} has no initial amount, concentration or assignment")
        return sp.Integer(0) if value == 0 else _scaled(f_a, value)

    def rate(self, r) -> sp.Expr:
        """Kinetic law of reaction `r` in file units (extent/time)."""
        rid = r.getId()
        law = r.getKineticLaw()
        if law is None or law.getMath() is None:
            raise SBMLError(f"{self.path}: reaction {rid!r} has no kinetic law (missing kineticLaw maths)")
        local = {}
        for i in range(law.getNumParameters()):
            lp = law.getParameter(i)
            new = f"{rid}__{lp.getId()}"
            while self.m.getElementBySId(new) is not None or new in self.parameters:
                new += "_"
            if not lp.isSetValue():
                raise SBMLError(f"{self.path}: local parameter {lp.getId()!r} of reaction {rid!r} has no value")
            self.parameters[new] = self._parameter(new, lp.getValue(), lp)
            if lp.isSetName():
                self.display[new] = lp.getName()
            local[lp.getId()] = sp.Symbol(new)
        outer, self.local = self.local, local
        try:
            return self.math(law.getMath(), f"kinetic law of reaction {rid!r}")
        finally:
            self.local = outer


# --------------------------------------------------------------------- annotations
def _rpt_children(libsbml, sbase, tag: str):
    """rpt:<tag> elements in the annotation of `sbase` (top level or in rpt:model)."""
    if not sbase.isSetAnnotation():
        return []
    found = []

    def walk(node):
        for i in range(node.getNumChildren()):
            child = node.getChild(i)
            if child.getURI() == NAMESPACE:
                if child.getName() == tag:
                    found.append(child)
                walk(child)

    walk(sbase.getAnnotation())
    return found


def _read(libsbml, path: Path):
    if not path.is_file():
        raise SBMLError(f"{path}: no such SBML file")
    doc = libsbml.readSBMLFromFile(str(path))
    errors = [doc.getError(i) for i in range(doc.getNumErrors())
              if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    if errors or doc.getModel() is None:
        text = "; ".join(f"line {e.getLine()}: {e.getMessage().strip()}" for e in errors[:5]) or "no <model> element"
        raise SBMLError(f"{path}: not a readable SBML file: {text}")
    for i in range(doc.getNumPlugins()):
        name = doc.getPlugin(i).getPackageName()
        if doc.getLevel() == 3 and name != "l3v2extendedmath" and doc.isPackageEnabled(name) \
                and doc.getPackageRequired(name):
            raise SBMLError(f"{path}: unsupported SBML construct 'required package {name}' (element 'sbml')")
    return doc


def _file_order(assignments: Mapping[str, sp.Expr], ids: Sequence[str]) -> tuple[tuple[str, sp.Expr], ...]:
    """Assignments in dependency order, otherwise in the order of the file (Kahn's
    algorithm taking the earliest ready element), so an export -> import -> export round
    trip keeps the order of the elements."""
    position = {n: i for i, n in enumerate(ids)}
    pending = dict(assignments)
    names = set(pending)
    out = []
    while pending:
        ready = [a for a, e in pending.items() if not ({str(x) for x in e.free_symbols} & names - {o for o, _ in out})]
        a = min(ready, key=lambda n: position.get(n, len(position)))
        out.append((a, pending.pop(a)))
    return tuple(out)


# ------------------------------------------------------------------------ from_sbml
def from_sbml(
    path: str | os.PathLike,
    *,
    dose_targets: Mapping[tuple[str, str | None], str] | None = None,
    decay_parameters: Mapping[str, str] | None = None,
    species_tags: Mapping[str, tuple[str | None, str | None]] | Callable | None = None,
    regions: Mapping[str, Sequence[str]] | None = None,
    substance_unit: str | None = None,
    time_unit: str | None = None,
    volume_unit: str | None = None,
    name: str | None = None,
) -> SBMLModel:
    """Read the SBML file at `path` into an `SBMLModel` (see the module docstring).

    dose_targets: (ligand, nuclide or None) -> species id or name receiving that form of an
      administration, e.g. {("PSMA-617", "Lu-177"): "Vein_hot", ("PSMA-617", None): "Vein_cold"};
      added to (and overriding) the targets of an rpt annotation.
    decay_parameters: nuclide -> id or name of the parameter holding its decay constant
      (file time units); it is renamed `decay_parameter_name(nuclide)` with its value in 1/h.
    species_tags: species id or name -> (ligand, nuclide or None), or a callable
      (id, name) -> (ligand, nuclide) | None; dose-target species not tagged otherwise get
      the tag of their dose form.
    regions: region name -> species ids or names (default: the rpt annotation, else one
      region per compartment with its species and volume).
    substance_unit, time_unit, volume_unit: what the file's numbers are in where it declares
      no model units ("mol", "mmol", "umol", "nmol", "pmol"; "s", "min", "h", "d"; "L",
      "mL", "uL"); defaults nmol, h, L.  A value contradicting a declared unit is an error.
    Raises SBMLError for unreadable files and unsupported constructs.
    """
    libsbml = _libsbml()
    path = Path(path)
    doc = _read(libsbml, path)
    m = doc.getModel()
    where = str(path)
    for i in range(m.getNumEvents()):
        ev = m.getEvent(i)
        raise SBMLError(f"{where}: unsupported SBML construct 'event' (element {ev.getId() or f'event #{i + 1}'!r})")
    if m.isSetConversionFactor():
        raise SBMLError(f"{where}: unsupported SBML construct 'conversionFactor' (element {m.getId()!r})")
    imp = _Importer(libsbml, doc, where, dict(substance=substance_unit, time=time_unit, volume=volume_unit))

    def sbml_id(key: str, kind: str) -> str:
        getter = dict(species=m.getSpecies, parameter=m.getParameter)[kind]
        if getter(key) is not None:
            return key
        n = getattr(m, f"getNum{'Species' if kind == 'species' else 'Parameters'}")()
        hits = [getter(i).getId() for i in range(n) if getter(i).getName() == key]
        if len(hits) != 1:
            raise SBMLError(f"{where}: {'no' if not hits else 'more than one'} {kind} with id or name {key!r}"
                            + (f" ({hits})" if hits else ""))
        return hits[0]

    # decay constants: rename to the conventional parameter name, value in 1/h
    for nuclide, key in (decay_parameters or {}).items():
        pid = sbml_id(key, "parameter")
        p = m.getParameter(pid)
        if pid in imp.assignment_rules or pid in imp.initial or not p.isSetValue():
            raise SBMLError(f"{where}: decay parameter {pid!r} for {nuclide} must be a constant with a value")
        new = decay_parameter_name(nuclide)
        imp.decay_rename[pid] = new
        imp.parameters[new] = Parameter(new, p.getValue() / imp.f_t, "1/h",
                                        f"decay constant of {nuclide} (SBML parameter {pid!r})")
        imp.name_of(p)
        if pid in imp.display:
            imp.display[new] = imp.display.pop(pid)

    # state species
    for i in range(m.getNumSpecies()):
        s = m.getSpecies(i)
        sid = s.getId()
        if sid in imp.rate_rules:
            imp.state[sid] = s
            continue
        if sid in imp.assignment_rules or s.getBoundaryCondition() or s.getConstant():
            continue
        imp.state[sid] = s

    # compartments
    compartments = []
    for i in range(m.getNumCompartments()):
        c = m.getCompartment(i)
        imp.name_of(c)
        if c.getId() in imp.rate_rules:
            imp.fail("variable-size compartment", c.getId(), "rate rule")
        f_v = imp.f_v
        if c.isSetUnits() and c.getUnits():  # the compartment's own volume unit
            f_v = _factor(libsbml, m, c.getUnits(), "volume", None, f"{where}: compartment {c.getId()!r}")
        compartments.append(Compartment(c.getId(), _scaled(f_v, imp.size(c.getId()))))

    # reactions
    reactions = []
    for i in range(m.getNumReactions()):
        r = m.getReaction(i)
        rid = r.getId()
        imp.name_of(r)
        if r.isSetFast() and r.getFast():
            imp.fail("fast reaction", rid)
        rate = _scaled(imp.f_x / imp.f_t, imp.symbol(rid, f"reaction {rid!r}"))
        stoich: dict[str, float] = {}
        for refs, sign in ((r.getListOfReactants(), -1.0), (r.getListOfProducts(), 1.0)):
            for k in range(refs.size()):
                ref = refs.get(k)
                if ref.isSetStoichiometryMath() if hasattr(ref, "isSetStoichiometryMath") else False:
                    imp.fail("stoichiometryMath", rid)
                if ref.isSetId() and ref.getId() in imp.assignment_rules:
                    imp.fail("variable stoichiometry", ref.getId())
                sid = ref.getSpecies()
                if sid not in imp.state or m.getSpecies(sid).getBoundaryCondition():
                    continue  # boundary, constant or rule-determined species: not changed by reactions
                coef = ref.getStoichiometry() if ref.isSetStoichiometry() else 1.0
                if ref.isSetId() and ref.getId() in imp.initial:
                    value = imp.math(imp.initial[ref.getId()], f"stoichiometry {ref.getId()!r}")
                    if not value.is_number:
                        imp.fail("stoichiometry depending on parameters", ref.getId())
                    coef = float(value)
                factor = imp.species_factor(imp.state[sid]) / imp.f_x
                stoich[sid] = stoich.get(sid, 0.0) + sign * coef * factor
        reactions.append((rid, rate, stoich))

    # rate rules: d(species amount or concentration)/dt, d(parameter)/dt -> a reaction each
    for var, ast in imp.rate_rules.items():
        expr = imp.math(ast, f"rate rule for {var!r}")
        if var in imp.state:
            s = imp.state[var]
            if not s.getHasOnlySubstanceUnits():  # d[S]/dt in a constant compartment: dn/dt = V d[S]/dt
                expr = expr * imp.size(s.getCompartment())
            reactions.append((f"rate_rule__{var}", _scaled(imp.species_factor(s) / imp.f_t, expr), {var: 1.0}))
        elif m.getParameter(var) is not None:
            imp.symbol(var, f"rate rule for {var!r}")
            reactions.append((f"rate_rule__{var}", _scaled(1.0 / imp.f_t, expr), {var: 1.0}))
        else:
            imp.fail("rate rule", var, "only species and parameters may have rate rules")

    # parameters, assignments and inlined rules nobody referenced yet (kept for inspection)
    for i in range(m.getNumParameters()):
        pid = m.getParameter(i).getId()
        if pid not in imp.decay_rename:
            imp.name_of(m.getParameter(i))
            imp.symbol(pid, f"parameter {pid!r}")
    for var in imp.assignment_rules:
        imp.symbol(var, f"assignment rule for {var!r}")

    # species and initial amounts
    species_list, initial = [], []
    tags: dict[str, tuple[str | None, str | None]] = {}
    for sid, s in imp.state.items():
        imp.name_of(s)
        for node in _rpt_children(libsbml, s, "species"):
            tags[sid] = (node.getAttrValue("ligand") or None, node.getAttrValue("nuclide") or None)
        amount = imp.initial_amount(s)
        if amount != 0:
            initial.append((sid, amount))
    for i in range(m.getNumSpecies()):
        imp.name_of(m.getSpecies(i))

    targets: dict[tuple[str, str | None], str] = {}
    for node in _rpt_children(libsbml, m, "doseTarget"):
        targets[(node.getAttrValue("ligand"), node.getAttrValue("nuclide") or None)] = node.getAttrValue("species")
    for key, target in (dose_targets or {}).items():
        targets[tuple(key)] = sbml_id(target, "species")
    if callable(species_tags):
        for sid, s in imp.state.items():
            tag = species_tags(sid, s.getName())
            if tag is not None:
                tags[sid] = tuple(tag)
    else:
        for key, tag in (species_tags or {}).items():
            tags[sbml_id(key, "species")] = tuple(tag)
    for (lig, nuc), sid in targets.items():
        if sid not in imp.state:
            raise SBMLError(f"{where}: dose target {(lig, nuc)} -> {sid!r} is not a species the reactions change "
                            f"(boundary, constant or rule-determined)")
        tags.setdefault(sid, (lig, nuc))
    for nuc in {n for _, n in tags.values() if n is not None} | {n for _, n in targets if n is not None}:
        if decay_parameter_name(nuc) not in imp.parameters:
            raise SBMLError(f"{where}: species are labelled with {nuc} but the model has no parameter "
                            f"{decay_parameter_name(nuc)!r}; name the file's decay constant with "
                            f"decay_parameters={{{nuc!r}: '<parameter id>'}}")

    # time: a clock species
    all_rates = [rate for _, rate, _ in reactions]
    uses_time = any(imp.time in sp.sympify(e).free_symbols for e in all_rates)
    clock = {imp.time: (sp.Symbol(CLOCK_SPECIES) / sp.Float(imp.f_t)) if imp.f_t != 1 else sp.Symbol(CLOCK_SPECIES)}
    for sid in imp.state:
        species_list.append(Species(sid, imp.state[sid].getCompartment(), *tags.get(sid, (None, None))))
    if imp.parameter_states:
        compartments.append(Compartment(RATE_RULE_COMPARTMENT, sp.Integer(1), "parameters with SBML rate rules"))
    for pid, p in imp.parameter_states.items():
        species_list.append(Species(pid, RATE_RULE_COMPARTMENT))
        if pid in imp.initial:
            value = imp.math(imp.initial[pid], f"initial assignment of {pid!r}").xreplace({imp.time: 0})
            if not imp._param_only(value):
                imp.fail("initial assignment depending on species", pid)
        elif p.isSetValue():
            value = sp.Float(p.getValue())
        else:
            raise SBMLError(f"{where}: parameter {pid!r} with a rate rule has no initial value")
        if value != 0:
            initial.append((pid, value))
    ir_reactions = [Reaction(rid, rate.xreplace(clock), tuple(stoich.items())) for rid, rate, stoich in reactions]
    if uses_time:
        compartments.append(Compartment(CLOCK_COMPARTMENT, sp.Integer(1), "clock for SBML csymbol time"))
        species_list.append(Species(CLOCK_SPECIES, CLOCK_COMPARTMENT))
        ir_reactions.append(Reaction("sbml_clock_tick", sp.Integer(1), ((CLOCK_SPECIES, 1.0),)))
    for a, expr in imp.assignments.items():
        if imp.time in expr.free_symbols:
            imp.fail("time-dependent assignment", a)

    # regions
    region_list: list[Region] = []
    if regions is not None:
        for rname, members in regions.items():
            region_list.append(Region(rname, tuple(sbml_id(s, "species") for s in members)))
    else:
        for node in _rpt_children(libsbml, m, "region"):
            volume = None
            for k in range(node.getNumChildren()):
                child = node.getChild(k)
                if child.getName() == "math":
                    ast = libsbml.readMathMLFromString(libsbml.XMLNode.convertXMLNodeToString(child))
                    volume = imp.math(ast, f"volume of region {node.getAttrValue('id')!r}")
            region_list.append(Region(node.getAttrValue("id"), tuple(node.getAttrValue("species").split()), volume))
        if not region_list:
            for c in compartments:
                members = tuple(s.name for s in species_list if s.compartment == c.name)
                if members and c.name != CLOCK_COMPARTMENT:
                    region_list.append(Region(c.name, members, c.volume))
    positive = tuple(node.getAttrValue("assignment") for node in _rpt_children(libsbml, m, "positive"))

    # parameters in file order (then local and added ones), assignments in dependency order
    order = [m.getParameter(i).getId() for i in range(m.getNumParameters())]
    names = [imp.decay_rename.get(n, n) for n in order if imp.decay_rename.get(n, n) in imp.parameters]
    names += [n for n in imp.parameters if n not in names]
    assignments = _file_order(imp.assignments, order + [m.getSpecies(i).getId() for i in range(m.getNumSpecies())]
                              + [m.getCompartment(i).getId() for i in range(m.getNumCompartments())])
    model_name = name or (m.getName() if m.isSetName() and m.getName() else m.getId()) or path.stem
    try:
        return SBMLModel(
            name=model_name,
            parameters=tuple(imp.parameters[n] for n in names),
            assignments=assignments,
            compartments=tuple(compartments),
            species=tuple(species_list),
            reactions=tuple(ir_reactions),
            regions=tuple(region_list),
            dose_targets=targets,
            positive_assignments=positive,
            display_names={k: v for k, v in imp.display.items()},
            initial_amounts=tuple(initial),
            rules=imp.rules,
            source=str(path),
        )
    except SBMLError:
        raise
    except Exception as exc:  # ModelError from validation: say which file
        raise SBMLError(f"{where}: the imported model is inconsistent: {exc}") from exc
