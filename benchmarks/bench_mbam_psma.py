"""MBAM reduction of the PSMA model (issue 7) for a realistic measurement design.

Design: a 68Ga-PSMA-11 PET (115 MBq, 1.6 nmol) imaged at 1 h and a 177Lu-PSMA-617 therapy
(7.4 GBq, 90 nmol) imaged at 4, 24 and 96 h; predictions are the activities of the
imaged regions at those times and their TIA to infinity, with a 10 % proportional error
(+1 kBq floor).  Free log-parameters: the permeability-surface products of every
tissue, and receptor densities and release rates (the patient-specific binding
parameters); physiology (volumes, flows, GFR) and ligand chemistry stay fixed.  Each
step integrates geodesics along the sloppiest directions, applies the limit found and
refits the reduced model to the full model's predictions; a limit is kept when the refit's
RMS is <= --max-rms-sigma and every single prediction is within --max-prediction-sigma
(default 0.3 sigma = 3 % of each activity and TIA).  --tia-everywhere adds the TIA of every
region of the model (organs outside the images too) to the predictions, so the reduction
keeps all of them.

Prints the FIM spectrum, one line per geodesic (time per geodesic and per refit), the
reduced model's TIA against the full model for both schedules, and writes the report and
the reduced model (SBML, with its free parameters in free.json) to --output.

Virtual cohort (--cohort N): N patients drawn around the nominal values (log-normal,
sd 0.3 on every free parameter of the full model).  Each patient's design predictions
(the full model at its parameters, noise-free) are fitted by weighted least squares
(scipy, same error model) with the reduced model and, for comparison, with the full
model from the nominal values; prints the fit times and the TIA errors of the imaged
organ and lesion regions (with --tia-everywhere: of every region) against the patient's
true full-model TIA, PET and therapy.

    .venv/bin/python benchmarks/bench_mbam_psma.py [--steps 40] [--budget-min 60] [--tia-everywhere] [--output DIR]
    .venv/bin/python benchmarks/bench_mbam_psma.py --from DIR --cohort 8   # evaluate a saved reduction
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

import pbpk
from pbpk.mbam import Predictions, fisher_information, reduce

PET = pbpk.Schedule([pbpk.Administration(0.0, 115.0, 1.6, "Ga-68-PSMA-11")])
THERAPY = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, "Lu-177-PSMA-617")])
TIMES_H = [np.array([1.0]), np.array([4.0, 24.0, 96.0])]
REGIONS = ["blood", "liver", "spleen", "kidneys", "salivary_glands", "lesion_1", "lesion_2", "red_marrow", "gi",
           "whole_body"]
TISSUES_PS = ["liver", "spleen", "gi", "prostate", "red_marrow", "muscle", "skin", "adipose", "bone", "heart", "lungs",
              "salivary_glands", "lesion_1", "lesion_2", "tumour_rest", "rest"]
RECEPTOR = ["liver", "spleen", "gi", "kidneys", "salivary_glands", "lesion_1", "lesion_2", "tumour_rest"]
#: the 27 free log-parameters of the design: PS products, receptor densities, release rates
DESIGN_FREE = [f"{t}_kps_per_h" for t in TISSUES_PS] + [f"{t}_rden_nmol_l" for t in RECEPTOR] + [
    f"{t}_lambda_rel_per_h" for t in ("liver", "spleen", "gi")]


def full_model() -> pbpk.Model:
    """The full two-ligand PSMA model the reduction starts from (two lesions, 12 and 50 mL)."""
    return pbpk.psma_model(tracers=["Ga-68-PSMA-11", "Lu-177-PSMA-617"], lesion_volumes_ml=[12, 50])


def design(model: pbpk.Model, tia_everywhere: bool = False) -> Predictions:
    """The design's predictions; `tia_everywhere`: TIA of every region of the model (imaged
    or not), not only of the imaged ones."""
    return Predictions.build(model, [PET, THERAPY], TIMES_H, regions=REGIONS, free=DESIGN_FREE,
                             include_tia=model.region_names if tia_everywhere else True,
                             options=pbpk.SolverOptions(rtol=1e-6, atol=1e-9, adjoint="forward"))


def tia_errors(full: pbpk.Model, reduced: pbpk.Model) -> list[str]:
    lines = []
    for name, sched in (("PET", PET), ("therapy", THERAPY)):
        a = pbpk.simulate(full, sched, [1.0])
        b = pbpk.simulate(reduced, sched, [1.0])
        ta, tb = np.asarray(a.region_tia_mbq_h), np.asarray(b.region_tia_mbq_h)
        nuc = a.nuclides.index(sched.tracers[0].nuclide)
        rel = {r: tb[nuc, k] / ta[nuc, k] - 1 for k, r in enumerate(a.regions) if ta[nuc, k] > 0}
        for group, regions in (("imaged", REGIONS), ("not imaged", [r for r in rel if r not in REGIONS])):
            worst = max(regions, key=lambda r: abs(rel[r]))
            lines.append(f"{name}, {group} regions: TIA reduced vs full, max |error| {100 * abs(rel[worst]):.2f} % "
                         f"({worst}); " + ", ".join(f"{r} {100 * rel[r]:+.2f} %" for r in regions))
    return lines


def _tia(model, sched, params=None) -> dict[str, float]:
    tr = pbpk.simulate(model, sched, [1.0], params or {})
    nuc = tr.nuclides.index(sched.tracers[0].nuclide)
    return {r: float(v) for r, v in zip(tr.regions, np.asarray(tr.region_tia_mbq_h)[nuc])}


def _fit(pred: Predictions, target: np.ndarray):
    t0 = time.perf_counter()
    fit = least_squares(lambda x: pred.r(x) - target, pred.theta0, jac=pred.jacobian_only, method="trf", max_nfev=60)
    return dict(zip(pred.free, np.exp(fit.x))), time.perf_counter() - t0, float(np.sqrt(np.mean(fit.fun**2)))


def speed(full: pbpk.Model, reduced: pbpk.Model, repeats: int = 5) -> str:
    """Median time of one jitted therapy simulation (6 cycles, TIA), full vs reduced model,
    each restricted to the therapy ligand."""
    import jax

    from pbpk.restrict import restrict_ligands

    sched = pbpk.Schedule.cycles(6, activity_mbq=7400.0, ligand_nmol=90.0, interval_h=1008.0,
                                 tracer="Lu-177-PSMA-617")
    out = []
    for model in (full, reduced):
        model = restrict_ligands(model, ["PSMA-617"])
        fn = jax.jit(lambda: pbpk.simulate(model, sched, [24.0]).region_tia_mbq_h)
        fn().block_until_ready()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn().block_until_ready()
            times.append(time.perf_counter() - t0)
        out.append(float(np.median(times)))
    return (f"6-cycle therapy simulation: full {1e3 * out[0]:.1f} ms, reduced {1e3 * out[1]:.1f} ms "
            f"({out[0] / out[1]:.2f}x)")


def cohort(full: pbpk.Model, pred: Predictions, reduced: pbpk.Model, free, n: int, seed: int = 1) -> None:
    """Virtual-cohort check of the reduced model (module docstring)."""
    rp = pred.with_model(reduced, free)
    rng = np.random.default_rng(seed)
    errs = {"reduced": [], "full": []}
    times = {"reduced": [], "full": []}
    _fit(rp, pred.r(pred.theta0)), _fit(pred, pred.r(pred.theta0))  # compile both before timing
    group = "imaged-region" if set(pred.tia_regions) == set(REGIONS) else f"{len(pred.tia_regions)}-region"
    for k in range(n):
        theta = pred.theta0 + 0.3 * rng.standard_normal(pred.theta0.size)
        truth_params = dict(zip(pred.free, np.exp(theta)))
        target = pred.r(theta)
        line = [f"patient {k + 1}:"]
        for name, p in (("reduced", rp), ("full", pred)):
            values, seconds, rms = _fit(p, target)
            times[name].append(seconds)
            worst = 0.0
            model = reduced if name == "reduced" else full
            for sched in (PET, THERAPY):
                true, got = _tia(full, sched, truth_params), _tia(model, sched, values)
                rel = [abs(got[r] / true[r] - 1) for r in pred.tia_regions if true[r] > 0]
                errs[name].append(max(rel))
                worst = max(worst, max(rel))
            line.append(f"{name} fit {seconds:.1f} s, RMS {rms:.2g} sigma, worst {group} TIA error "
                        f"{100 * worst:.2f} %;")
        print(" ".join(line), flush=True)
    for name in ("reduced", "full"):
        print(f"{name} model ({len(rp.free if name == 'reduced' else pred.free)} free): median fit "
              f"{np.median(times[name]):.1f} s; {group} TIA error over the cohort and both schedules: "
              f"max {100 * max(errs[name]):.2f} %, median of per-patient max {100 * np.median(errs[name]):.2f} %")
    print(f"fit time ratio full/reduced (median): {np.median(times['full']) / np.median(times['reduced']):.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--budget-min", type=float, default=60.0)
    ap.add_argument("--max-rms-sigma", type=float, default=0.2)
    ap.add_argument("--max-prediction-sigma", type=float, default=0.3,
                    help="worst single prediction after a refit, sigma units (0.3 with the 10 %% error model: every "
                         "activity and TIA of the design within 3 %% of the full model at the reference point)")
    ap.add_argument("--tia-everywhere", action="store_true",
                    help="predictions include the TIA of every region (organs outside the images too)")
    ap.add_argument("--min-eigenvalue", type=float, default=1.0, help="stop when the smallest FIM eigenvalue is above")
    ap.add_argument("--output", type=Path, default=Path("mbam-psma-output"))
    ap.add_argument("--cohort", type=int, default=0, help="virtual patients for the TIA check (0: none)")
    ap.add_argument("--from", dest="source", type=Path, help="evaluate the reduction saved in this folder")
    args = ap.parse_args()
    model = full_model()
    t0 = time.perf_counter()
    pred = design(model, args.tia_everywhere)
    if args.source is not None:
        reduced = pbpk.from_sbml(args.source / "psma_reduced.xml")
        free = json.loads((args.source / "free.json").read_text())
        print(f"reduced model from {args.source}: {len(reduced.species)} species, {len(free)} free parameters")
        for line in tia_errors(model, reduced):
            print(line)
        print(speed(model, reduced))
        cohort(model, pred, reduced, free, args.cohort)
        return
    args.output.mkdir(parents=True, exist_ok=True)
    fim = fisher_information(pred)
    print(f"{len(model.species)} species, {len(pred.free)} free parameters, {pred.n_predictions} predictions; "
          f"predictions + FIM {time.perf_counter() - t0:.1f} s (with compilation)")
    print(fim.summary(), flush=True)
    t0 = time.perf_counter()
    res = reduce(model, predictions=pred, max_steps=args.steps, max_rms_sigma=args.max_rms_sigma,
                 max_prediction_sigma=args.max_prediction_sigma, min_eigenvalue=args.min_eigenvalue,
                 directions=((0, True), (0, False), (1, True), (1, False)), time_budget_s=60 * args.budget_min,
                 log=lambda line: print(line, flush=True))
    total = time.perf_counter() - t0
    n_free = res.steps[-1].n_free if res.steps else len(pred.free)
    print(f"reduction: {total / 60:.1f} min, {len(res.steps)} limits; free parameters {len(pred.free)} -> {n_free}; "
          f"species {len(model.species)} -> {len(res.model.species)}; stopped: {res.message}")
    geo = [a[3] for a in res.attempts]
    if res.steps:
        print(f"median per accepted step: geodesics {np.median([s.geodesic_s for s in res.steps]):.1f} s, "
              f"refit {np.median([s.refit_s for s in res.steps]):.1f} s; {len(geo)} geodesics in all")
    res.report(args.output / "reduction.txt")
    res.plot(args.output / "reduction.png")
    pbpk.to_sbml(res.model, args.output / "psma_reduced.xml")
    (args.output / "free.json").write_text(json.dumps(list(res.free)))
    print(f"report and reduced model (SBML) in {args.output}")
    for line in tia_errors(model, res.model):
        print(line)
    print(speed(model, res.model))
    if args.cohort:
        cohort(model, pred, res.model, res.free, args.cohort)


if __name__ == "__main__":
    main()
