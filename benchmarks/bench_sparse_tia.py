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

Population prior (--population-prior M; the NLME route of the single-time-point
literature, issue 6 "Cohort"): before the test patients, M other patients of the same
seeded population (parts TRAINING_PART_OFFSET + k) get the rich table of items 1-3, and
`calibration.fit_cohort` (Laplace: EM for the between-patient spreads; the full
two-ligand model solved jointly; the same free densities, default priors and measured
covariates fixed per patient) fits them together.  Every fit of the test patients then
takes ``free=population_prior()`` (per density: the population median and the spread of
a new patient, estimated, never the generating values) and
``error_scales=population_error_scales()`` (the extra error beyond each row's reported
uncertainty that the training data show, as the error scales' prior medians).  Both are
written to ``population_prior.json`` with the cohort fit's record and reused on a resume.

Reference floor (--generating-prior): every fit takes the generating population's
log-normal of each density (`population()`) as its prior and extra error scales of
GENERATING_ERROR_SCALE: what an unlimited training cohort would give, so the accuracy
this design (PET 5 % + one SPECT 10 % noise) allows at best.  A reference, not a fit a
clinic could run.

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
refused; a rerun with a larger --patients adds patients to it, and the summaries cover
patients 0..N-1 of the folder), ``estimates/``, ``intervals/`` and ``patients/`` (Parquet datasets in parts,
`twin.runner`), then ``summary.csv`` and ``coverage.csv``.

Run:  python benchmarks/bench_sparse_tia.py --patients N --output DIR [--seed S]
          [--workers W] [--force] [--error-scale B | --population-prior M | --generating-prior]

--error-scale B sets the prior median of every error group's scale (the error beyond each
row's reported uncertainty) to B instead of the published clinical values (0.16–0.39,
`calibration.priors.ERROR_SCALE_MEDIANS`, which include model error and partial-volume
loss that these virtual data do not have): the fit a site with a characterised
quantification would run.

Measured: see benchmarks/results/sparse_tia_cpu.txt (published priors),
sparse_tia_error005_cpu.txt (--error-scale 0.05), sparse_tia_population_prior_cpu.txt
(--population-prior)
"""

from __future__ import annotations

import os

# one XLA CPU thread in-process too (the machine is shared; see twin.runner)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
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
POPULATION_PRIOR_FILE = "population_prior.json"
#: training patients of --population-prior are parts TRAINING_PART_OFFSET + k: the same
#: seeded population, disjoint from the test patients 0..N-1
TRAINING_PART_OFFSET = 1_000_000
#: --generating-prior: every error group's extra scale (prior median); the data's noise is
#: all in the reported uncertainty, so ~0
GENERATING_ERROR_SCALE = 0.01
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


def fit_options() -> pbpk.SolverOptions:
    """The fits' solver settings: `calibration.CALIBRATION_SOLVER` at rtol FIT_RTOL."""
    return dataclasses.replace(calibration.CALIBRATION_SOLVER, rtol=FIT_RTOL)


def measured_covariates(params: Mapping[str, float]) -> dict[str, float]:
    """The patient's MEASURED_COVARIATES (held fixed in every fit)."""
    return {k: float(params[k]) for k in MEASURED_COVARIATES}


def twin_fit(table: pd.DataFrame, params: Mapping[str, float], seed: int, error_scale: float | None = None,
             prior: Mapping | None = None) -> tuple[dict, dict, float, dict]:
    """Laplace fit of the shared model (module doc, item 4; error_scale: the prior median of
    every error group's scale instead of the published ones; prior: a training cohort's
    population prior and error scales, `training_population_prior`) -> (therapy TIA
    quantiles {region: (q05, q50, q95) MBq*h}, free-parameter quantiles {name: (q05, q50,
    q95)}, seconds of fit + prediction, diagnostics incl. the two times apart)."""
    if prior is not None:
        free = [calibration.FreeParameter(**p) for p in prior["free"]]
        error_scales = prior["error_scales"]
    else:
        free = list(FREE)
        error_scales = None if error_scale is None else {g: error_scale for g in calibration.ERROR_GROUPS}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", calibration.CalibrationWarning)
        post = calibration.fit(shared_model(), table, observed_schedule(), "laplace", free=free,
                               separate_ligands=True, options=fit_options(), seed=seed,
                               fixed=measured_covariates(params), num_samples=PREDICT_DRAWS,
                               error_scales=error_scales)
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


