"""Synthetic study folders with a known truth (for the demo, tests and examples).

A phantom patient (`imaging.phantom`) is given patient-specific receptor densities
(the population values of `pbpk.psma_model` times exp(`spread` * N(0, 1)), seeded), a
68Ga-PSMA-11 PET (150 MBq, 2 nmol; scan at 1 h) and one 177Lu-PSMA-617 cycle a week later
(7.4 GBq, 90 nmol; SPECT at 24 h and 96 h).  The truth is simulated with the full
two-ligand model (both ligands in one solve, so PSMA-11/PSMA-617 competition is in it);
the images are simulated with partial-volume blur and Poisson noise, written as a study
folder (`twin.study.write_study`) and returned with the true parameters.

Each scan's study-file entry states the PSF FWHM the phantom blurred it with
(`imaging.phantom.patient.PET_FWHM_MM` / `SPECT_FWHM_MM`, passed explicitly to the
simulators, so the number written is the number used) as `resolution_fwhm_mm`, so
`twin.study.load_study` corrects the lesion activities for partial volume (sphere recovery
coefficient; organs uncorrected).  `partial_volume_correction=False` leaves the key out
(the uncorrected table, for comparisons).  Note that the phantom applies a Gaussian sampled
on its own voxel grid (`imaging.phantom.acquisition.blur`); when the phantom voxel is large
against the PSF (6 mm FWHM on 8 mm voxels: sigma 0.3 voxel) the image is blurred less than
the nominal FWHM says, and the correction then over-corrects that scan's lesions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pbpk
from imaging.phantom import make_patient
from imaging.phantom.patient import PET_FWHM_MM, SPECT_FWHM_MM

from .covariates import Covariates
from .study import write_study

PET_TRACER = "Ga-68-PSMA-11"
THERAPY_TRACER = "Lu-177-PSMA-617"
PET_ACTIVITY_MBQ, PET_LIGAND_NMOL, PET_SCAN_H = 150.0, 2.0, 1.0
THERAPY_ACTIVITY_MBQ, THERAPY_LIGAND_NMOL = 7400.0, 90.0  # the VISION trial's 7.4 GBq per cycle (Sartor 2021 NEJM 385:1091)
THERAPY_START_H = 168.0
SPECT_SCANS_H = (24.0, 96.0)
#: Regions whose receptor density differs from the population value in the synthetic truth
#: (the parameters the demo calibrates; the rest of the patient is the population model).
PERTURBED = ("kidneys", "salivary_glands", "lesion_1", "lesion_2")


@dataclass(frozen=True)
class SyntheticStudy:
    """folder: the written study; truth: parameter name -> true value; schedule: the
    administrations given; covariates: as written."""

    folder: Path
    truth: dict
    schedule: pbpk.Schedule
    covariates: Covariates


def observed_schedule() -> pbpk.Schedule:
    """PET at t = 0, first therapy cycle at `THERAPY_START_H`."""
    return pbpk.Schedule([
        pbpk.Administration(0.0, PET_ACTIVITY_MBQ, PET_LIGAND_NMOL, PET_TRACER),
        pbpk.Administration(THERAPY_START_H, THERAPY_ACTIVITY_MBQ, THERAPY_LIGAND_NMOL, THERAPY_TRACER)])


def true_parameters(model: pbpk.Model, seed: int, spread: float = 0.3) -> dict:
    """Receptor densities of `PERTURBED` regions: population value x exp(spread z)."""
    rng = np.random.default_rng([seed, 7])
    out = {}
    for region in PERTURBED:
        name = f"{region}_rden_nmol_l"
        if name in model.parameter_names:
            out[name] = float(model.parameter(name).value * np.exp(spread * rng.standard_normal()))
    return out


def make_study(folder, *, seed: int = 0, voxel_mm: float = 6.0, spread: float = 0.3,
               partial_volume_correction: bool = True, overwrite: bool = False) -> SyntheticStudy:
    """Write a synthetic PET + two-SPECT study into `folder` (see module doc); with
    `partial_volume_correction` each scan's resolution_fwhm_mm (the phantom's PSF FWHM,
    mm) is written, so `load_study` recovery-corrects the lesions."""
    shape = tuple(int(round(n * 4.0 / voxel_mm)) for n in (96, 72, 204))  # the phantom's default field of view
    patient = make_patient(seed=seed, shape=shape, voxel_mm=voxel_mm, patient_id=f"synthetic-{seed}")
    vols = patient.region_volumes_ml()
    lesions = tuple(vols[f"lesion_{k}"] for k in range(1, len(patient.lesions) + 1))
    covariates = Covariates(weight_kg=patient.patient_weight_kg, lesion_volumes_ml=lesions,
                            organ_volumes_ml={k: vols[k] for k in ("kidneys", "liver", "spleen", "salivary_glands")})
    model = pbpk.psma_model(tracers=[PET_TRACER, THERAPY_TRACER], **covariates.model_kwargs())
    truth = true_parameters(model, seed, spread)
    schedule = observed_schedule()
    times = np.array([PET_SCAN_H] + [THERAPY_START_H + t for t in SPECT_SCANS_H])
    traj = pbpk.simulate(model, schedule, times, truth, tia=False)

    def activities(nuclide, k):
        return {r: float(v[k]) for r, v in traj.activity_of(nuclide).items()}

    scans = [patient.simulate_pet(activities("Ga-68", 0), PET_SCAN_H, injected_activity_mbq=PET_ACTIVITY_MBQ,
                                  fwhm_mm=PET_FWHM_MM, seed=seed)]
    scans += [patient.simulate_spect(activities("Lu-177", k), t, injected_activity_mbq=THERAPY_ACTIVITY_MBQ,
                                     fwhm_mm=SPECT_FWHM_MM, seed=seed + k, scan_id=f"spect_{t:g}h")
              for k, t in enumerate(SPECT_SCANS_H, start=1)]
    fwhms = [PET_FWHM_MM] + [SPECT_FWHM_MM] * len(SPECT_SCANS_H)
    folder = write_study(folder, patient_id=patient.patient_id, covariates=covariates, schedule=schedule,
                         ct=patient.ct, labels=patient.labels, region_names=patient.region_names, scans=scans,
                         scan_administration=[1, 2, 2], overwrite=overwrite,
                         resolution_fwhm_mm=fwhms if partial_volume_correction else None)
    return SyntheticStudy(Path(folder), truth, schedule, covariates)
