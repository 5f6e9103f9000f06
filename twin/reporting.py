"""Assemble a `twin.report.ReportContent` from a calibrated `PatientTwin`.

`report_content(twin, therapy, ...)` collects everything the HTML report (twin.report)
shows: observed time-activity points on the schedule clock, posterior predictive activity
curves, the therapy prediction table, the dose map over CT, the what-if comparison, the
calibration diagnostics, the optimiser's constraints and the provenance.  It computes
nothing new: every number comes from the twin (`predict`, `what_if`, `dose_map`,
`activity_curves`, `posterior`); results computed already (e.g. by `twin demo`) can be
passed in to avoid computing them twice.

Schedule clock.  The time-activity table gives each row's time after *its* injection
(imaging and calibration convention, `calibration.observations`); the report plots the
schedule clock,

    t_clock = t_admin(tracer, cycle) + time_h,

with t_admin(tracer, c) the time of the c-th administration (1-based, time order) of the
row's tracer in the twin's schedule and c the row's ``cycle`` column (1 when absent).

`truth_comparison` sets a synthetic patient's true parameters against the posterior
prediction (the "known truth" check of the demo).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
from typing import Mapping

import numpy as np
import pandas as pd
import SimpleITK as sitk

from calibration.errors import TableError
from calibration.observations import schedule_clock_h
import imaging
import pbpk

from .errors import TwinError
from .outcomes import schedule_nuclide, simulate_outcomes
from .report import ReportContent

#: Packages whose versions the provenance lists (importlib.metadata distribution names).
VERSIONED_PACKAGES = ("rpt-twin", "jax", "diffrax", "numpyro", "SimpleITK", "icrp107-database")
DECAY_DATA = "ICRP-107 (icrp107-database)"
DOSE_METHODS = {
    "kernel": "voxel S-value kernel convolution in soft tissue (dose.kernels, MIRD Pamphlet 17 voxel schema; "
              "JAX FFT convolution)",
    "local": "local deposition of the non-penetrating energy (dose.local)",
    "density": "voxel S-value kernel convolution rescaled by CT mass density (Dieudonne et al. J Nucl Med "
               "2013;54:236)",
    "multi_kernel": "one voxel S-value kernel per CT tissue class (dose.density, Schneider 2000 classes)",
    "reference": "heterogeneity-aware superposition with range-scaled kernels (dose.reference)",
    "corrected": "density-scaled kernel dose corrected by a trained 3D CNN (dose.corrector)",
}


# ----------------------------------------------------------------------------- observed points
def observed_on_schedule_clock(table: pd.DataFrame, schedule) -> pd.DataFrame:
    """Observed rows (region, modality, nuclide, time_h, activity_mbq) with time_h on the
    schedule clock: t_admin(tracer, cycle) + time_h (module doc).

    table: the twin's time-activity table (columns region, modality, tracer, time_h,
    activity_mbq; optional cycle (1-based, default 1) and nuclide);
    schedule: a `pbpk.Schedule` holding the administrations of every tracer in the table.
    Raises TwinError naming the row for an unknown tracer, a tracer the schedule never
    gives, or a cycle the schedule does not have.
    """
    if not isinstance(table, pd.DataFrame):
        raise TwinError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in ("region", "modality", "tracer", "time_h", "activity_mbq") if c not in table.columns]
    if missing:
        raise TwinError(f"table: missing column(s) {missing} for the observed points")
    schedule = pbpk.schedule.as_schedule(schedule)
    cycles = table["cycle"].to_numpy() if "cycle" in table.columns else np.ones(len(table), dtype=int)
    for i, cycle in enumerate(cycles):
        cycle = cycle.item() if isinstance(cycle, np.generic) else cycle
        if isinstance(cycle, bool) or not isinstance(cycle, (int, float)) or not float(cycle).is_integer():
            raise TwinError(f"table row {i}: cycle {cycle!r}; expected a whole administration number (1-based)")
    try:
        clock, nuclides = schedule_clock_h(table["tracer"].astype(str), [int(c) for c in cycles],
                                           table["time_h"].to_numpy(float), schedule)
    except TableError as err:
        raise TwinError(f"observed points: {err}") from None
    out = pd.DataFrame({"region": table["region"].astype(str).to_numpy(),
                        "modality": table["modality"].astype(str).to_numpy(),
                        "nuclide": nuclides, "time_h": clock,
                        "activity_mbq": table["activity_mbq"].to_numpy(float)})
    return out


# ----------------------------------------------------------------------------- provenance
def package_versions(names=VERSIONED_PACKAGES) -> dict[str, str]:
    """Distribution name -> installed version (importlib.metadata), "not installed" if absent."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _model_line(model: pbpk.Model) -> str:
    return (f"{model.name}: {len(model.species)} species, {len(model.reactions)} reactions, "
            f"{len(model.compartments)} compartments, {len(model.parameters)} parameters; "
            f"ligands {', '.join(model.ligands)}; nuclides {', '.join(model.nuclides)}")


