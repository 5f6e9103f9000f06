"""Sparse-data accuracy and interval coverage of the therapy TIA on one set of virtual
patients: pre-therapy PET (1 h) + one post-therapy SPECT (96 h) -> kidney and lesion 177Lu
TIA, next to Hänscheid and Madsen on the same SPECT point and the PET-only prediction
(issue 6, "Must show": sparse-data accuracy); and a data-rich fit (PET + every SPECT of
the synthetic protocol) for the coverage of the 90 % intervals of the therapy TIA and the
recovery of the fitted receptor densities (issue 6's coverage criterion, 80-98 %).

Per virtual patient i (seeded; one part of `twin.runner.run_parts`, so a run resumes and can
run on Dask with --workers):

1. Covariates: `twin.population.Population.default()` with one lesion
   (``n_lesions`` fixed to 1), ``sample(seed, [i])``, `patient_parameters(row)` -> the true
   parameters (weight, height, haematocrit, GFR, lesion volume, and the receptor densities
   of kidneys, salivary glands, tumour rest and lesion: the population variability).
2. One model object for the whole run (`shared_model`, built once per process):
   ``pbpk.psma_model(("Ga-68-PSMA-11", "Lu-177-PSMA-617"), lesion_volumes_ml=(30,))``, the
   full two-ligand model (both ligands in one solve, so they compete for receptors); the
   patient's covariates, lesion volume included, are model parameters, overridden per
   patient (the 30 mL is only the model's default, never used).
   Truth: ``pbpk.simulate(shared_model(), schedule, times, true parameters, tia=True)``,
   schedule `twin.synthetic.observed_schedule()`: 150 MBq / 2 nmol 68Ga-PSMA-11 at 0 h,
   7.4 GBq / 90 nmol 177Lu-PSMA-617 at 168 h (constants of twin/synthetic.py), at the pbpk
   default tolerance (rtol 1e-6): region activities at the scan times and the therapy's
   177Lu TIA to infinity (MBq*h) of kidneys, lesion_1, salivary_glands and liver.
3. Observations, generated once per patient as the rich table: PET at 1 h after the PET
   injection and SPECT at 4, 24, 96 and 168 h after the therapy (`RICH_SPECT_SCANS_H`: a
   four-point post-therapy dosimetry protocol), regions kidneys, lesion_1, salivary_glands, liver; measured = true x
   exp(sigma_log e), e ~ N(0, 1) from ``default_rng(SeedSequence([seed, i, 3]))`` (rows in
   the order PET, then the SPECTs in time order; regions in the order above), with
   ASSUMPTION sigma_log = 0.05 for PET and 0.10 for SPECT (organ sigma_log ~0.10 for SPECT:
   research/calibration.md section 3.1; PET taken at half of it for its higher count
   statistics).  The table reports activity_uncertainty_mbq = sigma_log x measured value
   (the 1-sd a quantification would report); the fit's error model adds its own error
   scales (`calibration.likelihood`).  No partial-volume loss, no segmentation error: the
   noise is the only measurement error (an optimistic assumption, stated as such).
   The sparse tables are subsets of the rich table's rows (the same numbers): PET + SPECT
   = the PET rows and the SPECT rows at 96 h; PET only = the PET rows.
4. Fits (the prior is never centred on the truth): ``calibration.fit(shared_model(), table,
   schedule, "laplace", free=FREE, separate_ligands=True, options=CALIBRATION_SOLVER with
   rtol 1e-4, fixed=measured covariates)``.  Free: the receptor densities of kidneys,
   lesion_1, salivary glands and tumour rest, with the default priors (log-normal, centred
   on the psma_model defaults, sigma_log 0.5).  The tumour-rest density varies in the
   population and is fitted although the data barely identify it (no tumour-rest region is
   observed; it acts through the shared ligand pool), so its prior carries its
   uncertainty into the predictions.  Fixed at the patient's true values (measured in the
   clinic, known exactly here): body weight, height, haematocrit, GFR, lesion volume.  The
   other parameters stay at the model defaults, which are the truth's values too.
   (a) twin_rich: the rich table; (b) twin_pet_spect: PET + SPECT 96 h; (c) twin_pet_only.
   Prediction: `Posterior.predict` of the therapy-only schedule (the observed schedule
   without the PET administration; `predict` restricts the model to the schedule's
   ligands: exact for the therapy ligand; the fit, with separate_ligands, already neglects
   the competition with the PET ligand, a tracer dose a week earlier), up to
   the `PREDICT_DRAWS` Laplace draws (the fit draws that many): 5 %, 50 % and 95 % quantiles of the 177Lu TIA.
   Estimate = the 50 % quantile (posterior median).  The truth stays the full two-ligand
   simulation of the observed schedule.
5. Baselines on the same (noisy) SPECT point, 96 h after the therapy:
   `calibration.stp.haenscheid` (TIA = 2 t A / ln 2) and `calibration.stp.madsen` with the
   population effective half-lives of `calibration.stp.population_half_life` (kidney
   35.5 h, checked; lesion 60 h, recalled and not checked: see that module).
6. Rows: ``estimates`` per (patient, region in kidneys / lesion_1, method): true TIA,
   estimate, relative error (estimate / truth - 1), fit seconds (fit + prediction; 0 for the
   STP methods); ``intervals`` per (patient, region in kidneys / lesion_1 / salivary_glands
   / liver, twin method): true TIA, the three quantiles and inside_90 (q05 <= truth <=
   q95); ``patients`` per patient: the sampled row (covariates and true densities, under
   their own names, e.g. ``kidneys_rden_nmol_l``), per twin method the posterior 5 %,
   50 % and 95 % quantiles of each free parameter (``<method>_<name>_q05 / _median /
   _q95``), fit diagnostics, seconds and warnings.

Summaries, printed and written atomically:
(A) ``summary.csv``, sparse-data accuracy: per region (kidneys, lesion_1) and method, the
    median and 90th percentile of |relative error| next to the targets (issue 6): median
    <= 5 %, 90th percentile <= 15 %.
(B) ``coverage.csv``: per region and twin method, the fraction of patients whose 90 %
    interval holds the true TIA next to the target 0.80-0.98 (kind "tia"), with the median
    relative interval width (q95 - q05) / q50 and the median |log(q50 / truth)|; per free
    parameter of twin_rich (kind "parameter"), the median |log(posterior median / truth)|
    and the coverage of its 90 % interval (no target).

Output folder: ``sparse_tia.json`` (the run's settings; a rerun with other settings is
refused), ``estimates/``, ``intervals/`` and ``patients/`` (Parquet datasets in parts,
`twin.runner`), then ``summary.csv`` and ``coverage.csv``.

Run:  python benchmarks/bench_sparse_tia.py --patients N --output DIR [--seed S]
          [--workers W] [--force] [--error-scale B]

--error-scale B sets the prior median of every error group's scale (the error beyond each
row's reported uncertainty) to B instead of the published clinical values (0.16–0.39,
`calibration.priors.ERROR_SCALE_MEDIANS`, which include model error and partial-volume
loss that these virtual data do not have): the fit a site with a characterised
quantification would run.

Measured: see benchmarks/results/sparse_tia_cpu.txt
"""

