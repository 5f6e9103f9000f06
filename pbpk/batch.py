"""Many schedules of one structure in one vectorised solve.

`simulate_schedules` runs `simulate`'s solver for a list of schedules that share their
structure (same tracers in the same order, same pattern of simultaneous injections) but
differ in activities, ligand amounts and times, as one `jax.vmap` over the schedules: one
compiled program, no Python loop over simulations.  It is what a what-if over activities,
ligand amounts and intervals needs; schedules with another number of cycles form another
group (another call).

Each schedule has its own output times (h, on its own clock), its own solve end (last
injection + `TAIL_HALF_LIVES` half-lives) and the same TIA-to-infinity accounting as
`simulate`, so row k equals `simulate(model, schedules[k], times_h[k], params)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ScheduleError
from .model import Model
from .schedule import Schedule, as_schedule
from .cohort import _parameter_matrix, postprocess_sets
from .simulate import (TAIL_HALF_LIVES, SolverOptions, _initial_amounts, _plan, _postprocess, _schedule_arrays,
                       _solve, _solve_lockstep)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ScheduleBatch:
    """Result of `simulate_schedules` (a JAX pytree; leading axis = schedule).

    times_h: (n_schedules, n_times) output times, each on its schedule's clock;
    region_activity_mbq: (n_schedules, n_nuclides, n_regions, n_times);
    region_tia_mbq_h: (n_schedules, n_nuclides, n_regions), to infinity (NaN when tia=False);
    solver_ok: (n_schedules,) bool.
    """

    times_h: jnp.ndarray
    region_activity_mbq: jnp.ndarray
    region_tia_mbq_h: jnp.ndarray
    solver_ok: jnp.ndarray
    regions: tuple[str, ...] = field(metadata=dict(static=True))
    nuclides: tuple[str, ...] = field(metadata=dict(static=True))


def schedule_structure(schedule: Schedule) -> tuple:
    """The structure key of a schedule: (event index, tracer name) per administration.
    Schedules with equal keys can share one vectorised solve."""
    events = schedule.event_times_h
    return tuple((events.index(a.time_h), a.tracer.name) for a in schedule)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class BatchArrays:
    """The numeric part of a group of schedules of one structure (leading axis = schedule):
    output times, event times, per-dose-row activity (MBq) and total ligand (nmol), solve
    end (h) and initial amounts (nmol).  Arrays only, so a jitted solve over them compiles
    once per shape, whatever the activities, amounts and times."""

    times_h: jnp.ndarray
    event_times_h: jnp.ndarray
    activity_mbq: jnp.ndarray
    total_nmol: jnp.ndarray
    t_end_h: jnp.ndarray
    y_init: jnp.ndarray


def batch_arrays(model: Model, schedules: Sequence[Schedule], times_h, params: Mapping[str, object] | None = None,
                 *, tia: bool = True) -> BatchArrays:
    """Validate a group of schedules of one structure and stack their arrays (see
    `simulate_schedules` for `times_h` and the errors)."""
    schedules = [as_schedule(s) for s in schedules]
    if not schedules:
        raise ScheduleError("simulate_schedules: no schedules given")
    key = schedule_structure(schedules[0])
    for k, s in enumerate(schedules[1:], start=1):
        if schedule_structure(s) != key:
            raise ScheduleError(
                f"simulate_schedules: schedule {k} has structure {schedule_structure(s)}, schedule 0 has {key}; "
                "group schedules by pbpk.batch.schedule_structure (same tracers, order and simultaneous injections)")
    times = np.asarray(times_h, dtype=np.float64)
    if times.ndim == 1:
        times = np.broadcast_to(times, (len(schedules), times.size))
    if times.ndim != 2 or times.shape[0] != len(schedules) or times.shape[1] == 0 or not np.all(np.isfinite(times)):
        raise ScheduleError(f"times_h: expected (n_times,) or ({len(schedules)}, n_times) finite times (h), "
                            f"got shape {times.shape}")
    for k, s in enumerate(schedules):
        if np.any(np.diff(times[k]) < 0) or times[k, 0] < s.first_time_h:
            raise ScheduleError(f"times_h[{k}] must be sorted and not before schedule {k}'s first injection "
                                f"at {s.first_time_h} h")
    plan = _plan(model, schedules[0])
    decay_constants = np.asarray(plan.compiled.default_parameters)[plan.lambda_index]
    longest_half_life_h = float(np.log(2) / np.min(decay_constants)) if decay_constants.size else 0.0
    arrays = [_schedule_arrays(s) for s in schedules]
    t_end = [max(s.last_time_h + TAIL_HALF_LIVES * longest_half_life_h if tia else 0.0, t[-1], s.last_time_h)
             for s, t in zip(schedules, times)]
    return BatchArrays(times_h=np.array(times), event_times_h=np.stack([a[0] for a in arrays]),
                       activity_mbq=np.stack([a[1] for a in arrays]), total_nmol=np.stack([a[2] for a in arrays]),
                       t_end_h=np.array(t_end), y_init=np.stack([_initial_amounts(model, s, params) for s in schedules]))


def _solve_each_schedule(plan, tia: bool, options: SolverOptions, p, arrays: BatchArrays, solve, postprocess):
    """jax.vmap over the schedules of `arrays` of `solve` (`_solve`, or `_solve_lockstep`
    for parameter sets p (n_sets, n_parameters)) and `postprocess` (`_postprocess`, or
    `postprocess_sets`): (region activities, region TIA, solver flags)."""
    def one(t, ev, te, act, tot, y0):
        amounts, y_end, ok, lam, doses = solve(plan, options, tia, p, t, ev, te, act, tot, y0)
        region_activity, region_tia, _ = postprocess(plan, tia, amounts, y_end, lam, t, ev, doses)
        return region_activity, region_tia, ok

    a = arrays
    return jax.vmap(one)(jnp.asarray(a.times_h), jnp.asarray(a.event_times_h), jnp.asarray(a.t_end_h),
                         jnp.asarray(a.activity_mbq), jnp.asarray(a.total_nmol), jnp.asarray(a.y_init))


def solve_batch(model: Model, structure_of: Schedule, arrays: BatchArrays, params: Mapping[str, object] | None = None,
                *, tia: bool = True, options: SolverOptions = SolverOptions()) -> ScheduleBatch:
    """The vmapped solve over `arrays` (from `batch_arrays`) for schedules shaped like
    `structure_of`.  Pure JAX in `params` and `arrays`: wrap it in `jax.jit` once and call
    it for any schedules of that structure and shape without recompiling."""
    plan = _plan(model, structure_of)
    p = plan.compiled.parameter_vector(params)
    region_activity, region_tia, ok = _solve_each_schedule(plan, bool(tia), options, p, arrays, _solve, _postprocess)
    return ScheduleBatch(times_h=jnp.asarray(arrays.times_h), region_activity_mbq=region_activity,
                         region_tia_mbq_h=region_tia, solver_ok=ok, regions=model.region_names, nuclides=plan.nuclides)


def solve_batch_lockstep(model: Model, structure_of: Schedule, arrays: BatchArrays, params: Mapping[str, object],
                         *, tia: bool = True, options: SolverOptions = SolverOptions()) -> ScheduleBatch:
    """`solve_batch` for many parameter sets at once: `params` maps names to scalars or
    1-D arrays over N sets (as `pbpk.simulate_cohort`), and each schedule's solve is one
    lockstep solve of all N sets (`pbpk.cohort`).  Arrays gain a leading set axis:
    region_activity_mbq (N, n_schedules, n_nuclides, n_regions, n_times),
    region_tia_mbq_h (N, n_schedules, n_nuclides, n_regions), solver_ok (N, n_schedules)
    (a failed lockstep solve is False for every set of that schedule).  Pure JAX in `params`
    and `arrays`, like `solve_batch`."""
    plan = _plan(model, structure_of)
    p_sets, _ = _parameter_matrix(model, params)
    region_activity, region_tia, ok = _solve_each_schedule(plan, bool(tia), options, p_sets, arrays, _solve_lockstep,
                                                           postprocess_sets)
    return ScheduleBatch(times_h=jnp.asarray(arrays.times_h), region_activity_mbq=jnp.moveaxis(region_activity, 0, 1),
                         region_tia_mbq_h=jnp.moveaxis(region_tia, 0, 1), solver_ok=jnp.moveaxis(ok, 0, 1),
                         regions=model.region_names, nuclides=plan.nuclides)


def simulate_schedules(model: Model, schedules: Sequence[Schedule], times_h, params: Mapping[str, object] | None = None,
                       *, tia: bool = True, options: SolverOptions = SolverOptions()) -> ScheduleBatch:
    """Simulate `model` under every schedule of `schedules` in one vmapped solve.

    times_h: (n_times,) shared, or (n_schedules, n_times) per schedule, each sorted and not
      before its schedule's first injection (h, that schedule's clock).
    params: parameter overrides as in `simulate` (may be JAX tracers: this function can be
      wrapped in `jax.vmap` over posterior draws).  Solver failures are reported in
      `solver_ok`, never raised (as `simulate(..., check=False)`).
    Raises ScheduleError when the schedules differ in structure (`schedule_structure`).
    """
    schedules = [as_schedule(s) for s in schedules]
    arrays = batch_arrays(model, schedules, times_h, params, tia=tia)
    return solve_batch(model, schedules[0], arrays, params, tia=tia, options=options)
