"""SBML import (pbpk.from_sbml): models written with libsbml here (not by our exporter) agree
with libroadrunner; export -> import -> export round trip of the PSMA model; dosing an
imported model by species name; specific errors for unsupported or malformed SBML."""

import math

import jax
import numpy as np
import pytest
import scipy.integrate

import pbpk
from pbpk import compile_model

from conftest import LU, TIMES_H, therapy

libsbml = pytest.importorskip("libsbml")
roadrunner = pytest.importorskip("roadrunner")


# --------------------------------------------------------------------- helpers
def _doc(level=3, version=2, time=None, substance=None, volume=None):
    """A new document; time: seconds per time unit, substance / volume: decimal scale of
    mole / litre (None: the unit is not declared)."""
    doc = libsbml.SBMLDocument(level, version)
    m = doc.createModel()
    m.setId("m")
    for uid, kind, scale, mult, setters in (
        ("u_time", libsbml.UNIT_KIND_SECOND, 0, time, ["setTimeUnits"]),
        ("u_sub", libsbml.UNIT_KIND_MOLE, substance, 1.0, ["setSubstanceUnits", "setExtentUnits"]),
        ("u_vol", libsbml.UNIT_KIND_LITRE, volume, 1.0, ["setVolumeUnits"]),
    ):
        if mult is None or scale is None:
            continue
        ud = m.createUnitDefinition()
        ud.setId(uid)
        u = ud.createUnit()
        u.setKind(kind), u.setExponent(1), u.setScale(scale), u.setMultiplier(mult)
        for setter in setters:
            getattr(m, setter)(uid)
    return doc, m


def _compartment(m, cid, size=None, name=None):
    c = m.createCompartment()
    c.setId(cid), c.setConstant(True), c.setSpatialDimensions(3)
    if size is not None:
        c.setSize(size)
    if name:
        c.setName(name)
    return c


def _species(m, sid, comp, amount=None, conc=None, only_substance=True, boundary=False, name=None):
    s = m.createSpecies()
    s.setId(sid), s.setCompartment(comp), s.setHasOnlySubstanceUnits(only_substance)
    s.setBoundaryCondition(boundary), s.setConstant(False)
    if amount is not None:
        s.setInitialAmount(amount)
    if conc is not None:
        s.setInitialConcentration(conc)
    if name:
        s.setName(name)
    return s


def _parameter(m, pid, value=None, name=None):
    p = m.createParameter()
    p.setId(pid), p.setConstant(True)
    if value is not None:
        p.setValue(value)
    if name:
        p.setName(name)
    return p


def _reaction(m, rid, reactants, products, formula, local=None):
    r = m.createReaction()
    r.setId(rid), r.setReversible(False)
    for sid, coef in reactants.items():
        ref = r.createReactant()
        ref.setSpecies(sid), ref.setStoichiometry(coef), ref.setConstant(True)
    for sid, coef in products.items():
        ref = r.createProduct()
        ref.setSpecies(sid), ref.setStoichiometry(coef), ref.setConstant(True)
    if formula is not None:
        law = r.createKineticLaw()
        for pid, value in (local or {}).items():
            lp = law.createLocalParameter()
            lp.setId(pid), lp.setValue(value)
        assert law.setMath(libsbml.parseL3Formula(formula)) == libsbml.LIBSBML_OPERATION_SUCCESS, formula
    return r


def _write(doc, path):
    assert libsbml.writeSBMLToFile(doc, str(path))
    return path