from __future__ import annotations

import os

# one XLA CPU thread in-process too (the machine is shared; see twin.runner)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Mapping  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import calibration  # noqa: E402
import pbpk  # noqa: E402
from calibration.stp import haenscheid, madsen, population_half_life  # noqa: E402
from imaging.atomic import atomic_file  # noqa: E402
from twin import runner  # noqa: E402
from twin.errors import TwinError  # noqa: E402
from twin.population import Population, patient_parameters  # noqa: E402
from twin.synthetic import PET_SCAN_H, PET_TRACER, THERAPY_TRACER, observed_schedule  # noqa: E402

MANIFEST = "sparse_tia.json"
#: version of the study design in the manifest (2: shared model, tumour-rest density
#: fitted, rich fit and intervals; folders of version 1 are refused)
DESIGN_VERSION = 2
TABLES = ("estimates", "intervals", "patients")
TRACERS = (PET_TRACER, THERAPY_TRACER)
THERAPY_NUCLIDE = pbpk.tracer(THERAPY_TRACER).nuclide
PET_NUCLIDE = pbpk.tracer(PET_TRACER).nuclide
SPECT_SCAN_H = 96.0  # the sparse design's SPECT, h after the therapy ("about day 4", issue 6)
RICH_SPECT_SCANS_H = (4.0, 24.0, 96.0, 168.0)  # the rich design's SPECTs, h after the therapy
OBSERVED_REGIONS = ("kidneys", "lesion_1", "salivary_glands", "liver")
TARGET_REGIONS = ("kidneys", "lesion_1")
PREDICT_REGIONS = ("kidneys", "lesion_1", "salivary_glands", "liver")
FREE = ("kidneys_rden_nmol_l", "lesion_1_rden_nmol_l", "salivary_glands_rden_nmol_l", "tumour_rest_rden_nmol_l")
#: ASSUMPTION (module doc, item 3): log-normal measurement noise per modality.
SIGMA_LOG = {"PT": 0.05, "NM": 0.10}
#: Covariates measured in the clinic, held at the patient's values in the fit (`fixed=`).
MEASURED_COVARIATES = ("body_weight_kg", "height_cm", "haematocrit", "gfr_ml_min", "lesion_1_volume_l")
MODEL_LESION_ML = 30.0  # the shared model's default lesion volume (overridden per patient)
FIT_RTOL = 1e-4
PREDICT_DRAWS = 200
QUANTILES = (0.05, 0.5, 0.95)
TWIN_METHODS = ("twin_rich", "twin_pet_spect", "twin_pet_only")
STP_METHODS = ("haenscheid", "madsen")
METHODS = TWIN_METHODS + STP_METHODS
TARGET_MEDIAN, TARGET_P90 = 0.05, 0.15  # issue 6: median |error| <= 5 %, 90th percentile <= 15 %
TARGET_COVERAGE = (0.80, 0.98)  # issue 6: 90 % intervals hold the truth in 80-98 % of patients

