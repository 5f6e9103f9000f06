"""DICOM series reading and writing (pydicom for tags and pixels).

Supported objects
-----------------
* PET (PT Image Storage): one file per slice, per-slice RescaleSlope/Intercept, Units
  (BQML, CNTS or GML = body-weight SUV), DecayCorrection START/ADMIN/NONE, DecayFactor,
  RadiopharmaceuticalInformationSequence (RadiopharmaceuticalStartDateTime and
  StartTime, RadionuclideTotalDose in Bq, RadionuclideHalfLife in s, nuclide code).
* SPECT (NM Image Storage, reconstructed tomography): one multi-frame file, frames
  along SliceVector; position and orientation in DetectorInformationSequence; voxel
  values counts (or Bq/mL), optional Real World Value Mapping (stored value -> Bq/mL).
  RadionuclideTotalDose is in MBq in the NM Isotope module (DICOM PS3.3 C.8.4.10.1.7),
  in Bq in the PET Isotope module.
* CT (CT Image Storage): one file per slice, HU through RescaleSlope/Intercept.
* Label maps: Secondary Capture slices, Modality OT, ImageType DERIVED\\SECONDARY\\LABELMAP
  (integer labels; a DICOM-SEG object is not read).

Geometry (LPS, mm): with direction matrix D (columns = image axes), ImageOrientationPatient
= (D[:,0], D[:,1]); slice k sits at origin + k * spacing_z * D[:,2]; PixelSpacing =
(row spacing, column spacing) = (spacing_y, spacing_x).  The reader orders slices by
their position along the normal n = row x column, so a series written from an image with
a left-handed direction (det D = -1) reads back as the same physical image with its z
axis flipped.

Timing: time after injection t = AcquisitionStart - RadiopharmaceuticalStart, with the
acquisition start from AcquisitionDateTime (earliest slice), else AcquisitionDate +
AcquisitionTime, else SeriesDate + SeriesTime; the injection from
RadiopharmaceuticalStartDateTime, else (SeriesDate or AcquisitionDate or StudyDate) +
RadiopharmaceuticalStartTime.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from .atomic import atomic_folder
from .errors import GeometryMismatchError, ImagingError, MissingTagError, UnitsError
from .scan import METADATA_FIELDS, Scan

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
#: Injection time used by the writer when none is given (any fixed instant works: only
#: differences of times are meaningful).
DEFAULT_INJECTION = dt.datetime(2026, 1, 5, 9, 0, 0)
#: DICOM Units (0054,1001) <-> Scan.units.
_UNITS_IN = {"BQML": "BQML", "CNTS": "CNTS", "GML": "SUVbw", "HU": "HU"}
_UNITS_OUT = {"BQML": "BQML", "CNTS": "CNTS", "SUVbw": "GML"}
#: Private coding scheme for the nuclide code (the "99" prefix marks a private scheme).
_NUCLIDE_SCHEME = "99RPTTWIN"


# ----------------------------------------------------------------------------- times
def _dt_text(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def _parse_dt(text: str, where: str, field: str) -> dt.datetime:
    s = str(text).strip()
    s = s.split("+")[0].split("-")[0] if len(s) > 14 and ("+" in s[14:] or "-" in s[14:]) else s
    try:
        main, _, frac = s.partition(".")
        fmt = {14: "%Y%m%d%H%M%S", 12: "%Y%m%d%H%M", 10: "%Y%m%d%H", 8: "%Y%m%d"}[len(main)]
        t = dt.datetime.strptime(main, fmt)
    except (KeyError, ValueError):
        raise ImagingError(f"{where}: {field} = {text!r}; expected a DICOM DT YYYYMMDDHHMMSS[.ffffff]") from None
    return t + dt.timedelta(seconds=float("0." + frac) if frac else 0.0)


def _parse_date_time(date: str, time: str, where: str, field: str) -> dt.datetime:
    d, t = str(date).strip(), str(time).strip().replace(":", "")
    main, _, frac = t.partition(".")
    main = main.ljust(6, "0")
    return _parse_dt(f"{d}{main}" + (f".{frac}" if frac else ""), where, field)


def _get(ds: Dataset, keyword: str):
    value = getattr(ds, keyword, None)
    return None if value is None or value == "" else value


def injection_datetime(ds: Dataset, where: str) -> dt.datetime:
    """Administration time from the RadiopharmaceuticalInformationSequence (see module doc)."""
    seq = _get(ds, "RadiopharmaceuticalInformationSequence")
    if not seq:
        raise MissingTagError(f"{where}: RadiopharmaceuticalInformationSequence (0054,0016) missing; "
                              "needed for the injection time (or give time_h=...)")
    item = seq[0]
    if _get(item, "RadiopharmaceuticalStartDateTime"):
        return _parse_dt(item.RadiopharmaceuticalStartDateTime, where, "RadiopharmaceuticalStartDateTime")
    start = _get(item, "RadiopharmaceuticalStartTime")
    date = _get(ds, "SeriesDate") or _get(ds, "AcquisitionDate") or _get(ds, "StudyDate")
    if start and date:
        return _parse_date_time(date, start, where, "SeriesDate + RadiopharmaceuticalStartTime")
    raise MissingTagError(f"{where}: RadiopharmaceuticalStartDateTime (0018,1078) and RadiopharmaceuticalStartTime "
                          "(0018,1072) with a SeriesDate/AcquisitionDate missing; cannot find the injection time "
                          "(or give time_h=...)")


def acquisition_datetime(datasets: list[Dataset], where: str) -> dt.datetime:
    """Acquisition start: the earliest slice time (see module doc)."""
    times = []
    for ds in datasets:
        if _get(ds, "AcquisitionDateTime"):
            times.append(_parse_dt(ds.AcquisitionDateTime, where, "AcquisitionDateTime"))
        elif _get(ds, "AcquisitionDate") and _get(ds, "AcquisitionTime"):
            times.append(_parse_date_time(ds.AcquisitionDate, ds.AcquisitionTime, where,
                                          "AcquisitionDate + AcquisitionTime"))
        elif _get(ds, "SeriesDate") and _get(ds, "SeriesTime"):
            times.append(_parse_date_time(ds.SeriesDate, ds.SeriesTime, where, "SeriesDate + SeriesTime"))
        else:
            raise MissingTagError(f"{where}: AcquisitionDateTime (0008,002A), AcquisitionDate/AcquisitionTime and "
                                  "SeriesDate/SeriesTime all missing; cannot find the acquisition time "
                                  "(or give time_h=...)")
    return min(times)


# ----------------------------------------------------------------------------- reading
def _nuclide_from(item: Dataset, where: str) -> str | None:
    from dose.nuclides import half_life_h, normalise_name

    candidates = []
    code = _get(item, "RadionuclideCodeSequence")
    if code:
        candidates += [_get(code[0], "CodeMeaning"), _get(code[0], "CodeValue")]
    candidates.append(_get(item, "Radionuclide"))
    for text in candidates:
        if text:
            cleaned = str(text).replace("^", " ").strip()
            try:
                name = normalise_name(cleaned)
                half_life_h(name)
                return name
            except Exception:  # noqa: BLE001 - not a recognisable name; try the next source
                pass
    half_life_s = _get(item, "RadionuclideHalfLife")
    if half_life_s:
        # Match the half-life against common imaging/therapy nuclides (ICRP-107 values).
        for name in ("F-18", "Ga-68", "Cu-64", "Zr-89", "Tc-99m", "In-111", "I-123", "I-124", "I-131",
                     "Lu-177", "Y-90", "Tb-161", "Ac-225", "Pb-212", "Ra-223", "Sm-153", "Ho-166"):
            if abs(half_life_h(name) * 3600.0 - float(half_life_s)) <= 0.005 * float(half_life_s):
                return name
    return None


def _dicom_files(folder: Path) -> list[tuple[Path, Dataset]]:
    out = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            continue
        if "PixelData" in ds:
            out.append((path, ds))
    return out


def _vec(ds: Dataset, keyword: str, n: int, where: str) -> np.ndarray:
    value = _get(ds, keyword)
    if value is None or len(value) != n:
        raise MissingTagError(f"{where}: {keyword} missing or not {n} numbers; needed for the image geometry")
    return np.array([float(v) for v in value])


def _stored_to_float(ds: Dataset, where: str) -> np.ndarray:
    arr = ds.pixel_array.astype(np.float64)
    slope = float(_get(ds, "RescaleSlope") or 1.0)
    intercept = float(_get(ds, "RescaleIntercept") or 0.0)
    return arr * slope + intercept


def _classify(ds: Dataset, where: str) -> tuple[str, str]:
    """(Scan modality, Scan units) of a dataset."""
    modality = str(_get(ds, "Modality") or "")
    image_type = [str(v).upper() for v in (_get(ds, "ImageType") or [])]
    if modality in ("OT", "SEG") and "LABELMAP" in image_type:
        return "SEG", "LABEL"
    if modality == "CT":
        return "CT", "HU"
    if modality in ("PT", "NM"):
        units = _get(ds, "Units")
        if units is None:
            if modality == "PT":
                raise MissingTagError(f"{where}: Units (0054,1001) missing; expected one of {sorted(_UNITS_IN)}")
            units = "CNTS"
        if str(units).upper() not in _UNITS_IN or _UNITS_IN[str(units).upper()] == "HU":
            raise UnitsError(f"{where}: Units (0054,1001) = {units!r}; expected one of BQML, CNTS, GML")
        return modality, _UNITS_IN[str(units).upper()]
    raise ImagingError(f"{where}: Modality (0008,0060) = {modality!r}; expected PT, NM, CT or a LABELMAP (OT)")


def _single_frame_volume(files: list[tuple[Path, Dataset]], where: str):
    first = files[0][1]
    iop = _vec(first, "ImageOrientationPatient", 6, f"{files[0][0]}")
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    entries = []
    for path, ds in files:
        if not np.allclose(_vec(ds, "ImageOrientationPatient", 6, str(path)), iop, atol=1e-4):
            raise GeometryMismatchError(f"{path}: ImageOrientationPatient differs from {files[0][0]}")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise GeometryMismatchError(f"{path}: Rows/Columns differ from {files[0][0]}")
        ipp = _vec(ds, "ImagePositionPatient", 3, str(path))
        entries.append((float(ipp @ normal), ipp, path, ds))
    entries.sort(key=lambda e: e[0])
    positions = np.array([e[0] for e in entries])
    if len(entries) > 1:
        gaps = np.diff(positions)
        if np.any(gaps <= 1e-6):
            raise GeometryMismatchError(f"{where}: two slices at the same position along the slice normal")
        if np.ptp(gaps) > max(0.01, 1e-3 * gaps.mean()):
            raise GeometryMismatchError(f"{where}: slice spacing not uniform ({gaps.min():.4g}..{gaps.max():.4g} mm)")
        dz = float(gaps.mean())
    else:
        dz = float(_get(first, "SpacingBetweenSlices") or _get(first, "SliceThickness") or 1.0)
    ps = _vec(first, "PixelSpacing", 2, str(files[0][0]))
    volume = np.stack([_stored_to_float(e[3], str(e[2])) for e in entries])
    direction = np.column_stack([row, col, normal])
    return volume, entries[0][1], (float(ps[1]), float(ps[0]), dz), direction, [e[3] for e in entries]


def _multi_frame_volume(path: Path, ds: Dataset):
    where = str(path)
    det = _get(ds, "DetectorInformationSequence")
    geo = det[0] if det and "ImagePositionPatient" in det[0] else ds
    ipp = _vec(geo, "ImagePositionPatient", 3, where)
    iop = _vec(geo, "ImageOrientationPatient", 6, where)
    row, col = iop[:3], iop[3:]
    ps = _vec(ds, "PixelSpacing", 2, where)
    dz = _get(ds, "SpacingBetweenSlices") or _get(ds, "SliceThickness")
    if dz is None:
        raise MissingTagError(f"{where}: SpacingBetweenSlices (0018,0088) and SliceThickness missing")
    volume = _stored_to_float(ds, where)
    if volume.ndim == 2:
        volume = volume[None]
    # Frames step by SpacingBetweenSlices along the normal row x column; a negative spacing
    # (written by some gamma cameras) means they step along -normal.
    normal = np.cross(row, col) * (1.0 if float(dz) > 0 else -1.0)
    return volume, ipp, (float(ps[1]), float(ps[0]), abs(float(dz))), np.column_stack([row, col, normal])


def _real_world_mapping(ds: Dataset, where: str) -> tuple[float | None, float]:
    """Real World Value Mapping to Bq/mL, re-expressed per rescaled voxel value (counts)."""
    seq = _get(ds, "RealWorldValueMappingSequence")
    if not seq:
        return None, 0.0
    for item in seq:
        units = _get(item, "MeasurementUnitsCodeSequence")
        code = str(_get(units[0], "CodeValue") or "").lower() if units else ""
        if code not in ("bq/ml", "bqml"):
            continue
        s = float(item.RealWorldValueSlope)
        i = float(_get(item, "RealWorldValueIntercept") or 0.0)
        rs = float(_get(ds, "RescaleSlope") or 1.0)
        ri = float(_get(ds, "RescaleIntercept") or 0.0)
        return s / rs, i - s * ri / rs  # C = s*stored + i with stored = (counts - ri)/rs
    return None, 0.0


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None, **overrides) -> Scan:
    """Read one DICOM series from `folder` into a `Scan` (see module doc for conventions).

    `overrides`: any `Scan` field but `image`; e.g. `time_h=` when the timing tags are
    missing, `injected_activity_mbq=`, `nuclide=`.  With several series in the folder,
    `series_uid` picks one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImagingError(f"{folder}: not a folder of DICOM files")
    bad = set(overrides) - set(METADATA_FIELDS)
    if bad:
        raise ImagingError(f"{folder}: unknown overrides {sorted(bad)}; expected some of {METADATA_FIELDS}")
    files = _dicom_files(folder)
    if not files:
        raise ImagingError(f"{folder}: no DICOM image files")
    uids = sorted({str(ds.SeriesInstanceUID) for _, ds in files})
    if series_uid is not None:
        files = [(p, ds) for p, ds in files if str(ds.SeriesInstanceUID) == series_uid]
        if not files:
            raise ImagingError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found {uids}")
    elif len(uids) > 1:
        raise ImagingError(f"{folder}: {len(uids)} series (SeriesInstanceUID {uids}); pass series_uid=")
    first_path, first = files[0]
    where = str(first_path)
    modality, units = _classify(first, where)

    frames = int(_get(first, "NumberOfFrames") or 1)
    if frames > 1 or str(first.SOPClassUID) == NM_STORAGE:
        if len(files) > 1:
            raise ImagingError(f"{folder}: {len(files)} multi-frame files in one series; expected one")
        volume, origin, spacing, direction = _multi_frame_volume(first_path, first)
        datasets = [first]
    else:
        volume, origin, spacing, direction, datasets = _single_frame_volume(files, str(folder))

    if units == "LABEL":
        if not np.allclose(volume, np.round(volume)) or volume.min() < 0:
            raise ImagingError(f"{where}: label map has non-integer or negative values")
        image = sitk.GetImageFromArray(np.round(volume).astype(np.uint16))
    else:
        image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(spacing)
    image.SetDirection(tuple(float(v) for v in direction.ravel()))

    meta: dict = {
        "modality": modality,
        "units": units,
        "patient_id": str(_get(first, "PatientID") or "anonymous"),
        "scan_id": str(_get(first, "SeriesDescription") or first.SeriesInstanceUID),
        "patient_weight_kg": float(first.PatientWeight) if _get(first, "PatientWeight") else None,
    }
    if modality in ("PT", "NM"):
        meta.update(_nuclear_metadata(first, datasets, modality, where, overrides))
        if modality == "NM":
            slope, intercept = _real_world_mapping(first, where)
            meta["real_world_slope"], meta["real_world_intercept"] = slope, intercept
    elif "time_h" not in overrides and _get(first, "RadiopharmaceuticalInformationSequence"):
        meta["time_h"] = _time_h(first, datasets, where)
    meta.update(overrides)
    return Scan(image=image, source=str(folder), **meta)


