"""Apply every classical TIA method to every (patient, tracer, region) of a long table.

The result is a tidy DataFrame, one row per series and method, so the Bayesian twin can be
compared with the classical baselines on the same data:

    patient, tracer, region, cycle, method, tia_mbq_h, tia_sd_mbq_h, n_points, time_h, notes, error

* cycle: the therapy cycle when the table has a ``cycle`` column (series are then per
  cycle), else None;
* method: "trapezoid" (physical-decay tail), "trapezoid_fit_tail" (last-segment effective
  tail), "mono", "bi_uptake", "bi_sum", "haenscheid", "madsen" (see the modules);
* tia_sd_mbq_h: 1-sd uncertainty (NaN where the method gives none, with a flag saying why);
* time_h: the scan used by an STP method (NaN for the others);
* notes: ";"-separated flags of the method (e.g. "at_bound:lambda_eff_per_h"); the column
  is not called "flags" because that name is a pandas DataFrame attribute;
* error: "" on success; with on_error="record", the exception class and message of a
  method that could not be applied (then tia_mbq_h is NaN), e.g. a bi-exponential fit
  on two points.  With on_error="raise" the exception propagates.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import CalibrationError, TableError, UnknownRegionError
from .fits import fit_exponential
from .series import as_series, check_table
from .single_time_point import haenscheid, madsen
from .trapezoid import trapezoid_tia

CURVE_METHODS = ("trapezoid", "trapezoid_fit_tail", "mono", "bi_uptake", "bi_sum")
STP_METHODS = ("haenscheid", "madsen")
COLUMNS = ["patient", "tracer", "region", "cycle", "method", "tia_mbq_h", "tia_sd_mbq_h", "n_points", "time_h",
           "notes", "error"]


class _Recorded(Exception):
    """Carries the message of a series that could not be built, for every method row."""


def _apply(method, s, *, uptake, weighting, stp_time_h, t_eff_h, max_offset_h):
    """(tia, sd, time_h, flags) of one method on one series."""
    if method in ("trapezoid", "trapezoid_fit_tail"):
        r = trapezoid_tia(s, uptake=uptake, tail="physical" if method == "trapezoid" else "fit")
        return r.tia_mbq_h, r.tia_sd_mbq_h, math.nan, r.flags
    if method in ("mono", "bi_uptake", "bi_sum"):
        r = fit_exponential(s, model=method, weighting=weighting)
        return r.tia_mbq_h, r.tia_sd_mbq_h, math.nan, r.flags
    if method == "haenscheid":
        r = haenscheid(s, stp_time_h, max_offset_h=max_offset_h)
    else:
        teff = t_eff_h.get(s.region) if isinstance(t_eff_h, dict) else t_eff_h
        r = madsen(s, stp_time_h, t_eff_h=teff, max_offset_h=max_offset_h)
    return r.tia_mbq_h, r.tia_sd_mbq_h, r.time_h, r.flags


def tia_table(
    table: pd.DataFrame,
    *,
    methods=None,
    stp_time_h: float | None = None,
    t_eff_h=None,
    patients=None,
    regions=None,
    tracer=None,
    decay_corrected: bool = False,
    below_detection: str = "drop",
    uptake: str = "linear",
    weighting: str | None = None,
    max_offset_h: float | None = None,
    on_error: str = "record",
) -> pd.DataFrame:
    """TIA of every (patient, tracer, region) series of `table` by each of `methods`.

    methods: names from CURVE_METHODS and STP_METHODS; default all curve methods, plus the
    STP methods when `stp_time_h` (the target scan time, h; the nearest scan is used) is
    given.  t_eff_h: Madsen's population effective half-life, a number, a dict region ->
    h, or None for `population_half_life` defaults.  patients/regions/tracer restrict the
    series.  decay_corrected/below_detection: as for `as_series`.  uptake: trapezoid
    uptake rule.  weighting: fit weighting (see `fit_exponential`).  max_offset_h: largest
    allowed distance of the STP scan from `stp_time_h`.  on_error: "record" or "raise".
    """
    check_table(table)
    if on_error not in ("record", "raise"):
        raise CalibrationError(f"on_error={on_error!r}: expected 'record' or 'raise'")
    if methods is None:
        methods = CURVE_METHODS + (STP_METHODS if stp_time_h is not None else ())
    methods = tuple(methods)
    bad = [m for m in methods if m not in CURVE_METHODS + STP_METHODS]
    if bad:
        raise CalibrationError(f"unknown method(s) {bad}; expected some of {list(CURVE_METHODS + STP_METHODS)}")
    if stp_time_h is None and any(m in STP_METHODS for m in methods):
        raise CalibrationError("stp_time_h is required for the single-time-point methods haenscheid/madsen")
    sub = table
    for column, wanted in (("patient", patients), ("region", regions), ("tracer", tracer)):
        if wanted is None:
            continue
        wanted = [wanted] if isinstance(wanted, str) or np.ndim(wanted) == 0 else list(wanted)
        present = set(map(str, sub[column].unique()))
        missing = [w for w in map(str, wanted) if w not in present]
        if missing:
            raise UnknownRegionError(f"{column} {missing} not in the table; available: {sorted(present)}")
        sub = sub[sub[column].astype(str).isin(list(map(str, wanted)))]
    rows = []
    has_cycle = "cycle" in sub.columns and sub["cycle"].notna().any()
    if has_cycle and pd.to_numeric(sub["cycle"], errors="coerce").isna().any():
        raise TableError("column 'cycle': some rows are empty or not numbers; give the cycle of every row or none")
    keys = pd.DataFrame({c: sub[c].astype(str) for c in ("patient", "tracer", "region")}, index=sub.index)
    keys["cycle"] = pd.to_numeric(sub["cycle"], errors="coerce") if has_cycle else -1
    for (patient, tr, region, cyc), group in sorted(sub.groupby([keys[c] for c in keys.columns], sort=False),
                                                    key=lambda kv: kv[0]):
        cycle = int(cyc) if has_cycle else None
        try:
            s = as_series(group, decay_corrected=decay_corrected, below_detection=below_detection)
        except CalibrationError as exc:  # a bad series: every method fails the same way
            if on_error == "raise":
                raise
            s, series_error = None, f"{type(exc).__name__}: {exc}"
        for method in methods:
            try:
                if s is None:
                    raise _Recorded(series_error)
                tia, sd, t_used, flags = _apply(method, s, uptake=uptake, weighting=weighting,
                                                stp_time_h=stp_time_h, t_eff_h=t_eff_h, max_offset_h=max_offset_h)
                err = ""
            except _Recorded as exc:
                tia, sd, t_used, flags, err = math.nan, math.nan, math.nan, (), str(exc)
            except CalibrationError as exc:
                if on_error == "raise":
                    raise
                tia, sd, t_used, flags, err = math.nan, math.nan, math.nan, (), f"{type(exc).__name__}: {exc}"
            n_points = s.n_points if s is not None else len(group)
            rows.append([patient, tr, region, cycle, method, tia, sd, n_points, t_used, ";".join(flags), err])
    return pd.DataFrame(rows, columns=COLUMNS)