def training_population_prior(seed: int, n_training: int, folder: Path) -> dict:
    """The population prior of a data-rich training cohort (module doc, "Population
    prior"): patients TRAINING_PART_OFFSET + k, k < n_training, of the same seeded
    population (none of them a test patient), their rich tables, covariates fixed, fitted
    together by `calibration.fit_cohort` (Laplace) -> {"free": the `FreeParameter` fields
    of ``population_prior()``, "error_scales": ``population_error_scales()``, and the
    fit's record}.  Written atomically to POPULATION_PRIOR_FILE in `folder` and read back
    from there on a resume (the manifest holds n_training, so it is this run's)."""
    path = folder / POPULATION_PRIOR_FILE
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    parts = [TRAINING_PART_OFFSET + k for k in range(n_training)]
    tables, fixed, truths = [], {}, []
    for part in parts:
        _, params, _, rich = patient_data(seed, part)
        tables.append(rich)
        fixed[f"virtual-{part}"] = measured_covariates(params)
        truths.append([float(params[k]) for k in FREE])
    start = time.perf_counter()
    post = calibration.fit_cohort(shared_model(), pd.concat(tables, ignore_index=True), observed_schedule(),
                                  "laplace", free=list(FREE), options=fit_options(), fixed=fixed, seed=seed,
                                  num_samples=PREDICT_DRAWS)
    prior = {"free": [dataclasses.asdict(p) for p in post.population_prior()],
             "error_scales": post.population_error_scales(),
             "training_parts": parts, "fit_seconds": time.perf_counter() - start,
             "em_iterations": int(post.info.get("em_iterations", 0)), "problems": post.problems(),
             "training_true_median": dict(zip(FREE, np.median(truths, axis=0).tolist()))}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(prior, indent=2), encoding="utf-8")
    return prior


def generating_population_prior() -> dict:
    """The reference prior of --generating-prior (module doc): per free density the
    generating population's log-normal (`population()`: median, sd_log; the lesion's from
    ``lesion_rden_nmol_l``), and every error group's extra scale at GENERATING_ERROR_SCALE
    (these data carry no error beyond the reported one)."""
    covariates = population().covariates
    free = []
    for name in FREE:
        dist = covariates["lesion_rden_nmol_l" if name.startswith("lesion_") else name]
        if dist.kind != "lognormal":
            raise TwinError(f"population covariate for {name}: {dist.kind!r}; the reference prior needs a lognormal")
        free.append({"name": name, "median": float(dist.median), "sigma_log": float(dist.sd_log),
                     "source": "the generating population of this study (reference, not an estimate)"})
    return {"free": free, "error_scales": {g: GENERATING_ERROR_SCALE for g in calibration.ERROR_GROUPS}}


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


def patient_data(seed: int, part: int) -> tuple[dict, dict, dict, pd.DataFrame]:
    """Virtual patient `part` of the seeded population (module doc, items 1-3): (sampled
    covariate row, true model parameters, true therapy TIA {region: MBq*h}, rich noisy
    observation table of patient ``virtual-<part>``)."""
    row = population().sample(seed, [part]).to_dict("records")[0]
    params = patient_parameters(row)
    activity, true_tia = truth(params)
    rich = observation_table(f"virtual-{part}", activity, np.random.default_rng(np.random.SeedSequence([seed, part, 3])))
    return row, params, true_tia, rich


