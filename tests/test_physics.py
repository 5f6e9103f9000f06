"""Physics of the PSMA model: mass balance, decay, independent solver, saturation."""

from dataclasses import replace

import jax
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import pbpk
from pbpk.compile import compile_model

from conftest import GA, LU, TIMES_H, therapy

PET_THERAPY = pbpk.Schedule([
    pbpk.Administration(0.0, 115.0, 1.6, GA),        # 68Ga-PSMA-11 PET (Rinscheid 2020: 115 MBq, 1.6 nmol)
    pbpk.Administration(24.0, 7400.0, 90.0, LU),     # therapy cycle 1
    pbpk.Administration(72.0, 7400.0, 90.0, LU),     # a second injection inside the window
])


def _ligand_totals(model, traj):
    amounts = np.asarray(traj.amounts_nmol)
    out = {}
    for lig in model.ligands:
        cols = [i for i, s in enumerate(model.species) if s.ligand == lig]
        out[lig] = amounts[:, cols].sum(axis=1)
    return out


def test_mass_balance_hot_plus_cold(pet_therapy_model):
    """Hot + cold ligand over all states (urine included) equals the ligand injected so far."""
    traj = pbpk.simulate(pet_therapy_model, PET_THERAPY, TIMES_H)
    totals = _ligand_totals(pet_therapy_model, traj)
    np.testing.assert_allclose(totals["PSMA-11"], 1.6, rtol=1e-7)
    injected_617 = np.where(TIMES_H >= 72.0, 180.0, np.where(TIMES_H >= 24.0, 90.0, 0.0))
    np.testing.assert_allclose(totals["PSMA-617"], injected_617, rtol=1e-7, atol=1e-12)


def test_pure_decay_when_all_transfers_are_zero(lu_model):
    """Keep only the decay reactions: hot decays exactly as exp(-lambda t) into cold."""
    decay_only = replace(lu_model, reactions=tuple(r for r in lu_model.reactions if r.name.startswith("decay_")))
    traj = pbpk.simulate(decay_only, therapy(), TIMES_H, options=pbpk.SolverOptions(rtol=1e-11, atol=1e-14))
    lam = pbpk.tracer(LU).decay_constant_per_h
    a0 = 7400.0
    np.testing.assert_allclose(traj.activity_mbq["blood"], a0 * np.exp(-lam * TIMES_H), rtol=1e-8)
    np.testing.assert_allclose(traj.tia_mbq_h["blood"], a0 / lam, rtol=1e-9)
    hot0 = pbpk.tracer(LU).hot_nmol(a0)
    cold = np.asarray(traj.amounts_nmol)[:, compile_model(decay_only).species_index["venous__cold_psma_617"]]
    np.testing.assert_allclose(cold, 90.0 - hot0 * np.exp(-lam * TIMES_H), rtol=1e-9)


def test_agrees_with_scipy_bdf(lu_model):
    """diffrax Kvaerno5 vs scipy BDF on the symbolic right-hand side (independent code path:
    S r(y) straight from the SymPy rates, Jacobian by JAX) to 1e-5 on organ TACs."""
    opts = pbpk.SolverOptions(rtol=1e-9, atol=1e-12)
    times = TIMES_H
    traj = pbpk.simulate(lu_model, therapy(), times, tia=False, options=opts)
    c = compile_model(lu_model)
    p = c.parameter_vector()
    d = c.assignments(p)
    s = np.asarray(c.stoichiometry)
    f = jax.jit(lambda y: s @ c.rates(y, p, d))
    jac = jax.jit(jax.jacfwd(lambda y: s @ c.rates(y, p, d)))
    y0 = np.zeros(len(lu_model.species))
    hot = pbpk.tracer(LU).hot_nmol(7400.0)
    y0[c.species_index["venous__hot_lu_177_psma_617"]] = hot
    y0[c.species_index["venous__cold_psma_617"]] = 90.0 - hot
    ref = solve_ivp(lambda t, y: np.asarray(f(y)), (0.0, times[-1]), y0, method="BDF", t_eval=times,
                    jac=lambda t, y: np.asarray(jac(y)), rtol=1e-11, atol=1e-15)
    assert ref.success
    mbq_per_nmol = pbpk.tracer(LU).mbq_per_nmol
    for region in lu_model.regions:
        if region.name == "urine":
            continue
        cols = [c.species_index[n] for n in region.species if n.endswith("hot_lu_177_psma_617")]
        scipy_tac = ref.y[cols].sum(axis=0) * mbq_per_nmol
        np.testing.assert_allclose(traj.activity_mbq[region.name], scipy_tac, rtol=1e-5,
                                   err_msg=f"region {region.name}")


def test_tracer_linearity_at_tracer_amounts(lu_model):
    """At tracer amounts (far below receptor capacity) TACs scale with activity."""
    low = pbpk.simulate(lu_model, therapy(activity_mbq=100.0, ligand_nmol=0.2), TIMES_H)
    high = pbpk.simulate(lu_model, therapy(activity_mbq=200.0, ligand_nmol=0.4), TIMES_H)
    for region in ("kidneys", "lesion_1", "salivary_glands", "whole_body"):
        np.testing.assert_allclose(np.asarray(high.activity_mbq[region]) / 200.0,
                                   np.asarray(low.activity_mbq[region]) / 100.0, rtol=2e-3)