def provenance(twin, therapy, *, dose_method: str | None = None,
               generated_utc: _dt.datetime | None = None) -> dict[str, str]:
    """Provenance entries (str -> str): calibration and prediction models, free parameters
    with their priors and sources, calibration method, decay data, dose method,
    radiobiology, package versions and the generation time (UTC)."""
    post = twin._posterior()
    therapy = pbpk.schedule.as_schedule(therapy)
    method = dose_method or twin.dose_method
    prediction = twin.prediction_model(therapy)
    operator = twin.dose_operator(schedule_nuclide(therapy), prediction)
    free = "; ".join(f"{f.name}: log-normal prior, median {f.median:.4g}, sigma_log {f.sigma_log:.3g} "
                     f"({f.source or 'no source given'})" for f in post.problem.free)
    n_draws = int(np.asarray(post.samples["theta"]).reshape(-1, len(post.free_names)).shape[0])
    radiobiology = "; ".join(f"{r}: alpha/beta {lq.alpha_beta_gy:g} Gy, repair half-time {lq.repair_half_time_h:g} h "
                             f"({lq.source})" for r, lq in twin._radiobiology_for(operator.regions).items())
    def ligand(a):
        return "carrier-free" if a.ligand_nmol is None else f"{a.ligand_nmol:g} nmol"

    therapy_text = "; ".join(f"{a.activity_mbq:g} MBq {a.tracer.name} ({ligand(a)}) at {a.time_h:g} h" for a in therapy)
    out = {
        "patient": twin.patient_id,
        "calibration model": _model_line(twin.model),
        "prediction model (therapy)": _model_line(prediction),
        "free parameters and priors": free,
        "calibration": f"{post.method}, {n_draws} posterior draws"
                       + ("; ligands fitted on separate restricted models" if post.problem.segments else ""),
        "observed schedule": "; ".join(f"{a.activity_mbq:g} MBq {a.tracer.name} at {a.time_h:g} h"
                                       for a in twin.schedule),
        "therapy schedule": therapy_text,
        "decay data": DECAY_DATA,
        "dose method": f"{method}: {DOSE_METHODS.get(method, method)}; region doses by the twin's dose operator "
                       "(twin.maps: one convolution per source region)",
        "radiobiology (BED)": radiobiology or "none (no region has LQ parameters)",
    }
    out.update({f"version {k}": v for k, v in package_versions().items()})
    out["generated"] = (generated_utc or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M:%S UTC")
    return out


def optimisation_provenance(result) -> dict[str, str]:
    """Provenance lines of a `twin.optimise.OptimisationResult` (the chosen schedule)."""
    return {"optimiser choice": (f"{result.n_cycles} x {result.activity_mbq:.4g} MBq"
                                 f"{'' if result.ligand_nmol is None else f', {result.ligand_nmol:g} nmol'}"
                                 f"{'' if result.interval_h is None else f', every {result.interval_h:g} h'}; "
                                 f"target {result.target_region} median BED {result.target_bed_gy_median:.4g} Gy; "
                                 f"binding constraint: {result.binding or 'none (activity range)'}")}


# ----------------------------------------------------------------------------- tables
#: Negative values down to this fraction of the largest value are numerical round-off (float32
#: FFT convolution for dose maps, ODE solver tolerance for activity curves) and are set to 0.
ROUNDOFF_FRACTION = 1e-5


def without_roundoff(values, what: str) -> np.ndarray:
    """`values` with round-off negatives removed: values in [-ROUNDOFF_FRACTION * max, 0)
    become 0; NaN/inf or a more negative value raises TwinError naming `what`."""
    values = np.asarray(values)
    if not np.all(np.isfinite(values)):
        raise TwinError(f"{what}: contains NaN or inf")
    if values.size == 0:
        return values
    floor = -ROUNDOFF_FRACTION * max(float(values.max()), 0.0)
    if float(values.min()) < floor:
        raise TwinError(f"{what}: minimum {float(values.min())!r} is below the round-off floor {floor!r}")
    return np.maximum(values, values.dtype.type(0))


def dose_array_gy(image: sitk.Image) -> np.ndarray:
    """The dose map as a float32 (z, y, x) array, round-off removed (`without_roundoff`)."""
    return without_roundoff(sitk.GetArrayFromImage(image).astype(np.float32), "dose map (Gy)")


def curves_without_roundoff(curves: pd.DataFrame) -> pd.DataFrame:
    """A copy of `twin.activity_curves` output with round-off negatives removed per region
    and nuclide (`without_roundoff` on each activity_mbq_* column of each curve)."""
    out = curves.copy()
    columns = [c for c in out.columns if c.startswith("activity_mbq_")]
    for key, rows in out.groupby(["region", "nuclide"]).groups.items():
        for c in columns:
            out.loc[rows, c] = without_roundoff(out.loc[rows, c].to_numpy(float), f"activity curve {key} {c}")
    return out


def _anatomy(twin) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    if twin.labels is None or twin.ct is None:
        raise TwinError(f"twin of patient {twin.patient_id!r} has no label map or CT; the report's dose slices "
                        "need both (build the twin from a study folder)")
    ct = twin.ct.image if isinstance(twin.ct, imaging.Scan) else twin.ct
    labels = sitk.GetArrayFromImage(twin.labels)
    return (labels.astype(np.int64, copy=False), sitk.GetArrayFromImage(ct).astype(np.float32),
            tuple(float(s) for s in twin.labels.GetSpacing()))


def report_content(twin, therapy, *, schedules: Mapping | None = None, optimisation=None, max_draws: int = 50,
                   n_points: int = 60, predictions: pd.DataFrame | None = None,
                   what_if: pd.DataFrame | None = None, dose_map: sitk.Image | None = None,
                   extra_provenance: Mapping[str, str] | None = None) -> ReportContent:
    """The report of `twin` for the therapy schedule `therapy` (see module doc).

    schedules: name -> Schedule for the comparison section (`twin.what_if`), or None;
    optimisation: a `twin.optimise.OptimisationResult` (its constraints table), or None;
    max_draws: posterior draws per prediction; n_points: curve points per injection;
    predictions / what_if / dose_map: results already computed with the same twin and
    schedules (`twin.predict(therapy)`, `twin.what_if(schedules)`, `twin.dose_map(therapy)`),
    used instead of recomputing them.
    """
    therapy = pbpk.schedule.as_schedule(therapy)
    post = twin._posterior()  # NotCalibratedError before any work
    labels, ct_hu, spacing = _anatomy(twin)
    observed = observed_on_schedule_clock(twin.table, twin.schedule)
    predicted = curves_without_roundoff(twin.activity_curves(n_points, max_draws=max_draws))
    if predictions is None:
        predictions = twin.predict(therapy, max_draws=max_draws)
    if schedules is not None and what_if is None:
        what_if = twin.what_if(schedules, max_draws=max_draws)
    if dose_map is None:
        dose_map = twin.dose_map(therapy, max_draws=max_draws)
    dose_gy = dose_array_gy(dose_map)
    prov = provenance(twin, therapy)
    constraints = None
    if optimisation is not None:
        constraints = optimisation.constraints.copy()
        prov.update(optimisation_provenance(optimisation))
    prov.update(dict(extra_provenance or {}))
    return ReportContent(
        patient_id=twin.patient_id, observed=observed, predicted=predicted,
        predictions=predictions.drop(columns=["schedule"], errors="ignore"),
        dose_gy=dose_gy, ct_hu=ct_hu, labels=labels, region_names=dict(twin.region_names), spacing_mm=spacing,
        schedules=what_if,
        diagnostics=post.summary(), problems=list(post.problems()), provenance=prov, constraints=constraints)


# ----------------------------------------------------------------------------- known truth
def truth_comparison(twin, truth: Mapping[str, float], therapy, predictions: pd.DataFrame) -> pd.DataFrame:
    """True versus predicted TIA and mean dose of `therapy` for a synthetic patient.

    The truth is `truth` (parameter name -> true value, e.g. `SyntheticStudy.truth`)
    simulated with the twin's prediction model and dose operator (`twin.outcomes.
    simulate_outcomes` with the single draw theta = the true values, every other parameter
    at the model's value).  predictions: `twin.predict(therapy)` (columns region,
    tia_mbq_h_q05/q50/q95, dose_gy_q05/q50/q95).  Returns one row per dose region: region,
    tia_true_mbq_h, tia_mbq_h_q05/q50/q95, tia_in_90, dose_true_gy, dose_gy_q05/q50/q95,
    dose_in_90 (truth inside the 90 % interval).
    """
    therapy = pbpk.schedule.as_schedule(therapy)
    model = twin.prediction_model(therapy)
    names = tuple(truth)
    unknown = [n for n in names if n not in model.parameter_names]
    if unknown:
        raise TwinError(f"truth: parameters {unknown} are not in the prediction model {model.name!r}")
    operator = twin.dose_operator(schedule_nuclide(therapy), model)
    theta = np.array([[float(truth[n]) for n in names]])
    out = simulate_outcomes(model, lambda th: {n: th[k] for k, n in enumerate(names)}, theta, {"truth": therapy},
                            operator, {}, options=twin._posterior().problem.options)
    if out.failed_fraction > 0:
        raise TwinError("truth: the simulation of the true parameters failed")
    tia_index = {r: j for j, r in enumerate(out.model_regions)}
    pred = predictions.set_index("region")
    rows = []
    for j, region in enumerate(out.dose_regions):
        if region not in pred.index:
            raise TwinError(f"predictions: no row for dose region {region!r}")
        p = pred.loc[region]
        row = {"region": region, "tia_true_mbq_h": float(out.tia_mbq_h[0, 0, tia_index[region]])}
        row.update({f"tia_mbq_h_{q}": float(p[f"tia_mbq_h_{q}"]) for q in ("q05", "q50", "q95")})
        row["tia_in_90"] = bool(row["tia_mbq_h_q05"] <= row["tia_true_mbq_h"] <= row["tia_mbq_h_q95"])
        row["dose_true_gy"] = float(out.dose_gy[0, 0, j])
        row.update({f"dose_gy_{q}": float(p[f"dose_gy_{q}"]) for q in ("q05", "q50", "q95")})
        row["dose_in_90"] = bool(row["dose_gy_q05"] <= row["dose_true_gy"] <= row["dose_gy_q95"])
        rows.append(row)
    return pd.DataFrame(rows)