def _other_tool_model(path):
    """Units s, mmol, mL; mass action, Michaelis-Menten through a function definition,
    reversible reaction, local parameter shadowing a global one, boundary species, amount
    and concentration species, initial assignments, assignment rules (one of parameters,
    one of species), rate rules of a parameter and of a concentration species, time in a
    rate, piecewise, e-notation and rational numbers."""
    doc, m = _doc(time=1.0, substance=-3, volume=-3)
    fd = m.createFunctionDefinition()
    fd.setId("mm")
    fd.setName("Michaelis-Menten")
    fd.setMath(libsbml.parseL3Formula("lambda(S, Vm, Km, Vm * S / (Km + S))"))
    _compartment(m, "cell", 2.0, name="Cell")
    _compartment(m, "tissue")
    _parameter(m, "tissue_scale", 1.5)
    ia = m.createInitialAssignment()
    ia.setSymbol("tissue"), ia.setMath(libsbml.parseL3Formula("tissue_scale * cell"))
    _species(m, "A", "cell", amount=10.0, name="Substrate")
    _species(m, "B", "cell", conc=1.0, only_substance=False, name="Product")
    _species(m, "C", "tissue", conc=0.0, only_substance=False)
    _species(m, "X", "tissue", conc=2.0, only_substance=False, boundary=True)
    _parameter(m, "k1", 123.0)  # shadowed by the local k1 of R1
    _parameter(m, "Vmax", 2e-2, name="maximal rate")
    _parameter(m, "Km", 0.5)
    _parameter(m, "kf", 3.0e-3)
    _parameter(m, "kr")
    ia = m.createInitialAssignment()
    ia.setSymbol("kr"), ia.setMath(libsbml.parseL3Formula("kf / 3"))
    _parameter(m, "k4", 1e-3)
    _parameter(m, "kd", 4e-3)
    p = _parameter(m, "kf2")
    p.setConstant(False)
    rule = m.createAssignmentRule()
    rule.setVariable("kf2"), rule.setMath(libsbml.parseL3Formula("2 * kf"))
    p = _parameter(m, "total")
    p.setConstant(False)
    rule = m.createAssignmentRule()
    rule.setVariable("total"), rule.setMath(libsbml.parseL3Formula("A + B * cell"))
    _reaction(m, "R1", {"A": 1}, {"B": 1}, "k1 * A * (1 + z)", local={"k1": 0.01})
    p = _parameter(m, "z", 0.0)
    p.setConstant(False)
    rule = m.createRateRule()
    rule.setVariable("z"), rule.setMath(libsbml.parseL3Formula("1e-3 * (1 - z)"))
    _species(m, "D", "tissue", conc=0.0, only_substance=False)
    rule = m.createRateRule()
    rule.setVariable("D"), rule.setMath(libsbml.parseL3Formula("1e-4 * B"))
    _reaction(m, "R2", {"B": 1}, {"C": 2}, "cell * mm(B, Vmax, Km)")
    r = _reaction(m, "R3", {"C": 1}, {"A": 1}, "tissue * (kf2 * C - kr * A / cell)")
    r.setReversible(True)
    _reaction(m, "R4", {"X": 1}, {"A": 1}, "k4 * X * tissue * exp(-time / 500)")
    _reaction(m, "R5", {"C": 1}, {}, "kd * C * tissue * total / (1 + total) + piecewise(1e-5 * C, C > 1/2, 0)")
    return _write(doc, path)


def _our_solution(model, times_h):
    """Integrate the imported model's compiled right-hand side with scipy (LSODA)."""
    c = compile_model(model)
    p = c.parameter_vector()
    d = c.assignments(p)
    field = jax.jit(c.vector_field(p, d))
    jac = jax.jit(jax.jacfwd(field))
    sol = scipy.integrate.solve_ivp(lambda t, y: np.asarray(field(y)), (0.0, times_h[-1]), model.initial_amounts_nmol(),
                                    method="LSODA", t_eval=times_h, rtol=1e-10, atol=1e-8,
                                    jac=lambda t, y: np.asarray(jac(y)))
    assert sol.success
    return sol.y.T