def _time_h(first: Dataset, datasets: list[Dataset], where: str) -> float:
    t_h = (acquisition_datetime(datasets, where) - injection_datetime(first, where)).total_seconds() / 3600.0
    if t_h < 0:
        raise ImagingError(f"{where}: acquisition {-t_h:.3f} h before the radiopharmaceutical start time; "
                           "without RadiopharmaceuticalStartDateTime (0018,1078) the injection date is taken "
                           "from SeriesDate, wrong for scans on a later day (give time_h=...)")
    return t_h


def _nuclear_metadata(first: Dataset, datasets: list[Dataset], modality: str, where: str, overrides: dict) -> dict:
    meta: dict = {}
    seq = _get(first, "RadiopharmaceuticalInformationSequence")
    item = seq[0] if seq else Dataset()
    if "time_h" not in overrides:
        meta["time_h"] = _time_h(first, datasets, where)
    dose = _get(item, "RadionuclideTotalDose")
    if dose is not None:
        dose = float(dose)
        # PET: Bq (PS3.3 C.8.9.4); NM: MBq (PS3.3 C.8.4.10.1.7).  Some NM writers store Bq:
        # no real administration exceeds 1e6 MBq, so a larger NM value is read as Bq.
        meta["injected_activity_mbq"] = dose / 1e6 if modality == "PT" or dose > 1e6 else dose
    meta["nuclide"] = _nuclide_from(item, where)
    meta["tracer"] = str(_get(item, "Radiopharmaceutical")) if _get(item, "Radiopharmaceutical") else None
    dc = _get(first, "DecayCorrection")
    if dc is None and modality == "PT" and "decay_correction" not in overrides:
        raise MissingTagError(f"{where}: DecayCorrection (0054,1102) missing; expected START, ADMIN or NONE")
    dc = str(dc or "NONE").upper()
    if dc not in ("START", "ADMIN", "NONE"):
        raise ImagingError(f"{where}: DecayCorrection (0054,1102) = {dc!r}; expected START, ADMIN or NONE")
    meta["decay_correction"] = dc
    duration = _get(first, "ActualFrameDuration")
    meta["acquisition_duration_s"] = float(duration) / 1000.0 if duration else None
    return meta


