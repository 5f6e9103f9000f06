"""`calibration.fit` of the MBAM-reduced PSMA model against the full model (issue 7:
calibration of the reduced model is faster and reaches comparable TIA accuracy).

Virtual patients come from the FULL model: every one of the reduction design's 27 free
log-parameters (`bench_mbam_psma.DESIGN_FREE`: PS products, receptor densities, release
rates) drawn log-normal with sd 0.3 around the nominal values (the fits' prior centres
are the nominal values, never the truth).  Each patient gets a 68Ga-PSMA-11 PET (115 MBq,
1.6 nmol) imaged at 1 h and a 177Lu-PSMA-617 therapy (7.4 GBq, 90 nmol) one week later
imaged by SPECT at 4, 24 and 96 h; regions kidneys, salivary glands, liver, spleen and
the two lesions; log-normal noise 5 % (PET) and 10 % (SPECT).

Both models are fitted to the same table with `calibration.fit` (default Laplace: MAP,
Hessian, draws), ligands solved apart; the reduced model frees the reduction's own free set
(free.json in the reduction folder), the full model the same names or, with
``--full-free design``, all 27 design parameters (what the full model needs without the
reduction); default priors centred on each model's values (sigma_log 0.5 for PS products);
then `Posterior.predict` gives the therapy TIA (median and 90 % interval, 200 draws) of
the fitted regions, compared with the patient's true full-model TIA.  The first patient
includes each model's compilation (reported apart); the models' potentials are compiled
once per protocol and shared by the later patients.

    .venv/bin/python benchmarks/bench_mbam_calibration.py [--patients 5] [--method laplace]
        [--reduction benchmarks/results/mbam_psma]

Measured: benchmarks/results/mbam_calibration_cpu.txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibration  # noqa: E402
import pbpk  # noqa: E402
from bench_mbam_psma import DESIGN_FREE, PET, THERAPY, full_model  # noqa: E402

GA, LU = "Ga-68-PSMA-11", "Lu-177-PSMA-617"
THERAPY_START_H = 168.0
SCHEDULE = pbpk.Schedule(list(PET.administrations) + [
    dataclasses.replace(a, time_h=THERAPY_START_H) for a in THERAPY.administrations])
PET_H, SPECT_H = (1.0,), (4.0, 24.0, 96.0)
FIT_REGIONS = ("kidneys", "salivary_glands", "liver", "spleen", "lesion_1", "lesion_2")
NOISE_LOG = {"PT": 0.05, "NM": 0.10}
PATIENT_SD_LOG = 0.3
PREDICT_DRAWS = 200


def virtual_patient(full: pbpk.Model, k: int, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """(time-activity table, true therapy TIA per fitted region in MBq*h) of patient k."""
    rng = np.random.default_rng([seed, k])
    params = {n: full.parameter(n).value * float(np.exp(PATIENT_SD_LOG * rng.standard_normal()))
              for n in DESIGN_FREE}
    times = np.array(list(PET_H) + [THERAPY_START_H + t for t in SPECT_H])
    traj = pbpk.simulate(full, SCHEDULE, times, params, tia=False)
    rows = []
    for nuclide, modality, tracer, index, t0 in (("Ga-68", "PT", GA, range(len(PET_H)), 0.0),
                                                 ("Lu-177", "NM", LU, range(len(PET_H), times.size),
                                                  THERAPY_START_H)):
        activity = traj.activity_of(nuclide)
        for region in FIT_REGIONS:
            for i in index:
                a = float(activity[region][i]) * float(np.exp(NOISE_LOG[modality] * rng.standard_normal()))
                rows.append(dict(patient=f"virtual-{k}", modality=modality, tracer=tracer, time_h=times[i] - t0,
                                 region=region, activity_mbq=a))
    therapy = pbpk.simulate(full, THERAPY, [1.0], params)
    nuc = therapy.nuclides.index("Lu-177")
    tia = {r: float(np.asarray(therapy.region_tia_mbq_h)[nuc, therapy.regions.index(r)]) for r in FIT_REGIONS}
    return pd.DataFrame(rows), tia


def fit_and_predict(model: pbpk.Model, table: pd.DataFrame, free: list[str], method: str, seed: int):
    """(seconds, therapy TIA quantiles {region: (q05, q50, q95)}) of one calibration.fit."""
    options = dataclasses.replace(calibration.CALIBRATION_SOLVER, adjoint="forward")
    start = time.perf_counter()
    post = calibration.fit(model, table, SCHEDULE, method, free=free, separate_ligands=True, options=options,
                           seed=seed)
    pred = post.predict(THERAPY, max_draws=PREDICT_DRAWS, seed=seed)
    seconds = time.perf_counter() - start
    pred = pred[pred["nuclide"] == "Lu-177"].set_index("region")
    return seconds, {r: tuple(float(pred.loc[r, c]) for c in ("tia_mbq_h_q05", "tia_mbq_h_q50", "tia_mbq_h_q95"))
                     for r in FIT_REGIONS}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=5)
    ap.add_argument("--method", default="laplace", choices=("laplace", "svi", "nuts"))
    ap.add_argument("--reduction", type=Path, default=Path(__file__).resolve().parent / "results" / "mbam_psma")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--full-free", choices=("reduction", "design"), default="reduction",
                    help="free parameters of the full model: the reduction's names or all 27 design parameters")
    args = ap.parse_args(argv)
    full = full_model()
    models = {"reduced": pbpk.from_sbml(args.reduction / "psma_reduced.xml"), "full": full}
    reduced_free = json.loads((args.reduction / "free.json").read_text())
    free = {"reduced": reduced_free, "full": reduced_free if args.full_free == "reduction" else DESIGN_FREE}
    print(f"reduced model ({args.reduction}): {len(models['reduced'].species)} species, free ({len(reduced_free)}): "
          f"{', '.join(reduced_free)}; full model {len(full.species)} species, {len(free['full'])} free; "
          f"method {args.method}", flush=True)
    rows = []
    for k in range(args.patients):
        table, truth = virtual_patient(full, k, args.seed)
        for name, model in models.items():
            seconds, tia = fit_and_predict(model, table, free[name], args.method, seed=k)
            for region, (lo, med, hi) in tia.items():
                rows.append(dict(patient=k, model=name, seconds=seconds, region=region, truth=truth[region],
                                 median=med, error_pct=100 * (med / truth[region] - 1),
                                 covered=bool(lo <= truth[region] <= hi)))
            worst = max(abs(r["error_pct"]) for r in rows[-len(tia):])
            print(f"patient {k}: {name:7s} fit + predict {seconds:6.1f} s, worst therapy TIA error {worst:5.1f} % "
                  "(" + ", ".join(f"{r['region']} {r['error_pct']:+.1f}" for r in rows[-len(tia):]) + ")",
                  flush=True)
    df = pd.DataFrame(rows)
    print()
    for name in models:
        d = df[df["model"] == name]
        times = d.groupby("patient")["seconds"].first()
        later = times.iloc[1:] if len(times) > 1 else times
        print(f"{name:7s}: first patient {times.iloc[0]:.1f} s (compilation included), later patients median "
              f"{later.median():.1f} s; therapy TIA |error| median {d['error_pct'].abs().median():.1f} %, "
              f"90th percentile {d['error_pct'].abs().quantile(0.9):.1f} %, max {d['error_pct'].abs().max():.1f} %; "
              f"90 % intervals cover the truth in {100 * d['covered'].mean():.0f} % of {len(d)} (patient, region)")
    t = df.groupby(["model", "patient"])["seconds"].first().unstack(0)
    later = t.iloc[1:] if len(t) > 1 else t
    print(f"fit time full / reduced: first patient {t['full'].iloc[0] / t['reduced'].iloc[0]:.1f}x, later patients "
          f"(median) {later['full'].median() / later['reduced'].median():.1f}x")
    per_region = df.pivot_table(index="region", columns="model", values="error_pct",
                                aggfunc=lambda v: float(np.median(np.abs(v))))
    print("median |therapy TIA error| per region (%):")
    print(per_region.round(1).to_string())


if __name__ == "__main__":
    main()