# ------------------------------------------------------------------- other tool
def test_model_written_by_libsbml_agrees_with_libroadrunner(tmp_path):
    path = _other_tool_model(tmp_path / "other.xml")
    model = pbpk.from_sbml(path)
    species = ["A", "B", "C", "D", "z"]
    assert set(species) < set(model.species_names)
    assert "R1__k1" in model.parameter_names and model.parameter("R1__k1").value == 0.01
    assert dict(model.assignments)["kr"] is not None and "kf2" in dict(model.assignments)
    assert "total" in model.rules  # depends on species: inlined into R5

    times_s = np.linspace(0.0, 3600.0, 13)
    rr = roadrunner.RoadRunner(str(path))
    rr.integrator.relative_tolerance = 1e-10
    rr.integrator.absolute_tolerance = 1e-14
    rr.timeCourseSelections = ["time"] + species  # amounts (mmol), z dimensionless
    to_ours = np.array([1e6, 1e6, 1e6, 1e6, 1.0])  # mmol -> nmol; z is a number
    expected_nmol = np.asarray(rr.simulate(times=list(times_s)))[:, 1:] * to_ours

    ours = _our_solution(model, times_s / 3600.0)
    idx = [model.species_names.index(s) for s in species]
    for k, name in enumerate(species):
        np.testing.assert_allclose(ours[:, idx[k]], expected_nmol[:, k], rtol=1e-4,
                                   atol=1e-6 * np.abs(expected_nmol[:, k]).max(), err_msg=name)
    assert np.ptp(expected_nmol[:, 2]) > 1e3  # C really changes (not a trivially constant check)
    assert expected_nmol[-1, 4] == pytest.approx(1 - np.exp(-3.6), rel=1e-6)  # z: a rate-rule parameter
    # compartments in mL, returned in L; boundary species X is a constant amount parameter (nmol)
    vols = {c.name: float(c.volume.subs({s.symbol: s.value for s in model.parameters})) for c in model.compartments}
    assert vols["cell"] == pytest.approx(2e-3) and vols["tissue"] == pytest.approx(3e-3)
    x_nmol = dict(model.assignments)["X"].subs({s.symbol: s.value for s in model.parameters})
    assert float(x_nmol) == pytest.approx(2.0 * 3.0 * 1e6)  # 2 mM in 3 mL = 6 umol


def test_names_are_kept_and_address_elements(tmp_path):
    model = pbpk.from_sbml(_other_tool_model(tmp_path / "other.xml"))
    assert model.species_by_name("Substrate") == "A" and model.species_by_name("B") == "B"
    assert model.parameter_by_name("maximal rate") == "Vmax"
    assert model.display_names["cell"] == "Cell"
    with pytest.raises(pbpk.SBMLError, match="no species with id or name 'nope'"):
        model.species_by_name("nope")


# ------------------------------------------------------------------ round trip
def test_psma_round_trip_export_import_export(tmp_path, lu_model, therapy_trajectory):
    first = pbpk.to_sbml(lu_model, tmp_path / "a.xml")
    imported = pbpk.from_sbml(first)
    second = pbpk.to_sbml(imported, tmp_path / "b.xml")
    assert first.read_text() == second.read_text()

    assert imported.species == lu_model.species and imported.compartments == lu_model.compartments
    assert imported.regions == lu_model.regions and imported.reactions == lu_model.reactions
    assert dict(imported.dose_targets) == dict(lu_model.dose_targets)
    assert imported.positive_assignments == lu_model.positive_assignments
    assert [a for a, _ in imported.assignments] == [a for a, _ in lu_model.assignments]
    for p, q in zip(lu_model.parameters, imported.parameters):
        assert (p.name, p.unit, p.source, p.description, p.lower, p.upper, p.prior) == \
               (q.name, q.unit, q.source, q.description, q.lower, q.upper, q.prior)
        assert q.value == pytest.approx(p.value, rel=1e-14)

    sim = pbpk.simulate(imported, therapy(), TIMES_H)
    np.testing.assert_allclose(np.asarray(sim.region_activity_mbq), np.asarray(therapy_trajectory.region_activity_mbq),
                               rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(sim.region_tia_mbq_h), np.asarray(therapy_trajectory.region_tia_mbq_h),
                               rtol=1e-8)


