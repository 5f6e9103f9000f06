"""`SyntheticPatient` and `make_patient`: CT, labels, activity maps, simulated PET/SPECT.

Defaults of the simulated scanners (override any of them per call):

* SPECT (177Lu): 4.8 mm voxels (128 x 128 matrix over ~614 mm, a common dual-head
  reconstruction grid; the MRTDosimetry multicentre 177Lu protocol uses a 128 matrix,
  medium-energy collimators, 208 keV 20 % window, 120 projections: EJNMMI Phys 2021,
  doi:10.1186/s40658-021-00397-0, Table 2); PSF FWHM 11 mm, the middle of the 10-12 mm
  reconstructed 177Lu SPECT resolution that issue 3 specifies (MIRD Pamphlet No. 26,
  Ljungberg M et al. J Nucl Med 2016;57:151, discusses it; recalled, figure not re-read);
  calibration 4.5 cps/MBq, the measured 177Lu calibration factor for a large VOI in water
  (4.50 +- 0.80 cps/MBq, 113 + 208 keV, Physica Medica 2019, LMU Munich open-access record
  epub.ub.uni-muenchen.de/63442); duration 1200 s, a modelling choice (60 views per head x
  20 s).  Voxels in counts (units CNTS), no decay correction (NONE).
* PET (68Ga): 4 mm voxels; PSF FWHM 6 mm (the 5-6 mm of issue 3: clinical whole-body PET
  with post-filter; 68Ga positron range adds ~1 mm); 180 s per bed position (modelling
  choice); voxels in Bq/mL, decay corrected to acquisition START (the DICOM convention for
  PET).  Noise: counts lambda = S_NEC * A * tau with an image-domain noise-equivalent
  count sensitivity S_NEC = 1000 cps/MBq: a modelling choice, set so that a 150 MBq
  68Ga-PSMA scan at 1 h (liver SUV 5, 75 kg) has a liver voxel coefficient of variation
  of about 13 % (tested), under the 15 % liver COV limit of the EANM FDG PET/CT guideline
  v2.0 (Boellaard R et al., Eur J Nucl Med Mol Imaging 2015;42:328; recalled).

Voxel values of the PET (`decay_correction`, with tau the decay-weighted duration):
    NONE:  N / (S_NEC T)   (frame-average activity),
    START: N / (S_NEC tau) (activity at acquisition start),
    ADMIN: START * exp(lambda t)  (activity at administration),
all / voxel volume (mL) * 1e6 Bq/MBq.  The SPECT counts N ~ Poisson(S A tau) convert
back with A = N / (S T) (frame average), within lambda T / 2 (0.07 % for 177Lu, 20 min) of
the activity at acquisition start.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid

from ..atomic import atomic_folder
from ..dicom import write_dicom_series
from ..errors import ImagingError
from ..nifti import write_nifti
from ..scan import DECAY_CORRECTIONS, Scan
from . import acquisition as acq
from . import activity as act
from . import anatomy

DEFAULT_SHAPE_XYZ = (96, 72, 204)  # 384 x 288 x 816 mm at 4 mm: head and trunk, 1.41 M voxels
DEFAULT_VOXEL_MM = 4.0

SPECT_VOXEL_MM = 4.8
SPECT_FWHM_MM = 11.0          # MIRD Pamphlet 26 (see module docstring)
SPECT_CPS_PER_MBQ = 4.5       # Physica Medica 2019, epub.ub.uni-muenchen.de/63442
SPECT_DURATION_S = 1200.0
PET_VOXEL_MM = 4.0
PET_FWHM_MM = 6.0
PET_NEC_CPS_PER_MBQ = 1000.0  # modelling choice (liver COV ~13 %, EANM <= 15 %)
PET_DURATION_S = 180.0


def _half_life_h(nuclide: str) -> float:
    """ICRP-107 half-life (h) from dose.nuclides, the project's one source of nuclide data."""
    from dose.errors import DoseError
    from dose.nuclides import half_life_h

    try:
        return half_life_h(nuclide)
    except DoseError as err:
        raise ImagingError(f"nuclide = {nuclide!r}: {err}") from None


