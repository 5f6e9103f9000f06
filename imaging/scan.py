"""`Scan`: one quantitative image with the metadata dosimetry needs.

A `Scan` is a SimpleITK image plus what is needed to interpret its voxels: modality,
units, nuclide and tracer, time after injection and the decay-correction reference.
Readers (`imaging.read_scan`) return it, writers take it, quantification functions
map one `Scan` to another (e.g. counts -> Bq/mL, Bq/mL -> SUV).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace

import SimpleITK as sitk

#: Modalities, with DICOM Modality spellings: PET, SPECT (DICOM "NM"), CT, label map.
MODALITIES = ("PT", "NM", "CT", "SEG")
#: Voxel units: activity concentration Bq/mL (DICOM "BQML"), counts per voxel ("CNTS"),
#: body-weight SUV (g/mL, "SUVbw"), Hounsfield units ("HU"), integer labels ("LABEL").
UNITS = ("BQML", "CNTS", "SUVbw", "HU", "LABEL")
#: Decay-correction reference (DICOM (0054,1102) DecayCorrection): none (voxels are the
#: activity at acquisition), to acquisition start, or to the administration time.
DECAY_CORRECTIONS = ("NONE", "START", "ADMIN")


@dataclass(frozen=True)
class Scan:
    """One image and its quantitative metadata.

    Attributes
    ----------
    image : SimpleITK image (3-D). Voxels in `units`; geometry (origin, spacing in mm,
        direction) in patient LPS coordinates, as SimpleITK and DICOM use.
    modality : one of `MODALITIES`.
    units : one of `UNITS`.
    nuclide : ICRP-107 nuclide name ("Lu-177", "Ga-68"), None for CT and label maps.
    tracer : tracer name ("177Lu-PSMA-617"), None when unknown or not applicable.
    time_h : time of acquisition start after the (first) injection, hours.
    injected_activity_mbq : administered activity, MBq (at administration time).
    decay_correction : one of `DECAY_CORRECTIONS`; what the voxel values are decay
        corrected to.
    acquisition_duration_s : frame duration, seconds (needed for counts -> activity).
    patient_weight_kg : body weight, kg (needed for SUV).
    patient_id, scan_id : identifiers carried into time-activity tables.
    source : the file or folder read, for error messages; None for images made in memory.
    calibration_cps_per_mbq : SPECT/PET system sensitivity, counts per second per MBq
        (counts -> activity; see `imaging.quantify.counts_to_bqml`).
    real_world_slope, real_world_intercept : DICOM Real World Value Mapping from the
        stored voxel values (counts) to Bq/mL: C = slope * counts + intercept.
    """

    image: sitk.Image
    modality: str
    units: str
    nuclide: str | None = None
    tracer: str | None = None
    time_h: float | None = None
    injected_activity_mbq: float | None = None
    decay_correction: str = "NONE"
    acquisition_duration_s: float | None = None
    patient_weight_kg: float | None = None
    patient_id: str = "anonymous"
    scan_id: str = "scan"
    source: str | None = None
    calibration_cps_per_mbq: float | None = None
    real_world_slope: float | None = None
    real_world_intercept: float = 0.0

    def __post_init__(self):
        from .errors import ImagingError, UnitsError

        where = self.source or self.scan_id
        if self.modality not in MODALITIES:
            raise ImagingError(f"{where}: modality {self.modality!r}; expected one of {MODALITIES}")
        if self.units not in UNITS:
            raise UnitsError(f"{where}: units {self.units!r}; expected one of {UNITS}")
        if self.decay_correction not in DECAY_CORRECTIONS:
            raise ImagingError(
                f"{where}: decay_correction {self.decay_correction!r}; expected one of {DECAY_CORRECTIONS}"
            )
        for field in ("time_h", "injected_activity_mbq", "acquisition_duration_s", "patient_weight_kg",
                      "calibration_cps_per_mbq", "real_world_slope", "real_world_intercept"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, numbers.Real) and math.isfinite(value)):
                raise ImagingError(f"{where}: {field} = {value!r}; expected a finite number or None")
        for field in ("injected_activity_mbq", "acquisition_duration_s", "patient_weight_kg",
                      "calibration_cps_per_mbq"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ImagingError(f"{where}: {field} = {value!r}; expected a positive number")
        if self.image.GetDimension() != 3:
            raise ImagingError(f"{where}: image has {self.image.GetDimension()} dimensions; expected 3")

    def metadata(self) -> dict:
        """All fields but `image` and `source` (what a NIfTI sidecar stores)."""
        return {name: getattr(self, name) for name in METADATA_FIELDS}

    def with_image(self, image: sitk.Image, **changes) -> "Scan":
        """A copy with a new image (same metadata unless changed)."""
        return replace(self, image=image, **changes)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(self.image.GetSpacing())

    @property
    def voxel_volume_ml(self) -> float:
        sx, sy, sz = self.image.GetSpacing()
        return sx * sy * sz / 1000.0


#: Scan fields other than the image and the source path: the metadata readers and writers carry.
METADATA_FIELDS = tuple(f.name for f in fields(Scan) if f.name not in ("image", "source"))
