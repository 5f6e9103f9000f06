"""pbpk.mbam lumping limits: fast linear reactions (rate constant -> infinity) taken to
equilibrium by merging species (pbpk.mbam.merge).  Each reduced model is checked against
the full model solved with the rate constant made very large, and by mass balance."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import pbpk
from pbpk.mbam.predictions import MBAMError
from pbpk.mbam.reduce import apply_limit
from toy_models import LIGAND, TRACER, limit_on, receptor_toy_model

TIMES_H = [0.5, 4.0, 24.0, 96.0]
SCHEDULE = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
TIGHT = pbpk.SolverOptions(rtol=1e-9, atol=1e-12)


def exchange_model() -> pbpk.Model:
    """Plasma -> tissue vascular space <-PS-> interstitial space (receptor binding there)
    -> back to plasma; plasma -> filtrate -> urine with a filtrate transit rate k_transit.
    Hot decays to cold everywhere.  Round illustrative numbers (test fixture)."""
    b = pbpk.ModelBuilder("exchange")
    lam = b.parameter("lambda_lu_177_per_h", np.log(2) / (6.647 * 24), "1/h", source="ICRP-107 (T1/2 6.647 d)")
    flow = b.parameter("flow_l_h", 20.0, "L/h", source="test fixture")
    ps = b.parameter("ps_per_h", 5.0, "1/h", source="test fixture")
    kon = b.parameter("kon_l_nmol_h", 2.0, "L/(nmol*h)", source="test fixture")
    koff = b.parameter("koff_per_h", 0.05, "1/h", source="test fixture")
    rden = b.parameter("rden_nmol_l", 30.0, "nmol/L", source="test fixture")
    cl = b.parameter("clearance_l_h", 4.0, "L/h", source="test fixture")
    kt = b.parameter("k_transit_per_h", 2.0, "1/h", source="test fixture")
    for name, vol in (("plasma", 3.0), ("vas", 0.05), ("int", 0.2), ("filtrate", 0.1), ("urine", 1.0)):
        b.compartment(name, vol)
    b.compartment("bound", 0.2)
    for form, nuc in (("hot", "Lu-177"), ("cold", None)):
        for c in ("plasma", "vas", "int", "bound", "filtrate", "urine"):
            b.species(f"{c}__{form}", c, ligand=LIGAND, nuclide=nuc)
    free_r = rden * 0.2 - sp.Symbol("bound__hot") - sp.Symbol("bound__cold")
    for form in ("hot", "cold"):
        s = {c: sp.Symbol(f"{c}__{form}") for c in ("plasma", "vas", "int", "bound", "filtrate")}
        b.transfer(f"in_{form}", flow * s["plasma"] / 3.0, f"plasma__{form}", f"vas__{form}")
        b.transfer(f"out_{form}", flow * s["vas"] / 0.05, f"vas__{form}", f"plasma__{form}")
        b.transfer(f"ps_{form}", ps * 0.25 * (s["vas"] / 0.05 - s["int"] / 0.2), f"vas__{form}", f"int__{form}")
        b.transfer(f"bind_{form}", kon * s["int"] / 0.2 * free_r, f"int__{form}", f"bound__{form}")
        b.transfer(f"unbind_{form}", koff * s["bound"], f"bound__{form}", f"int__{form}")
        b.transfer(f"filter_{form}", cl * s["plasma"] / 3.0, f"plasma__{form}", f"filtrate__{form}")
        b.transfer(f"transit_{form}", kt * s["filtrate"], f"filtrate__{form}", f"urine__{form}")
    for c in ("plasma", "vas", "int", "bound", "filtrate", "urine"):
        b.transfer(f"decay_{c}", lam * sp.Symbol(f"{c}__hot"), f"{c}__hot", f"{c}__cold")
    b.region("blood", ["plasma__hot", "plasma__cold"], 3.0)
    b.region("tissue", [f"{c}__{f}" for c in ("vas", "int", "bound") for f in ("hot", "cold")], 0.25)
    b.region("urine", ["filtrate__hot", "filtrate__cold", "urine__hot", "urine__cold"])
    b.dose_target(LIGAND, "Lu-177", "plasma__hot")
    b.dose_target(LIGAND, None, "plasma__cold")
    return b.build()


def _tia(model, overrides=None):
    tr = pbpk.simulate(model, SCHEDULE, TIMES_H, overrides or {}, options=TIGHT)
    return {r: float(v) for r, v in zip(tr.regions, np.asarray(tr.region_tia_mbq_h)[0])}, tr


def test_fast_exchange_merges_vascular_and_interstitial_spaces():
    full = exchange_model()
    reduced = apply_limit(full, limit_on(full, {"ps_per_h": 1}))
    assert "ps_per_h" not in reduced.parameter_names
    assert {"vas_int__hot", "vas_int__cold"} <= set(reduced.species_names)
    assert not {"vas__hot", "int__hot", "vas__cold", "int__cold"} & set(reduced.species_names)
    lumped = reduced.compartment("vas_int")
    assert float(lumped.volume) == pytest.approx(0.25)  # the two spaces' volumes
    assert {s.compartment for s in reduced.species if s.name.startswith("vas_int")} == {"vas_int"}
    assert "ps_hot" not in {r.name for r in reduced.reactions}
    rates = {r.name: r.rate for r in reduced.reactions}
    # equilibrium c_vas = c_int: the vascular share of the lumped amount is V_vas / (V_vas + V_int) = 0.2
    expected = sp.Symbol("flow_l_h") * sp.Symbol("vas_int__hot") * sp.Rational(1, 5) / 0.05
    assert sp.simplify(rates["out_hot"] - expected) == 0
    assert set(reduced.regions[1].species) == {"vas_int__hot", "vas_int__cold", "bound__hot", "bound__cold"}
    ours, tr = _tia(reduced)
    ref, _ = _tia(full, {"ps_per_h": 1e7})
    for region in ref:
        assert ours[region] == pytest.approx(ref[region], rel=1e-5), region
    slow, _ = _tia(full)
    assert abs(slow["tissue"] / ref["tissue"] - 1) > 1e-3  # the limit changes the answer: the check can fail
    # mass balance: all injected ligand (nmol) is somewhere at every output time
    total = np.asarray(tr.amounts_nmol)[:, : len(reduced.species)].sum(axis=1)
    np.testing.assert_allclose(total, 90.0, rtol=1e-8)


def test_fast_irreversible_transfer_empties_its_source():
    """k_transit -> infinity: the filtrate is emptied at once; its inflow goes to the urine."""
    full = exchange_model()
    reduced = apply_limit(full, limit_on(full, {"k_transit_per_h": 1}))
    assert not {"filtrate__hot", "filtrate__cold"} & set(reduced.species_names)
    stoich = {r.name: dict(r.stoichiometry) for r in reduced.reactions}
    assert stoich["filter_hot"] == {"plasma__hot": -1.0, "urine__hot": 1.0}
    assert "decay_filtrate" not in stoich and "transit_hot" not in stoich
    ours, _ = _tia(reduced)
    ref, _ = _tia(full, {"k_transit_per_h": 1e8})
    for region in ref:
        assert ours[region] == pytest.approx(ref[region], rel=1e-5), region


def test_ratio_limit_with_a_fast_exchange_keeps_the_partition_coefficient():
    """flow and PS -> infinity together (ratio fixed): plasma, vascular and interstitial
    spaces merge into one species, which the 'blood' region holds only part of: refused
    with a message naming the region."""
    full = exchange_model()
    with pytest.raises(MBAMError, match="region 'blood' holds only part"):
        apply_limit(full, limit_on(full, {"flow_l_h": 1, "ps_per_h": 1}))


def test_nonlinear_fast_reaction_and_split_region_are_refused():
    toy = receptor_toy_model()
    with pytest.raises(MBAMError, match="not linear in the amounts"):
        apply_limit(toy, limit_on(toy, {"kon_l_nmol_h": 1, "koff_per_h": 1}))  # rapid binding equilibrium
    with pytest.raises(MBAMError, match="holds only part"):
        apply_limit(toy, limit_on(toy, {"kidneys_k_in_per_h": 1, "kidneys_k_out_per_h": 1}))


def test_lumped_model_round_trips_through_sbml(tmp_path):
    full = exchange_model()
    reduced = apply_limit(full, limit_on(full, {"ps_per_h": 1}))
    path = pbpk.to_sbml(reduced, tmp_path / "reduced.xml")
    back = pbpk.from_sbml(path)
    assert set(back.species_names) == set(reduced.species_names)
    ours, _ = _tia(reduced)
    again, _ = _tia(back)
    for region in ours:
        assert again[region] == pytest.approx(ours[region], rel=1e-8), region


def test_reloaded_model_restricts_to_one_ligand(tmp_path):
    """A model read back from SBML (with its zero initial amounts) restricts to one ligand
    like the model it was written from."""
    from pbpk.restrict import restrict_ligands

    full = pbpk.psma_model(tracers=["Ga-68-PSMA-11", "Lu-177-PSMA-617"], lesion_volumes_ml=[12])
    back = pbpk.from_sbml(pbpk.to_sbml(full, tmp_path / "both.xml"))
    only = restrict_ligands(back, ["PSMA-617"])
    assert set(only.species_names) == set(restrict_ligands(full, ["PSMA-617"]).species_names)
    assert {s for s, _ in only.initial_amounts} <= set(only.species_names)