# ----------------------------------------------------------------------------- writing
def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _encode(values: np.ndarray, unsigned: bool = False) -> tuple[np.ndarray, str, str]:
    """Stored integers, RescaleSlope, RescaleIntercept (DS text) for float `values`.

    Integral values that fit the 16-bit range are stored as they are (slope 1);
    otherwise slope = max|x| / 32767 (signed) and stored = round(x / slope), so the
    per-voxel error is at most slope / 2.
    """
    lo, hi = (0, 65535) if unsigned else (-32768, 32767)
    vmin, vmax = float(values.min()), float(values.max())
    if np.all(values == np.round(values)) and vmin >= lo and vmax <= hi:
        return values.astype(np.uint16 if unsigned else np.int16), "1", "0"
    if unsigned:
        raise ImagingError(f"label values must be integers in [0, 65535]; got {vmin}..{vmax}")
    peak = max(abs(vmin), abs(vmax))
    slope_text = _ds(peak / 32767.0 if peak > 0 else 1.0)
    slope = float(slope_text)
    stored = np.clip(np.round(values / slope), -32768, 32767).astype(np.int16)
    return stored, slope_text, "0"


def _base_dataset(scan: Scan, sop_class: str, uids: dict, acq: dt.datetime, injection: dt.datetime) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PatientID = scan.patient_id
    ds.PatientName = scan.patient_id
    if scan.patient_weight_kg is not None:
        ds.PatientWeight = _ds(scan.patient_weight_kg)
    ds.StudyDate = injection.strftime("%Y%m%d")
    ds.StudyTime = injection.strftime("%H%M%S")
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = acq.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = acq.strftime("%H%M%S.%f")
    ds.AcquisitionDateTime = _dt_text(acq)
    ds.SeriesDescription = scan.scan_id
    ds.SeriesNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    size = scan.image.GetSize()
    ds.Rows, ds.Columns = size[1], size[0]
    sx, sy, sz = scan.image.GetSpacing()
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.SliceThickness = _ds(sz)
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _radiopharmaceutical(scan: Scan, injection: dt.datetime) -> Dataset:
    from dose.nuclides import half_life_h

    item = Dataset()
    if scan.tracer:
        item.Radiopharmaceutical = scan.tracer
    item.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S.%f")
    item.RadiopharmaceuticalStartDateTime = _dt_text(injection)
    if scan.injected_activity_mbq is not None:
        # PET: Bq (PS3.3 C.8.9.4); NM: MBq (PS3.3 C.8.4.10.1.7).
        dose = scan.injected_activity_mbq * (1e6 if scan.modality == "PT" else 1.0)
        item.RadionuclideTotalDose = _ds(dose)
    if scan.nuclide:
        item.RadionuclideHalfLife = _ds(half_life_h(scan.nuclide) * 3600.0)
        code = Dataset()
        code.CodeValue = scan.nuclide
        code.CodingSchemeDesignator = _NUCLIDE_SCHEME
        code.CodeMeaning = scan.nuclide
        item.RadionuclideCodeSequence = Sequence([code])
    return item