def test_saturation_lowers_uptake_per_mbq(lu_model):
    """Kidney and tumour TIA per MBq fall as total ligand goes from 2 to 1000 nmol."""
    per_mbq = {r: [] for r in ("kidneys", "lesion_1", "lesion_2", "salivary_glands")}
    for nmol in (2.0, 20.0, 90.0, 300.0, 1000.0):
        traj = pbpk.simulate(lu_model, therapy(activity_mbq=1000.0, ligand_nmol=nmol), TIMES_H)
        for r in per_mbq:
            per_mbq[r].append(float(traj.tia_mbq_h[r]) / 1000.0)
    for r, values in per_mbq.items():
        assert np.all(np.diff(values) < 0), f"{r}: TIA/MBq not decreasing with ligand amount: {values}"
    assert per_mbq["kidneys"][-1] < 0.8 * per_mbq["kidneys"][0]
    assert per_mbq["lesion_1"][-1] < 0.8 * per_mbq["lesion_1"][0]


def test_pet_and_therapy_of_one_patient(pet_therapy_model):
    """68Ga-PSMA-11 PET (1.6 nmol) and 177Lu-PSMA-617 therapy (90 nmol) in one model: the
    near-tracer PET sees a higher kidney fraction than the saturating therapy, and each
    nuclide's TIA is bounded by its physical-decay limit A0/lambda."""
    sched = pbpk.Schedule([pbpk.Administration(0.0, 115.0, 1.6, GA),
                           pbpk.Administration(24.0, 7400.0, 90.0, LU)])
    traj = pbpk.simulate(pet_therapy_model, sched, TIMES_H)
    ga = traj.activity_of("Ga-68")
    lu = traj.activity_of("Lu-177")
    i_pet = list(TIMES_H).index(1.0)
    assert float(np.asarray(lu["kidneys"])[i_pet]) == 0.0  # no 177Lu before the therapy
    # every 68Ga atom is in the body or the urine: total activity is the decayed injection
    total_ga = float(ga["whole_body"][i_pet] + ga["urine"][i_pet])
    assert total_ga == pytest.approx(115.0 * np.exp(-np.log(2) * 1.0 / pbpk.tracer(GA).half_life_h), rel=1e-6)
    pet_kidney_fraction = float(traj.percent_ia_of("Ga-68")["kidneys"][i_pet])
    assert 1.0 < pet_kidney_fraction < 20.0
    assert np.all(np.asarray(traj.tia_of("Ga-68")["whole_body"]) < 115.0 * 1.1285 / np.log(2))
    assert float(traj.tia_of("Lu-177")["whole_body"]) < 7400.0 * pbpk.tracer(LU).half_life_h / np.log(2)
    # same patient, tracer-level vs therapeutic amount of ligand: kidney uptake per MBq
    tx = pbpk.simulate(pet_therapy_model, pbpk.Schedule([pbpk.Administration(0.0, 115.0, 1.6, LU)]), TIMES_H)
    tx_big = pbpk.simulate(pet_therapy_model, pbpk.Schedule([pbpk.Administration(0.0, 115.0, 90.0, LU)]), TIMES_H)
    assert float(tx.tia_of("Lu-177")["kidneys"]) > float(tx_big.tia_of("Lu-177")["kidneys"])


def test_rodas4_and_kvaerno5_agree(lu_model, therapy_trajectory):
    """The two diffrax solvers (Rosenbrock with analytic Jacobian, ESDIRK with Newton) agree."""
    kv = pbpk.simulate(lu_model, therapy(), TIMES_H, options=pbpk.SolverOptions(method="kvaerno5"))
    np.testing.assert_allclose(kv.region_activity_mbq, therapy_trajectory.region_activity_mbq, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(kv.region_tia_mbq_h, therapy_trajectory.region_tia_mbq_h, rtol=2e-5)


def test_cold_preload_competes_for_receptors(lu_model):
    """500 nmol of unlabelled PSMA-617 one hour before a tracer-level injection occupies the
    receptors: kidney and lesion uptake of the labelled ligand drop (hot/cold competition
    across administrations), and the 177Lu balance still closes."""
    tracer_only = pbpk.Schedule([pbpk.Administration(0.0, 0.0, 500.0, LU), pbpk.Administration(1.0, 100.0, 1.0, LU)])
    baseline = pbpk.Schedule([pbpk.Administration(0.0, 0.0, 0.0, LU), pbpk.Administration(1.0, 100.0, 1.0, LU)])
    times = TIMES_H + 1.0
    pre = pbpk.simulate(lu_model, tracer_only, times)
    ref = pbpk.simulate(lu_model, baseline, times)
    for region in ("kidneys", "lesion_1", "salivary_glands"):
        assert float(pre.tia_mbq_h[region]) < 0.7 * float(ref.tia_mbq_h[region]), region
    lam = pbpk.tracer(LU).decay_constant_per_h
    total = np.asarray(pre.activity_mbq["whole_body"]) + np.asarray(pre.activity_mbq["urine"])
    np.testing.assert_allclose(total, 100.0 * np.exp(-lam * (times - 1.0)), rtol=1e-6)
