"""SBML export of `pbpk` models (python-libsbml), so other tools (libroadrunner, COPASI,
SimBiology) can simulate them.  Import is `pbpk.sbml_import.from_sbml`.

Mapping (SBML Level 3 Version 2):
* parameters -> constant global parameters (value; unit, source and bounds in notes);
* assignments -> constant global parameters with an initialAssignment (their maths);
* compartments -> constant compartments, size by initialAssignment when not a number;
* species -> amounts (hasOnlySubstanceUnits=true, initial amount 0, or the initial amounts
  of a model imported from SBML; doses are set by the user of the file, e.g. as initial
  amounts or events); SBML display names of an imported model -> `name` attributes;
* reactions -> reactions with kinetic laws in nmol/h (reversible, since exchange fluxes may
  change sign), stoichiometry from the model;
* ligand/nuclide tags of species, regions (with their volume as MathML), dose targets and
  positive assignments -> an annotation in the ``https://rpt-twin.org/sbml`` namespace.
Model units: time hour, substance nmol, volume litre.  Maths goes through SymPy's content
MathML printer and libsbml's MathML reader; nothing is evaluated as text.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import sympy as sp
from sympy.printing.mathml import MathMLContentPrinter

from .atomic import write_atomic
from .errors import ModelError
from .model import Model

NAMESPACE = "https://rpt-twin.org/sbml"
_MATHML = '<math xmlns="http://www.w3.org/1998/Math/MathML">{}</math>'


def _libsbml():
    try:
        import libsbml
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise ModelError("SBML support needs python-libsbml (pip install python-libsbml)") from exc
    return libsbml


class _ContentMathML(MathMLContentPrinter):
    """SymPy's content-MathML printer with symbols printed verbatim as <ci>id</ci>
    (the default splits names at underscores into sub- and superscripts)."""

    def _print_Symbol(self, sym):
        ci = self.dom.createElement("ci")
        ci.appendChild(self.dom.createTextNode(sym.name))
        return ci


def _math(libsbml, expr: sp.Expr, where: str):
    ast = libsbml.readMathMLFromString(_MATHML.format(_ContentMathML().doprint(sp.sympify(expr))))
    if ast is None:
        raise ModelError(f"cannot write the maths of {where} as MathML: {expr}")
    return ast


def _check(code: int, what: str) -> None:
    if code != 0:  # libsbml.LIBSBML_OPERATION_SUCCESS
        raise ModelError(f"libsbml refused {what} (code {code})")


def parameter_notes(p) -> str:
    """XHTML paragraphs holding what SBML has no place for: unit text, bounds, source,
    description and log-normal prior of a parameter (read back by `pbpk.sbml_import`)."""
    text = f"<p>unit: {escape(p.unit)}; bounds: [{float(p.lower)!r}, {float(p.upper)!r}]; source: {escape(p.source)}</p>"
    if p.description:
        text += f"<p>description: {escape(p.description)}</p>"
    if p.prior is not None:
        text += (f"<p>prior: lognormal; median: {float(p.prior.median)!r}; sigma_log: {float(p.prior.sigma_log)!r}; "
                 f"source: {escape(p.prior.source)}</p>")
    return text


def _units(libsbml, model) -> None:
    for uid, kind, scale, multiplier in (("hour", libsbml.UNIT_KIND_SECOND, 0, 3600.0),
                                         ("nmol", libsbml.UNIT_KIND_MOLE, -9, 1.0),
                                         ("litre_unit", libsbml.UNIT_KIND_LITRE, 0, 1.0)):
        ud = model.createUnitDefinition()
        ud.setId(uid)
        u = ud.createUnit()
        u.setKind(kind)
        u.setExponent(1)
        u.setScale(scale)
        u.setMultiplier(multiplier)
    model.setTimeUnits("hour")
    model.setSubstanceUnits("nmol")
    model.setExtentUnits("nmol")
    model.setVolumeUnits("litre_unit")


def _number_or_initial_assignment(libsbml, m, symbol: str, value: sp.Expr, set_number, what: str) -> None:
    """A numeric value goes into the element (size, initial amount); an expression of
    parameters becomes an initialAssignment of `symbol`."""
    if value.is_number:
        set_number(float(value))
    else:
        ia = m.createInitialAssignment()
        ia.setSymbol(symbol)
        _check(ia.setMath(_math(libsbml, value, what)), what)


def to_sbml(model: Model, path: str | os.PathLike) -> Path:
    """Write `model` as an SBML L3V2 file (atomically: temporary file, then rename)."""
    libsbml = _libsbml()
    doc = libsbml.SBMLDocument(3, 2)
    m = doc.createModel()
    m.setId("".join(ch if ch.isalnum() or ch == "_" else "_" for ch in model.name) or "model")
    m.setName(model.name)
    _units(libsbml, m)
    names = getattr(model, "display_names", {})  # SBML names of a model imported from SBML
    initial = {s: sp.sympify(e) for s, e in getattr(model, "initial_amounts", ())}

    def named(element, ident):
        if ident in names:
            element.setName(names[ident])

    for p in model.parameters:
        sp_ = m.createParameter()
        _check(sp_.setId(p.name), f"parameter id {p.name!r}")
        named(sp_, p.name)
        sp_.setValue(p.value)
        sp_.setConstant(True)
        sp_.setNotes(f'<body xmlns="http://www.w3.org/1999/xhtml">{parameter_notes(p)}</body>')
    for name, expr in model.assignments:
        sp_ = m.createParameter()
        _check(sp_.setId(name), f"assignment id {name!r}")
        named(sp_, name)
        sp_.setConstant(True)
        ia = m.createInitialAssignment()
        ia.setSymbol(name)
        _check(ia.setMath(_math(libsbml, expr, f"assignment {name!r}")), f"maths of {name!r}")
    for c in model.compartments:
        comp = m.createCompartment()
        _check(comp.setId(c.name), f"compartment id {c.name!r}")
        named(comp, c.name)
        comp.setConstant(True)
        comp.setSpatialDimensions(3)
        _number_or_initial_assignment(libsbml, m, c.name, sp.sympify(c.volume), comp.setSize, f"volume of {c.name!r}")
    for s in model.species:
        spc = m.createSpecies()
        _check(spc.setId(s.name), f"species id {s.name!r}")
        named(spc, s.name)
        spc.setCompartment(s.compartment)
        _number_or_initial_assignment(libsbml, m, s.name, sp.sympify(initial.get(s.name, sp.Integer(0))),
                                      spc.setInitialAmount, f"initial amount of {s.name!r}")
        spc.setHasOnlySubstanceUnits(True)
        spc.setBoundaryCondition(False)
        spc.setConstant(False)
        attrs = "".join(f" {k}={quoteattr(v)}" for k, v in (("ligand", s.ligand), ("nuclide", s.nuclide)) if v)
        spc.setAnnotation(f'<rpt:species xmlns:rpt="{NAMESPACE}"{attrs}/>')
    for r in model.reactions:
        rx = m.createReaction()
        _check(rx.setId(r.name), f"reaction id {r.name!r}")
        named(rx, r.name)
        rx.setReversible(True)
        for species, coef in r.stoichiometry:
            ref = rx.createReactant() if coef < 0 else rx.createProduct()
            ref.setSpecies(species)
            ref.setStoichiometry(abs(coef))
            ref.setConstant(True)
        law = rx.createKineticLaw()
        _check(law.setMath(_math(libsbml, r.rate, f"reaction {r.name!r}")), f"rate of {r.name!r}")

    regions = "".join(
        f'<rpt:region id={quoteattr(reg.name)} species={quoteattr(" ".join(reg.species))}>'
        + ("" if reg.volume is None else _MATHML.format(_ContentMathML().doprint(sp.sympify(reg.volume))))
        + "</rpt:region>"
        for reg in model.regions)
    targets = "".join(f'<rpt:doseTarget ligand={quoteattr(lig)} nuclide={quoteattr(nuc or "")} species={quoteattr(s)}/>'
                      for (lig, nuc), s in model.dose_targets.items())
    positive = "".join(f'<rpt:positive assignment={quoteattr(a)}/>' for a in model.positive_assignments)
    m.setAnnotation(f'<rpt:model xmlns:rpt="{NAMESPACE}">{regions}{targets}{positive}</rpt:model>')

    if doc.checkInternalConsistency() and doc.getNumErrors(libsbml.LIBSBML_SEV_ERROR):
        raise ModelError(f"SBML export of {model.name!r} is inconsistent: {doc.getErrorLog().toString()}")
    return write_atomic(path, lambda f: f.write(libsbml.writeSBMLToString(doc)))