# ------------------------------------------------------------ dosing by name
def test_dosing_named_species_with_decay_parameter_in_minutes(tmp_path):
    """Vein hot/cold ligand cleared at k (1/min) and hot decaying at lambda (1/min):
    vein hot amount = H0 exp(-(k + lambda) t), the region activity lambda N_A times it."""
    doc, m = _doc(time=60.0, substance=-9, volume=0)
    _compartment(m, "c_vein", 5.0, name="Vein")
    _species(m, "s1", "c_vein", amount=0.0, name="Vein_hot")
    _species(m, "s2", "c_vein", amount=0.0, name="Vein_cold")
    lam_per_min = math.log(2) / (6.647 * 24 * 60)  # 177Lu half-life 6.647 d (ICRP-107)
    _parameter(m, "p1", lam_per_min, name="lambda_phys")
    _parameter(m, "k_cl", 0.002)
    _reaction(m, "decay", {"s1": 1}, {"s2": 1}, "p1 * s1")
    _reaction(m, "cl_hot", {"s1": 1}, {}, "k_cl * s1")
    _reaction(m, "cl_cold", {"s2": 1}, {}, "k_cl * s2")
    path = _write(doc, tmp_path / "vein.xml")
    model = pbpk.from_sbml(path, dose_targets={("PSMA-617", "Lu-177"): "Vein_hot", ("PSMA-617", None): "s2"},
                           decay_parameters={"Lu-177": "lambda_phys"},
                           species_tags={"Vein_cold": ("PSMA-617", None)})
    lam_name = "lambda_lu_177_per_h"
    assert model.parameter(lam_name).value == pytest.approx(lam_per_min * 60.0)
    assert dict(model.dose_targets) == {("PSMA-617", "Lu-177"): "s1", ("PSMA-617", None): "s2"}
    times = np.array([0.5, 2.0, 10.0, 30.0])
    traj = pbpk.simulate(model, therapy(), times, tia=False, options=pbpk.SolverOptions(rtol=1e-10, atol=1e-12))
    h0 = pbpk.tracer(LU).hot_nmol(7400.0)
    rate_per_h = 60.0 * (0.002 + lam_per_min)
    np.testing.assert_allclose(np.asarray(traj.amounts_nmol[:, 0]), h0 * np.exp(-rate_per_h * times), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(traj.activity_mbq["c_vein"]), 7400.0 * np.exp(-rate_per_h * times),
                               rtol=1e-7)
    # regions and tags by name; a callable tagger
    tagged = pbpk.from_sbml(path, dose_targets={("PSMA-617", "Lu-177"): "s1", ("PSMA-617", None): "s2"},
                            decay_parameters={"Lu-177": "p1"}, regions={"blood": ["Vein_hot", "Vein_cold"]},
                            species_tags=lambda sid, name: ("PSMA-617", "Lu-177" if name.endswith("hot") else None))
    assert tagged.regions == (pbpk.Region("blood", ("s1", "s2")),)
    assert [(s.ligand, s.nuclide) for s in tagged.species] == [("PSMA-617", "Lu-177"), ("PSMA-617", None)]
    with pytest.raises(pbpk.SBMLError, match="no species with id or name 'Vein'"):
        pbpk.from_sbml(path, dose_targets={("PSMA-617", None): "Vein"}, decay_parameters={"Lu-177": "p1"})


# ------------------------------------------------------------------- errors
def _tiny(tmp_path, edit, level=3, version=2):
    doc, m = _doc(level=level, version=version)
    _compartment(m, "comp", 1.0)
    _species(m, "S", "comp", amount=1.0)
    _parameter(m, "k", 0.1)
    r = _reaction(m, "R", {"S": 1}, {}, "k * S")
    edit(m, r)
    return _write(doc, tmp_path / "tiny.xml")


