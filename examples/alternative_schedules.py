"""Alternative 177Lu-PSMA-617 schedules for one calibrated patient twin: what-if over
activity per cycle, number of cycles, interval and ligand amount, then (optionally) the
schedule that maximises lesion BED under the organ-at-risk limits.

Steps: the synthetic study (`twin.synthetic.make_study`: 68Ga-PSMA-11 PET + two SPECT after
cycle 1, known truth) -> `PatientTwin.from_study` with the free receptor densities
`_common.FREE` -> Laplace calibration (one model per ligand) -> `twin.what_if` over six
schedules (one vectorised solve per schedule structure) -> posterior median and 90 %
interval of kidney, salivary-gland and lesion dose and BED per schedule ->
`twin.optimise` (per-cycle activity 3-12 GBq, 4 cycles q6w, 20 posterior draws, limits
`twin.limits.DEFAULT_LIMITS` held with posterior probability 0.9) and its binding
constraint.  The calibrated twin is saved (`PatientTwin.save`, no pickle) so that
examples/dose_map_with_cnn.py can reuse it (`--twin <output>/twin`).

Writes <output>/what_if.csv, <output>/bed_per_schedule.png, <output>/optimisation.csv,
<output>/twin/ and the study in <output>/study/.

Run:  python examples/alternative_schedules.py [--output DIR] [--force] [--quick] [--no-optimise]
Time: ~8 min on two busy CPU cores (calibration 3-4.5 min, what-if ~2 min); --quick ~5 min.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from _common import (VISION_INTERVAL_H, WEEK_H, calibrated_twin, output_folder, print_frame, synthetic_study, timed,
                     vision, write_csv, write_figure)

SHOWN = ("kidneys", "salivary_glands", "lesion_1", "lesion_2")


def schedules() -> dict:
    """Six regimens differing in activity per cycle, cycles, interval and ligand amount."""
    return {
        "4 x 7.4 GBq q6w (VISION)": vision(4),
        "6 x 7.4 GBq q6w": vision(6),
        "4 x 9.25 GBq q6w": vision(4, activity_mbq=9250.0),
        "6 x 6.0 GBq q6w": vision(6, activity_mbq=6000.0),
        "4 x 7.4 GBq q4w": vision(4, interval_h=4 * WEEK_H),
        "4 x 7.4 GBq q6w, 180 nmol": vision(4, ligand_nmol=180.0),
    }


def plot(table: pd.DataFrame, path) -> None:
    """Kidney and lesion BED (posterior median, 90 % interval) per schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(table["schedule"]))
    regions = ("kidneys", "lesion_1", "lesion_2")
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / len(regions)
    x = np.arange(len(names))
    for i, region in enumerate(regions):
        t = table[table.region == region].set_index("schedule").loc[names]
        med = t["bed_gy_q50"].to_numpy()
        err = np.vstack([med - t["bed_gy_q05"].to_numpy(), t["bed_gy_q95"].to_numpy() - med])
        ax.bar(x + (i - 1) * width, med, width, yerr=err, capsize=3, label=region)
    ax.axhline(40.0, color="k", ls="--", lw=1, label="kidney BED limit 40 Gy (Bodei 2008)")
    ax.set_xticks(x, names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("BED (Gy), posterior median and 90 % interval")
    ax.set_title("177Lu-PSMA-617 schedules for one calibrated twin")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", help="output folder (default examples/output/alternative_schedules/)")
    ap.add_argument("--force", action="store_true", help="overwrite files in a non-empty output folder")
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer samples and draws, coarse optimiser grid")
    ap.add_argument("--no-optimise", action="store_true", help="skip twin.optimise")
    ap.add_argument("--seed", type=int, default=0, help="synthetic patient seed")
    args = ap.parse_args(argv)
    num_samples, max_draws, grid, opt_draws = (60, 15, 5, 10) if args.quick else (200, 40, 6, 20)
    out = output_folder("alternative_schedules", args.output, args.force)
    start = time.perf_counter()

    with timed("synthetic study"):
        synthetic, study = synthetic_study(out, args.seed, args.force)
    with timed("calibration (PET + SPECT)"):
        twin = calibrated_twin(study, num_samples, seed=args.seed)
    twin.save(out / "twin", overwrite=args.force)
    scheds = schedules()
    with timed(f"what-if, {len(scheds)} schedules x {max_draws} draws"):
        table = twin.what_if(scheds, max_draws=max_draws, seed=args.seed)
    write_csv(table, out / "what_if.csv")
    cols = ["schedule", "region", "dose_gy_q50", "dose_gy_q05", "dose_gy_q95", "bed_gy_q50", "bed_gy_q05", "bed_gy_q95"]
    print_frame(table[table.region.isin(SHOWN)][cols], "what-if (Gy; posterior median and 90 % interval):")
    plot(table, out / "bed_per_schedule.png")

    if not args.no_optimise:
        with timed("optimise"):
            # one schedule structure (4 cycles) and fewer draws: each structure and candidate count
            # compiles its own batched solve, which dominates the optimiser's time on two CPU cores
            result = twin.optimise(activities_mbq=(3000.0, 12000.0), n_cycles=(4,), max_draws=opt_draws,
                                   seed=args.seed, interval_h=[VISION_INTERVAL_H], probability=0.9,
                                   grid_points=grid, refine_steps=1)
        print(f"\noptimum: {result.n_cycles} x {result.activity_mbq:.0f} MBq every {result.interval_h:g} h; "
              f"min lesion BED median {result.target_bed_gy_median:.1f} Gy; binding constraint: {result.binding}")
        print_frame(result.constraints[["region", "quantity", "limit_gy", "probability_quantile_value", "ratio",
                                        "satisfied", "binding"]], "constraints at the optimum:")
        print(f"({len(result.candidates)} candidates in {result.candidates.attrs.get('evaluate_calls')} "
              "vectorised evaluations)")
        write_csv(result.candidates, out / "optimisation.csv")
    print(f"\nwritten to {out}; total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
