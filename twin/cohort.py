"""Cohort calibration: every patient of a set of study folders calibrated
(`PatientTwin.calibrate`, i.e. `calibration.fit`) in-process or fanned out on a Dask
cluster (`twin.runner`), one patient per part, resumable.

    run = calibrate_cohort("studies/", "cohort_out", method="laplace")
    run.status()      # one row per patient: ok / failed, error, seconds, diagnostics
    run.posterior()   # one row per patient and free parameter: mean, sd, q05, q50, q95

Patients.  `studies` is a folder whose sub-folders holding ``study.toml`` are the study
folders (sorted by name), or an explicit sequence of folders.  A patient's key,
``patient_id``, is its study folder's *name*: unique in the cohort (two folders of one name
are refused before any work) and known before anything is read, so a study that cannot be
read has a key too.  The id the study itself gives is in the status column
``twin_patient_id`` ("" when no twin could be built).  Part k is the k-th study.

Failures.  Anything a patient raises (an unreadable study, a failed fit, a twin that cannot
be saved) is caught inside its task and recorded in its status row (``status = "failed"``,
``error = "<ExceptionType>: <message>"``, no posterior rows); the other patients go on.  A
failed patient is done (its part is written): a rerun skips it, ``force=True`` (``--force``)
recomputes the whole cohort.

Output folder::

    cohort.json            the run (study folders, method, seed, fit options, twin builder);
                           resuming with other settings is refused (`runner.prepare_folder`)
    status/part-k.parquet  patient_id, study, twin_patient_id, status, error, seconds, method,
                           failed_solve_fraction, max_r_hat, min_ess_bulk, divergences
                           (the last three NUTS only, else NaN), warnings
                           (`Posterior.problems`, "; "-joined), twin_folder (relative to
                           the output folder: "twins/<patient_id>", "" when failed)
    posterior/part-k.parquet   patient_id, parameter, mean, sd (ddof 1), q05, q50, q95 of
                           every free parameter over all posterior draws (model units)
    twins/<patient_id>/    the calibrated twin (`PatientTwin.save`, atomic), written by the
                           task on the worker: on a multi-node cluster the output folder must
                           be on a filesystem every worker sees (the Parquet parts are written
                           by the calling process).

Seeds.  Every patient is fitted with the same `seed`, so a patient's result does not depend
on which other studies are in the cohort, nor on where it ran.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from calibration.fit import METHODS
from calibration.posterior import CalibrationWarning

from . import runner
from .errors import TwinError
from .study import STUDY_FILE

MANIFEST = "cohort.json"
TABLES = ("status", "posterior")
TWINS = "twins"
STATUS_TEXT = ("patient_id", "study", "twin_patient_id", "status", "error", "method", "warnings", "twin_folder")
STATUS_FLOAT = ("seconds", "failed_solve_fraction", "max_r_hat", "min_ess_bulk", "divergences")
STATUS_COLUMNS = ("patient_id", "study", "twin_patient_id", "status", "error", "seconds", "method",
                  "failed_solve_fraction", "max_r_hat", "min_ess_bulk", "divergences", "warnings", "twin_folder")
POSTERIOR_COLUMNS = ("patient_id", "parameter", "mean", "sd", "q05", "q50", "q95")


def default_make_twin(folder):
    """The default twin builder: `PatientTwin.from_study(folder)` (PSMA model from the
    study's covariates, its table and anatomy)."""
    from .patient import PatientTwin

    return PatientTwin.from_study(folder)


# ----------------------------------------------------------------------------- checks before any work
def find_studies(studies) -> tuple[Path, ...]:
    """The study folders of `studies` (see module doc), absolute.  TwinError when there
    is none, a folder is missing, or two share a name (their patient ids would collide)."""
    if isinstance(studies, (str, os.PathLike)):
        root = Path(studies)
        if not root.is_dir():
            raise TwinError(f"{root}: not a folder; expected a folder of study folders (each holding {STUDY_FILE})")
        if (root / STUDY_FILE).is_file():
            raise TwinError(f"{root}: is one study folder (it holds {STUDY_FILE}); expected a folder of study "
                            "folders (use `twin calibrate` for one patient)")
        found = sorted((p for p in root.iterdir() if p.is_dir() and (p / STUDY_FILE).is_file()),
                       key=lambda p: p.name)
        if not found:
            raise TwinError(f"{root}: no study folders in it; expected sub-folders each holding {STUDY_FILE}")
    else:
        try:
            found = [Path(s) for s in studies]
        except TypeError:
            raise TwinError(f"studies: {studies!r}; expected a folder or a sequence of study folders") from None
        if not found:
            raise TwinError("studies: empty sequence; expected one or more study folders")
        missing = [str(p) for p in found if not p.is_dir()]
        if missing:
            raise TwinError(f"studies: {missing} are not folders; expected study folders")
    found = [p.resolve() for p in found]
    names: dict[str, Path] = {}
    for p in found:
        if p.name in names:
            raise TwinError(f"studies: {names[p.name]} and {p} share the name {p.name!r} (the patient id of the "
                            "cohort); rename one")
        names[p.name] = p
    return tuple(found)


def _builder_name(make_twin) -> str:
    """A stable name of the twin builder for the manifest (module.qualname)."""
    target = make_twin.func if isinstance(make_twin, functools.partial) else make_twin
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"
    if isinstance(make_twin, functools.partial):
        name += f"(partial: {len(make_twin.args)} args, keywords {sorted(make_twin.keywords)})"
    return name


def _check_fit_kwargs(fit_kwargs) -> dict:
    if fit_kwargs is None:
        return {}
    if not isinstance(fit_kwargs, Mapping) or not all(isinstance(k, str) for k in fit_kwargs):
        raise TwinError(f"fit_kwargs: {fit_kwargs!r}; expected a mapping of calibration.fit keyword -> value")
    reserved = sorted({"method", "seed"} & set(fit_kwargs))
    if reserved:
        raise TwinError(f"fit_kwargs: {reserved} are arguments of calibrate_cohort; pass them there")
    try:
        json.dumps(dict(fit_kwargs), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TwinError(f"fit_kwargs: {err}; expected plain JSON values (numbers, strings, booleans, lists), "
                        "since they are recorded in the run's manifest") from None
    return dict(fit_kwargs)


# ----------------------------------------------------------------------------- one patient
def _text_frame(rows: list[dict], columns: Sequence[str], text: Sequence[str]) -> pd.DataFrame:
    """A DataFrame of fixed columns and dtypes (text as pandas "string", the rest float64),
    so every part has the same Parquet schema, empty ones included."""
    frame = pd.DataFrame(rows, columns=list(columns))
    return frame.astype({c: ("string" if c in text else "float64") for c in columns})


def posterior_rows(patient_id: str, posterior) -> list[dict]:
    """Mean, sd (ddof 1), 5/50/95 % quantiles of each free parameter over all draws:

        mean = (1/n) sum_i theta_i,  sd = sqrt(sum_i (theta_i - mean)^2 / (n - 1)),
        q_p = numpy.quantile(theta, p) (linear interpolation)."""
    theta = np.asarray(posterior.samples["theta"], dtype=np.float64).reshape(-1, len(posterior.free_names))
    rows = []
    for k, name in enumerate(posterior.free_names):
        v = theta[:, k]
        q05, q50, q95 = np.quantile(v, [0.05, 0.5, 0.95])
        rows.append(dict(patient_id=patient_id, parameter=name, mean=float(v.mean()),
                         sd=float(v.std(ddof=1)) if v.size > 1 else np.nan, q05=q05, q50=q50, q95=q95))
    return rows


def calibrate_patient(config: Mapping, make_twin: Callable, part: int) -> dict[str, pd.DataFrame]:
    """Status and posterior tables of patient `part` of the cohort `config` (the manifest
    with "output": plain data, so the task travels to Dask workers): build its twin,
    calibrate it, save it to output/twins/<patient_id>/.  Never raises for the patient's
    own problems: they are recorded in its status row (see module doc)."""
    study = Path(config["studies"][part])
    patient_id = study.name
    row = dict(patient_id=patient_id, study=str(study), twin_patient_id="", status="failed", error="",
               seconds=np.nan, method=config["method"], failed_solve_fraction=np.nan, max_r_hat=np.nan,
               min_ess_bulk=np.nan, divergences=np.nan, warnings="", twin_folder="")
    posterior: list[dict] = []
    start = time.perf_counter()
    try:
        twin = make_twin(study)
        row["twin_patient_id"] = str(twin.patient_id)
        with warnings.catch_warnings():  # a fit's problems go to the status row, not to stderr
            warnings.simplefilter("ignore", CalibrationWarning)
            post = twin.calibrate(config["method"], seed=config["seed"], **config["fit_kwargs"])
        diagnostics = post.diagnostics()
        problems = post.problems()
        target = Path(config["output"]) / TWINS / patient_id
        twin.save(target, overwrite=True)  # a recomputed patient replaces its twin
        posterior = posterior_rows(patient_id, post)
        row.update(status="ok", warnings="; ".join(problems), twin_folder=f"{TWINS}/{patient_id}",
                   **{k: float(diagnostics[k]) for k in STATUS_FLOAT if k in diagnostics})
    except Exception as err:  # this patient's failure, recorded; the others go on
        row["error"] = f"{type(err).__name__}: {err}"
        posterior = []
    row["seconds"] = time.perf_counter() - start
    return {"status": _text_frame([row], STATUS_COLUMNS, STATUS_TEXT),
            "posterior": _text_frame(posterior, POSTERIOR_COLUMNS, ("patient_id", "parameter"))}


# ----------------------------------------------------------------------------- the run
def read_cohort_table(folder, name: str) -> pd.DataFrame:
    """The `status` or `posterior` table of a cohort run from its Parquet parts, sorted by
    patient_id (and parameter)."""
    if name not in TABLES:
        raise TwinError(f"table {name!r}; expected one of {TABLES}")
    keys = ["patient_id"] if name == "status" else ["patient_id", "parameter"]
    return runner.read_parts(folder, name, keys, "cohort")


@dataclass(frozen=True)
class CohortRun:
    """Where a cohort was written and what the run did (`runner.RunStats`)."""

    folder: Path
    stats: runner.RunStats

    def status(self) -> pd.DataFrame:
        return read_cohort_table(self.folder, "status")

    def posterior(self) -> pd.DataFrame:
        return read_cohort_table(self.folder, "posterior")


def calibrate_cohort(studies, output, *, method: str = "laplace", seed: int = 0, fit_kwargs=None,
                     make_twin: Callable | None = None, client=None, force: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> CohortRun:
    """Calibrate every patient of `studies` into `output` (see module doc).

    method: "laplace", "nuts" or "svi"; seed: the fit seed of every patient;
    fit_kwargs: more `calibration.fit` keywords (JSON values: num_samples, num_chains,
      separate_ligands, ...);
    make_twin: study folder -> PatientTwin (default `default_make_twin`); a module-level
      function (or a functools.partial of one) when `client` is given, so it pickles;
    client: None (in-process) or a `distributed.Client` (`runner.connect`);
    force: empty `output` first; else a folder of the same run is resumed (patients on
      disk skipped) and one of another run refused.
    Every argument is checked (TwinError) before anything is written.  Raises TwinError
    naming the patients whose task itself was lost (e.g. workers killed repeatedly); a
    rerun retries only those.
    """
    folders = find_studies(studies)
    if method not in METHODS:
        raise TwinError(f"method {method!r}; expected one of {METHODS}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TwinError(f"seed = {seed!r}; expected an integer >= 0")
    kwargs = _check_fit_kwargs(fit_kwargs)
    make_twin = default_make_twin if make_twin is None else make_twin
    if not callable(make_twin):
        raise TwinError(f"make_twin: {make_twin!r}; expected a function study folder -> PatientTwin")
    manifest = {"studies": [str(p) for p in folders], "method": method, "seed": int(seed), "fit_kwargs": kwargs,
                "make_twin": _builder_name(make_twin)}
    folder = runner.prepare_folder(output, MANIFEST, manifest, force=force).resolve()
    task = functools.partial(calibrate_patient, {**manifest, "output": str(folder)}, make_twin)
    stats = runner.run_parts(task, range(len(folders)), folder, TABLES, client=client, name="cohort-patient",
                             progress=progress)
    if stats.failed:
        raise TwinError(f"{folder}: {len(stats.failed)} patient task(s) were lost (rerun to retry them): "
                        + "; ".join(f"{folders[k].name}: {msg}" for k, msg in sorted(stats.failed.items())[:5]))
    return CohortRun(folder, stats)