def _event(m, r):
    ev = m.createEvent()
    ev.setId("pulse"), ev.setUseValuesFromTriggerTime(True)
    trig = ev.createTrigger()
    trig.setMath(libsbml.parseL3Formula("time > 1")), trig.setInitialValue(False), trig.setPersistent(True)
    ea = ev.createEventAssignment()
    ea.setVariable("S"), ea.setMath(libsbml.parseL3Formula("2"))


def _algebraic(m, r):
    _parameter(m, "z", 1.0).setConstant(False)
    m.createAlgebraicRule().setMath(libsbml.parseL3Formula("z - S"))


def _growing_compartment(m, r):
    m.getCompartment("comp").setConstant(False)
    rule = m.createRateRule()
    rule.setVariable("comp"), rule.setMath(libsbml.parseL3Formula("k * comp"))


@pytest.mark.parametrize("edit, match", [
    (_event, r"'event' \(element 'pulse'\)"),
    (lambda m, r: r.getKineticLaw().setMath(libsbml.parseL3Formula("k * delay(S, 2)")),
     r"'delay' \(element \"kinetic law of reaction 'R'\"\)"),
    (_algebraic, r"'algebraic rule'"),
    (_growing_compartment, r"'variable-size compartment' \(element 'comp'\)"),
    (lambda m, r: r.getKineticLaw().setMath(libsbml.parseL3Formula("k * S * ghost")),
     r"undefined symbol 'ghost' in kinetic law of reaction 'R'"),
    (lambda m, r: r.unsetKineticLaw(), r"reaction 'R' has no kinetic law"),
    (lambda m, r: r.getKineticLaw().setMath(libsbml.parseL3Formula("undefinedfn(S)")),
     r"'undefined function'.*undefinedfn"),
])
def test_unsupported_construct_names_construct_and_element(tmp_path, edit, match):
    with pytest.raises(pbpk.SBMLError, match=match):
        pbpk.from_sbml(_tiny(tmp_path, edit))


def test_fast_reaction_rejected(tmp_path):
    path = _tiny(tmp_path, lambda m, r: r.setFast(True), level=3, version=1)
    with pytest.raises(pbpk.SBMLError, match=r"'fast reaction' \(element 'R'\)"):
        pbpk.from_sbml(path)


