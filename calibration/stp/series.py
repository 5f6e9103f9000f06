"""One region's time-activity series, validated, from a long table or from plain arrays.

Every baseline in `calibration.stp` works on a `Series`: sampling times t_i (h after the
administration, t_i > 0, strictly increasing after sorting, no repeats), activities A_i
(MBq, > 0) **including physical decay** (i.e. *not* decay corrected: A_i is what was in
the region at t_i), optional one-standard-deviation uncertainties sigma_i (MBq), and the
nuclide whose physical decay constant lambda_phys (1/h) bounds effective decay from below.

A table that was decay corrected to the administration time is accepted with
``decay_corrected=True``: activities and uncertainties are then multiplied by
exp(-lambda_phys t_i) to restore physical decay.

The long table is the one `imaging.time_activity` produces (one row per scan and region):
columns patient, scan_id, modality, tracer, nuclide, time_h, region, activity_mbq,
volume_ml, mean_bqml, max_bqml, activity_uncertainty_mbq, recovery_coefficient.  Only
patient, tracer, time_h, region and activity_mbq are required; nuclide (else read from the
tracer name), activity_uncertainty_mbq (1 sd; all zero or all NaN = none), cycle and
below_detection are used when present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from dose import nuclides as _nuclides
from dose.errors import UnknownNuclideError

from ..errors import (
    EmptyTableError, InvalidActivityError, InvalidTimeError, MissingColumnError, TableError,
    UnknownRegionError,
)

UNCERTAINTY_COLUMN = "activity_uncertainty_mbq"
REQUIRED_COLUMNS = ("patient", "tracer", "time_h", "region", "activity_mbq")


@dataclass(frozen=True)
class Series:
    """A validated time-activity series of one region (see module docstring).

    times_h: sorted sampling times (h, > 0); activities_mbq: activity at those times with
    physical decay included (MBq, > 0); sigma_mbq: 1-sd uncertainties (MBq, > 0) or None;
    nuclide: ICRP-107 name (e.g. "Lu-177"); patient/region/tracer/cycle: labels (may be
    None); notes: what was done to the data (e.g. "dropped_below_detection:1"), copied
    into the flags of every result computed from the series.
    """

    times_h: np.ndarray
    activities_mbq: np.ndarray
    sigma_mbq: np.ndarray | None
    nuclide: str
    patient: str | None = None
    region: str | None = None
    tracer: str | None = None
    cycle: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def decay_constant_per_h(self) -> float:
        """Physical decay constant lambda_phys = ln 2 / T_phys (1/h), from ICRP-107."""
        return _nuclides.decay_constant_per_h(self.nuclide)

    @property
    def n_points(self) -> int:
        return int(self.times_h.size)

    def label(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("patient", self.patient), ("region", self.region),
                                            ("tracer", self.tracer), ("cycle", self.cycle)) if v is not None]
        return ", ".join(parts) if parts else "time-activity series"


def nuclide_of_tracer(tracer: str) -> str:
    """ICRP-107 nuclide name that labels `tracer` ("<nuclide>-<ligand>", e.g.
    "Lu-177-PSMA-617" -> "Lu-177", "177Lu-DOTATATE" -> "Lu-177").

    The shortest hyphen-separated prefix that `dose.nuclides` knows is taken.
    """
    if not isinstance(tracer, str) or not tracer.strip():
        raise TableError(f"tracer {tracer!r}: expected a name '<nuclide>-<ligand>', e.g. 'Lu-177-PSMA-617'")
    pieces = tracer.strip().split("-")
    for k in range(1, len(pieces) + 1):
        candidate = "-".join(pieces[:k])
        try:
            name = _nuclides.normalise_name(candidate)
            _nuclides.half_life_h(name)
        except UnknownNuclideError:
            continue
        return name
    raise TableError(
        f"tracer {tracer!r}: no ICRP-107 nuclide at the start of the name; expected "
        "'<nuclide>-<ligand>' (e.g. 'Lu-177-PSMA-617') or pass nuclide= explicitly"
    )


def _check_nuclide(nuclide: str) -> str:
    try:
        name = _nuclides.normalise_name(nuclide)
        _nuclides.half_life_h(name)
    except UnknownNuclideError as exc:
        raise TableError(f"nuclide: {exc}") from None
    return name


def _select(table: pd.DataFrame, column: str, value, what: str) -> pd.DataFrame:
    available = sorted(map(str, table[column].unique()))
    if value is None:
        if len(available) != 1:
            raise TableError(f"table has several {what}s {available}; pass {column}= to choose one")
        return table
    mask = table[column].astype(str) == str(value)
    if not mask.any():
        raise UnknownRegionError(f"{what} {value!r} is not in the table (column {column!r}); available: {available}")
    return table[mask]


def check_table(table: pd.DataFrame) -> None:
    """Raise a `TableError` subclass unless `table` is a non-empty DataFrame with the
    columns patient, tracer, time_h, region, activity_mbq."""
    if not isinstance(table, pd.DataFrame):
        raise TableError(f"time-activity table: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise MissingColumnError(f"time-activity table: missing column(s) {missing}; has {list(table.columns)}")
    if len(table) == 0:
        raise EmptyTableError("time-activity table has no rows")


def from_table(
    table: pd.DataFrame,
    *,
    patient=None,
    region=None,
    tracer=None,
    cycle=None,
    nuclide: str | None = None,
    decay_corrected: bool = False,
    below_detection: str = "drop",
) -> Series:
    """Select one (patient, region, tracer[, cycle]) series from a long time-activity table.

    patient/region/tracer may be omitted when the table holds only one value of that
    column.  The optional column ``cycle`` (therapy cycle of the tracer, times counted
    from that cycle's injection) must be selected with `cycle` when it holds several
    values.  The nuclide is read from the tracer name unless `nuclide` is given.

    Rows flagged in the optional boolean column ``below_detection`` carry a detection
    limit, not a measurement; classical methods cannot use them: below_detection="drop"
    (default) leaves them out and notes "dropped_below_detection:<k>", "raise" raises
    `TableError`.
    """
    check_table(table)
    if below_detection not in ("drop", "raise"):
        raise TableError(f"below_detection={below_detection!r}: expected 'drop' or 'raise'")
    sub = _select(table, "patient", patient, "patient")
    sub = _select(sub, "tracer", tracer, "tracer")
    sub = _select(sub, "region", region, "region")
    cycle_label = None
    if "cycle" in sub.columns and sub["cycle"].notna().any():
        if sub["cycle"].isna().any():
            raise TableError(f"column 'cycle': some rows are empty for patient={sub['patient'].iloc[0]!r}, "
                             f"region={sub['region'].iloc[0]!r}; give the cycle of every row or none")
        cycles = pd.to_numeric(sub["cycle"], errors="coerce")
        available = sorted(int(c) for c in cycles.dropna().unique())
        if cycle is None:
            if len(available) != 1:
                raise TableError(f"table has several cycles {available}; pass cycle= to choose one")
            cycle = available[0]
        if int(cycle) not in available:
            raise UnknownRegionError(f"cycle {cycle!r} is not in the table (column 'cycle'); available: {available}")
        sub = sub[cycles == int(cycle)]
        cycle_label = int(cycle)
    elif cycle is not None:
        raise UnknownRegionError(f"cycle {cycle!r} requested but the table has no 'cycle' column")
    notes = []
    if "below_detection" in sub.columns:
        censored = sub["below_detection"].fillna(False).astype(bool).to_numpy()
        if censored.any():
            where = f"patient={sub['patient'].iloc[0]!r}, region={sub['region'].iloc[0]!r}"
            if below_detection == "raise":
                raise TableError(f"{where}: {int(censored.sum())} row(s) below the detection limit "
                                 "(column 'below_detection'); classical methods need measured values")
            sub = sub[~censored]
            notes.append(f"dropped_below_detection:{int(censored.sum())}")
            if len(sub) == 0:
                raise EmptyTableError(f"{where}: every row is below the detection limit")
    tracer_name = str(sub["tracer"].iloc[0])
    if nuclide is not None:
        nuc = _check_nuclide(nuclide)
    elif "nuclide" in sub.columns and sub["nuclide"].notna().any():
        names = sorted(set(map(str, sub["nuclide"].dropna())))
        if len(names) != 1 or sub["nuclide"].isna().any():
            raise TableError(f"column 'nuclide': expected one nuclide for tracer {tracer_name!r}, got {names}")
        nuc = _check_nuclide(names[0])
    else:
        nuc = nuclide_of_tracer(tracer_name)
    sigma = None
    if UNCERTAINTY_COLUMN in sub.columns:
        raw = pd.to_numeric(sub[UNCERTAINTY_COLUMN], errors="coerce").to_numpy(dtype=float)
        where = f"patient={sub['patient'].iloc[0]!r}, region={sub['region'].iloc[0]!r}"
        if np.isnan(raw).all():
            sigma = None
        elif np.isnan(raw).any():
            raise InvalidActivityError(
                f"column {UNCERTAINTY_COLUMN!r}: some rows are NaN for {where}; give all uncertainties or none")
        elif np.any(raw < 0):
            raise InvalidActivityError(f"column {UNCERTAINTY_COLUMN!r}: negative uncertainty for {where}: {raw.tolist()}")
        elif np.any(raw == 0):
            # e.g. imaging.time_activity on a noise-free phantom without calibration
            # uncertainty: a zero cannot be a weight, so the series is treated as unweighted
            notes.append("zero_uncertainty_ignored")
        else:
            sigma = raw
    series = from_arrays(
        pd.to_numeric(sub["time_h"], errors="coerce").to_numpy(dtype=float),
        pd.to_numeric(sub["activity_mbq"], errors="coerce").to_numpy(dtype=float),
        sigma_mbq=sigma,
        nuclide=nuc,
        decay_corrected=decay_corrected,
        patient=str(sub["patient"].iloc[0]),
        region=str(sub["region"].iloc[0]),
        tracer=tracer_name,
    )
    return replace(series, cycle=cycle_label, notes=tuple(notes))


def from_arrays(
    times_h,
    activities_mbq,
    *,
    nuclide: str,
    sigma_mbq=None,
    decay_corrected: bool = False,
    patient=None,
    region=None,
    tracer=None,
) -> Series:
    """Build a validated `Series` from arrays (times in h after administration, activities
    in MBq; see module docstring for the decay convention)."""
    label = ", ".join(f"{k}={v!r}" for k, v in (("patient", patient), ("region", region)) if v is not None)
    where = f" ({label})" if label else ""
    t = np.atleast_1d(np.asarray(times_h, dtype=float))
    a = np.atleast_1d(np.asarray(activities_mbq, dtype=float))
    if t.ndim != 1 or a.ndim != 1 or t.shape != a.shape:
        raise TableError(f"time_h and activity_mbq{where}: expected two 1-D arrays of equal length, "
                         f"got shapes {t.shape} and {a.shape}")
    if t.size == 0:
        raise EmptyTableError(f"time-activity series{where} has no points")
    if not np.all(np.isfinite(t)):
        raise InvalidTimeError(f"time_h{where}: NaN or infinite time {t.tolist()}")
    if np.any(t <= 0.0):
        raise InvalidTimeError(f"time_h{where}: times must be > 0 h after the administration, got {t.tolist()}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0.0):
        raise InvalidActivityError(f"activity_mbq{where}: expected finite activities > 0 MBq, got {a.tolist()}")
    s = None
    if sigma_mbq is not None:
        s = np.atleast_1d(np.asarray(sigma_mbq, dtype=float))
        if s.shape != a.shape:
            raise TableError(f"{UNCERTAINTY_COLUMN}{where}: shape {s.shape} does not match activities {a.shape}")
        if not np.all(np.isfinite(s)) or np.any(s <= 0.0):
            raise InvalidActivityError(
                f"{UNCERTAINTY_COLUMN}{where}: expected finite uncertainties > 0 MBq, got {s.tolist()}")
    order = np.argsort(t, kind="stable")
    t, a = t[order], a[order]
    s = s[order] if s is not None else None
    if np.any(np.diff(t) == 0.0):
        raise InvalidTimeError(f"time_h{where}: repeated sampling time(s) {sorted(set(t[:-1][np.diff(t) == 0.0]))} h; "
                               "average or drop duplicate scans first")
    nuc = _check_nuclide(nuclide)
    if decay_corrected:
        factor = np.exp(-_nuclides.decay_constant_per_h(nuc) * t)
        a = a * factor
        s = s * factor if s is not None else None
    return Series(t, a, s, nuc, None if patient is None else str(patient),
                  None if region is None else str(region), None if tracer is None else str(tracer))


def as_series(
    data,
    activities_mbq=None,
    *,
    patient=None,
    region=None,
    tracer=None,
    cycle=None,
    nuclide: str | None = None,
    sigma_mbq=None,
    decay_corrected: bool = False,
    below_detection: str = "drop",
) -> Series:
    """Accept a `Series`, a long time-activity DataFrame (with patient/region/tracer/cycle
    selectors, see `from_table`) or arrays (`data` = times in h, `activities_mbq`,
    `nuclide` or `tracer` required)."""
    if isinstance(data, Series):
        if activities_mbq is not None:
            raise TableError("activities_mbq must not be given together with a Series")
        return data
    if isinstance(data, pd.DataFrame):
        if activities_mbq is not None or sigma_mbq is not None:
            raise TableError("activities_mbq/sigma_mbq must not be given together with a table; "
                             "the table's columns are used")
        return from_table(data, patient=patient, region=region, tracer=tracer, cycle=cycle, nuclide=nuclide,
                          decay_corrected=decay_corrected, below_detection=below_detection)
    if activities_mbq is None:
        raise TableError("expected a time-activity table, a Series, or times_h and activities_mbq arrays")
    if nuclide is None:
        if tracer is None:
            raise TableError("arrays given without nuclide= or tracer=; the physical decay constant is needed")
        nuclide = nuclide_of_tracer(tracer)
    return from_arrays(data, activities_mbq, nuclide=nuclide, sigma_mbq=sigma_mbq,
                       decay_corrected=decay_corrected, patient=patient, region=region, tracer=tracer)


def nearest_point(series: Series, time_h: float, max_offset_h: float | None = None) -> int:
    """Index of the sample nearest `time_h`; `InvalidTimeError` if it is farther than
    `max_offset_h` (when given)."""
    if not math.isfinite(time_h) or time_h <= 0:
        raise InvalidTimeError(f"time_h: expected a finite time > 0 h, got {time_h!r}")
    i = int(np.argmin(np.abs(series.times_h - time_h)))
    if max_offset_h is not None and abs(series.times_h[i] - time_h) > max_offset_h:
        raise InvalidTimeError(
            f"{series.label()}: no scan within {max_offset_h} h of {time_h} h (nearest at {series.times_h[i]} h)"
        )
    return i