if SPECT_SCAN_H not in RICH_SPECT_SCANS_H:
    raise TwinError(f"SPECT_SCAN_H {SPECT_SCAN_H} h is not one of RICH_SPECT_SCANS_H {RICH_SPECT_SCANS_H}")


def population() -> Population:
    """The default population with exactly one lesion per patient."""
    return Population.from_dict({"n_lesions": {"distribution": "fixed", "value": 1}})


@functools.lru_cache(maxsize=None)
def shared_model() -> pbpk.Model:
    """The one model of the run (module doc, item 2): truth and every fit use it, so what
    is compiled for it serves all patients of a process."""
    model = pbpk.psma_model(TRACERS, lesion_volumes_ml=(MODEL_LESION_ML,))
    missing = sorted(set(FREE + MEASURED_COVARIATES) - set(model.parameter_names))
    if missing:
        raise TwinError(f"psma_model has no parameter(s) {missing}")
    return model


def therapy_schedule() -> pbpk.Schedule:
    """The observed schedule without the PET administration (the therapy alone)."""
    return pbpk.Schedule([a for a in observed_schedule() if a.tracer.name == THERAPY_TRACER])


def truth(params: Mapping[str, float]) -> tuple[dict, dict]:
    """(observed-region activities {(modality, scan time h after its administration, region):
    MBq} at every scan of the rich design, therapy TIA {region: MBq*h} of PREDICT_REGIONS)
    of the full two-ligand model with the patient's true parameters."""
    therapy_h = therapy_schedule().administrations[0].time_h
    times = np.array([PET_SCAN_H] + [therapy_h + t for t in RICH_SPECT_SCANS_H])
    traj = pbpk.simulate(shared_model(), observed_schedule(), times, dict(params), tia=True)
    pet, lu = traj.activity_of(PET_NUCLIDE), traj.activity_of(THERAPY_NUCLIDE)
    activity = {("PT", PET_SCAN_H, r): float(pet[r][0]) for r in OBSERVED_REGIONS}
    for k, t in enumerate(RICH_SPECT_SCANS_H, start=1):
        activity.update({("NM", t, r): float(lu[r][k]) for r in OBSERVED_REGIONS})
    tia = traj.tia_of(THERAPY_NUCLIDE)
    return activity, {r: float(tia[r]) for r in PREDICT_REGIONS}


def observation_table(patient: str, activity: Mapping, rng: np.random.Generator) -> pd.DataFrame:
    """Noisy time-activity table (columns of `calibration.observations`): each true activity
    times exp(SIGMA_LOG[modality] e), e ~ N(0, 1), in the order of `activity`."""
    rows = []
    for (modality, time_h, region), a in activity.items():
        measured = a * float(np.exp(SIGMA_LOG[modality] * rng.standard_normal()))
        rows.append(dict(patient=patient, modality=modality, tracer=PET_TRACER if modality == "PT" else THERAPY_TRACER,
                         cycle=1, time_h=time_h, region=region, activity_mbq=measured,
                         activity_uncertainty_mbq=SIGMA_LOG[modality] * measured))
    return pd.DataFrame(rows)