def test_malformed_file_names_file_and_libsbml_message(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text('<?xml version="1.0"?><sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" '
                   'version="2"><model id="m"><listOfSpecies><species id="S"/></listOfSpecies></model>')
    with pytest.raises(pbpk.SBMLError, match=r"bad\.xml: not a readable SBML file: line \d+"):
        pbpk.from_sbml(bad)
    with pytest.raises(pbpk.SBMLError, match="no such SBML file"):
        pbpk.from_sbml(tmp_path / "missing.xml")


def test_unit_contradiction_and_dose_target_errors(tmp_path):
    doc, m = _doc(time=1.0)
    _compartment(m, "comp", 1.0)
    _species(m, "S", "comp", amount=1.0)
    path = _write(doc, tmp_path / "u.xml")
    with pytest.raises(pbpk.SBMLError, match="declares time unit 'u_time' but time_unit='h'"):
        pbpk.from_sbml(path, time_unit="h")
    with pytest.raises(pbpk.SBMLError, match="no parameter 'lambda_lu_177_per_h'"):
        pbpk.from_sbml(path, dose_targets={("PSMA-617", "Lu-177"): "S"})


# ------------------------------------------------------------------- maths
_MATHML = '<math xmlns="http://www.w3.org/1998/Math/MathML">{}</math>'
_MATH_CASES = {  # content MathML written by hand -> value with k = 2
    "rational": ('<cn type="rational"> 1 <sep/> 3 </cn>', 1 / 3),
    "e_notation": ('<cn type="e-notation"> 1.5 <sep/> 3 </cn>', 1500.0),
    "log_base_2": ('<apply><log/><logbase><cn type="integer">2</cn></logbase><cn>8</cn></apply>', 3.0),
    "log_10": ('<apply><log/><cn>1000</cn></apply>', 3.0),
    "cube_root": ('<apply><root/><degree><cn>3</cn></degree><cn>27</cn></apply>', 3.0),
    "ln_e": ('<apply><ln/><exponentiale/></apply>', 1.0),
    "abs": ('<apply><abs/><apply><minus/><ci>k</ci></apply></apply>', 2.0),
    "power": ('<apply><power/><ci>k</ci><cn>10</cn></apply>', 1024.0),
    "piecewise": ('<piecewise><piece><cn>5</cn><apply><gt/><ci>k</ci><cn>1</cn></apply></piece>'
                  '<otherwise><cn>7</cn></otherwise></piecewise>', 5.0),
    "and_not": ('<piecewise><piece><cn>1</cn><apply><and/><apply><lt/><ci>k</ci><cn>3</cn></apply>'
                '<apply><not/><apply><eq/><ci>k</ci><cn>0</cn></apply></apply></apply></piece>'
                '<otherwise><cn>0</cn></otherwise></piecewise>', 1.0),
    "function": ('<apply><ci>twice_plus</ci><ci>k</ci><cn>0.5</cn></apply>', 4.5),
    "exp_times_pi": ('<apply><times/><apply><exp/><cn>0</cn></apply><pi/></apply>', math.pi),
}


def test_mathml_elements_convert_to_the_right_values(tmp_path):
    doc, m = _doc()
    _parameter(m, "k", 2.0)
    fd = m.createFunctionDefinition()
    fd.setId("twice_plus")
    fd.setMath(libsbml.readMathMLFromString(_MATHML.format(
        '<lambda><bvar><ci>x</ci></bvar><bvar><ci>y</ci></bvar>'
        '<apply><plus/><apply><times/><cn>2</cn><ci>x</ci></apply><ci>y</ci></apply></lambda>')))
    for pid, (mathml, _) in _MATH_CASES.items():
        _parameter(m, pid).setConstant(False)
        rule = m.createAssignmentRule()
        ast = libsbml.readMathMLFromString(_MATHML.format(mathml))
        assert ast is not None, pid
        rule.setVariable(pid), rule.setMath(ast)
    model = pbpk.from_sbml(_write(doc, tmp_path / "maths.xml"))
    values = dict(model.assignments)
    for pid, (_, expected) in _MATH_CASES.items():
        assert float(values[pid].subs({"k": 2.0})) == pytest.approx(expected, rel=1e-15), pid


def test_level2_file_uses_its_unit_redefinitions_or_level2_defaults(tmp_path):
    """An L2V4 copy of the combined model: libsbml turns the L3 model units into L2
    redefinitions of 'substance', 'time', 'volume', read like the L3 attributes.  Without
    them SBML L2's built-in units (mole, second, litre) apply, unless the user states others."""
    path = _other_tool_model(tmp_path / "other.xml")
    doc = libsbml.readSBMLFromFile(str(path))
    props = libsbml.ConversionProperties(libsbml.SBMLNamespaces(2, 4))
    props.addOption("setLevelAndVersion", True)
    props.addOption("strict", False)
    assert doc.convert(props) == libsbml.LIBSBML_OPERATION_SUCCESS and doc.getLevel() == 2
    l3_model = pbpk.from_sbml(path)
    redefined = pbpk.from_sbml(_write(doc, tmp_path / "other_l2.xml"))
    assert redefined.reactions == l3_model.reactions and redefined.compartments == l3_model.compartments
    np.testing.assert_allclose(redefined.initial_amounts_nmol(), l3_model.initial_amounts_nmol(), rtol=1e-15)

    for uid in ("substance", "time", "volume"):
        assert doc.getModel().removeUnitDefinition(uid) is not None
    bare = _write(doc, tmp_path / "other_l2_bare.xml")
    default = pbpk.from_sbml(bare)
    assert default.initial_amounts_nmol()[default.species_names.index("A")] == pytest.approx(10.0 * 1e9)  # 10 mol
    stated = pbpk.from_sbml(bare, time_unit="s", substance_unit="mmol", volume_unit="mL")
    assert stated.reactions == l3_model.reactions and stated.compartments == l3_model.compartments


def test_imported_model_exports_again_and_libroadrunner_agrees(tmp_path):
    """other tool -> from_sbml -> to_sbml (nmol, h, L; names and initial amounts kept):
    libroadrunner gives the same amounts for both files."""
    path = _other_tool_model(tmp_path / "other.xml")
    model = pbpk.from_sbml(path)
    again = pbpk.to_sbml(model, tmp_path / "again.xml")
    exported = libsbml.readSBMLFromFile(str(again)).getModel()
    assert exported.getSpecies("A").getName() == "Substrate"
    assert exported.getSpecies("A").getInitialAmount() == pytest.approx(1e7)  # 10 mmol in nmol
    species = ["A", "B", "C", "D"]
    times_s = np.linspace(0.0, 3600.0, 7)
    results = []
    for file, time_scale, amount_scale in ((path, 1.0, 1e6), (again, 1 / 3600.0, 1.0)):
        rr = roadrunner.RoadRunner(str(file))
        rr.integrator.relative_tolerance = 1e-10
        rr.integrator.absolute_tolerance = 1e-14
        rr.timeCourseSelections = ["time"] + species
        results.append(np.asarray(rr.simulate(times=list(times_s * time_scale)))[:, 1:] * amount_scale)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-9 * np.abs(results[0]).max())


