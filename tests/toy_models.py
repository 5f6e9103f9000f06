"""A small receptor-binding model for tests that need many solves (calibration, MBAM).

Plasma exchanges with a kidney and a lesion; each has free and receptor-bound ligand
(hot 177Lu-labelled and cold, competing for the same receptors); plasma clears to
urine; hot decays to cold.  12 species, the same structure as the PSMA model's tissue
blocks, so it exercises saturation and hot/cold competition at a fraction of the cost.
Values are round illustrative numbers (test fixture, not literature).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

import pbpk

LIGAND = "PSMA-617"
TRACER = "Lu-177-PSMA-617"


def receptor_toy_model() -> pbpk.Model:
    b = pbpk.ModelBuilder("receptor_toy")
    b.parameter("lambda_lu_177_per_h", np.log(2) / (6.647 * 24), "1/h", source="ICRP-107 (T1/2 6.647 d)")
    cl = b.parameter("clearance_per_h", 0.3, "1/h", source="test fixture", lower=1e-6)
    kon = b.parameter("kon_l_nmol_h", 2.76, "L/(nmol*h)", source="test fixture")
    koff = b.parameter("koff_per_h", 0.015, "1/h", source="test fixture")
    lam = sp.Symbol("lambda_lu_177_per_h")
    b.compartment("plasma", 3.0)
    b.species("plasma_hot", "plasma", ligand=LIGAND, nuclide="Lu-177")
    b.species("plasma_cold", "plasma", ligand=LIGAND)
    b.species("urine_hot", "plasma", ligand=LIGAND, nuclide="Lu-177")
    b.species("urine_cold", "plasma", ligand=LIGAND)
    for form in ("hot", "cold"):
        b.transfer(f"clearance_{form}", cl * sp.Symbol(f"plasma_{form}"), f"plasma_{form}", f"urine_{form}")
    for tissue, volume_l, rden, k_in in (("kidneys", 0.3, 40.0, 0.5), ("lesion_1", 0.05, 60.0, 0.2)):
        v = b.compartment(tissue, volume_l)
        r = b.parameter(f"{tissue}_rden_nmol_l", rden, "nmol/L", source="test fixture", lower=1e-6)
        kin = b.parameter(f"{tissue}_k_in_per_h", k_in, "1/h", source="test fixture")
        kout = b.parameter(f"{tissue}_k_out_per_h", 1.0, "1/h", source="test fixture")
        for form in ("hot", "cold"):
            nuc = "Lu-177" if form == "hot" else None
            b.species(f"{tissue}_free_{form}", tissue, ligand=LIGAND, nuclide=nuc)
            b.species(f"{tissue}_bound_{form}", tissue, ligand=LIGAND, nuclide=nuc)
        free_receptor = r * v - sp.Symbol(f"{tissue}_bound_hot") - sp.Symbol(f"{tissue}_bound_cold")
        for form in ("hot", "cold"):
            free, bound, p = (sp.Symbol(f"{tissue}_free_{form}"), sp.Symbol(f"{tissue}_bound_{form}"),
                              sp.Symbol(f"plasma_{form}"))
            b.transfer(f"{tissue}_in_{form}", kin * p, f"plasma_{form}", f"{tissue}_free_{form}")
            b.transfer(f"{tissue}_out_{form}", kout * free, f"{tissue}_free_{form}", f"plasma_{form}")
            b.transfer(f"{tissue}_bind_{form}", kon * free * free_receptor / v, f"{tissue}_free_{form}",
                       f"{tissue}_bound_{form}")
            b.transfer(f"{tissue}_unbind_{form}", koff * bound, f"{tissue}_bound_{form}", f"{tissue}_free_{form}")
        for kind in ("free", "bound"):
            b.transfer(f"{tissue}_{kind}_decay", lam * sp.Symbol(f"{tissue}_{kind}_hot"), f"{tissue}_{kind}_hot",
                       f"{tissue}_{kind}_cold")
        b.region(tissue, [f"{tissue}_{k}_{f}" for k in ("free", "bound") for f in ("hot", "cold")], volume_l)
    for where in ("plasma", "urine"):
        b.transfer(f"{where}_decay", lam * sp.Symbol(f"{where}_hot"), f"{where}_hot", f"{where}_cold")
    b.region("blood", ["plasma_hot", "plasma_cold"], 3.0)
    b.region("urine", ["urine_hot", "urine_cold"])
    b.dose_target(LIGAND, "Lu-177", "plasma_hot")
    b.dose_target(LIGAND, None, "plasma_cold")
    return b.build()


#: Population of the receptor toy model's virtual cohorts: medians of the patient-specific
#: parameters, between-patient sd of their logs, measured regions, noise (log sd).
TOY_POPULATION = {"kidneys_rden_nmol_l": 55.0, "lesion_1_rden_nmol_l": 40.0, "clearance_per_h": 0.22}
TOY_OMEGA = 0.3
TOY_REGIONS = ("kidneys", "lesion_1", "blood")
TOY_NOISE = 0.08


def virtual_receptor_cohort(model: pbpk.Model, n: int, seed: int, times_h, first: int = 0):
    """(table, schedules, true parameters) of `n` virtual patients named v<first>... :
    parameters log-normal around TOY_POPULATION (sd TOY_OMEGA), one therapy of 5-8 GBq /
    90 nmol at 0 h, activities of TOY_REGIONS at `times_h` with TOY_NOISE log-normal noise."""
    import math

    import pandas as pd

    rng = np.random.default_rng(seed)
    rows, schedules, truths = [], {}, {}
    for i in range(first, first + n):
        name = f"v{i:03d}"
        truth = {k: v * math.exp(TOY_OMEGA * rng.standard_normal()) for k, v in TOY_POPULATION.items()}
        schedule = pbpk.Schedule([pbpk.Administration(0.0, float(rng.uniform(5000.0, 8000.0)), 90.0, TRACER)])
        trajectory = pbpk.simulate(model, schedule, times_h, truth)
        for region in TOY_REGIONS:
            for t, a in zip(times_h, np.asarray(trajectory.activity_mbq[region])):
                rows.append(dict(patient=name, modality="NM", tracer="177Lu-PSMA-617", time_h=float(t),
                                 region=region, activity_mbq=a * math.exp(TOY_NOISE * rng.standard_normal())))
        schedules[name], truths[name] = schedule, truth
    return pd.DataFrame(rows), schedules, truths


def michaelis_menten_model() -> pbpk.Model:
    """Saturable (Michaelis-Menten) uptake of hot and cold ligand competing for one
    transporter, first-order return, decay: 4 species, non-polynomial rates (the general
    rate path of `pbpk.compile`).  Round illustrative values (test fixture)."""
    b = pbpk.ModelBuilder("mm")
    vmax = b.parameter("vmax_nmol_h", 2.0, "nmol/h", source="test")
    km = b.parameter("km_nmol", 1.5, "nmol", source="test")
    k = b.parameter("k_per_h", 0.3, "1/h", source="test")
    b.parameter("lambda_lu_177_per_h", np.log(2) / 159.528, "1/h", source="ICRP-107")
    b.compartment("plasma", 1.0)
    b.compartment("tissue", 1.0)
    x = b.species("x_hot", "plasma", ligand="PSMA-617", nuclide="Lu-177")
    xc = b.species("x_cold", "plasma", ligand="PSMA-617")
    t = b.species("t_hot", "tissue", ligand="PSMA-617", nuclide="Lu-177")
    tc = b.species("t_cold", "tissue", ligand="PSMA-617")
    lam = sp.Symbol("lambda_lu_177_per_h")
    for a, s_, name in ((x, t, "hot"), (xc, tc, "cold")):
        b.transfer(f"uptake_{name}", vmax * a / (km + x + xc), str(a), str(s_))
        b.transfer(f"back_{name}", k * s_, str(s_), str(a))
    b.transfer("decay_p", lam * x, "x_hot", "x_cold")
    b.transfer("decay_t", lam * t, "t_hot", "t_cold")
    b.region("tissue", ["t_hot", "t_cold"], 1.0)
    b.dose_target("PSMA-617", "Lu-177", "x_hot")
    b.dose_target("PSMA-617", None, "x_cold")
    return b.build()


def limit_on(model: pbpk.Model, directions: dict[str, int]):
    """The `pbpk.mbam.Limit` of a unit direction with the given signs (+1: -> infinity,
    -1: -> 0) on the named parameters (the others 0)."""
    from pbpk.mbam.limits import classify_direction

    names = model.parameter_names
    u = np.zeros(len(names))
    for n, s in directions.items():
        u[names.index(n)] = s
    return classify_direction(u, names)
