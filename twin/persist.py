"""Saving and loading a `PatientTwin` in safe formats (no pickle, nothing evaluated).

Folder layout (written atomically: a temporary folder renamed into place):

    twin.json       format/version, patient id, covariates, model recipe (PSMA model:
                    tracers; rebuilt with `pbpk.psma_model` from the covariates), schedule,
                    free parameters with priors, radiobiology, dose method, posterior meta
    table.csv       the time-activity table the twin was calibrated on
    posterior.npz   posterior arrays (theta, z, error_scale, solver_ok, sample statistics)
    labels.nii.gz, ct.nii.gz, activity.nii.gz   anatomy and the activity-shape image (if any)

Only twins built from covariates (`PatientTwin.from_covariates` / `from_study`) can be
saved: their model is rebuilt from the recipe; a twin of another model raises TwinError.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

import calibration
import imaging
import pbpk
from calibration.posterior import Posterior
from dose.metrics import Radiobiology
from imaging.atomic import atomic_folder

from .covariates import Covariates
from .errors import TwinError

FORMAT = "rpt-twin patient twin"
VERSION = 1
_SAMPLE_KEYS = ("theta", "error_scale", "z", "solver_ok")


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _image(obj) -> sitk.Image | None:
    if obj is None:
        return None
    return obj.image if isinstance(obj, imaging.Scan) else obj


def save_twin(twin, folder, *, overwrite: bool = False) -> Path:
    """Write `twin` (see module doc); refuses an existing folder unless `overwrite`."""
    if twin.covariates is None or twin.model_factory is None:
        raise TwinError("save: only twins built from covariates (PatientTwin.from_covariates / from_study) can be "
                        "saved; their model is rebuilt from the covariates")
    post = twin.posterior
    meta = {
        "format": FORMAT, "version": VERSION, "patient_id": twin.patient_id,
        "covariates": twin.covariates.to_dict(),
        "model": {"kind": "psma_model", "tracers": [t.name for t in _model_tracers(twin.model)]},
        "schedule": [{"time_h": a.time_h, "activity_mbq": a.activity_mbq, "ligand_nmol": a.ligand_nmol,
                      "tracer": a.tracer.name} for a in twin.schedule],
        "free": [dataclasses.asdict(f) for f in _free_parameters(twin)],
        "radiobiology": None if twin._radiobiology is None else
        {k: dataclasses.asdict(v) for k, v in twin._radiobiology.items()},
        "dose_method": twin.dose_method,
        "region_names": {str(k): v for k, v in twin.region_names.items()},
        "posterior": None if post is None else {
            "method": post.method, "info": _json_safe(post.info), "separate_ligands": bool(post.problem.segments),
            "sample_stats": sorted(post.sample_stats)},
    }
    folder = Path(folder)
    try:
        with atomic_folder(folder, overwrite=overwrite) as tmp:
            (tmp / "twin.json").write_text(json.dumps(_json_safe(meta), indent=2))
            twin.table.to_csv(tmp / "table.csv", index=False)
            if post is not None:
                arrays = {k: np.asarray(post.samples[k]) for k in _SAMPLE_KEYS}
                arrays.update({f"stats_{k}": np.asarray(v) for k, v in post.sample_stats.items()})
                np.savez(tmp / "posterior.npz", **arrays)
            for name, img in (("labels", twin.labels), ("ct", _image(twin.ct)), ("activity", _image(twin.activity_image))):
                if img is not None:
                    sitk.WriteImage(img, str(tmp / f"{name}.nii.gz"), True)
    except FileExistsError as err:
        raise TwinError(str(err)) from None
    return folder


def _model_tracers(model: pbpk.Model) -> list[pbpk.Tracer]:
    """The tracers a model can be dosed with (its labelled dose targets)."""
    return [pbpk.tracer(f"{nuc}-{lig}") for lig, nuc in model.dose_targets if nuc is not None]


def _free_parameters(twin) -> tuple[calibration.FreeParameter, ...]:
    from calibration.priors import resolve_free_parameters

    return resolve_free_parameters(twin.model, twin.free)


def load_twin(folder):
    """Read a twin written by `save_twin` (TwinError naming the file on any problem)."""
    from .patient import PatientTwin

    folder = Path(folder)
    path = folder / "twin.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise TwinError(f"{path}: not found; expected a folder written by PatientTwin.save") from None
    except json.JSONDecodeError as err:
        raise TwinError(f"{path}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise TwinError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; expected "
                        f"{FORMAT!r} version {VERSION}")
    covariates = Covariates.from_dict(meta["covariates"], where=str(path))
    schedule = pbpk.Schedule([pbpk.Administration(**a) for a in meta["schedule"]])
    free = [calibration.FreeParameter(**f) for f in meta["free"]]
    radiobiology = None if meta["radiobiology"] is None else \
        {k: Radiobiology(**v) for k, v in meta["radiobiology"].items()}
    table = pd.read_csv(folder / "table.csv")
    images = {n: sitk.ReadImage(str(folder / f"{n}.nii.gz")) if (folder / f"{n}.nii.gz").exists() else None
              for n in ("labels", "ct", "activity")}
    ct = None if images["ct"] is None else imaging.Scan(images["ct"], "CT", "HU", patient_id=meta["patient_id"])
    region_names = {int(k): v for k, v in meta["region_names"].items()} or None
    twin = PatientTwin.from_covariates(
        table, schedule, covariates, therapy_tracers=meta["model"]["tracers"], patient_id=meta["patient_id"],
        labels=images["labels"], region_names=region_names if images["labels"] is not None else None, ct=ct,
        activity_image=images["activity"], free=free, radiobiology=radiobiology, dose_method=meta["dose_method"])
    pm = meta["posterior"]
    if pm is not None:
        with np.load(folder / "posterior.npz", allow_pickle=False) as npz:
            samples = {k: npz[k] for k in _SAMPLE_KEYS}
            stats = {k: npz[f"stats_{k}"] for k in pm["sample_stats"]}
        adjoint = "reverse" if pm["method"] == "svi" else "forward"
        options = dataclasses.replace(calibration.CALIBRATION_SOLVER, adjoint=adjoint)
        problem = calibration.make_problem(twin.model, twin.table, twin.schedule, free=free, options=options,
                                           separate_ligands=pm["separate_ligands"])
        twin.posterior = Posterior(problem, pm["method"], samples, pm["info"], stats)
    return twin