def test_simulate_starts_from_imported_initial_amounts(tmp_path):
    """An imported model with a cold pre-load of 3 nmol in the vein: total ligand
    (90 + 3) exp(-k t), hot h0 exp(-(k + lambda) t); a schedule not starting at t = 0 is
    refused because the initial amounts hold at t = 0."""
    doc, m = _doc(time=3600.0, substance=-9, volume=0)
    _compartment(m, "vein", 5.0)
    _species(m, "hot", "vein", amount=0.0)
    _species(m, "cold", "vein", amount=3.0)
    lam_per_h = math.log(2) / (6.647 * 24)  # 177Lu half-life 6.647 d (ICRP-107)
    _parameter(m, "lam", lam_per_h)
    _parameter(m, "k", 0.05)
    _reaction(m, "decay", {"hot": 1}, {"cold": 1}, "lam * hot")
    _reaction(m, "cl_hot", {"hot": 1}, {}, "k * hot")
    _reaction(m, "cl_cold", {"cold": 1}, {}, "k * cold")
    model = pbpk.from_sbml(_write(doc, tmp_path / "preload.xml"),
                           dose_targets={("PSMA-617", "Lu-177"): "hot", ("PSMA-617", None): "cold"},
                           decay_parameters={"Lu-177": "lam"})
    times = np.array([0.5, 5.0, 20.0])
    traj = pbpk.simulate(model, therapy(), times, tia=False, options=pbpk.SolverOptions(rtol=1e-10, atol=1e-12))
    h0 = pbpk.tracer(LU).hot_nmol(7400.0)
    hot = h0 * np.exp(-(0.05 + lam_per_h) * times)
    total = 93.0 * np.exp(-0.05 * times)
    amounts = np.asarray(traj.amounts_nmol)
    np.testing.assert_allclose(amounts[:, model.species_names.index("hot")], hot, rtol=1e-7)
    np.testing.assert_allclose(amounts[:, model.species_names.index("cold")], total - hot, rtol=1e-7)
    with pytest.raises(pbpk.ScheduleError, match="initial amounts"):
        pbpk.simulate(model, therapy(time_h=2.0), [3.0])
