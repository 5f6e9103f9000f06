"""Six cycles of 7.4 GBq 177Lu-PSMA-617 every 6 weeks after a 68Ga-PSMA-11 PET, simulated
with the whole-body PSMA PBPK model.

Prints organ and lesion time-integrated activity (MBq*h, to infinity) per nuclide, the
self-dose per cycle from local deposition of the electron energy (ICRP-107), urinary
excretion, and writes a plot of the time-activity curves.

Run:  python examples/psma_therapy_schedule.py [--output examples/output]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

import pbpk
from dose import nuclides

PET = "Ga-68-PSMA-11"
THERAPY = "Lu-177-PSMA-617"
WEEK_H = 7 * 24.0
MEV_TO_J = 1.602176634e-13


def build_schedule() -> pbpk.Schedule:
    pet = pbpk.Administration(time_h=0.0, activity_mbq=115.0, ligand_nmol=1.6, tracer=PET)  # Rinscheid 2020
    cycles = pbpk.Schedule.cycles(6, activity_mbq=7400.0, ligand_nmol=90.0, interval_h=6 * WEEK_H,
                                  tracer=THERAPY, start_h=2 * WEEK_H)
    return pbpk.Schedule([pet]) + cycles


def self_dose_gy(tia_mbq_h: float, nuclide: str, volume_ml: float, density_g_ml: float = 1.04) -> float:
    """Absorbed dose (Gy) from local deposition of electrons and alphas (non-penetrating)."""
    energy_j = tia_mbq_h * 3600.0 * 1e6 * nuclides.non_penetrating_energy_mev(nuclide) * MEV_TO_J
    return energy_j / (volume_ml * density_g_ml / 1000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default="examples/output", help="folder for the TAC plot")
    args = ap.parse_args()

    model = pbpk.psma_model(tracers=[PET, THERAPY])
    schedule = build_schedule()
    end = schedule.last_time_h + 6 * WEEK_H
    day_after_cycle_1 = 2 * WEEK_H + 24.0
    times = np.unique(np.concatenate([np.linspace(0.05, 4.0, 40), np.linspace(4.0, end, 600), [day_after_cycle_1]]))
    traj = pbpk.simulate(model, schedule, times)

    print(f"schedule: {schedule}")
    tia = traj.tia_frame()
    region_volume_ml = pbpk.region_volumes_ml(model)
    print("\ntime-integrated activity to infinity (MBq*h) and 177Lu self-dose per cycle (Gy):")
    print(f"{'region':18s} {'68Ga TIA':>12s} {'177Lu TIA':>12s} {'Gy/cycle':>10s} {'Gy/GBq':>8s}")
    for region in ["kidneys", "salivary_glands", "liver", "spleen", "red_marrow", "lesion_1", "lesion_2",
                   "tumour_rest", "whole_body"]:
        ga = float(tia.query("nuclide == 'Ga-68' and region == @region").tia_mbq_h.iloc[0])
        lu = float(tia.query("nuclide == 'Lu-177' and region == @region").tia_mbq_h.iloc[0])
        gy = self_dose_gy(lu, "Lu-177", region_volume_ml[region]) / 6
        print(f"{region:18s} {ga:12.1f} {lu:12.0f} {gy:10.2f} {gy / 7.4:8.3f}")
    i24 = int(np.searchsorted(times, day_after_cycle_1))
    print(f"\nurinary excretion of PSMA-617, 24 h after cycle 1: "
          f"{100 * float(traj.urine_ligand_fraction[traj.ligands.index('PSMA-617'), i24]):.1f} % of injected ligand")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    lu = traj.activity_of("Lu-177")
    ga = traj.activity_of("Ga-68")
    for region in ["kidneys", "salivary_glands", "lesion_2", "tumour_rest", "liver", "red_marrow"]:
        axes[1].plot(times / 24.0, np.asarray(lu[region]), label=region)
        axes[0].plot(times[times < 4.0] * 60, np.asarray(ga[region])[times < 4.0], label=region)
    axes[0].set(xlabel="time after PET injection (min)", ylabel="68Ga activity (MBq)", title="68Ga-PSMA-11 PET")
    axes[1].set(xlabel="time (days)", ylabel="177Lu activity (MBq)", yscale="log", ylim=(1e-1, None),
                title="6 x 7.4 GBq 177Lu-PSMA-617 q6w")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    target = out / "psma_tacs.png"
    with tempfile.NamedTemporaryFile(dir=out, suffix=".png", delete=False) as tmp:  # no half-written file
        fig.savefig(tmp.name, dpi=110)
    os.replace(tmp.name, target)
    print(f"TAC plot written to {target}")


if __name__ == "__main__":
    main()
