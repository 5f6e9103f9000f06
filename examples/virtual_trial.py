"""A virtual trial: a seeded cohort of virtual patients x a few 177Lu-PSMA-617 schedules,
evaluated in vectorised PBPK solves (jax.vmap over patients of `pbpk.batch.solve_batch`,
which itself vmaps over the schedules of one structure; no Python loop over simulations).

Cohort: each patient's receptor densities (kidneys, salivary glands, liver, spleen,
lesions, tumour rest) and GFR are drawn log-normally around the `pbpk.psma_model`
population values: p_i = p_pop exp(sigma z_i), z_i ~ N(0, 1), seeded.  The spreads are
illustrative assumptions, not literature values: sigma = 0.3 for receptor densities (the
spread `twin.synthetic` uses for its synthetic patients) and 0.25 for GFR; change them
with --rden-sd / --gfr-sd.

Per patient and schedule:
* organ TIA to infinity (MBq*h) from the PBPK solve;
* self-dose D = TIA * 3.6e9 * Delta_np * 1.602e-13 / m (Gy): TIA in MBq*h -> decays
  (1 MBq*h = 3.6e9 decays), Delta_np = `dose.nuclide("Lu-177").non_penetrating_mev` (MeV
  per decay; ICRP-107), m = `pbpk.region_volumes_ml` x 1.0 g/mL (kg) -- local absorption
  of the electrons only, no photon cross-dose;
* kidney BED = D + G D^2 / (alpha/beta) with the Lea-Catcheside G of the sampled self-dose
  rate (`dose.metrics.g_factor_sampled`; kidney alpha/beta and repair from
  `dose.metrics.RADIOBIOLOGY_DEFAULTS`);
* whether each limit of `twin.limits.DEFAULT_LIMITS` (kidney BED, red-marrow and
  salivary-gland dose) is exceeded (self-dose only; the red-marrow dose misses the
  blood and remainder cross-dose, so it is a lower bound).

Writes <output>/virtual_trial.parquet (tidy: patient, schedule, region, tia_mbq_h,
dose_gy, bed_gy, plus the patient's sampled parameters) and prints a summary per schedule.

Run:  python examples/virtual_trial.py [--patients 32] [--seed 0] [--output DIR] [--force] [--quick]
Time: 64 patients took 10 min on two CPU cores shared with other jobs (mostly compilation and
solves; 32 patients, the default, about half); --quick (8 patients) ~1.5 min.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import dose
import pbpk
from dose import metrics
from pbpk.batch import batch_arrays, schedule_structure, solve_batch
from twin.limits import DEFAULT_LIMITS
from twin.outcomes import output_grid_h
from _common import THERAPY_TRACER, WEEK_H, ExampleError, output_folder, print_frame, timed, vision, write_parquet

VARIED_RDEN = ("kidneys", "salivary_glands", "liver", "spleen", "lesion_1", "lesion_2", "tumour_rest")
REPORTED = ("kidneys", "salivary_glands", "red_marrow", "liver", "lesion_1", "lesion_2", "tumour_rest")
MEV_TO_J = 1.602176634e-13  # CODATA 2018 exact
DECAYS_PER_MBQ_H = 3.6e9  # 1e6 /s x 3600 s
TISSUE_DENSITY_G_ML = 1.0  # as twin.maps uses for unmasked regions


def schedules() -> dict[str, pbpk.Schedule]:
    """The compared regimens (activity per cycle, cycles, interval, ligand amount)."""
    return {
        "4 x 7.4 GBq q6w (VISION)": vision(4),
        "6 x 7.4 GBq q6w": vision(6),
        "4 x 9.25 GBq q6w": vision(4, activity_mbq=9250.0),
        "4 x 7.4 GBq q4w": vision(4, interval_h=4 * WEEK_H),
        "4 x 7.4 GBq q6w, 180 nmol": vision(4, ligand_nmol=180.0),
    }


def draw_cohort(model: pbpk.Model, n: int, seed: int, rden_sd: float, gfr_sd: float) -> dict[str, np.ndarray]:
    """name -> (n,) parameter values, p_pop exp(sigma z) (see module doc)."""
    rng = np.random.default_rng(seed)
    cohort = {}
    for region in VARIED_RDEN:
        name = f"{region}_rden_nmol_l"
        cohort[name] = model.parameter(name).value * np.exp(rden_sd * rng.standard_normal(n))
    cohort["gfr_ml_min"] = model.parameter("gfr_ml_min").value * np.exp(gfr_sd * rng.standard_normal(n))
    return cohort


def simulate_cohort(model: pbpk.Model, scheds: dict[str, pbpk.Schedule], cohort: dict[str, np.ndarray]):
    """Region TIA (n_patients, n_schedules, n_regions; MBq*h), sampled activities and grids
    per schedule; one jit(vmap over patients) per schedule structure."""
    names = list(scheds)
    groups: dict[tuple, list[int]] = {}
    for k, name in enumerate(names):
        groups.setdefault(schedule_structure(scheds[name]), []).append(k)
    n = len(next(iter(cohort.values())))
    nuc = list(model.nuclides).index("Lu-177")
    tia = np.zeros((n, len(names), len(model.region_names)))
    activity, grids, ok = {}, {}, np.ones(n, dtype=bool)
    params = {k: jnp.asarray(v) for k, v in cohort.items()}
    for indices in groups.values():
        group = [scheds[names[k]] for k in indices]
        grid = np.stack([output_grid_h(s) for s in group])
        arrays = batch_arrays(model, group, grid)

        @jax.jit
        def run(params, arrays, structure_of=group[0]):
            def one(p):
                b = solve_batch(model, structure_of, arrays, p)
                return b.region_activity_mbq, b.region_tia_mbq_h, b.solver_ok
            return jax.vmap(one)(params)

        act, region_tia, solved = run(params, arrays)
        ok &= np.asarray(solved).all(axis=1)
        for g, k in enumerate(indices):
            tia[:, k] = np.asarray(region_tia)[:, g, nuc]
            activity[k] = np.maximum(np.asarray(act)[:, g, nuc], 0.0)  # (patients, regions, times)
            grids[k] = grid[g]
    if not ok.all():
        raise ExampleError(f"{int((~ok).sum())} of {n} virtual patients failed to solve; "
                           "narrow --rden-sd / --gfr-sd")
    return tia, activity, grids


def self_dose_per_mbq_h(model: pbpk.Model) -> np.ndarray:
    """Gy per MBq*h of each model region by local absorption (NaN for urine/whole body)."""
    delta_j = dose.nuclide("Lu-177").non_penetrating_mev * MEV_TO_J * DECAYS_PER_MBQ_H
    vols = pbpk.region_volumes_ml(model)
    out = np.full(len(model.region_names), np.nan)
    for j, region in enumerate(model.region_names):
        if region not in ("urine", "whole_body") and np.isfinite(vols[region]):
            out[j] = delta_j / (vols[region] * TISSUE_DENSITY_G_ML / 1000.0)
    return out


def tidy(model, scheds, cohort, tia, activity, grids) -> pd.DataFrame:
    """Long table: one row per patient, schedule and reported region."""
    s = self_dose_per_mbq_h(model)
    lq = metrics.RADIOBIOLOGY_DEFAULTS["kidneys"]
    lam = math.log(2.0) / dose.nuclides.half_life_h("Lu-177")
    kid = model.region_names.index("kidneys")
    frames = []
    for k, name in enumerate(scheds):
        dose_gy = tia[:, k] * s  # (patients, regions)
        g = metrics.g_factor_sampled(grids[k], activity[k][:, kid] * s[kid], lq.repair_rate_per_h, lam)
        kidney_bed = dose_gy[:, kid] + g * dose_gy[:, kid] ** 2 / lq.alpha_beta_gy
        for region in REPORTED:
            j = model.region_names.index(region)
            frame = pd.DataFrame({"patient": np.arange(tia.shape[0]), "schedule": name, "region": region,
                                  "tia_mbq_h": tia[:, k, j], "dose_gy": dose_gy[:, j],
                                  "bed_gy": kidney_bed if region == "kidneys" else np.nan})
            for p, values in cohort.items():
                frame[p] = values
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summary(table: pd.DataFrame, schedule_names) -> pd.DataFrame:
    """Per schedule: median (5-95 %) doses and the fraction of patients over each limit."""
    rows = []
    for name in schedule_names:
        t = table[table.schedule == name].set_index(["region", "patient"])
        row = {"schedule": name}
        for region, col in (("kidneys", "bed_gy"), ("kidneys", "dose_gy"), ("lesion_2", "dose_gy"),
                            ("salivary_glands", "dose_gy")):
            v = t.loc[region, col]
            row[f"{region} {col} q50"] = float(v.median())
            row[f"{region} {col} q05-q95"] = f"{v.quantile(0.05):.1f}-{v.quantile(0.95):.1f}"
        for limit in DEFAULT_LIMITS:
            v = t.loc[limit.region, limit.quantity]
            row[f"P({limit.label} > {limit.value:g})"] = float((v > limit.value).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=32, help="cohort size (default 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rden-sd", type=float, default=0.3, help="log-normal sigma of receptor densities")
    ap.add_argument("--gfr-sd", type=float, default=0.25, help="log-normal sigma of GFR")
    ap.add_argument("--output", help="output folder (default examples/output/virtual_trial/)")
    ap.add_argument("--force", action="store_true", help="overwrite files in a non-empty output folder")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 patients")
    args = ap.parse_args(argv)
    n = 8 if args.quick else args.patients
    if n < 1:
        raise ExampleError(f"--patients {n}: expected at least 1")
    for opt, v in (("--rden-sd", args.rden_sd), ("--gfr-sd", args.gfr_sd)):
        if not (v >= 0 and math.isfinite(v)):
            raise ExampleError(f"{opt} {v}: expected a finite sigma >= 0")
    out = output_folder("virtual_trial", args.output, args.force)
    start = time.perf_counter()

    model = pbpk.psma_model(tracers=[THERAPY_TRACER])
    scheds = schedules()
    cohort = draw_cohort(model, n, args.seed, args.rden_sd, args.gfr_sd)
    with timed(f"{n} patients x {len(scheds)} schedules, vmapped solves"):
        tia, activity, grids = simulate_cohort(model, scheds, cohort)
    table = tidy(model, scheds, cohort, tia, activity, grids)
    print(f"\ncohort of {n} (seed {args.seed}); medians of the sampled parameters:",
          {k: round(float(np.median(v)), 2) for k, v in cohort.items()})
    print_frame(summary(table, list(scheds)), "per schedule: self-dose (Gy), kidney BED (Gy), fraction over limits")
    for limit in DEFAULT_LIMITS:
        print(f"  limit {limit.label} {limit.value:g}: {limit.source}")
    path = write_parquet(table, out / "virtual_trial.parquet")
    print(f"\nwritten {path} ({len(table)} rows); wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
