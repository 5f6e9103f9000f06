"""`PatientTwin`: one patient's PBPK model, data, posterior, anatomy and dose operator.

    twin = PatientTwin.from_study("study_folder")          # images -> table, covariates
    twin.calibrate(method="laplace")                        # or "nuts", "svi"
    twin.predict(therapy)                                   # region TIA, dose, BED with intervals
    twin.what_if({"4 x 7.4 GBq": s1, "6 x 6 GBq": s2})      # many schedules, vectorised
    twin.dose_map(therapy)                                  # voxel dose (SimpleITK, Gy)

Models.  The twin calibrates `model` (it holds every tracer observed: PET and therapy).
Predictions of a therapy schedule run on `prediction_model(schedule)`: with a
`model_factory` (twins built from covariates: `pbpk.psma_model` with the same covariates
and only the schedule's tracers) a smaller model with the same parameter names, else
`model` itself.  Both share the patient's parameters, so each posterior draw carries over.

Free parameters.  By default the receptor density `<region>_rden_nmol_l` of every
observed region the model has one for (`default_free`); all other parameters stay at the
model's population values.  Pass `free=` (names, `calibration.FreeParameter`s or a
mapping name -> (median, sigma_log)) for another set.

PET-only mode: calibrate on a table holding only the PET; the priors are the population
prior, so `predict(therapy)` is the pre-therapy dose prediction.  `add_observations`
later appends SPECT rows (and the therapy administrations) and the next `calibrate`
updates the twin.

Dose: region mean doses come from `maps.DoseOperator` (one kernel convolution per source
region, then matrix products for every draw and schedule); voxel maps from the median
region TIA spread by the latest image's intra-region shape (`maps`).  A twin without a
label map doses every region by local absorption of the non-penetrating energy.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import SimpleITK as sitk

import calibration
import dose
import imaging
import pbpk
from dose import metrics

from .covariates import Covariates
from .errors import NotCalibratedError, TwinError
from .maps import NOT_PLACED, DoseOperator, Placement, dose_operator, place_regions, self_dose_operator, tia_map
from .outcomes import Outcomes, schedule_nuclide, simulate_outcomes

DEFAULT_MAX_DRAWS = 100
#: dose methods of the region dose operator (linear in the TIA map): all but "corrected"
OPERATOR_METHODS = tuple(m for m in dose.absorbed.METHODS if m != "corrected")


def default_free(model: pbpk.Model, table: pd.DataFrame) -> tuple[str, ...]:
    """Receptor densities of the observed regions that the model parameterises."""
    names = {p.name for p in model.parameters}
    observed = [r for r in dict.fromkeys(table["region"]) if f"{r}_rden_nmol_l" in names]
    if not observed:
        raise TwinError(f"no observed region {sorted(set(table['region']))} has a receptor density parameter; "
                        "pass free=[...]")
    return tuple(f"{r}_rden_nmol_l" for r in observed)


def default_radiobiology(regions: Sequence[str]) -> dict[str, metrics.Radiobiology]:
    """LQ parameters per dose region from `dose.metrics.RADIOBIOLOGY_DEFAULTS`: kidneys as
    kidneys; lesions and tumour_rest as tumour; others only if listed there."""
    out = {}
    for r in regions:
        key = "tumour" if (r.startswith("lesion") or r.startswith("tumour")) else r
        if key in metrics.RADIOBIOLOGY_DEFAULTS:
            out[r] = metrics.RADIOBIOLOGY_DEFAULTS[key]
    return out


class PatientTwin:
    """A patient digital twin (see module docstring).

    model: the calibration model (pbpk.Model holding every tracer of `schedule`);
    schedule: the administrations given so far (schedule clock, h);
    table: the time-activity table (imaging.time_activity layout; rows of regions the
      model does not know are dropped, and so are "urine" (bladder contents depend on
      voiding, which the model does not describe) and "whole_body");
    labels, region_names, ct: anatomy on one grid (optional; CT in HU);
    activity_image: the most recent emission image (its intra-region shape spreads TIA);
    model_factory: tracers -> model for predictions (see module doc);
    covariates: kept for provenance and saving; free: the free parameters.
    """

    def __init__(self, model: pbpk.Model, schedule, table: pd.DataFrame, *, patient_id: str | None = None,
                 covariates: Covariates | None = None, model_factory: Callable[[Sequence[str]], pbpk.Model] | None = None,
                 labels: sitk.Image | None = None, region_names: Mapping[int, str] | None = None,
                 ct: imaging.Scan | None = None, activity_image=None, free=None,
                 radiobiology: Mapping[str, metrics.Radiobiology] | None = None, dose_method: str = "kernel"):
        if not isinstance(model, pbpk.Model):
            raise TwinError(f"model: expected a pbpk.Model, got {type(model).__name__}")
        self.model = model
        self.schedule = pbpk.schedule.as_schedule(schedule)
        self.table = self._model_rows(table)
        ids = self.table["patient"].astype(str).unique()
        self.patient_id = str(patient_id if patient_id is not None else ids[0])
        self.covariates = covariates
        self.model_factory = model_factory
        if (labels is None) != (region_names is None):
            raise TwinError("labels and region_names: give both (an anatomy) or neither")
        self.labels = labels
        self.region_names = dict(region_names or {})
        self.ct = ct
        self.activity_image = activity_image
        self.free = tuple(free) if free is not None and not isinstance(free, Mapping) else free
        if self.free is None:
            self.free = default_free(model, self.table)
        self._radiobiology = dict(radiobiology) if radiobiology is not None else None
        if dose_method not in OPERATOR_METHODS:
            raise TwinError(f"dose_method: {dose_method!r}; expected one of {OPERATOR_METHODS} (region doses come "
                            "from one convolution per source region, so the method must be linear in the TIA map; "
                            "the CNN-corrected dose is for voxel maps: dose_map(..., method='corrected', corrector=...))")
        self.dose_method = dose_method
        self.posterior: calibration.Posterior | None = None
        self._models: dict[tuple[str, ...], pbpk.Model] = {}
        self._operators: dict[tuple, DoseOperator] = {}
        self._placement: Placement | None = None
        self._solves: dict = {}  # jitted batched solves (twin.outcomes cache)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_covariates(cls, table: pd.DataFrame, schedule, covariates: Covariates = Covariates(), *,
                        therapy_tracers: Sequence[str] = ("Lu-177-PSMA-617",), **kwargs) -> "PatientTwin":
        """A twin of the PSMA model (`pbpk.psma_model`) built from covariates and a
        time-activity table; `therapy_tracers` are added to the schedule's tracers so the
        calibrated twin can predict therapy before it is given (PET-only mode)."""
        schedule = pbpk.schedule.as_schedule(schedule)
        tracers = tuple(dict.fromkeys([t.name for t in schedule.tracers] + list(therapy_tracers)))

        def factory(names, covariates=covariates):
            return pbpk.psma_model(tracers=tuple(names), **covariates.model_kwargs())

        return cls(factory(tracers), schedule, table, covariates=covariates, model_factory=factory, **kwargs)

    @classmethod
    def from_study(cls, study, **kwargs) -> "PatientTwin":
        """A twin of a study folder (`twin.study.load_study`) or a loaded `Study`: PSMA
        model from its covariates, its table, label map, CT and latest emission scan."""
        from .study import Study, load_study

        if not isinstance(study, Study):
            study = load_study(study)
        latest = max(zip(study.scans, study.scan_administration),
                     key=lambda sa: list(study.schedule)[sa[1] - 1].time_h + sa[0].time_h)[0]
        ct = imaging.resample_to(study.ct, study.labels)
        return cls.from_covariates(study.table, study.schedule, study.covariates, patient_id=study.patient_id,
                                   labels=study.labels, region_names=study.region_names, ct=ct,
                                   activity_image=latest, **kwargs)

    def _model_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        if not isinstance(table, pd.DataFrame) or "region" not in table.columns:
            raise TwinError("table: expected a time-activity DataFrame with a 'region' column")
        keep = [r for r in self.model.region_names if r not in NOT_PLACED]  # bladder contents depend on voiding
        rows = table[table["region"].isin(keep)].reset_index(drop=True)
        if rows.empty:
            raise TwinError(f"table: no row names a model region {list(self.model.region_names)}; "
                            f"it has {sorted(set(table['region']))}")
        return rows

    # ------------------------------------------------------------------ calibration
    def calibrate(self, method: str = "laplace", *, seed: int = 0, **fit_kwargs) -> calibration.Posterior:
        """Fit the free parameters to the table (`calibration.fit`); the posterior is kept."""
        self._solves.clear()  # the jitted solves close over the previous posterior's parameter names
        self.posterior = calibration.fit(self.model, self.table, self.schedule, method, free=self.free,
                                         patient=None, seed=seed, **fit_kwargs)
        return self.posterior

    def add_observations(self, table: pd.DataFrame, schedule=None) -> None:
        """Append time-activity rows (e.g. a therapy SPECT) and, if given, the schedule
        that now holds their administrations.  The posterior is cleared: calibrate again."""
        if schedule is not None:
            schedule = pbpk.schedule.as_schedule(schedule)
            missing = [t.name for t in schedule.tracers if t.nuclide not in self.model.nuclides]
            if missing:
                raise TwinError(f"schedule: tracers {missing} are not in the twin's model; build the twin with "
                                "therapy_tracers including them")
            self.schedule = schedule
        self.table = self._model_rows(pd.concat([self.table, table], ignore_index=True))
        self.posterior = None

    def _posterior(self) -> calibration.Posterior:
        if self.posterior is None:
            raise NotCalibratedError(f"twin of patient {self.patient_id!r} is not calibrated; call calibrate()")
        return self.posterior

    # ------------------------------------------------------------------ models and dose operators
    def prediction_model(self, schedule) -> pbpk.Model:
        """The model predictions of `schedule` run on (see module doc)."""
        if self.model_factory is None:
            return self.model
        tracers = tuple(t.name for t in pbpk.schedule.as_schedule(schedule).tracers)
        if tracers not in self._models:
            model = self.model_factory(tracers)
            names = {p.name for p in model.parameters}
            missing = [f for f in self._posterior().free_names if f not in names]
            if missing:
                raise TwinError(f"prediction model for {tracers} lacks the free parameters {missing}")
            self._models[tracers] = model
        return self._models[tracers]

    def _radiobiology_for(self, regions) -> dict:
        return self._radiobiology if self._radiobiology is not None else default_radiobiology(regions)

    def placement(self) -> Placement | None:
        """Model regions on the label map (None without anatomy)."""
        if self.labels is None:
            return None
        if self._placement is None:
            self._placement = place_regions(self.model.region_names, self.labels, self.region_names,
                                            self.activity_image)
        return self._placement

    def dose_operator(self, nuclide: str, model: pbpk.Model | None = None) -> DoseOperator:
        """Region dose per unit region TIA for `nuclide` (cached; see `twin.maps`)."""
        model = model or self.model
        key = (nuclide, model.region_names)
        if key not in self._operators:
            volumes = pbpk.region_volumes_ml(model)
            placement = self.placement()
            if placement is None:
                self._operators[key] = self_dose_operator(model.region_names, nuclide, volumes)
            else:
                if placement.model_regions != model.region_names:
                    placement = place_regions(model.region_names, self.labels, self.region_names, self.activity_image)
                ct = None if self.ct is None or self.dose_method in ("kernel", "local", "multi_kernel") else \
                    sitk.GetArrayFromImage(self.ct.image if isinstance(self.ct, imaging.Scan) else self.ct)
                self._operators[key] = dose_operator(placement, nuclide, self.voxel_mm_zyx, volumes,
                                                     method=self.dose_method, ct_hu=ct)
        return self._operators[key]

    @property
    def voxel_mm_zyx(self) -> tuple[float, float, float]:
        if self.labels is None:
            raise TwinError("this twin has no label map (anatomy); voxel maps need one")
        return tuple(float(s) for s in reversed(self.labels.GetSpacing()))

    # ------------------------------------------------------------------ predictions
    def outcomes(self, schedules: Mapping[str, pbpk.Schedule], *, max_draws: int = DEFAULT_MAX_DRAWS,
                 seed: int = 0) -> Outcomes:
        """Per-draw TIA, dose and BED of every named schedule (`twin.outcomes`), all
        schedules of one structure in one vectorised solve."""
        post = self._posterior()
        if not isinstance(schedules, Mapping) or not schedules:
            raise TwinError("schedules: expected a non-empty mapping name -> pbpk.Schedule")
        scheds = {str(k): pbpk.schedule.as_schedule(v) for k, v in schedules.items()}
        nuclides = {schedule_nuclide(s) for s in scheds.values()}
        tracers = {tuple(t.name for t in s.tracers) for s in scheds.values()}
        if len(nuclides) != 1 or len(tracers) != 1:
            raise TwinError(f"schedules: expected one therapy tracer for all schedules, got {sorted(tracers)}")
        first = next(iter(scheds.values()))
        model = self.prediction_model(first)
        operator = self.dose_operator(nuclides.pop(), model)
        return simulate_outcomes(model, post.problem.parameters, post.parameter_draws(max_draws, seed), scheds,
                                 operator, self._radiobiology_for(operator.regions), options=post.problem.options,
                                 cache=self._solves)

    def predict(self, schedule, **kwargs) -> pd.DataFrame:
        """Region TIA (MBq*h), mean absorbed dose (Gy) and BED (Gy) of `schedule`: mean,
        median and 90 % credible interval per region (BED NaN where the region has no LQ
        parameters)."""
        return self.outcomes({"schedule": schedule}, **kwargs).summary().drop(columns="schedule")

    def what_if(self, schedules: Mapping[str, pbpk.Schedule], **kwargs) -> pd.DataFrame:
        """`predict` for many schedules at once: one row per (schedule, region)."""
        return self.outcomes(schedules, **kwargs).summary()

    def activity_curves(self, n_points: int = 60, *, max_draws: int = 50, seed: int = 0,
                        quantiles=(0.05, 0.5, 0.95)) -> pd.DataFrame:
        """Posterior predictive activity (MBq) of every region over the observed schedule:
        long table region, nuclide, time_h (schedule clock, h), activity_mbq_q05/q50/q95.
        Each ligand's administrations run on its own prediction model (as calibration
        with separate ligands does); times are geometric after each of its injections, up
        to 1.5 x the last observation time after it."""
        post = self._posterior()
        thetas = jnp.asarray(post.parameter_draws(max_draws, seed))
        frames = []
        obs_end = self.table["time_h"].max()
        for ligand in dict.fromkeys(t.ligand.name for t in self.schedule.tracers):
            sub = pbpk.Schedule([a for a in self.schedule if a.tracer.ligand.name == ligand])
            model = self.prediction_model(sub)
            times = np.unique(np.concatenate([a.time_h + np.geomspace(0.05, 1.5 * obs_end, n_points) for a in sub]))

            def one(theta, model=model, sub=sub, times=times):
                traj = pbpk.simulate(model, sub, times, post.problem.parameters(theta), tia=False,
                                     options=post.problem.options, check=False)
                return traj.region_activity_mbq, traj.solver_ok

            activity, ok = jax.jit(jax.vmap(one))(thetas)
            activity = np.maximum(np.asarray(activity)[np.asarray(ok)], 0.0)  # solver round-off (~1e-20 MBq)
            given = {a.tracer.nuclide for a in sub}
            q = np.quantile(activity, quantiles, axis=0)  # (n_q, nuclide, region, time)
            for i, nuc in enumerate(model.nuclides):
                if nuc not in given:
                    continue
                for j, region in enumerate(model.region_names):
                    if region in NOT_PLACED:
                        continue
                    frame = pd.DataFrame({"region": region, "nuclide": nuc, "time_h": times})
                    for n, qq in enumerate(quantiles):
                        frame[f"activity_mbq_q{round(qq * 100):02d}"] = q[n, i, j]
                    frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def optimise(self, make_schedule: Callable | None = None, *, activities_mbq=(2000.0, 12000.0),
                 n_cycles=(4, 6), tracer: str = "Lu-177-PSMA-617", max_draws: int = DEFAULT_MAX_DRAWS,
                 seed: int = 0, **kwargs):
        """Per-cycle activity (and optionally ligand amount and interval: `ligand_nmol=`,
        `interval_h=` value lists) maximising lesion BED under organ-at-risk limits held
        with posterior probability `probability` (`twin.optimise.optimise_schedule`; limits
        default to `twin.limits.DEFAULT_LIMITS`).  Default schedules: `n` cycles of
        `tracer` every 6 weeks (1008 h) with 90 nmol ligand (VISION, Sartor 2021 NEJM 385:1091)."""
        from .optimise import optimise_schedule

        if make_schedule is None:
            def make_schedule(activity_mbq, ligand_nmol, interval_h, n):
                return pbpk.Schedule.cycles(int(n), activity_mbq=float(activity_mbq),
                                            ligand_nmol=90.0 if ligand_nmol is None else float(ligand_nmol),
                                            interval_h=1008.0 if interval_h is None else float(interval_h),
                                            tracer=tracer)

        return optimise_schedule(lambda schedules: self.outcomes(schedules, max_draws=max_draws, seed=seed),
                                 make_schedule, activities_mbq=activities_mbq, n_cycles=n_cycles, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save(self, folder, *, overwrite: bool = False):
        """Write the twin to `folder` (JSON, CSV, NPZ, NIfTI; no pickle; atomic).  See `twin.persist`."""
        from .persist import save_twin

        return save_twin(self, folder, overwrite=overwrite)

    @classmethod
    def load(cls, folder) -> "PatientTwin":
        """Read a twin written by `save` (its posterior included)."""
        from .persist import load_twin

        return load_twin(folder)

    def region_tia(self, schedule, *, statistic: str = "median", **kwargs) -> dict[str, float]:
        """Model region -> TIA (MBq*h) of `schedule` (posterior "median" or "mean")."""
        out = self.outcomes({"s": schedule}, **kwargs)
        values = out.tia_mbq_h[:, 0]
        if statistic not in ("median", "mean"):
            raise TwinError(f"statistic: {statistic!r}; expected 'median' or 'mean'")
        central = np.median(values, axis=0) if statistic == "median" else values.mean(axis=0)
        return dict(zip(out.model_regions, (float(v) for v in central)))

    def tia_map(self, schedule, **kwargs) -> sitk.Image:
        """Voxel TIA map (MBq*h per voxel, float64) on the label grid (`twin.maps`)."""
        placement = self.placement()
        if placement is None:
            raise TwinError("this twin has no label map (anatomy); voxel maps need one")
        model = self.prediction_model(schedule)
        tia = self.region_tia(schedule, **kwargs)
        if placement.model_regions != model.region_names:
            placement = place_regions(model.region_names, self.labels, self.region_names, self.activity_image)
        image = sitk.GetImageFromArray(tia_map(placement, [tia[r] for r in model.region_names]))
        image.CopyInformation(self.labels)
        return image

    def dose_map(self, schedule, method: str | None = None, *, corrector=None, kernel_voxel_mm=None,
                 **kwargs) -> sitk.Image:
        """Voxel absorbed dose (Gy, float32) of `schedule` from `tia_map` with
        `dose.absorbed_dose` (`method`: the twin's dose_method by default; "corrected"
        needs `corrector`, a `dose.corrector.Corrector`, a weights path or "default" for
        the shipped weights, and the CT).  kernel_voxel_mm: compute the dose on that
        voxel grid (e.g. the corrector's training voxel size) and resample it back to the
        label grid."""
        method = method or self.dose_method
        tia = self.tia_map(schedule, **kwargs)
        ct = None
        if self.ct is not None and method in ("density", "multi_kernel", "reference", "corrected"):
            ct = imaging.resample_to(self.ct, self.labels)
            ct = ct.image if isinstance(ct, imaging.Scan) else ct
        out = dose.absorbed_dose(tia, None, schedule_nuclide(pbpk.schedule.as_schedule(schedule)), method=method,
                                 ct_hu=ct, tia_units="MBq*h", corrector=corrector, kernel_voxel_mm=kernel_voxel_mm)
        values = sitk.GetArrayFromImage(out)
        if values.min() < -1e-5 * max(values.max(), 0.0):
            raise TwinError(f"dose map: negative dose {values.min()} Gy beyond FFT round-off")
        clipped = sitk.GetImageFromArray(np.maximum(values, 0.0))  # float32 FFT round-off (~1e-7 of the maximum)
        clipped.CopyInformation(out)
        for key in out.GetMetaDataKeys():  # method and corrector provenance (dose.absorbed_dose)
            clipped.SetMetaData(key, out.GetMetaData(key))
        return clipped
