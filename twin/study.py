"""Study folders: how a real patient study is described, read, validated and written.

A study folder holds::

    study.toml       the description (below)
    ct.nii.gz        CT in HU (NIfTI + JSON sidecar as `imaging.write_nifti` writes it) or a DICOM folder
    labels.nii.gz    integer label map on the CT grid (NIfTI or DICOM folder)
    regions.json     {"label value": "region name", ...} (or the file `imaging.phantom` writes,
                     whose "region_names" entry holds that mapping)
    <scan files>     PET / SPECT, NIfTI + sidecar or DICOM folders (`imaging.read_scan`)

study.toml (read with the standard library's `tomllib`)::

    [patient]                 # id required; covariates optional (`twin.covariates` defaults)
    id = "synthetic-0"
    weight_kg = 75.0          # also height_cm, sex ("M"/"F"), gfr_ml_min, haematocrit,
                              # organ_volumes_ml = {kidneys = 310.0}, lesion_volumes_ml = [9.2, 5.1]
    [[administration]]        # in time order, schedule clock (h)
    time_h = 0.0
    activity_mbq = 150.0
    ligand_nmol = 2.0         # optional: carrier-free when absent
    tracer = "Ga-68-PSMA-11"
    [images]
    ct = "ct.nii.gz"
    labels = "labels.nii.gz"
    regions = "regions.json"  # or an inline table [images.region_names] "1" = "kidneys"
    [[scan]]
    file = "pet_1h.nii.gz"
    administration = 1        # 1-based index into [[administration]]
    time_h = 1.0              # optional; must agree with the file's own time within 0.01 h
    resolution_fwhm_mm = 6.0  # optional: the scanner's spatial resolution (FWHM, mm) -> lesion
                              # partial-volume (recovery) correction, below

Times: a scan's `time_h` is the time after *its* administration (the imaging and
calibration convention); its schedule-clock time is administration.time_h + time_h.  Scans
are returned in schedule-clock order.  The time-activity table gets a `cycle` column: the
1-based number of the scan's administration among the administrations of the same tracer
in time order (the convention of `calibration.observations`).

Partial-volume (recovery) correction: a scan with `resolution_fwhm_mm` (finite, > 0) has
its lesion rows (regions lesion_1, lesion_2, ...) corrected for spill-out by
`imaging.time_activity(..., recovery_fwhm_mm=, recovery_regions=)`: each lesion is taken as
a uniform sphere of the volume V of its VOI on the scan grid (the table's volume_ml),
blurred by a 3-D Gaussian PSF of that FWHM; RC(V, FWHM) = the fraction of the sphere's
activity the blur leaves inside it (`imaging.sphere_recovery_coefficient`), and the table
holds A = A_measured / RC (also mean_bqml; the uncertainty is divided by RC too) and
`recovery_coefficient` = RC.  Organs are not spheres, so organ rows stay uncorrected
(recovery_coefficient = 1), as do all rows of a scan without the key (the table is then
exactly that of a study file without it).  Limits of the model: spill-out only (activity
spilling *into* the lesion VOI from hot neighbours is not removed, so a lesion next to a
hot organ is over-corrected), a spherical, uniformly filled lesion whose VOI is its true
boundary, and a shift-invariant Gaussian PSF; RC is small for lesions a few FWHM across
(11 mm FWHM: RC 0.51 at 5 mL, 0.60 at 10 mL), where errors in V or FWHM are amplified by 1/RC.
V is measured on the label map resampled (nearest neighbour) onto the scan grid, which
changes small VOIs: on the synthetic phantom (4 mm voxels), a 5.0 mL lesion measures 4.4 mL
on the 4.8 mm SPECT grid and is recovered to 0.90 of its true activity (0.51 without the
correction), while on the phantom's own grid it is recovered to 1.00-1.03.

Volumes: when [patient] has no `organ_volumes_ml`, the volumes of the organs of
`twin.covariates.IMAGED_ORGANS` present in the label map are measured on it
(voxel count x voxel volume); when it has no `lesion_volumes_ml`, the regions lesion_1,
lesion_2, ... are measured.  Given lesion volumes must be one per lesion of the label map.

Errors (all `twin.errors.StudyError` or a subclass, each naming the file and the field),
raised before any image is read where the study file alone shows them:

* no study.toml, TOML syntax error, missing [patient] id, unknown keys, wrong types
  (a scan's resolution_fwhm_mm that is not a finite number > 0),
  unreadable regions file, label map not on the CT grid (imaging's GeometryMismatchError
  is not used: the check is done here and raised as StudyError), a scan whose tracer or
  nuclide (from its sidecar / DICOM) differs from its administration's: `StudyError`;
* no CT, no label map, no [[scan]], a listed file that does not exist: `MissingModalityError`;
* a tracer pbpk does not know: `twin.errors.UnknownTracerError`;
* administrations not in time order (or two of one tracer at the same time), a negative
  scan time, a scan at or after the next administration of the same tracer, a study-file
  time_h differing from the image's own time by more than 0.01 h: `InconsistentTimesError`.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

import imaging
import pbpk
from imaging.atomic import atomic_file, atomic_folder
from imaging.nifti import is_nifti, sidecar_path

from .covariates import IMAGED_ORGANS, Covariates
from .errors import InconsistentTimesError, MissingModalityError, StudyError, UnknownTracerError

STUDY_FILE = "study.toml"
REGIONS_FILE = "regions.json"
CT_FILE = "ct.nii.gz"
LABELS_FILE = "labels.nii.gz"
#: Largest allowed difference (h) between a study-file scan time and the image's own time.
TIME_TOLERANCE_H = 0.01

_TOP_KEYS = ("patient", "administration", "images", "scan")
_PATIENT_KEYS = ("id", "weight_kg", "height_cm", "sex", "gfr_ml_min", "haematocrit", "organ_volumes_ml",
                 "lesion_volumes_ml")
_ADMIN_KEYS = ("time_h", "activity_mbq", "ligand_nmol", "tracer")
_IMAGE_KEYS = ("ct", "labels", "regions", "region_names")
_SCAN_KEYS = ("file", "administration", "time_h", "resolution_fwhm_mm")
_LESION = re.compile(r"^lesion_(\d+)$")


@dataclass(frozen=True, eq=False)
class Study:
    """A loaded, validated study (see module docstring).

    folder : the study folder; patient_id : [patient] id; covariates : `Covariates`
    (volumes measured from the label map where the study file does not give them);
    schedule : `pbpk.Schedule` of the administrations; ct : CT `imaging.Scan`;
    labels : integer label map (SimpleITK) on the CT grid; region_names : {label: name};
    scans : emission scans in schedule-clock order; scan_administration : the 1-based
    administration index of each scan; table : `imaging.time_activity(scans, labels,
    region_names, resample="labels")` with `patient` set to `patient_id` and a `cycle`
    column (all regions kept, also those the model does not know), lesion rows of scans
    with a resolution recovery-corrected (module docstring); scan_resolution_fwhm_mm : the
    study file's resolution_fwhm_mm of each scan (same order as `scans`; None where absent).
    """

    folder: Path
    patient_id: str
    covariates: Covariates
    schedule: pbpk.Schedule
    ct: imaging.Scan
    labels: sitk.Image
    region_names: dict[int, str]
    scans: tuple[imaging.Scan, ...]
    scan_administration: tuple[int, ...]
    table: pd.DataFrame
    scan_resolution_fwhm_mm: tuple[float | None, ...] = ()

    @property
    def tracer_names(self) -> tuple[str, ...]:
        """Names of the schedule's tracers, in order of first administration."""
        return tuple(t.name for t in self.schedule.tracers)

    def model(self, **overrides) -> pbpk.Model:
        """`pbpk.psma_model` for this study's tracers and covariates; `overrides` (any
        psma_model keyword, e.g. lesion_rden_nmol_l) take precedence."""
        return pbpk.psma_model(tracers=self.tracer_names, **{**self.covariates.model_kwargs(), **overrides})