def patient_task(seed: int, error_scale: float | None, prior: Mapping | None, part: int) -> dict[str, pd.DataFrame]:
    """The tables of virtual patient `part` (see module doc; `prior`: the training
    cohort's population prior, `training_population_prior`, or None)."""
    row, params, true_tia, rich = patient_data(seed, part)
    designs = design_tables(rich)
    fit_seed = int(np.random.SeedSequence([seed, part, 2]).generate_state(1)[0] % (2 ** 31))

    estimates: dict[tuple[str, str], float] = {}
    seconds: dict[str, float] = {}
    interval_rows = []
    info = dict(patient_id=part, **{k: row[k] for k in row if k != "patient_id"})
    for method in TWIN_METHODS:
        tia, parameters, secs, diag = twin_fit(designs[method], params, fit_seed, error_scale, prior)
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


def manifest(seed: int, error_scale: float | None, training: int | None, generating: bool) -> dict:
    """What the run computes per patient (not how many patients: patient k is the same in
    a run of any size, so a rerun with a larger --patients extends the folder)."""
    if generating:
        prior, scales = "generating population (reference)", GENERATING_ERROR_SCALE
    elif training is not None:
        prior = f"population prior of a training cohort of {training} patients"
        scales = "training cohort's (population_prior.json)"
    else:
        prior = "calibration.priors defaults"
        scales = "published (calibration.priors)" if error_scale is None else error_scale
    return {"design_version": DESIGN_VERSION, "seed": seed, "tracers": list(TRACERS),
            "error_scale_median": scales, "prior": prior,
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
    ap.add_argument("--population-prior", type=int, default=None, metavar="M",
                    help="fit a data-rich training cohort of M other patients first (calibration.fit_cohort) "
                         "and use its population prior and error scales in every fit")
    ap.add_argument("--generating-prior", action="store_true",
                    help="reference run: every fit's prior is the generating population and the extra error "
                         "scales ~0 (the floor of this design, what an unlimited training cohort would give)")
    args = ap.parse_args(argv)
    if args.patients < 1:
        ap.error(f"--patients {args.patients}: expected an integer >= 1")
    if args.seed < 0:
        ap.error(f"--seed {args.seed}: expected an integer >= 0")

    if args.error_scale is not None and not args.error_scale > 0:
        ap.error(f"--error-scale {args.error_scale}: expected a positive number")
    if sum([args.population_prior is not None, args.error_scale is not None, args.generating_prior]) > 1:
        ap.error("--population-prior, --error-scale, --generating-prior: choose one")
    if args.population_prior is not None and args.population_prior < 2:
        ap.error(f"--population-prior {args.population_prior}: expected an integer >= 2 (a cohort)")
    folder = runner.prepare_folder(args.output, MANIFEST,
                                   manifest(args.seed, args.error_scale, args.population_prior,
                                            args.generating_prior),
                                   force=args.force)
    prior = generating_population_prior() if args.generating_prior else None
    if args.population_prior is not None:
        prior = training_population_prior(args.seed, args.population_prior, folder)
        print(f"population prior of {args.population_prior} training patients "
              f"({prior['fit_seconds']:.0f} s, EM {prior['em_iterations']} iterations): "
              + ", ".join(f"{p['name']} {p['median']:.3g} (sd_log {p['sigma_log']:.2f})" for p in prior["free"])
              + "; error scales " + ", ".join(f"{g} {v:.3f}" for g, v in prior["error_scales"].items()), flush=True)
    task = functools.partial(patient_task, args.seed, args.error_scale, prior)
    with runner.connect(workers=args.workers) as client:
        stats = runner.run_parts(task, range(args.patients), folder, TABLES, client=client, name="sparse-patient",
                                 progress=runner.print_progress("patients"))
    for k, msg in sorted(stats.failed.items()):
        print(f"patient {k} failed (a rerun retries it): {msg}", file=sys.stderr)
    if not (folder / "estimates").is_dir():
        raise TwinError(f"{folder}: no patient finished; nothing to summarise")
    # the first --patients patients (a folder extended earlier may hold more)
    estimates, intervals, patients = (
        t[t["patient_id"] < args.patients].reset_index(drop=True)
        for t in (runner.read_parts(folder, "estimates", ["patient_id", "region", "method"], run="sparse-TIA run"),
                  runner.read_parts(folder, "intervals", ["patient_id", "region", "method"], run="sparse-TIA run"),
                  runner.read_parts(folder, "patients", ["patient_id"], run="sparse-TIA run")))
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