def _decay_factor(scan: Scan) -> float:
    """DICOM DecayFactor (0054,1321): the factor applied to the frame-average activity.

    START: lambda*T / (1 - exp(-lambda*T)) (frame average -> acquisition start);
    ADMIN: that times exp(lambda*t); NONE: 1.
    """
    from .quantify import decay_factor_to

    if scan.decay_correction == "NONE" or not scan.nuclide:
        return 1.0
    return decay_factor_to(scan, scan.decay_correction, source="NONE")


def write_dicom_series(scan: Scan, folder: str | os.PathLike, *, injection_datetime: dt.datetime | None = None,
                       overwrite: bool = False, study_uid: str | None = None,
                       frame_of_reference_uid: str | None = None) -> Path:
    """Write `scan` as a DICOM series into `folder` (created; atomic: a temporary
    sibling folder is filled, then renamed, so a failure leaves no `folder`).

    PT and CT: one file per slice; NM: one multi-frame file; label maps (SEG): Secondary
    Capture slices.  Acquisition time = `injection_datetime` (default
    `DEFAULT_INJECTION`) + `scan.time_h`.  NM counts scans with a calibration factor and
    duration get a Real World Value Mapping to Bq/mL:
    C = counts * 1e6 / (calibration_cps_per_mbq * duration_s * voxel_volume_ml).
    Returns the folder.
    """
    where = scan.source or scan.scan_id
    if scan.modality in ("PT", "NM"):
        if scan.time_h is None:
            raise MissingTagError(f"{where}: time_h is None; a {scan.modality} series needs the time after injection")
        if scan.units not in _UNITS_OUT:
            raise UnitsError(f"{where}: units {scan.units!r} cannot be written for {scan.modality}; "
                             f"expected one of {sorted(_UNITS_OUT)}")
    if scan.modality == "CT" and scan.units != "HU":
        raise UnitsError(f"{where}: CT units {scan.units!r}; expected HU")
    if scan.modality == "SEG" and scan.units != "LABEL":
        raise UnitsError(f"{where}: SEG units {scan.units!r}; expected LABEL")
    direction = np.array(scan.image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.array(scan.image.GetOrigin(), dtype=float)
    values = sitk.GetArrayFromImage(scan.image).astype(np.float64)  # (z, y, x)
    if not np.all(np.isfinite(values)):
        raise ImagingError(f"{where}: image has NaN or infinite voxels; cannot write DICOM")
    injection = injection_datetime or DEFAULT_INJECTION
    acq = injection + dt.timedelta(hours=scan.time_h or 0.0)
    uids = {"study": study_uid or generate_uid(), "series": generate_uid(),
            "frame": frame_of_reference_uid or generate_uid()}
    iop = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    folder = Path(folder)
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        if scan.modality == "NM":
            _write_nm(scan, tmp, values, origin, iop, uids, acq, injection)
        else:
            sop = {"PT": PET_STORAGE, "CT": CT_STORAGE, "SEG": SC_STORAGE}[scan.modality]
            for k in range(values.shape[0]):
                ds = _base_dataset(scan, sop, uids, acq, injection)
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.InstanceNumber = k + 1
                ds.ImagePositionPatient = [_ds(v) for v in origin + k * scan.image.GetSpacing()[2] * direction[:, 2]]
                ds.ImageOrientationPatient = iop
                stored, slope, intercept = _encode(values[k], unsigned=scan.modality == "SEG")
                ds.PixelRepresentation = 0 if scan.modality == "SEG" else 1
                ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
                if scan.modality == "CT":
                    ds.Modality = "CT"
                    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
                    ds.RescaleType = "HU"
                elif scan.modality == "SEG":
                    ds.Modality = "OT"
                    ds.ImageType = ["DERIVED", "SECONDARY", "LABELMAP"]
                    ds.ConversionType = "WSD"
                else:
                    _pet_tags(ds, scan, injection, k, values.shape[0])
                ds.PixelData = stored.tobytes()
                ds.save_as(tmp / f"{k + 1:05d}.dcm", enforce_file_format=True)
    return folder


def _pet_tags(ds: Dataset, scan: Scan, injection: dt.datetime, k: int, n: int) -> None:
    ds.Modality = "PT"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.Units = _UNITS_OUT[scan.units]
    ds.DecayCorrection = scan.decay_correction
    corrected = ["ATTN", "SCAT"] + (["DECY"] if scan.decay_correction != "NONE" else [])
    ds.CorrectedImage = corrected
    ds.DecayFactor = _ds(_decay_factor(scan))
    ds.CountsSource = "EMISSION"
    ds.ImageIndex = k + 1
    ds.NumberOfSlices = n
    if scan.acquisition_duration_s is not None:
        ds.ActualFrameDuration = int(round(scan.acquisition_duration_s * 1000.0))
    ds.RadiopharmaceuticalInformationSequence = Sequence([_radiopharmaceutical(scan, injection)])


def _write_nm(scan: Scan, tmp: Path, values: np.ndarray, origin: np.ndarray, iop: list, uids: dict,
              acq: dt.datetime, injection: dt.datetime) -> None:
    ds = _base_dataset(scan, NM_STORAGE, uids, acq, injection)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.Modality = "NM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    n = values.shape[0]
    ds.NumberOfFrames = n
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x0054, 0x0080)  # SliceVector
    ds.SliceVector = list(range(1, n + 1))
    ds.NumberOfSlices = n
    ds.SpacingBetweenSlices = _ds(scan.image.GetSpacing()[2])
    detector = Dataset()
    detector.ImagePositionPatient = [_ds(v) for v in origin]
    detector.ImageOrientationPatient = iop
    ds.DetectorInformationSequence = Sequence([detector])
    ds.ImagePositionPatient = detector.ImagePositionPatient
    ds.ImageOrientationPatient = iop
    stored, slope, intercept = _encode(values)
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Units = _UNITS_OUT[scan.units]
    ds.DecayCorrection = scan.decay_correction
    if scan.acquisition_duration_s is not None:
        ds.ActualFrameDuration = int(round(scan.acquisition_duration_s * 1000.0))
    ds.RadiopharmaceuticalInformationSequence = Sequence([_radiopharmaceutical(scan, injection)])
    rw_slope, rw_intercept = _counts_to_bqml_mapping(scan)
    if rw_slope is not None:
        item = Dataset()
        item.LUTExplanation = "counts to Bq/mL"
        item.LUTLabel = "BQML"
        item.add_new(0x00409216, "SS", int(stored.min()))  # RealWorldValueFirstValueMapped
        item.add_new(0x00409211, "SS", int(stored.max()))  # RealWorldValueLastValueMapped
        rs = float(slope)
        item.RealWorldValueSlope = rw_slope * rs  # maps stored values: C = slope*(rs*stored) + i
        item.RealWorldValueIntercept = rw_intercept
        unit = Dataset()
        unit.CodeValue = "Bq/ml"
        unit.CodingSchemeDesignator = "UCUM"
        unit.CodeMeaning = "Bq/ml"
        item.MeasurementUnitsCodeSequence = Sequence([unit])
        ds.RealWorldValueMappingSequence = Sequence([item])
    ds.PixelData = stored.tobytes()
    ds.save_as(tmp / "00001.dcm", enforce_file_format=True)


def _counts_to_bqml_mapping(scan: Scan) -> tuple[float | None, float]:
    if scan.units != "CNTS":
        return None, 0.0
    if scan.real_world_slope is not None:
        return scan.real_world_slope, scan.real_world_intercept
    if scan.calibration_cps_per_mbq is not None and scan.acquisition_duration_s is not None:
        return 1e6 / (scan.calibration_cps_per_mbq * scan.acquisition_duration_s * scan.voxel_volume_ml), 0.0
    return None, 0.0