# ----------------------------------------------------------------------------- helpers
def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise StudyError(f"{where}: {value!r}; expected a finite number")
    return float(value)


def _resolution_fwhm_mm(value, where: str) -> float:
    """A scan's resolution_fwhm_mm: a finite number > 0 (mm), else StudyError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise StudyError(f"{where} field 'resolution_fwhm_mm': {value!r}; expected the scanner's spatial "
                         "resolution as a FWHM in mm, a finite number > 0")
    return float(value)


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise StudyError(f"{where}: expected a TOML table, got {type(value).__name__}")
    return value


def _tables(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise StudyError(f"{where}: expected an array of tables ([[...]])")
    return value


def _no_unknown(table: Mapping, known: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown}; expected some of {list(known)}")


def _tracer(name, where: str) -> pbpk.Tracer:
    if not isinstance(name, str):
        raise StudyError(f"{where}: {name!r}; expected a tracer name such as 'Lu-177-PSMA-617'")
    try:
        return pbpk.tracer(name)
    except pbpk.UnknownTracerError as err:
        raise UnknownTracerError(f"{where}: {err}") from None


def _region_names(mapping, where: str) -> dict[int, str]:
    """{label: name} from a JSON/TOML mapping with positive-integer string keys."""
    if not isinstance(mapping, dict) or not mapping:
        raise StudyError(f"{where}: expected a non-empty mapping {{\"label value\": \"region name\"}}")
    out: dict[int, str] = {}
    for key, name in mapping.items():
        text = str(key).strip()
        if not text.isdigit() or int(text) <= 0:
            raise StudyError(f"{where}: key {key!r}; expected a positive integer label value (0 is background)")
        if not isinstance(name, str) or not name.strip():
            raise StudyError(f"{where}: label {key}: {name!r}; expected a region name")
        out[int(text)] = name
    return dict(sorted(out.items()))


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Same size, spacing (rel. 1e-5), origin (1e-3 mm) and direction (1e-5)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-5, atol=0.0)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0.0, atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=1e-5))


def _cycles(schedule_admins: Sequence[pbpk.Administration]) -> list[int]:
    """1-based cycle of each administration among those of its tracer (time order)."""
    seen: dict[str, int] = {}
    out = []
    for a in schedule_admins:
        seen[a.tracer.name] = seen.get(a.tracer.name, 0) + 1
        out.append(seen[a.tracer.name])
    return out


def _check_administrations(admins: Sequence[pbpk.Administration], where: str) -> None:
    """Time order (non-decreasing; strictly increasing within one tracer)."""
    last_of: dict[str, float] = {}
    for k, a in enumerate(admins, start=1):
        if k > 1 and a.time_h < admins[k - 2].time_h:
            raise InconsistentTimesError(
                f"{where} [[administration]] #{k} time_h = {a.time_h} h is before #{k - 1} "
                f"({admins[k - 2].time_h} h); expected administrations in time order")
        if a.tracer.name in last_of and a.time_h <= last_of[a.tracer.name]:
            raise InconsistentTimesError(
                f"{where} [[administration]] #{k}: two administrations of {a.tracer.name} at {a.time_h} h")
        last_of[a.tracer.name] = a.time_h


def _check_scan(scan: imaging.Scan, index: int, admins: Sequence[pbpk.Administration], where: str,
                toml_time_h: float | None = None) -> imaging.Scan:
    """Validate one emission scan against its administration (1-based `index`) and fill
    its tracer / nuclide / injected activity from it when the file lacks them.

    Raises StudyError (modality, tracer or nuclide mismatch) or InconsistentTimesError
    (negative time, study-file time disagreeing with the image, scan at or after the next
    administration of the same tracer).
    """
    if scan.modality not in ("PT", "NM"):
        raise StudyError(f"{where}: modality {scan.modality!r}; expected an emission scan (PT or NM)")
    admin = admins[index - 1]
    changes = {}
    if scan.tracer is None:
        changes["tracer"] = admin.tracer.name
    elif _tracer(scan.tracer, f"{where} field 'tracer'").name != admin.tracer.name:
        raise StudyError(f"{where} field 'tracer': {scan.tracer!r}, but administration #{index} gives "
                         f"{admin.tracer.name}; expected the tracer of the scan's administration")
    if scan.nuclide is None:
        changes["nuclide"] = admin.tracer.nuclide
    elif scan.nuclide != admin.tracer.nuclide:
        raise StudyError(f"{where} field 'nuclide': {scan.nuclide!r}, but administration #{index} is "
                         f"{admin.tracer.name}; expected {admin.tracer.nuclide}")
    if scan.injected_activity_mbq is None:
        changes["injected_activity_mbq"] = admin.activity_mbq
    if scan.time_h is None:
        raise StudyError(f"{where} field 'time_h': missing; give it in the image metadata or in {STUDY_FILE}")
    if toml_time_h is not None and abs(toml_time_h - scan.time_h) > TIME_TOLERANCE_H:
        raise InconsistentTimesError(
            f"{where}: {STUDY_FILE} time_h = {toml_time_h} h but the image says {scan.time_h} h after injection; "
            f"expected agreement within {TIME_TOLERANCE_H} h")
    if scan.time_h < 0:
        raise InconsistentTimesError(f"{where} field 'time_h': {scan.time_h} h; expected a time >= 0 after "
                                     "the injection")
    clock_h = admin.time_h + scan.time_h
    for k in range(index, len(admins)):
        nxt = admins[k]
        if nxt.tracer.name == admin.tracer.name:
            if clock_h >= nxt.time_h:
                raise InconsistentTimesError(
                    f"{where} field 'time_h': {scan.time_h} h after administration #{index} is at {clock_h} h on "
                    f"the schedule clock, at or after the next {admin.tracer.name} administration #{k + 1} "
                    f"({nxt.time_h} h); the scan would see the next cycle")
            break
    return scan.with_image(scan.image, **changes) if changes else scan


def _check_grid(ct: imaging.Scan, labels: sitk.Image, where: str) -> None:
    if not _same_grid(ct.image, labels):
        raise StudyError(
            f"{where}: label map (size {labels.GetSize()}, spacing {labels.GetSpacing()}, origin "
            f"{labels.GetOrigin()}) is not on the CT grid (size {ct.image.GetSize()}, spacing "
            f"{ct.image.GetSpacing()}, origin {ct.image.GetOrigin()}); expected the same grid")


def _check_labels(labels: sitk.Image, region_names: Mapping[int, str], where: str) -> None:
    """Integer pixels; every named label has voxels."""
    if labels.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32, sitk.sitkUInt64,
                                   sitk.sitkInt8, sitk.sitkInt16, sitk.sitkInt32, sitk.sitkInt64):
        raise StudyError(f"{where}: pixel type {labels.GetPixelIDTypeAsString()}; expected integer labels")
    present = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    missing = sorted(set(region_names) - present)
    if missing:
        raise StudyError(f"{where}: labels {missing} ({[region_names[k] for k in missing]}) have no voxels; "
                         "expected every named region in the label map")


def measured_volumes_ml(labels: sitk.Image, region_names: Mapping[int, str],
                        where: str = "label map") -> tuple[dict[str, float], tuple[float, ...]]:
    """(organ volumes, lesion volumes) in mL from a label map: V = n_voxels * voxel volume,
    labels pooled by model region (`imaging.regions`), organs limited to
    `twin.covariates.IMAGED_ORGANS`, lesions lesion_1 ... lesion_n (numbered without gaps,
    else StudyError naming `where`)."""
    values = sitk.GetArrayViewFromImage(labels).ravel()
    if values.dtype.kind not in "iu" or (values.size and values.min() < 0):
        raise StudyError(f"{where}: expected non-negative integer labels")
    counts = np.bincount(values.astype(np.int64), minlength=max(region_names) + 1)
    voxel_ml = math.prod(labels.GetSpacing()) / 1000.0
    by_region: dict[str, float] = {}
    for label, (_, region) in imaging.label_names(dict(region_names)).items():
        by_region[region] = by_region.get(region, 0.0) + float(counts[label]) * voxel_ml
    organs = {r: v for r, v in by_region.items() if r in IMAGED_ORGANS and v > 0}
    lesion_numbers = sorted(int(m.group(1)) for r in by_region if (m := _LESION.match(r)))
    if lesion_numbers != list(range(1, len(lesion_numbers) + 1)):
        raise StudyError(f"{where}: lesion regions {['lesion_%d' % n for n in lesion_numbers]}; expected "
                         "lesion_1 ... lesion_n without gaps (the model numbers lesions in that order)")
    lesions = tuple(by_region[f"lesion_{n}"] for n in lesion_numbers)
    return organs, lesions


def _with_volumes(given: dict, labels: sitk.Image, region_names: Mapping[int, str], where: str) -> dict:
    """Covariate fields with measured volumes filled in where `given` lacks them."""
    organs, lesions = measured_volumes_ml(labels, region_names, where)
    out = dict(given)
    out.setdefault("organ_volumes_ml", organs)
    if "lesion_volumes_ml" in out:
        if len(out["lesion_volumes_ml"]) != len(lesions):
            raise StudyError(f"{where}: lesion_volumes_ml has {len(out['lesion_volumes_ml'])} entries but the "
                             f"label map has {len(lesions)} lesion regions; expected one volume per lesion")
    else:
        out["lesion_volumes_ml"] = lesions
    return out


def _lesion_regions(region_names: Mapping[int, str]) -> frozenset[str]:
    """Model regions (`imaging.label_names`) of `region_names` that are lesions (lesion_<k>)."""
    return frozenset(region for _, region in imaging.label_names(dict(region_names)).values()
                     if _LESION.match(region))


def _table_with_cycles(scans, scan_admin, labels, region_names, admins, patient_id,
                       resolutions_fwhm_mm=None) -> pd.DataFrame:
    """`imaging.time_activity` of each scan (labels resampled onto the scan grid), with
    `patient` = the study's id and `cycle` = the scan administration's cycle number; a scan
    whose resolution (FWHM, mm; None = not given) is given gets the sphere recovery
    correction on its lesion regions only (module docstring)."""
    cycles = _cycles(admins)
    lesions = _lesion_regions(region_names)
    if resolutions_fwhm_mm is None:
        resolutions_fwhm_mm = [None] * len(scans)
    parts = [imaging.time_activity(scan, labels, dict(region_names), resample="labels", recovery_fwhm_mm=fwhm,
                                   recovery_regions=lesions if fwhm is not None else None)
             .assign(cycle=np.int64(cycles[i - 1])) for scan, i, fwhm in zip(scans, scan_admin, resolutions_fwhm_mm)]
    table = pd.concat(parts, ignore_index=True)
    table["patient"] = pd.array([patient_id] * len(table), dtype="string")
    return table


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class _ScanEntry:
    path: Path
    administration: int
    time_h: float | None
    where: str
    resolution_fwhm_mm: float | None = None


@dataclass(frozen=True)
class _Spec:
    """What study.toml says, validated, before any image is read."""

    patient_id: str
    covariate_fields: dict
    administrations: tuple[pbpk.Administration, ...]
    ct: Path
    labels: Path
    region_names: dict[int, str]
    scans: tuple[_ScanEntry, ...]


def _existing(folder: Path, value, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise StudyError(f"{where}: {value!r}; expected a file or folder name")
    path = folder / value
    if not path.exists():
        raise MissingModalityError(f"{where}: {path} does not exist")
    return path


def _parse(folder: Path) -> _Spec:
    toml_path = folder / STUDY_FILE
    if not toml_path.is_file():
        raise StudyError(f"{toml_path}: no such file; a study folder needs a {STUDY_FILE}")
    try:
        doc = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"{toml_path}: not valid TOML ({err})") from None
    w = str(toml_path)
    _no_unknown(doc, _TOP_KEYS, f"{w} (top level)")

    patient = _table(doc.get("patient"), f"{w} [patient]") if "patient" in doc else None
    if patient is None or "id" not in patient:
        raise StudyError(f"{w} [patient] field 'id': missing; expected the patient identifier")
    _no_unknown(patient, _PATIENT_KEYS, f"{w} [patient]")
    pid = patient["id"]
    if not isinstance(pid, str) or not pid.strip():
        raise StudyError(f"{w} [patient] field 'id': {pid!r}; expected a non-empty string")
    fields = {k: v for k, v in patient.items() if k != "id"}
    Covariates.from_dict(fields, f"{w} [patient]")  # validate now; volumes may be added later

    raw_admins = _tables(doc.get("administration", []), f"{w} [[administration]]")
    if not raw_admins:
        raise StudyError(f"{w} [[administration]]: none; expected at least one administration")
    admins = []
    for k, a in enumerate(raw_admins, start=1):
        aw = f"{w} [[administration]] #{k}"
        _no_unknown(a, _ADMIN_KEYS, aw)
        for key in ("time_h", "activity_mbq", "tracer"):
            if key not in a:
                raise StudyError(f"{aw} field {key!r}: missing")
        tr = _tracer(a["tracer"], f"{aw} field 'tracer'")
        ligand = None if "ligand_nmol" not in a else _number(a["ligand_nmol"], f"{aw} field 'ligand_nmol'")
        try:
            admins.append(pbpk.Administration(_number(a["time_h"], f"{aw} field 'time_h'"),
                                              _number(a["activity_mbq"], f"{aw} field 'activity_mbq'"), ligand, tr))
        except pbpk.ScheduleError as err:
            raise StudyError(f"{aw}: {err}") from None
    _check_administrations(admins, w)

    if "images" not in doc:
        raise MissingModalityError(f"{w} [images]: missing; expected ct = ... and labels = ...")
    images = _table(doc["images"], f"{w} [images]")
    _no_unknown(images, _IMAGE_KEYS, f"{w} [images]")
    for key in ("ct", "labels"):
        if key not in images:
            raise MissingModalityError(f"{w} [images] field {key!r}: missing; the twin needs the "
                                       f"{'CT' if key == 'ct' else 'label map'}")
    ct = _existing(folder, images["ct"], f"{w} [images] field 'ct'")
    labels = _existing(folder, images["labels"], f"{w} [images] field 'labels'")
    if "regions" in images and "region_names" in images:
        raise StudyError(f"{w} [images]: both 'regions' and 'region_names'; expected one of them")
    if "region_names" in images:
        region_names = _region_names(images["region_names"], f"{w} [images.region_names]")
    else:
        regions_path = _existing(folder, images.get("regions", REGIONS_FILE), f"{w} [images] field 'regions'")
        try:
            data = json.loads(regions_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            raise StudyError(f"{regions_path}: not a readable JSON file ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("region_names"), dict):
            data = data["region_names"]  # the file imaging.phantom writes
        region_names = _region_names(data, str(regions_path))

    raw_scans = _tables(doc.get("scan", []), f"{w} [[scan]]")
    if not raw_scans:
        raise MissingModalityError(f"{w} [[scan]]: none; expected at least one PET or SPECT scan")
    scans = []
    seen = set()
    for k, s in enumerate(raw_scans, start=1):
        sw = f"{w} [[scan]] #{k}"
        _no_unknown(s, _SCAN_KEYS, sw)
        for key in ("file", "administration"):
            if key not in s:
                raise StudyError(f"{sw} field {key!r}: missing")
        path = _existing(folder, s["file"], f"{sw} field 'file'")
        if path.resolve() in seen:
            raise StudyError(f"{sw} field 'file': {s['file']!r} is listed twice")
        seen.add(path.resolve())
        index = s["administration"]
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= len(admins):
            raise StudyError(f"{sw} field 'administration': {index!r}; expected an integer in 1..{len(admins)}")
        t = None
        if "time_h" in s:
            t = _number(s["time_h"], f"{sw} field 'time_h'")
            if t < 0:
                raise InconsistentTimesError(f"{sw} field 'time_h': {t} h; expected a time >= 0 after the injection")
        fwhm = None if "resolution_fwhm_mm" not in s else _resolution_fwhm_mm(s["resolution_fwhm_mm"], sw)
        scans.append(_ScanEntry(path, index, t, f"{sw} ({path})", fwhm))
    return _Spec(pid, fields, tuple(admins), ct, labels, region_names, tuple(scans))


def _read(path: Path, where: str, **defaults) -> imaging.Scan:
    """imaging.read_scan, errors as StudyError; `defaults` (modality/units) used only for a
    NIfTI without sidecar."""
    overrides = defaults if is_nifti(path) and not sidecar_path(path).is_file() else {}
    try:
        return imaging.read_scan(path, **overrides)
    except imaging.ImagingError as err:
        raise StudyError(f"{where}: {err}") from err


def _read_emission(entry: _ScanEntry) -> imaging.Scan:
    try:
        return imaging.read_scan(entry.path)
    except imaging.MissingTagError as err:
        if entry.time_h is None:
            raise StudyError(f"{entry.where}: {err}") from err
    try:  # no time in the file: the study file's time_h is the only one
        return imaging.read_scan(entry.path, time_h=entry.time_h)
    except imaging.ImagingError as err:
        raise StudyError(f"{entry.where}: {err}") from err


def load_study(folder) -> Study:
    """Read and validate a study folder (see module docstring for the format and errors)."""
    folder = Path(folder)
    spec = _parse(folder)
    toml = str(folder / STUDY_FILE)
    ct = _read(spec.ct, f"{toml} [images] field 'ct' ({spec.ct})", modality="CT", units="HU")
    if ct.modality != "CT":
        raise StudyError(f"{toml} [images] field 'ct' ({spec.ct}): modality {ct.modality!r}; expected CT")
    lab = _read(spec.labels, f"{toml} [images] field 'labels' ({spec.labels})", modality="SEG", units="LABEL")
    lw = f"{toml} [images] field 'labels' ({spec.labels})"
    if lab.units != "LABEL":
        raise StudyError(f"{lw}: units {lab.units!r}; expected LABEL")
    _check_grid(ct, lab.image, lw)
    _check_labels(lab.image, spec.region_names, lw)

    entries = []
    for e in spec.scans:
        scan = _check_scan(_read_emission(e), e.administration, spec.administrations, e.where, e.time_h)
        entries.append((spec.administrations[e.administration - 1].time_h + scan.time_h, scan, e.administration,
                        e.resolution_fwhm_mm))
    entries.sort(key=lambda x: x[0])
    scans = tuple(x[1] for x in entries)
    scan_admin = tuple(x[2] for x in entries)
    fwhms = tuple(x[3] for x in entries)

    covariates = Covariates.from_dict(_with_volumes(spec.covariate_fields, lab.image, spec.region_names, lw),
                                      f"{toml} [patient]")
    try:
        table = _table_with_cycles(scans, scan_admin, lab.image, spec.region_names, spec.administrations,
                                   spec.patient_id, fwhms)
    except imaging.ImagingError as err:
        raise StudyError(f"{folder}: time-activity table failed ({err})") from err
    return Study(folder=folder, patient_id=spec.patient_id, covariates=covariates,
                 schedule=pbpk.Schedule(spec.administrations), ct=ct, labels=lab.image,
                 region_names=dict(spec.region_names), scans=scans, scan_administration=scan_admin, table=table,
                 scan_resolution_fwhm_mm=fwhms)


# ----------------------------------------------------------------------------- writing
def _toml_value(value) -> str:
    """TOML literal of a str, finite float/int, list or dict (strings quoted with
    json.dumps, which is valid TOML basic-string quoting)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form; finite (validated by the caller)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise StudyError(f"{STUDY_FILE}: cannot write {type(value).__name__} {value!r}")