def design_tables(rich: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{twin method: its observation table}: the rich table and its sparse subsets (same rows)."""
    pet = rich["modality"] == "PT"
    spect = (rich["modality"] == "NM") & (rich["time_h"] == SPECT_SCAN_H)
    return {"twin_rich": rich, "twin_pet_spect": rich[pet | spect].reset_index(drop=True),
            "twin_pet_only": rich[pet].reset_index(drop=True)}


def twin_fit(table: pd.DataFrame, params: Mapping[str, float], seed: int,
             error_scale: float | None = None) -> tuple[dict, dict, float, dict]:
    """Laplace fit of the shared model (module doc, item 4; error_scale: the prior median of
    every error group's scale instead of the published ones) -> (therapy TIA quantiles
    {region: (q05, q50, q95) MBq*h}, free-parameter quantiles {name: (q05, q50, q95)},
    seconds of fit + prediction, diagnostics incl. the two times apart)."""
    options = dataclasses.replace(calibration.CALIBRATION_SOLVER, rtol=FIT_RTOL)
    fixed = {k: float(params[k]) for k in MEASURED_COVARIATES}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", calibration.CalibrationWarning)
        post = calibration.fit(shared_model(), table, observed_schedule(), "laplace", free=list(FREE),
                               separate_ligands=True, options=options, seed=seed, fixed=fixed,
                               num_samples=PREDICT_DRAWS, error_scales=None if error_scale is None else
                               {g: error_scale for g in calibration.ERROR_GROUPS})
        fitted = time.perf_counter()
        pred = post.predict(therapy_schedule(), quantiles=QUANTILES, max_draws=PREDICT_DRAWS, seed=seed)
    seconds = time.perf_counter() - start
    failed = float(pred.attrs["failed_solve_fraction"])
    pred = pred[pred["nuclide"] == THERAPY_NUCLIDE].set_index("region")
    tia = {r: tuple(float(pred.loc[r, f"tia_mbq_h_q{round(q * 100):02d}"]) for q in QUANTILES)
           for r in PREDICT_REGIONS}
    theta = post.samples["theta"].reshape(-1, len(post.free_names))
    q = np.quantile(theta, QUANTILES, axis=0)
    parameters = {n: tuple(float(v) for v in q[:, k]) for k, n in enumerate(post.free_names)}
    diag = {"map_success": bool(post.info["map_success"]), "map_iterations": int(post.info["map_iterations"]),
            "laplace_seconds": fitted - start, "predict_seconds": seconds - (fitted - start),
            "hessian_positive_definite": bool(post.info.get("hessian_positive_definite", True)),
            "failed_prediction_fraction": failed,
            "warnings": "; ".join(str(w.message) for w in caught if issubclass(w.category,
                                                                             calibration.CalibrationWarning))}
    return tia, parameters, seconds, diag


def stp_estimates(table: pd.DataFrame) -> dict[tuple[str, str], float]:
    """{(method, region): TIA MBq*h} of Hänscheid and Madsen on the SPECT row at SPECT_SCAN_H
    of each target region (Madsen with the region's population effective half-life)."""
    out = {}
    spect = table[(table["modality"] == "NM") & (table["time_h"] == SPECT_SCAN_H)].set_index("region")
    for region in TARGET_REGIONS:
        a, t = float(spect.loc[region, "activity_mbq"]), float(spect.loc[region, "time_h"])
        out[("haenscheid", region)] = float(haenscheid(a, t).tia_mbq_h)
        t_eff = population_half_life(region, THERAPY_TRACER).t_eff_h
        out[("madsen", region)] = float(madsen(a, t, t_eff_h=t_eff, nuclide=THERAPY_NUCLIDE).tia_mbq_h)
    return out


def patient_task(seed: int, error_scale: float | None, part: int) -> dict[str, pd.DataFrame]:
    """The tables of virtual patient `part` (see module doc)."""
    row = population().sample(seed, [part]).to_dict("records")[0]
    params = patient_parameters(row)
    activity, true_tia = truth(params)
    rich = observation_table(f"virtual-{part}", activity, np.random.default_rng(np.random.SeedSequence([seed, part, 3])))
    designs = design_tables(rich)
    fit_seed = int(np.random.SeedSequence([seed, part, 2]).generate_state(1)[0] % (2 ** 31))

    estimates: dict[tuple[str, str], float] = {}
    seconds: dict[str, float] = {}
    interval_rows = []
    info = dict(patient_id=part, **{k: row[k] for k in row if k != "patient_id"})
    for method in TWIN_METHODS:
        tia, parameters, secs, diag = twin_fit(designs[method], params, fit_seed, error_scale)
        seconds[method] = secs
        estimates.update({(method, r): tia[r][1] for r in TARGET_REGIONS})
        for region in PREDICT_REGIONS:
            (q05, q50, q95), true = tia[region], true_tia[region]
            interval_rows.append(dict(patient_id=part, region=region, method=method, true_tia_mbq_h=true,
                                      tia_q05_mbq_h=q05, tia_q50_mbq_h=q50, tia_q95_mbq_h=q95,
                                      inside_90=bool(q05 <= true <= q95)))
        for name, (q05, q50, q95) in parameters.items():
            info.update({f"{method}_{name}_q05": q05, f"{method}_{name}_median": q50, f"{method}_{name}_q95": q95})
        info.update({f"{method}_{k}": v for k, v in diag.items()})
        info[f"{method}_seconds"] = secs
    estimates.update(stp_estimates(designs["twin_pet_spect"]))

    rows = []
    for method in METHODS:
        for region in TARGET_REGIONS:
            est, true = estimates[(method, region)], true_tia[region]
            rows.append(dict(patient_id=part, region=region, method=method, true_tia_mbq_h=true,
                             estimate_mbq_h=est, relative_error=est / true - 1.0,
                             fit_seconds=seconds.get(method, 0.0)))
    return {"estimates": pd.DataFrame(rows), "intervals": pd.DataFrame(interval_rows),
            "patients": pd.DataFrame([info])}


def _in_order(table: pd.DataFrame, column: str, order) -> pd.DataFrame:
    """`table` stably sorted by `column` in the order of `order` (other values last)."""
    rank = {v: k for k, v in enumerate(order)}
    return table.sort_values(column, key=lambda s: s.map(lambda v: rank.get(v, len(rank))), kind="stable")


def summary(estimates: pd.DataFrame) -> pd.DataFrame:
    """(A) Per region and method: n, median and 90th percentile of |relative error|, the
    median signed error, median fit seconds, the targets and whether both are met."""
    rows = []
    for (region, method), g in estimates.groupby(["region", "method"], sort=False):
        err = g["relative_error"].to_numpy()
        med, p90 = float(np.median(np.abs(err))), float(np.quantile(np.abs(err), 0.9))
        rows.append(dict(region=region, method=method, n=len(err), median_abs_error=med, p90_abs_error=p90,
                         median_error=float(np.median(err)), median_fit_seconds=float(g["fit_seconds"].median()),
                         target_median=TARGET_MEDIAN, target_p90=TARGET_P90,
                         meets_targets=bool(med <= TARGET_MEDIAN and p90 <= TARGET_P90)))
    out = _in_order(pd.DataFrame(rows), "method", METHODS)
    return _in_order(out, "region", TARGET_REGIONS).reset_index(drop=True)


def coverage(intervals: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """(B) Per region and twin method (kind "tia"): n, fraction of patients whose 90 %
    interval holds the true TIA, the target range and whether it is met, median relative
    interval width (q95 - q05) / q50 and median |log(q50 / truth)|.  Per free parameter of
    twin_rich (kind "parameter"): n, coverage of its 90 % interval, median |log(posterior
    median / truth)| (no target)."""
    rows = []
    lo, hi = TARGET_COVERAGE
    for (region, method), g in intervals.groupby(["region", "method"], sort=False):
        cov = float(g["inside_90"].mean())
        rows.append(dict(kind="tia", quantity=region, method=method, n=len(g), coverage_90=cov,
                         target_coverage_low=lo, target_coverage_high=hi, meets_target=bool(lo <= cov <= hi),
                         median_rel_width_90=float(((g["tia_q95_mbq_h"] - g["tia_q05_mbq_h"])
                                                    / g["tia_q50_mbq_h"]).median()),
                         median_abs_log_error=float(np.median(np.abs(np.log(g["tia_q50_mbq_h"]
                                                                            / g["true_tia_mbq_h"]))))))
    tia = _in_order(_in_order(pd.DataFrame(rows), "method", TWIN_METHODS), "quantity", PREDICT_REGIONS)
    rows = []
    method = "twin_rich"
    for name in FREE:
        true = patients[name].to_numpy(float)
        q05, med, q95 = (patients[f"{method}_{name}_{s}"].to_numpy(float) for s in ("q05", "median", "q95"))
        rows.append(dict(kind="parameter", quantity=name, method=method, n=len(true),
                         coverage_90=float(np.mean((q05 <= true) & (true <= q95))),
                         target_coverage_low=np.nan, target_coverage_high=np.nan, meets_target=None,
                         median_rel_width_90=float(np.median((q95 - q05) / med)),
                         median_abs_log_error=float(np.median(np.abs(np.log(med / true))))))
    return pd.concat([tia, pd.DataFrame(rows)], ignore_index=True)


def manifest(patients: int, seed: int, error_scale: float | None) -> dict:
    return {"design_version": DESIGN_VERSION, "patients": patients, "seed": seed, "tracers": list(TRACERS),
            "error_scale_median": "published (calibration.priors)" if error_scale is None else error_scale,
            "schedule": [dict(time_h=a.time_h, activity_mbq=a.activity_mbq, ligand_nmol=a.ligand_nmol,
                              tracer=a.tracer.name) for a in observed_schedule()],
            "model_lesion_ml": MODEL_LESION_ML, "pet_scan_h": PET_SCAN_H, "spect_scan_h": SPECT_SCAN_H,
            "rich_spect_scans_h": list(RICH_SPECT_SCANS_H), "regions": list(OBSERVED_REGIONS),
            "predict_regions": list(PREDICT_REGIONS), "free": list(FREE),
            "fixed_covariates": list(MEASURED_COVARIATES), "sigma_log": SIGMA_LOG, "fit_rtol": FIT_RTOL,
            "predict_draws": PREDICT_DRAWS, "quantiles": list(QUANTILES), "methods": list(METHODS),
            "population": population().to_dict()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, required=True, help="number of virtual patients N")
    ap.add_argument("--output", type=Path, required=True, help="output folder (resumed if it holds this run)")
    ap.add_argument("--seed", type=int, default=0, help="population and noise seed (default 0)")
    ap.add_argument("--workers", type=int, default=None, help="Dask LocalCluster workers (default: in-process)")
    ap.add_argument("--force", action="store_true", help="empty the output folder first")
    ap.add_argument("--error-scale", type=float, default=None,
                    help="prior median of every error group's scale in the fits (default: the published "
                         "ones, calibration.priors.ERROR_SCALE_MEDIANS)")
    args = ap.parse_args(argv)
    if args.patients < 1:
        ap.error(f"--patients {args.patients}: expected an integer >= 1")
    if args.seed < 0:
        ap.error(f"--seed {args.seed}: expected an integer >= 0")

    if args.error_scale is not None and not args.error_scale > 0:
        ap.error(f"--error-scale {args.error_scale}: expected a positive number")
    folder = runner.prepare_folder(args.output, MANIFEST, manifest(args.patients, args.seed, args.error_scale),
                                   force=args.force)
    task = functools.partial(patient_task, args.seed, args.error_scale)
    with runner.connect(workers=args.workers) as client:
        stats = runner.run_parts(task, range(args.patients), folder, TABLES, client=client, name="sparse-patient",
                                 progress=runner.print_progress("patients"))
    for k, msg in sorted(stats.failed.items()):
        print(f"patient {k} failed (a rerun retries it): {msg}", file=sys.stderr)
    if not (folder / "estimates").is_dir():
        raise TwinError(f"{folder}: no patient finished; nothing to summarise")
    estimates = runner.read_parts(folder, "estimates", ["patient_id", "region", "method"], run="sparse-TIA run")
    intervals = runner.read_parts(folder, "intervals", ["patient_id", "region", "method"], run="sparse-TIA run")
    patients = runner.read_parts(folder, "patients", ["patient_id"], run="sparse-TIA run")
    accuracy, covered = summary(estimates), coverage(intervals, patients)
    with atomic_file(folder / "summary.csv") as tmp:
        accuracy.to_csv(tmp, index=False)
    with atomic_file(folder / "coverage.csv") as tmp:
        covered.to_csv(tmp, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"\n{estimates['patient_id'].nunique()} patients, seed {args.seed}")
        print("(A) sparse-data accuracy; relative error = estimate/truth - 1")
        print(accuracy.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        print(f"\n(B) 90 % interval coverage of the therapy TIA (target {TARGET_COVERAGE[0]:g}-{TARGET_COVERAGE[1]:g})"
              " and parameter recovery (twin_rich)")
        print(covered.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return 1 if stats.failed else 0


if __name__ == "__main__":
    sys.exit(main())
