"""Coverage of a hierarchical cohort fit on the receptor toy model (tests/toy_models.py):
do the 90 % credible intervals of each patient's kidney and lesion TIA hold the truth in
80-98 % of the patients (issue 6's coverage criterion), and how long does a cohort
calibration take per patient?

Virtual cohort: `toy_models.virtual_receptor_cohort` (parameters log-normal around
population medians 0.3-0.4 log units off the fit's prior, between-patient sd 0.3; one
therapy of 5-8 GBq; kidney, lesion and blood at 1, 4, 24, 48, 96, 168 h with 8 %
log-normal noise).  Fit: ``calibration.fit_cohort(..., "laplace")`` (EM for the spreads),
then per patient ``cohort.patient(name).predict(schedule)``: 90 % interval of the therapy
TIA (to infinity) against the true TIA; also for a second, never observed schedule (a
second cycle of 7.4 GBq at 6 weeks).  Prints the coverage per region and schedule, the
population estimates next to the truth, and the fit time per patient.

This is the toy model, not the full PSMA model the issue's study asks for.

Run:  python benchmarks/bench_cohort_coverage.py --patients 50 [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import calibration  # noqa: E402
import pbpk  # noqa: E402
from toy_models import (TOY_OMEGA, TOY_POPULATION, TRACER, receptor_toy_model,  # noqa: E402
                        virtual_receptor_cohort)

TIMES_H = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
#: prior medians 0.3-0.4 log units off the population medians, spread 0.5 (as the tests)
FREE = {"kidneys_rden_nmol_l": (40.0, 0.5), "lesion_1_rden_nmol_l": (60.0, 0.5), "clearance_per_h": (0.3, 0.5)}
SOLVER = pbpk.SolverOptions(rtol=1e-4, atol=1e-7, max_steps=4096)
REGIONS = ("kidneys", "lesion_1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = receptor_toy_model()
    table, schedules, truths = virtual_receptor_cohort(model, args.patients, args.seed, TIMES_H)
    t0 = time.perf_counter()
    cohort = calibration.fit_cohort(model, table, schedules, "laplace", free=FREE, options=SOLVER,
                                    num_samples=2000, seed=args.seed)
    fit_s = time.perf_counter() - t0
    print(f"{args.patients} patients: cohort Laplace fit {fit_s:.1f} s ({fit_s / args.patients:.2f} s per patient), "
          f"EM iterations {cohort.info['em_iterations']} (converged: {cohort.info['em_converged']})")
    summary = cohort.summary()
    drawn = {k: np.log([t[k] for t in truths.values()]) for k in TOY_POPULATION}
    print(f"{'parameter':24s} {'true median':>11s} {'fit [90 % CI]':>28s} {'drawn sd':>9s} {'omega':>6s}")
    for name, value in TOY_POPULATION.items():
        row = summary.loc[f"{name}:population_median"]
        print(f"{name:24s} {value:11.4g} {row['median']:10.4g} [{row['q05']:.4g}, {row['q95']:.4g}]"
              f" {drawn[name].std(ddof=1):9.3f} {summary.loc[f'{name}:omega', 'median']:6.3f}  (true {TOY_OMEGA})")

    inside = {(s, r): [] for s in ("observed", "second cycle") for r in REGIONS}
    t0 = time.perf_counter()
    for name, schedule in schedules.items():
        second = pbpk.Schedule(list(schedule) + [pbpk.Administration(6 * 7 * 24.0, 7400.0, 90.0, TRACER)])
        post = cohort.patient(name)
        for label, s in (("observed", schedule), ("second cycle", second)):
            truth = pbpk.simulate(model, s, [s.last_time_h], truths[name])
            tia = post.predict(s, max_draws=200).set_index("region")
            for region in REGIONS:
                value = float(truth.tia_mbq_h[region])
                inside[(label, region)].append(tia.loc[region, "tia_mbq_h_q05"] <= value <= tia.loc[region,
                                                                                                     "tia_mbq_h_q95"])
    print(f"predictions {time.perf_counter() - t0:.1f} s")
    print("90 % interval coverage of the true TIA (target 80-98 %):")
    for (label, region), v in inside.items():
        print(f"  {label:13s} {region:9s} {np.mean(v):6.1%}  ({sum(v)}/{len(v)})")


if __name__ == "__main__":
    main()