def _toml_text(patient_id: str, covariates: Covariates, admins: Sequence[pbpk.Administration],
               region_file: str, scan_rows: Sequence[tuple[str, int, float, float | None]]) -> str:
    lines = ["[patient]", f"id = {_toml_value(patient_id)}"]
    for key, value in covariates.to_dict().items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for a in admins:
        lines += ["", "[[administration]]", f"time_h = {_toml_value(float(a.time_h))}",
                  f"activity_mbq = {_toml_value(float(a.activity_mbq))}"]
        if a.ligand_nmol is not None:
            lines.append(f"ligand_nmol = {_toml_value(float(a.ligand_nmol))}")
        lines.append(f"tracer = {_toml_value(a.tracer.name)}")
    lines += ["", "[images]", f"ct = {_toml_value(CT_FILE)}", f"labels = {_toml_value(LABELS_FILE)}",
              f"regions = {_toml_value(region_file)}"]
    for file, index, time_h, fwhm_mm in scan_rows:
        lines += ["", "[[scan]]", f"file = {_toml_value(file)}", f"administration = {index}",
                  f"time_h = {_toml_value(float(time_h))}"]
        if fwhm_mm is not None:
            lines.append(f"resolution_fwhm_mm = {_toml_value(float(fwhm_mm))}")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(text)).strip("._") or "scan"


