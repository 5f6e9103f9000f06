"""Organ activities -> a noise-free activity-concentration map on the phantom grid.

Input is any organ -> activity (MBq) mapping, or a long DataFrame shaped like
``pbpk.Trajectory.to_frame()`` (columns time_h, nuclide, region, activity_mbq[, percent_ia])
with a time to pick.  (imaging does not import pbpk; it only reads the table.)

Regions are resolved against the phantom's label names:

* a name that is a phantom region (liver, kidneys, salivary_glands, lesion_1, ...)
  goes to that region;
* aggregates that would double count, ``AGGREGATE_REGIONS`` (whole_body), are ignored
  and reported;
* any other name (PBPK regions without their own shape: gi, muscle, adipose, skin,
  red_marrow, prostate, blood, rest, tumour_rest, ...) is, with ``unplaced="body"``
  (default), added to the "body" remainder region and reported in ``into_body``; with
  ``unplaced="ignore"`` dropped and reported in ``ignored``; with ``unplaced="error"``
  an error.

pbpk's "urine" is the cumulative excreted activity (no voiding); it is placed in the
bladder ("urine" region) as given, so pass a smaller value (or drop it) to model a voided
bladder.

Within a region r with activity A_r the concentration is
    c(v) = A_r * w(v) / (sum_{u in r} w(u) * dV),      v in r,
with w the relative uptake (structure weight x optional heterogeneity field) and dV the
voxel volume, so sum_v c(v) dV = A_r exactly (float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import scipy.ndimage as ndi

from ..errors import ImagingError

#: Regions that are sums of other regions; never placed (they would double count).
AGGREGATE_REGIONS = ("whole_body",)
UNPLACED_POLICIES = ("body", "ignore", "error")


@dataclass(frozen=True)
class RegionActivities:
    """Activities resolved onto the phantom's regions.

    activity_mbq : phantom region -> activity (MBq) placed there (regions not named get 0).
    into_body : input names added to the "body" remainder region.
    ignored : input names not placed (aggregates, or unplaced with policy "ignore").
    """

    activity_mbq: Mapping[str, float]
    into_body: tuple[str, ...]
    ignored: tuple[str, ...]

    @property
    def total_mbq(self) -> float:
        return float(sum(self.activity_mbq.values()))


def activities_from_frame(frame, time_h: float, nuclide: str | None = None) -> dict[str, float]:
    """Region -> activity (MBq) at `time_h` from a long table (pbpk Trajectory.to_frame()).

    Rows are matched on time_h within 1e-6 h; with several nuclides in the table,
    `nuclide` must name one.
    """
    need = {"time_h", "region", "activity_mbq"}
    missing = need - set(frame.columns)
    if missing:
        raise ImagingError(f"activity table: columns {sorted(missing)} missing; expected {sorted(need)}")
    rows = frame
    if "nuclide" in frame.columns:
        nuclides = sorted(set(frame["nuclide"]))
        if nuclide is None and len(nuclides) > 1:
            raise ImagingError(f"activity table: several nuclides {nuclides}; pass nuclide= to pick one")
        if nuclide is not None:
            rows = rows[rows["nuclide"] == nuclide]
            if rows.empty:
                raise ImagingError(f"activity table: nuclide {nuclide!r} absent; table has {nuclides}")
    times = np.asarray(rows["time_h"], float)
    hit = np.isclose(times, float(time_h), rtol=0.0, atol=1e-6)
    if not hit.any():
        raise ImagingError(f"activity table: no rows at time_h = {time_h}; times are {sorted(set(times.tolist()))}")
    rows = rows[hit]
    if rows["region"].duplicated().any():
        dup = sorted(set(rows["region"][rows["region"].duplicated()]))
        raise ImagingError(f"activity table: regions {dup} appear more than once at time_h = {time_h}")
    return {str(r): float(a) for r, a in zip(rows["region"], rows["activity_mbq"])}


def resolve(activity_mbq: Mapping[str, float], region_names: Mapping[int, str],
            unplaced: str = "body") -> RegionActivities:
    """Place named activities on phantom regions (rules in the module docstring)."""
    if unplaced not in UNPLACED_POLICIES:
        raise ImagingError(f"unplaced = {unplaced!r}; expected one of {UNPLACED_POLICIES}")
    regions = set(region_names.values())
    placed = {r: 0.0 for r in region_names.values()}
    into_body, ignored = [], []
    for name, value in activity_mbq.items():
        a = float(value)
        if not np.isfinite(a) or a < 0:
            raise ImagingError(f"activity of region {name!r} = {value!r} MBq; expected a finite value >= 0")
        if name in regions:
            placed[name] += a
        elif name in AGGREGATE_REGIONS:
            ignored.append(name)
        elif unplaced == "body":
            placed["body"] += a
            into_body.append(name)
        elif unplaced == "ignore":
            ignored.append(name)
        else:
            raise ImagingError(f"region {name!r} has no shape in the phantom (regions: {sorted(regions)}); "
                               f"use unplaced='body' or 'ignore'")
    return RegionActivities(placed, tuple(into_body), tuple(ignored))


def heterogeneity_field(rng: np.random.Generator, shape_zyx, spacing_mm, cv_log: float,
                        correlation_mm: float) -> np.ndarray:
    """Log-normal multiplicative field exp(s g - s^2/2), g a unit-variance Gaussian field.

    g is white noise smoothed by a Gaussian of sd `correlation_mm` and re-standardised;
    E[field] = 1 for s = cv_log.  cv_log = 0 gives ones.
    """
    if not (np.isfinite(cv_log) and 0.0 <= cv_log <= 2.0):
        raise ImagingError(f"heterogeneity_cv = {cv_log!r}; expected a log-sd between 0 and 2")
    if cv_log == 0.0:
        return np.ones(shape_zyx)
    if not (np.isfinite(correlation_mm) and correlation_mm > 0):
        raise ImagingError(f"heterogeneity_mm = {correlation_mm!r}; expected a positive length in mm")
    sigma_vox = [correlation_mm / s for s in spacing_mm[::-1]]  # spacing is (x, y, z); arrays are (z, y, x)
    g = ndi.gaussian_filter(rng.standard_normal(shape_zyx), sigma_vox, mode="reflect")
    g = (g - g.mean()) / g.std()
    return np.exp(cv_log * g - 0.5 * cv_log ** 2)


def concentration_bqml(labels: np.ndarray, weight: np.ndarray, region_names: Mapping[int, str],
                       placed: Mapping[str, float], voxel_ml: float) -> np.ndarray:
    """Activity concentration (Bq/mL, float64, (z, y, x)) with region totals exactly `placed`."""
    codes = np.arange(int(labels.max()) + 1)
    wsum = ndi.sum_labels(weight, labels, codes)
    scale = np.zeros(len(codes))
    for code, name in region_names.items():
        a = placed.get(name, 0.0)
        if a > 0:
            if not wsum[code] > 0:
                raise ImagingError(f"region {name!r} has activity {a} MBq but no voxel with uptake weight > 0")
            scale[code] = a * 1e6 / (wsum[code] * voxel_ml)
    return weight * scale[labels]
