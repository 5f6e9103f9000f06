"""Therapy-schedule optimisation under organ-at-risk (OAR) constraints over posterior draws.

Problem
-------
A schedule s = s(A, L, T, n) has per-cycle activity A (MBq), ligand amount L (nmol, or
None for the caller's default), interval T (h, or None) and n cycles; the caller's
`make_schedule(A, L, T, n)` builds it.  The twin's `evaluate({name: schedule})` returns
`twin.outcomes.Outcomes`: per posterior draw d the mean absorbed dose D_{d,r}(s) and BED
B_{d,r}(s) (Gy) of every dose region r.

For limits (r_i, X_i, c_i) (X = dose_gy or bed_gy, c the limit in Gy) and probability p:

    maximise    F(s) = min_{lesions l} median_d B_{d,l}(s)     (target "lesions")
                or     median_d B_{d,t}(s)                      (target = a region name t)
    subject to  Q_p[X_{d,r_i}(s)] <= c_i  for every limit i,

where Q_p is the empirical p-quantile over draws (`numpy.quantile`, linear interpolation),
so the constraint reads P(X_{r_i} <= c_i) >= p under the posterior.  The binding ratio of
limit i is rho_i = Q_p / c_i (feasible iff every rho_i <= 1).

Algorithm (grid search with boundary refinement, vectorised over candidates)
-------------------------------------------------------------------------
1. For every combination (L, T, n) of the given values, `grid_points` activities
   linspace(A_lo, A_hi) are built; ALL candidates of ALL combinations go to ONE evaluate call.
2. Refinement (`refine_steps` times): for each combination whose evaluated activities hold a
   feasible activity below the lowest infeasible one, a_f = the largest such feasible
   activity and a_i = the lowest infeasible one; `grid_points` new activities strictly
   between them (linspace(a_f, a_i, grid_points + 2) without its ends) are evaluated, all
   combinations again in ONE call.  Combinations feasible up to A_hi, or infeasible already at
   A_lo, are not refined; the step is skipped when no combination needs it.  After k steps
   the boundary is bracketed to h_k = (A_hi - A_lo) / (grid_points - 1) / (grid_points + 1)^k.
   The refinement assumes that OAR quantiles rise with activity (more activity, more dose);
   if they do not, the boundary found is the first crossing (conservative).
3. The answer is the feasible candidate with the largest F (ties: the smallest total
   activity n*A).  Its binding constraint is the limit with the largest rho at the chosen
   point, reported as binding if rho > 0.9 or if that limit is violated at the next larger
   evaluated activity of the same combination; otherwise, if the next larger activity is
   infeasible for another limit, that limit (largest rho there); else None (the activity
   range, not an OAR, limits the schedule).
4. If no candidate is feasible, TwinError names the limits violated at the lowest activity.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

import pbpk

from .errors import TwinError
from .limits import DEFAULT_LIMITS, Limit
from .outcomes import Outcomes

BINDING_RATIO = 0.9  # rho above which the limit with the largest quantile/limit ratio is reported as binding
LESION_PREFIX = "lesion"


@dataclass(frozen=True)
class OptimisationResult:
    """The chosen schedule and how it was found.

    constraints: one row per limit at the chosen schedule (region, quantity, limit_gy,
    probability, probability_quantile_value (Gy), ratio, satisfied, binding, source);
    binding: "region quantity" of the binding limit, None if no OAR limits the schedule;
    candidates: every evaluated candidate (step, activity_mbq, ligand_nmol, interval_h,
    n_cycles, target_bed_gy_median, one column "q_<region>_<quantity>" per limit (Gy),
    feasible, chosen); candidates.attrs: "evaluate_calls" (number of evaluate calls),
    "probability", "failed_solve_fraction" (largest fraction of draws dropped by one call).
    """

    activity_mbq: float
    ligand_nmol: float | None
    interval_h: float | None
    n_cycles: int
    schedule: pbpk.Schedule
    target_region: str
    target_bed_gy_median: float
    constraints: pd.DataFrame
    binding: str | None
    candidates: pd.DataFrame


def _values(name: str, values, *, allow_none: bool, integer: bool = False) -> list:
    """Normalise an option (None, a number, or a sequence of numbers) into a list."""
    if values is None:
        if not allow_none:
            raise TwinError(f"optimise_schedule: {name} is required")
        return [None]
    seq = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    if not seq:
        raise TwinError(f"optimise_schedule: {name} is empty; expected at least one value")
    out = []
    for v in seq:
        if integer:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise TwinError(f"optimise_schedule: {name} value {v!r}; expected an integer >= 1")
            out.append(int(v))
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0:
                raise TwinError(f"optimise_schedule: {name} value {v!r}; expected a finite number > 0")
            out.append(float(v))
    return list(dict.fromkeys(out))


def _check_limits(limits: Sequence[Limit]) -> tuple[Limit, ...]:
    limits = tuple(limits)
    if not limits:
        raise TwinError("optimise_schedule: limits is empty; give at least one organ-at-risk limit")
    seen = set()
    for lim in limits:
        if not isinstance(lim, Limit):
            raise TwinError(f"optimise_schedule: limits entry {lim!r}; expected twin.limits.Limit")
        if lim.label in seen:
            raise TwinError(f"optimise_schedule: two limits for {lim.label!r}; give each region/quantity once")
        seen.add(lim.label)
    return limits


class _Scorer:
    """Target values and constraint quantiles of a batch of candidates from one Outcomes."""

    def __init__(self, limits: tuple[Limit, ...], probability: float, target: str):
        self.limits = limits
        self.probability = probability
        self.target = target
        self.limit_values = np.array([lim.value for lim in limits])

    def _region_index(self, outcomes: Outcomes) -> dict[str, int]:
        index = {r: j for j, r in enumerate(outcomes.dose_regions)}
        for lim in self.limits:
            if lim.region not in index:
                raise TwinError(f"limit {lim.label!r}: region {lim.region!r} is not among the twin's dose regions "
                                f"{list(outcomes.dose_regions)}; filter the limits (twin.limits.limits_for_regions) "
                                "if that organ is not modelled")
        return index

    def target_regions(self, outcomes: Outcomes) -> list[str]:
        if self.target == "lesions":
            regions = [r for r in outcomes.dose_regions if r.startswith(LESION_PREFIX)]
            if not regions:
                raise TwinError(f"target 'lesions': no dose region starts with {LESION_PREFIX!r} in "
                                f"{list(outcomes.dose_regions)}; name a target region instead")
            return regions
        if self.target not in outcomes.dose_regions:
            raise TwinError(f"target {self.target!r} is not a dose region; expected 'lesions' or one of "
                            f"{list(outcomes.dose_regions)}")
        return [self.target]

    def score(self, outcomes: Outcomes, names: Sequence[str]):
        """(target median BED per candidate (n,), its region (n,), quantiles (n, n_limits))."""
        if not isinstance(outcomes, Outcomes):
            raise TwinError(f"evaluate returned {type(outcomes).__name__}; expected twin.outcomes.Outcomes")
        position = {n: k for k, n in enumerate(outcomes.schedule_names)}
        missing = [n for n in names if n not in position]
        if missing:
            raise TwinError(f"evaluate returned no outcomes for schedules {missing[:5]}; expected every schedule "
                            "it was given")
        if outcomes.dose_gy.shape[0] == 0:
            raise TwinError("evaluate returned outcomes with no posterior draws")
        cols = [position[n] for n in names]
        index = self._region_index(outcomes)

        quantiles = np.empty((len(names), len(self.limits)))
        for i, lim in enumerate(self.limits):
            values = getattr(outcomes, lim.quantity)[:, cols, index[lim.region]]  # (draws, n)
            bad = ~np.isfinite(values).all(axis=0)
            if bad.any():
                raise TwinError(f"limit {lim.label!r}: {lim.quantity} of region {lim.region!r} is not finite for "
                                f"schedule {names[int(np.argmax(bad))]!r} (no LQ parameters for a BED limit?)")
            quantiles[:, i] = np.quantile(values, self.probability, axis=0)

        regions = self.target_regions(outcomes)
        medians = np.empty((len(names), len(regions)))
        for j, region in enumerate(regions):
            bed = outcomes.bed_gy[:, cols, index[region]]
            bad = ~np.isfinite(bed).all(axis=0)
            if bad.any():
                raise TwinError(f"target region {region!r}: BED is not finite for schedule "
                                f"{names[int(np.argmax(bad))]!r}; give the region LQ parameters (radiobiology)")
            medians[:, j] = np.median(bed, axis=0)
        worst = np.argmin(medians, axis=1)
        return medians[np.arange(len(names)), worst], [regions[w] for w in worst], quantiles


def optimise_schedule(evaluate: Callable[[Mapping[str, pbpk.Schedule]], Outcomes],
                      make_schedule: Callable[[float, float | None, float | None, int], pbpk.Schedule], *,
                      activities_mbq: tuple[float, float], ligand_nmol: Sequence[float] | None = None,
                      interval_h: Sequence[float] | None = None, n_cycles: Sequence[int] = (1,),
                      limits: Sequence[Limit] = DEFAULT_LIMITS, probability: float = 0.95,
                      target: str = "lesions", grid_points: int = 9, refine_steps: int = 2) -> OptimisationResult:
    """Largest-target schedule whose OAR p-quantiles stay within `limits` (see module doc).

    evaluate: {name: Schedule} -> Outcomes (one vectorised call per grid/refinement step);
    make_schedule(activity_mbq, ligand_nmol, interval_h, n_cycles) -> Schedule;
    activities_mbq: (lo, hi) per-cycle activity bounds, 0 < lo < hi; ligand_nmol, interval_h:
    values to try (None: make_schedule gets None); n_cycles: cycle counts to try;
    probability: p of P(X <= limit) >= p; target: "lesions" or a dose region name.
    """
    try:
        lo, hi = (float(a) for a in activities_mbq)
    except (TypeError, ValueError) as err:
        raise TwinError(f"optimise_schedule: activities_mbq = {activities_mbq!r}; expected (lo, hi) in MBq") from err
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise TwinError(f"optimise_schedule: activities_mbq = ({lo}, {hi}); expected finite 0 < lo < hi (MBq)")
    if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 2:
        raise TwinError(f"optimise_schedule: grid_points = {grid_points!r}; expected an integer >= 2")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise TwinError(f"optimise_schedule: refine_steps = {refine_steps!r}; expected an integer >= 0")
    if not isinstance(probability, (int, float)) or not 0.0 < probability < 1.0:
        raise TwinError(f"optimise_schedule: probability = {probability!r}; expected 0 < p < 1")
    if not isinstance(target, str) or not target:
        raise TwinError(f"optimise_schedule: target = {target!r}; expected 'lesions' or a region name")
    limits = _check_limits(limits)
    combos = list(itertools.product(_values("ligand_nmol", ligand_nmol, allow_none=True),
                                    _values("interval_h", interval_h, allow_none=True),
                                    _values("n_cycles", n_cycles, allow_none=False, integer=True)))
    scorer = _Scorer(limits, float(probability), target)

    rows: list[dict] = []
    quantiles: list[np.ndarray] = []
    schedules: list[pbpk.Schedule] = []
    calls, failed_fraction = 0, 0.0

    def run(points: list[tuple[int, float]], step: int) -> None:
        nonlocal calls, failed_fraction
        batch = {}
        for combo, activity in points:
            lig, interval, n = combos[combo]
            schedule = make_schedule(activity, lig, interval, n)
            if not isinstance(schedule, pbpk.Schedule):
                raise TwinError(f"make_schedule({activity}, {lig}, {interval}, {n}) returned "
                                f"{type(schedule).__name__}; expected pbpk.Schedule")
            batch[f"candidate_{len(rows) + len(batch):05d}"] = schedule
        names = list(batch)
        outcomes = evaluate(batch)
        calls += 1
        values, regions, q = scorer.score(outcomes, names)
        failed_fraction = max(failed_fraction, float(outcomes.failed_fraction))
        for (combo, activity), name, v, region, qi in zip(points, names, values, regions, q):
            lig, interval, n = combos[combo]
            rows.append(dict(name=name, step=step, combo=combo, activity_mbq=activity, ligand_nmol=lig,
                             interval_h=interval, n_cycles=n, target_region=region, target_bed_gy_median=float(v),
                             feasible=bool(np.all(qi <= scorer.limit_values))))
            quantiles.append(qi)
            schedules.append(batch[name])

    grid = np.linspace(lo, hi, grid_points)
    run([(c, float(a)) for c in range(len(combos)) for a in grid], 0)
    for step in range(1, refine_steps + 1):
        points = []
        for c in range(len(combos)):
            bracket = _bracket([(r["activity_mbq"], r["feasible"]) for r in rows if r["combo"] == c])
            if bracket is not None:
                points += [(c, float(a)) for a in np.linspace(*bracket, grid_points + 2)[1:-1]]
        if not points:
            break
        run(points, step)

    q_all = np.array(quantiles)
    ratios = q_all / scorer.limit_values
    feasible = np.array([r["feasible"] for r in rows])
    if not feasible.any():
        raise TwinError(_infeasible_message(rows, ratios, q_all, limits, lo, probability))
    order = np.lexsort(([r["activity_mbq"] * r["n_cycles"] for r in rows],
                        [-r["target_bed_gy_median"] for r in rows], ~feasible))
    best = int(order[0])
    chosen = rows[best]
    binding_index, binding_flags = _binding(best, rows, ratios)

    constraints = pd.DataFrame(dict(
        region=[lim.region for lim in limits], quantity=[lim.quantity for lim in limits],
        limit_gy=scorer.limit_values, probability=float(probability), probability_quantile_value=q_all[best],
        ratio=ratios[best], satisfied=q_all[best] <= scorer.limit_values, binding=binding_flags,
        source=[lim.source for lim in limits]))
    candidates = pd.DataFrame(rows).drop(columns=["combo", "feasible"])
    for i, lim in enumerate(limits):
        candidates[f"q_{lim.region}_{lim.quantity}"] = q_all[:, i]
    candidates["feasible"] = feasible
    candidates["chosen"] = np.arange(len(rows)) == best
    candidates.attrs.update(evaluate_calls=calls, probability=float(probability), failed_solve_fraction=failed_fraction)
    return OptimisationResult(
        activity_mbq=chosen["activity_mbq"], ligand_nmol=chosen["ligand_nmol"], interval_h=chosen["interval_h"],
        n_cycles=chosen["n_cycles"], schedule=schedules[best], target_region=chosen["target_region"],
        target_bed_gy_median=chosen["target_bed_gy_median"], constraints=constraints,
        binding=None if binding_index is None else limits[binding_index].label, candidates=candidates)


def _bracket(evaluated: list[tuple[float, bool]]) -> tuple[float, float] | None:
    """(largest feasible activity below the lowest infeasible one, that infeasible activity),
    or None if every activity is feasible or the lowest is infeasible."""
    evaluated = sorted(evaluated)
    for k, (activity, ok) in enumerate(evaluated):
        if not ok:
            return None if k == 0 else (evaluated[k - 1][0], activity)
    return None


def _binding(best: int, rows: list[dict], ratios: np.ndarray) -> tuple[int | None, np.ndarray]:
    """Index of the binding limit at candidate `best` (module doc, step 3) and a one-hot flag array."""
    flags = np.zeros(ratios.shape[1], dtype=bool)
    combo, activity = rows[best]["combo"], rows[best]["activity_mbq"]
    larger = [k for k, r in enumerate(rows) if r["combo"] == combo and r["activity_mbq"] > activity]
    nxt = min(larger, key=lambda k: rows[k]["activity_mbq"]) if larger else None
    violated_next = ratios[nxt] > 1.0 if nxt is not None else np.zeros(ratios.shape[1], dtype=bool)
    top = int(np.argmax(ratios[best]))
    if ratios[best, top] > BINDING_RATIO or violated_next[top]:
        index = top
    elif violated_next.any():
        index = int(np.argmax(ratios[nxt]))
    else:
        return None, flags
    flags[index] = True
    return index, flags


def _infeasible_message(rows, ratios, quantiles, limits, lo, probability) -> str:
    lowest = [k for k, r in enumerate(rows) if r["activity_mbq"] == lo]
    k = min(lowest, key=lambda i: ratios[i].max())  # the least-violating combination at the lowest activity
    r = rows[k]
    failing = "; ".join(f"{lim.label}: {probability:g}-quantile {quantiles[k, i]:.4g} Gy > limit {lim.value:g} Gy"
                        for i, lim in enumerate(limits) if ratios[k, i] > 1.0)
    return (f"no feasible schedule: even the lowest activity {lo:g} MBq (ligand_nmol={r['ligand_nmol']}, "
            f"interval_h={r['interval_h']}, n_cycles={r['n_cycles']}, the least-violating combination) violates "
            f"{failing}; lower activities_mbq[0], fewer cycles, or relax the limits")