@dataclass(frozen=True, eq=False)
class SyntheticPatient:
    """A head-and-trunk phantom with CT, labels and an intra-organ uptake pattern.

    ct : CT `Scan` (HU, modality CT) on the phantom grid.
    labels : integer label map (SimpleITK, uint16) on the same grid; 0 = outside the body.
    region_names : label -> region name (see `anatomy.BASE_REGIONS`, then lesion_1, ...).
    seed : the seed the anatomy and heterogeneity were drawn from.
    lesions : the lesions (centre mm, nominal volume mL) in label order.
    """

    ct: Scan
    labels: sitk.Image
    region_names: Mapping[int, str]
    seed: int
    lesions: tuple[anatomy.Lesion, ...]
    patient_weight_kg: float
    patient_id: str
    _weight: np.ndarray = field(repr=False)

    # ------------------------------------------------------------------ anatomy
    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(self.labels.GetSpacing())

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def label_array(self) -> np.ndarray:
        """Labels as a (z, y, x) numpy array."""
        return sitk.GetArrayFromImage(self.labels)

    def region_volumes_ml(self) -> dict[str, float]:
        """Voxelised volume (mL) of each region."""
        counts = np.bincount(self.label_array().ravel(), minlength=max(self.region_names) + 1)
        return {name: float(counts[code]) * self.voxel_ml for code, name in self.region_names.items()}

    def label_scan(self) -> Scan:
        """The label map as a `Scan` (modality SEG, units LABEL)."""
        return Scan(self.labels, "SEG", "LABEL", patient_id=self.patient_id, scan_id="labels")

    def labels_on(self, scan: Scan | sitk.Image) -> sitk.Image:
        """Label map resampled (nearest neighbour) onto a scan's grid."""
        ref = scan.image if isinstance(scan, Scan) else scan
        return sitk.Resample(self.labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                             self.labels.GetPixelID())

    # ------------------------------------------------------------------ activity
    def resolve(self, activities, time_h: float | None = None, nuclide: str | None = None,
                unplaced: str = "body") -> act.RegionActivities:
        """Organ activities (MBq) placed on the phantom's regions (see `activity` module).

        `activities`: a mapping region -> MBq, or a long DataFrame (pbpk
        Trajectory.to_frame() layout) from which the rows at `time_h` are taken.
        """
        if hasattr(activities, "columns"):
            if time_h is None:
                raise ImagingError("activity table given without time_h; pass the scan time (h)")
            activities = act.activities_from_frame(activities, time_h, nuclide)
        elif not isinstance(activities, Mapping):
            raise ImagingError(f"activities: {type(activities).__name__}; expected a mapping region -> MBq "
                               "or a DataFrame with columns time_h, region, activity_mbq")
        return act.resolve(activities, self.region_names, unplaced)

    def activity_array_bqml(self, activities, time_h=None, nuclide=None, unplaced="body") -> np.ndarray:
        """Noise-free activity concentration (Bq/mL, float64, (z, y, x))."""
        placed = self.resolve(activities, time_h, nuclide, unplaced).activity_mbq
        return act.concentration_bqml(self.label_array(), self._weight, self.region_names, placed, self.voxel_ml)

    def activity_map(self, activities, time_h=None, nuclide=None, unplaced="body") -> sitk.Image:
        """Noise-free activity concentration image (Bq/mL, float64) on the phantom grid.

        Each region's voxels sum to its activity exactly: sum(c) * voxel_ml / 1e6 = A (MBq).
        """
        return acq.to_image(self.activity_array_bqml(activities, time_h, nuclide, unplaced),
                            self.labels.GetOrigin(), self.spacing_mm, np.float64)

    def ground_truth_frame(self, activities, time_h: float, nuclide: str | None = None,
                           unplaced: str = "body", scan_id: str = "truth"):
        """The true activities as a long DataFrame, one row per phantom region:
        patient, scan_id, time_h, region, activity_mbq, volume_ml, mean_bqml (the
        columns of `imaging.time_activity` that have a ground truth)."""
        import pandas as pd

        placed = self.resolve(activities, time_h, nuclide, unplaced).activity_mbq
        vols = self.region_volumes_ml()
        return pd.DataFrame([dict(patient=self.patient_id, scan_id=scan_id, time_h=float(time_h), region=r,
                                  activity_mbq=placed[r], volume_ml=vols[r],
                                  mean_bqml=placed[r] * 1e6 / vols[r]) for r in self.region_names.values()])

    # ------------------------------------------------------------------ acquisition
    def _expected_mbq(self, activities, time_h, nuclide_table, unplaced, voxel_mm, fwhm_mm):
        """Blurred, rebinned activity (MBq per scanner voxel) and the scanner grid."""
        if time_h is None or not (np.isfinite(time_h) and time_h >= 0):
            raise ImagingError(f"time_h = {time_h!r}; expected the scan time after injection in h (>= 0)")
        conc = self.activity_array_bqml(activities, time_h, nuclide_table, unplaced)
        mbq = acq.blur(conc * (self.voxel_ml / 1e6), self.spacing_mm, fwhm_mm)
        origin, spacing, size = acq.scanner_grid(self.labels.GetOrigin(), self.spacing_mm,
                                                 self.labels.GetSize(), voxel_mm)
        return acq.rebin(mbq, self.labels.GetOrigin(), self.spacing_mm, origin, spacing, size), origin, spacing

    def _rng(self, stream: int, seed: int) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), stream, int(seed)])

    def simulate_spect(self, activities, time_h: float, *, nuclide: str = "Lu-177",
                       tracer: str | None = "Lu-177-PSMA-617", injected_activity_mbq: float | None = None,
                       table_nuclide: str | None = None, unplaced: str = "body",
                       voxel_mm: float = SPECT_VOXEL_MM, fwhm_mm: float = SPECT_FWHM_MM,
                       calibration_cps_per_mbq: float = SPECT_CPS_PER_MBQ,
                       duration_s: float = SPECT_DURATION_S, noise: bool = True, noise_gain: float = 1.0,
                       seed: int = 0, scan_id: str | None = None) -> Scan:
        """Simulated quantitative SPECT in counts (units CNTS, decay correction NONE).

        `activities` are the activities at acquisition start `time_h` (h after injection)
        (mapping or pbpk-style table; `table_nuclide` picks the table's nuclide, default
        `nuclide`).  Counts N ~ Poisson(S * A * tau), tau = (1 - exp(-lambda T)) / lambda.
        The Scan carries calibration_cps_per_mbq = S and acquisition_duration_s = T.
        Deterministic given (patient seed, `seed`).
        """
        if not (np.isfinite(calibration_cps_per_mbq) and calibration_cps_per_mbq > 0):
            raise ImagingError(f"calibration_cps_per_mbq = {calibration_cps_per_mbq!r}; expected > 0")
        tau = acq.decay_weighted_duration_s(duration_s, _half_life_h(nuclide))
        mbq, origin, spacing = self._expected_mbq(activities, time_h, table_nuclide or nuclide, unplaced,
                                                  voxel_mm, fwhm_mm)
        counts = mbq * calibration_cps_per_mbq * tau
        if noise:
            counts = acq.poisson_counts(counts, self._rng(2, seed), noise_gain)
        return Scan(acq.to_image(counts, origin, spacing), "NM", "CNTS", nuclide=nuclide, tracer=tracer,
                    time_h=float(time_h), injected_activity_mbq=injected_activity_mbq, decay_correction="NONE",
                    acquisition_duration_s=float(duration_s), patient_weight_kg=self.patient_weight_kg,
                    patient_id=self.patient_id, scan_id=scan_id or f"spect_{time_h:g}h",
                    calibration_cps_per_mbq=float(calibration_cps_per_mbq))

    def simulate_pet(self, activities, time_h: float, *, nuclide: str = "Ga-68",
                     tracer: str | None = "Ga-68-PSMA-11", injected_activity_mbq: float | None = None,
                     table_nuclide: str | None = None, unplaced: str = "body",
                     voxel_mm: float = PET_VOXEL_MM, fwhm_mm: float = PET_FWHM_MM,
                     nec_cps_per_mbq: float = PET_NEC_CPS_PER_MBQ, duration_s: float = PET_DURATION_S,
                     decay_correction: str = "START", noise: bool = True, noise_gain: float = 1.0,
                     seed: int = 0, scan_id: str | None = None) -> Scan:
        """Simulated PET in Bq/mL with the given decay-correction convention.

        Counts N ~ Poisson(S_NEC * A * tau); voxel = N / (S_NEC * tau') / voxel_ml * 1e6 with
        tau' = T (NONE), tau (START), tau * exp(-lambda t) (ADMIN).
        """
        if decay_correction not in DECAY_CORRECTIONS:
            raise ImagingError(f"decay_correction = {decay_correction!r}; expected one of {DECAY_CORRECTIONS}")
        if not (np.isfinite(nec_cps_per_mbq) and nec_cps_per_mbq > 0):
            raise ImagingError(f"nec_cps_per_mbq = {nec_cps_per_mbq!r}; expected > 0")
        half_life_h = _half_life_h(nuclide)
        tau = acq.decay_weighted_duration_s(duration_s, half_life_h)
        mbq, origin, spacing = self._expected_mbq(activities, time_h, table_nuclide or nuclide, unplaced,
                                                  voxel_mm, fwhm_mm)
        counts = mbq * nec_cps_per_mbq * tau
        if noise:
            counts = acq.poisson_counts(counts, self._rng(3, seed), noise_gain)
        per_count_mbq = {"NONE": 1.0 / (nec_cps_per_mbq * duration_s),
                         "START": 1.0 / (nec_cps_per_mbq * tau),
                         "ADMIN": math.exp(math.log(2.0) * time_h / half_life_h) / (nec_cps_per_mbq * tau)}
        bqml = counts * per_count_mbq[decay_correction] * 1e6 / spacing[0] ** 3 * 1000.0
        return Scan(acq.to_image(bqml, origin, spacing), "PT", "BQML", nuclide=nuclide, tracer=tracer,
                    time_h=float(time_h), injected_activity_mbq=injected_activity_mbq,
                    decay_correction=decay_correction, acquisition_duration_s=float(duration_s),
                    patient_weight_kg=self.patient_weight_kg, patient_id=self.patient_id,
                    scan_id=scan_id or f"pet_{time_h:g}h")

    def simulate_series(self, activities, times_h: Sequence[float], modality: str = "NM", seed: int = 0,
                        **options) -> list[Scan]:
        """One simulated scan per time: `simulate_spect` (modality "NM") or `simulate_pet`
        ("PT") of the table `activities` (pbpk Trajectory.to_frame() layout) at each time;
        scan k uses noise seed `seed` + k and scan_id "<nm|pt>_<t>h"."""
        sims = {"NM": self.simulate_spect, "PT": self.simulate_pet}
        if modality not in sims:
            raise ImagingError(f"modality = {modality!r}; expected 'NM' (SPECT) or 'PT' (PET)")
        return [sims[modality](activities, float(t), seed=seed + k, scan_id=f"{modality.lower()}_{t:g}h", **options)
                for k, t in enumerate(times_h)]

    # ------------------------------------------------------------------ output
    def write(self, folder: str | os.PathLike, scans: Sequence[Scan] = (), format: str = "nifti",
              overwrite: bool = False, ground_truth: Mapping[str, Mapping[str, float]] | None = None,
              injection_datetime=None) -> Path:
        """Write CT, label map and `scans` into `folder` as NIfTI (+ JSON sidecars) or DICOM series.

        DICOM series share one study and frame of reference; acquisition times are
        `injection_datetime` (a datetime.datetime; default: the writer's) + scan.time_h.
        NIfTI: folder/<scan_id>.nii.gz; DICOM: folder/<scan_id>/ (one series each).
        Also folder/regions.json: label -> name, and `ground_truth` (scan_id -> region ->
        MBq) when given.  Each file / series is written atomically by the imaging writers;
        the folder as a whole by `imaging.atomic.atomic_folder` (nothing is left on failure).
        """
        if format not in ("nifti", "dicom"):
            raise ImagingError(f"format = {format!r}; expected 'nifti' or 'dicom'")
        all_scans = [self.ct, self.label_scan(), *scans]
        ids = [s.scan_id for s in all_scans]
        if len(set(ids)) != len(ids):
            raise ImagingError(f"scan_id values {ids} are not unique; each scan needs its own file name")
        uids = dict(study_uid=generate_uid(), frame_of_reference_uid=generate_uid())
        folder = Path(folder)
        with atomic_folder(folder, overwrite=overwrite) as tmp:
            for s in all_scans:
                if format == "nifti":
                    write_nifti(s, tmp / f"{s.scan_id}.nii.gz")
                else:
                    write_dicom_series(s, tmp / s.scan_id, injection_datetime=injection_datetime, **uids)
            meta = {"patient_id": self.patient_id, "seed": self.seed,
                    "region_names": {str(k): v for k, v in self.region_names.items()},
                    "ground_truth_mbq": {k: dict(v) for k, v in (ground_truth or {}).items()}}
            (tmp / "regions.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder


def make_patient(seed: int = 0, shape: Sequence[int] = DEFAULT_SHAPE_XYZ, voxel_mm: float = DEFAULT_VOXEL_MM,
                 lesions: Sequence[anatomy.Lesion | tuple] | None = None, anatomy_sd: float = 0.05,
                 heterogeneity_cv: float = 0.0, heterogeneity_mm: float = 15.0,
                 patient_weight_kg: float = 75.0, patient_id: str | None = None) -> SyntheticPatient:
    """A synthetic head-and-trunk patient.

    shape : grid size (x, y, z) in voxels; voxel_mm : isotropic voxel size (mm).  The
        grid is centred on the body axis in x and y, z from 0 (LPS mm).
    lesions : `anatomy.Lesion`s or (centre_mm, volume_ml) pairs; None = `DEFAULT_LESIONS`
        (10 mL pelvic node, 5 mL vertebral), () = none.
    anatomy_sd : log-sd of the per-organ size factor drawn from the seed (0 = reference).
    heterogeneity_cv, heterogeneity_mm : log-sd and correlation length of a log-normal
        intra-organ uptake field (0 = uniform organs apart from cortex/medulla).
    patient_weight_kg : body weight for SUV (the phantom has no limbs, so it is given).
    Deterministic given `seed`.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ImagingError(f"shape = {shape!r}; expected three grid sizes (x, y, z) >= 8")
    if not (np.isfinite(voxel_mm) and 0.5 <= voxel_mm <= 12.0):
        raise ImagingError(f"voxel_mm = {voxel_mm!r}; expected an isotropic voxel size in mm between 0.5 and 12")
    if not (np.isfinite(patient_weight_kg) and patient_weight_kg > 0):
        raise ImagingError(f"patient_weight_kg = {patient_weight_kg!r}; expected > 0")
    if lesions is None:
        lesions = anatomy.DEFAULT_LESIONS
    lesions = tuple(l if isinstance(l, anatomy.Lesion) else anatomy.Lesion(tuple(l[0]), float(l[1]))
                    for l in lesions)
    rng = np.random.default_rng([int(seed), 1])
    spacing = (float(voxel_mm),) * 3
    origin = (-0.5 * (shape[0] - 1) * voxel_mm, -0.5 * (shape[1] - 1) * voxel_mm, 0.5 * voxel_mm)
    structures = anatomy.varied_structures(rng, anatomy_sd)
    labels, hu, weight, names = anatomy.paint(structures, lesions, origin, spacing, shape)
    weight = weight * act.heterogeneity_field(rng, labels.shape, spacing, heterogeneity_cv, heterogeneity_mm)
    pid = patient_id or f"phantom_{seed}"
    ct = Scan(acq.to_image(hu, origin, spacing), "CT", "HU", patient_id=pid, scan_id="ct",
              patient_weight_kg=float(patient_weight_kg))
    label_img = acq.to_image(labels, origin, spacing, np.uint16)
    return SyntheticPatient(ct, label_img, dict(names), int(seed), lesions, float(patient_weight_kg), pid, weight)
