"""Time-activity table -> arrays the likelihood indexes into.

The input is the long table of `imaging.time_activity` (one row per scan and region):
columns ``patient, modality, tracer, time_h, region, activity_mbq`` are required;
``activity_uncertainty_mbq`` (1 sd, MBq), ``cycle`` and ``below_detection`` are optional.

Timing convention: ``time_h`` is the time after the injection of the row's tracer, as
imaging reports it.  When a schedule holds several injections of the same tracer
(therapy cycles), the optional ``cycle`` column (1-based, counting that tracer's
administrations in time order) says which one; without it the first is assumed.  The
schedule-clock time of a row is then ``administration.time_h + time_h``.

Activities are physical (not decay corrected), in MBq, as the model predicts them.
Rows with ``below_detection`` True carry the detection limit in ``activity_mbq`` and
enter the likelihood as left-censored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

import pbpk

from .errors import EmptyTableError, MissingColumnError, TableError, UnknownRegionError

REQUIRED_COLUMNS = ("patient", "modality", "tracer", "time_h", "region", "activity_mbq")
#: Modalities of the error model: PET ("PT") and SPECT/planar ("NM").
MODALITIES = ("PT", "NM")


@dataclass(frozen=True)
class Observations:
    """One patient's measurements, as index arrays into a simulation.

    times_h: (n_times,) sorted unique schedule-clock times (h) to simulate at;
    time_index, region_index: (n_obs,) indices into `times_h` and `model.region_names`;
    nuclide: (n_obs,) nuclide of each row (resolved to the trajectory's nuclide axis
      at trace time, since that axis depends on the schedule);
    modality_index: (n_obs,) 0 for PET, 1 for SPECT;
    is_lesion: (n_obs,) True for lesion/tumour regions (own error scale);
    activity_mbq: (n_obs,) measured activity (or detection limit when censored);
    relative_uncertainty: (n_obs,) measurement sd / value (0 when not given);
    censored: (n_obs,) left-censored rows.
    """

    patient: str
    times_h: np.ndarray
    time_index: np.ndarray
    region_index: np.ndarray
    nuclide: tuple[str, ...]
    modality_index: np.ndarray
    is_lesion: np.ndarray
    activity_mbq: np.ndarray
    relative_uncertainty: np.ndarray
    censored: np.ndarray
    table: pd.DataFrame

    @property
    def n(self) -> int:
        return int(self.activity_mbq.size)


def is_lesion_region(name: str) -> bool:
    """Lesions and tumour remainders get the lesion error scale."""
    return name.startswith(("lesion", "tumour", "tumor"))


def _administrations_by_tracer(schedule: pbpk.Schedule) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for a in schedule.administrations:
        out.setdefault(a.tracer.name, []).append(a.time_h)
    return out


def schedule_clock_h(tracers, cycles, time_after_h, schedule: pbpk.Schedule) -> tuple[np.ndarray, list[str]]:
    """Schedule-clock time (h) and nuclide of each row: the time of the row tracer's
    `cycle`-th administration (1-based, in time order) plus the row's time after it.
    Raises TableError naming the row for an unknown tracer, a tracer the schedule never
    gives, or a cycle the schedule does not have."""
    given = _administrations_by_tracer(schedule)
    time_after_h = np.asarray(time_after_h, dtype=float)
    clock = np.empty(len(time_after_h))
    nuclides = []
    for i, (name, cycle) in enumerate(zip(tracers, cycles)):
        try:
            tr = pbpk.tracer(name)
        except pbpk.UnknownTracerError as exc:
            raise TableError(f"time-activity table row {i}: tracer {name!r} is unknown ({exc})") from None
        times = given.get(tr.name)
        if not times:
            raise TableError(f"time-activity table row {i}: tracer {tr.name} is never administered in the "
                             f"schedule (it gives {sorted(given)}); the table and schedule do not match")
        if not 1 <= cycle <= len(times):
            raise TableError(f"time-activity table row {i}: cycle {cycle} of {tr.name}; the schedule has "
                             f"{len(times)} administration(s) of it")
        clock[i] = times[cycle - 1] + time_after_h[i]
        nuclides.append(tr.nuclide)
    return clock, nuclides


def observations_from_table(table: pd.DataFrame, model: pbpk.Model, schedule: pbpk.Schedule,
                            patient: str | None = None) -> Observations:
    """Validate a time-activity table against a model and schedule and index it.

    Raises `TableError` naming the column/row for: an empty table, missing columns,
    several patients without `patient=`, unknown regions, unknown tracers or tracers
    the schedule never gives, a cycle the schedule does not have, negative times,
    non-positive or non-finite activities, unknown modalities.
    """
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise EmptyTableError("time-activity table is empty; expected one row per scan and region")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise MissingColumnError(f"time-activity table lacks column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    patients = table["patient"].astype(str).unique()
    if patient is None:
        if len(patients) != 1:
            raise TableError(f"time-activity table holds patients {sorted(patients)}; pass patient= to choose one")
        patient = patients[0]
    rows = table[table["patient"].astype(str) == str(patient)].reset_index(drop=True)
    if rows.empty:
        raise EmptyTableError(f"time-activity table has no rows for patient {patient!r}")

    regions = {name: i for i, name in enumerate(model.region_names)}
    unknown = sorted(set(rows["region"]) - set(regions))
    if unknown:
        raise UnknownRegionError(f"time-activity table column 'region': {unknown} are not regions of model "
                         f"{model.name!r}; expected some of {sorted(regions)}")
    bad_mod = sorted(set(rows["modality"]) - set(MODALITIES))
    if bad_mod:
        raise TableError(f"time-activity table column 'modality': {bad_mod}; expected one of {MODALITIES}")

    time_after = rows["time_h"].to_numpy(dtype=float)
    activity = rows["activity_mbq"].to_numpy(dtype=float)
    if not np.all(np.isfinite(time_after)) or np.any(time_after < 0):
        i = int(np.flatnonzero(~(np.isfinite(time_after) & (time_after >= 0)))[0])
        raise TableError(f"time-activity table row {i}: time_h = {time_after[i]}; expected a finite time >= 0 h "
                         f"after the injection")
    if not np.all(np.isfinite(activity)) or np.any(activity <= 0):
        i = int(np.flatnonzero(~(np.isfinite(activity) & (activity > 0)))[0])
        raise TableError(f"time-activity table row {i} ({rows['region'][i]}): activity_mbq = {activity[i]}; "
                         f"expected a finite activity > 0 MBq (mark values below the detection limit with "
                         f"below_detection=True and give the limit)")

    cycles = rows["cycle"].to_numpy(dtype=int) if "cycle" in rows.columns else np.ones(len(rows), dtype=int)
    clock, nuclides = schedule_clock_h(rows["tracer"], cycles, time_after, schedule)

    uncertainty = np.zeros(len(rows))
    if "activity_uncertainty_mbq" in rows.columns:
        u = rows["activity_uncertainty_mbq"].to_numpy(dtype=float)
        if np.any(~np.isfinite(u) | (u < 0)):
            raise TableError("time-activity table column 'activity_uncertainty_mbq': expected finite values >= 0")
        uncertainty = u / activity
    censored = rows["below_detection"].to_numpy(dtype=bool) if "below_detection" in rows.columns \
        else np.zeros(len(rows), dtype=bool)

    times_h, time_index = np.unique(clock, return_inverse=True)
    return Observations(
        patient=str(patient), times_h=times_h, time_index=time_index.astype(int),
        region_index=np.array([regions[r] for r in rows["region"]], dtype=int), nuclide=tuple(nuclides),
        modality_index=np.array([MODALITIES.index(m) for m in rows["modality"]], dtype=int),
        is_lesion=np.array([is_lesion_region(r) for r in rows["region"]], dtype=bool),
        activity_mbq=activity, relative_uncertainty=uncertainty, censored=censored, table=rows,
    )