def write_study(folder, *, patient_id: str, covariates: Covariates, schedule: pbpk.Schedule, ct: imaging.Scan,
                labels: sitk.Image | imaging.Scan, region_names: Mapping[int, str], scans: Sequence[imaging.Scan],
                scan_administration: Sequence[int], resolution_fwhm_mm: Sequence[float | None] | None = None,
                overwrite: bool = False) -> Path:
    """Write a study folder that `load_study` reads back; returns the folder.

    Files: ct.nii.gz, labels.nii.gz (+ sidecars, `imaging.write_nifti`), one
    scan_<k>_<scan_id>.nii.gz per scan, regions.json and study.toml.  Empty organ or
    lesion volumes of `covariates` are measured from `labels` first (as `load_study`
    would), so study.toml always states the volumes used.  `resolution_fwhm_mm`: one entry
    per scan, the scanner's spatial resolution (FWHM, mm, finite > 0) written as that
    scan's resolution_fwhm_mm (lesion recovery correction on loading, module docstring),
    or None for no key; None (default) writes no key for any scan.  Every check of `load_study`
    runs before anything is written (StudyError or a subclass); the folder is written
    atomically (`imaging.atomic.atomic_folder`): on failure nothing is left, and an
    existing folder is replaced only with `overwrite=True` (else StudyError).
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise StudyError(f"{folder}: study folder exists; pass overwrite=True to replace it")
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise StudyError(f"write_study: patient_id = {patient_id!r}; expected a non-empty string")
    if not isinstance(covariates, Covariates):
        raise StudyError(f"write_study: covariates is {type(covariates).__name__}; expected twin.Covariates")
    if not isinstance(schedule, pbpk.Schedule):
        raise StudyError(f"write_study: schedule is {type(schedule).__name__}; expected pbpk.Schedule")
    if not isinstance(ct, imaging.Scan) or ct.modality != "CT":
        raise StudyError("write_study: ct; expected an imaging.Scan with modality CT")
    if isinstance(labels, imaging.Scan) and labels.units == "LABEL":
        labels = labels.image
    if not isinstance(labels, sitk.Image):
        raise StudyError(f"write_study: labels is {type(labels).__name__}; expected a SimpleITK label image")
    admins = schedule.administrations
    _check_administrations(admins, "write_study schedule")
    names = _region_names({str(k): v for k, v in dict(region_names).items()}, "write_study region_names")
    _check_grid(ct, labels, "write_study labels")
    _check_labels(labels, names, "write_study labels")
    scans = list(scans)
    index = list(scan_administration)
    if not scans:
        raise MissingModalityError("write_study scans: none; expected at least one PET or SPECT scan")
    if len(index) != len(scans):
        raise StudyError(f"write_study scan_administration: {len(index)} entries for {len(scans)} scans")
    if resolution_fwhm_mm is not None and (isinstance(resolution_fwhm_mm, str)
                                           or not isinstance(resolution_fwhm_mm, (Sequence, np.ndarray))):
        raise StudyError(f"write_study resolution_fwhm_mm: {resolution_fwhm_mm!r}; expected a sequence with one "
                         "FWHM (mm) or None per scan")
    fwhms = [None] * len(scans) if resolution_fwhm_mm is None else list(resolution_fwhm_mm)
    if len(fwhms) != len(scans):
        raise StudyError(f"write_study resolution_fwhm_mm: {len(fwhms)} entries for {len(scans)} scans; expected "
                         "one FWHM (mm) or None per scan")
    fwhms = [None if f is None else _resolution_fwhm_mm(f, f"write_study scans[{k}]") for k, f in enumerate(fwhms)]
    rows, checked = [], []
    for k, (scan, i, fwhm) in enumerate(zip(scans, index, fwhms), start=1):
        if not isinstance(scan, imaging.Scan):
            raise StudyError(f"write_study scans[{k - 1}]: {type(scan).__name__}; expected imaging.Scan")
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= len(admins):
            raise StudyError(f"write_study scan_administration[{k - 1}] = {i!r}; expected 1..{len(admins)}")
        checked.append(_check_scan(scan, i, admins, f"write_study scans[{k - 1}] ({scan.scan_id})"))
        rows.append((f"scan_{k:02d}_{_slug(scan.scan_id)}.nii.gz", i, float(scan.time_h), fwhm))
    fields = {k: v for k, v in covariates.to_dict().items()
              if not (k in ("organ_volumes_ml", "lesion_volumes_ml") and not v)}
    full = Covariates.from_dict(_with_volumes(fields, labels, names, "write_study labels"), "write_study covariates")
    text = _toml_text(patient_id, full, admins, REGIONS_FILE, rows)

    with atomic_folder(folder, overwrite=overwrite) as tmp:
        imaging.write_nifti(ct, tmp / CT_FILE)
        imaging.write_nifti(imaging.Scan(labels, "SEG", "LABEL", patient_id=patient_id, scan_id="labels"),
                            tmp / LABELS_FILE)
        for scan, (file, _, _, _) in zip(checked, rows):
            imaging.write_nifti(scan, tmp / file)
        with atomic_file(tmp / REGIONS_FILE) as t:
            t.write_text(json.dumps({str(k): v for k, v in names.items()}, indent=2), encoding="utf-8")
        with atomic_file(tmp / STUDY_FILE) as t:
            t.write_text(text, encoding="utf-8")
    return folder
