"""Posterior outcomes of therapy schedules: region TIA, mean absorbed dose and BED per
posterior draw and schedule, computed in vectorised solves.

For draws theta_d (d = 1..n) and schedules k = 1..m of one nuclide:

    TIA_{d,k}  = region TIA to infinity (MBq*h) from `pbpk.batch` (schedules grouped by
                 structure, vmapped over the group's schedules; the draws either vmapped
                 too or, from `LOCKSTEP_MIN_DRAWS` draws on, solved in lockstep
                 (`pbpk.batch.solve_batch_lockstep`, ~2x faster per draw), falling back
                 to the vmapped solve when a lockstep solve fails, so that a failing draw
                 is flagged alone; no Python loop over simulations);
    D_{d,k}    = S @ TIA_{d,k} (Gy; S = the twin's `maps.DoseOperator`);
    R_{d,k}(t) = S @ A_{d,k}(t) (Gy/h), the region activities A sampled on a grid that is
                 geometric after every injection (`OUTPUT_POINTS_PER_WINDOW` points);
    BED_{d,k}  = D + G D^2 / (alpha/beta), G the Lea-Catcheside factor of R
                 (`dose.metrics.g_factor_sampled`, tail at the physical decay rate);
                 cycles weeks apart add up automatically (repair between them is complete).

With `scale_activity`, a schedule that is another with every activity times f (same times,
tracers and ligand amounts; `activity_multiples`) is not solved: TIA_k = f TIA_r,
D_k = f D_r and G_k = G_r, exact where labelled and unlabelled ligand share their kinetics.

Draws whose solve fails for any schedule of a group are dropped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import pbpk
from dose import metrics
from dose.nuclides import half_life_h
from pbpk.batch import batch_arrays, schedule_structure, solve_batch, solve_batch_lockstep

from .errors import TwinError
from .maps import DoseOperator

OUTPUT_POINTS_PER_WINDOW = 24
FIRST_OFFSET_H = 0.05  # first grid point after an injection (h); earlier uptake is negligible
LAST_WINDOW_HALF_LIVES = 10.0  # grid after the last injection: 10 physical half-lives, then the analytic tail
QUANTILES = (0.05, 0.5, 0.95)
LOCKSTEP_MIN_DRAWS = 16  # from this many draws on, solve them in lockstep (a compile pays off)


def schedule_nuclide(schedule: pbpk.Schedule) -> str:
    """The single nuclide of a therapy schedule (TwinError if it mixes nuclides)."""
    nuclides = sorted({a.tracer.nuclide for a in schedule})
    if len(nuclides) != 1:
        raise TwinError(f"schedule {schedule!r} gives nuclides {nuclides}; a therapy schedule has one nuclide "
                        "(predict the PET separately)")
    return nuclides[0]


def output_grid_h(schedule: pbpk.Schedule) -> np.ndarray:
    """Sample times (h, schedule clock): `OUTPUT_POINTS_PER_WINDOW` geometric points after
    each injection time, up to the next one (the last window: 10 physical half-lives)."""
    events = list(schedule.event_times_h)
    last_window = LAST_WINDOW_HALF_LIVES * half_life_h(schedule_nuclide(schedule))
    ends = events[1:] + [events[-1] + last_window]
    grid = []
    for start, end in zip(events, ends):
        length = end - start
        if length <= 2 * FIRST_OFFSET_H:
            raise TwinError(f"schedule injections at {start} h and {end} h are too close ({length} h) for the "
                            f"dose-rate grid; merge them into one administration")
        grid.append(start + np.geomspace(FIRST_OFFSET_H, 0.999 * length, OUTPUT_POINTS_PER_WINDOW))
    return np.concatenate(grid)


@dataclass(frozen=True)
class Outcomes:
    """Per-draw outcomes: arrays (n_draws, n_schedules, n_regions).

    tia_mbq_h over `model_regions`; dose_gy and bed_gy over `dose_regions` (bed_gy NaN
    for regions without LQ parameters in `radiobiology`); failed_fraction: draws dropped.
    """

    schedule_names: tuple[str, ...]
    model_regions: tuple[str, ...]
    dose_regions: tuple[str, ...]
    tia_mbq_h: np.ndarray
    dose_gy: np.ndarray
    bed_gy: np.ndarray
    failed_fraction: float

    def summary(self, quantiles: Sequence[float] = QUANTILES) -> pd.DataFrame:
        """One row per (schedule, region): mean and quantiles of TIA (MBq*h), dose and BED (Gy)."""
        rows = []
        tia_index = {r: j for j, r in enumerate(self.model_regions)}
        for k, name in enumerate(self.schedule_names):
            for j, region in enumerate(self.dose_regions):
                row = dict(schedule=name, region=region)
                for label, values in (("tia_mbq_h", self.tia_mbq_h[:, k, tia_index[region]]),
                                      ("dose_gy", self.dose_gy[:, k, j]), ("bed_gy", self.bed_gy[:, k, j])):
                    row[f"{label}_mean"] = float(values.mean())
                    row.update({f"{label}_q{round(q * 100):02d}": float(np.quantile(values, q)) for q in quantiles})
                rows.append(row)
        out = pd.DataFrame(rows)
        out.attrs["failed_solve_fraction"] = self.failed_fraction
        return out


def bucket_size(n: int) -> int:
    """Padded size of a group of n >= 1 rows: the next power of two, so a caller whose row
    count changes from call to call (an optimiser's candidate schedules, a trial chunk's
    patients of one lesion count) reuses at most log2(max n) + 1 compiled shapes and pads
    fewer than n rows (the padding repeats a row and is dropped)."""
    return 1 << (n - 1).bit_length()


def activity_multiples(schedules: Sequence[pbpk.Schedule]) -> list[tuple[int, float]]:
    """Per schedule k: (r, f) with schedule k = schedule r with every activity times f,
    r <= k the first such schedule (r = k, f = 1 for a schedule solved itself).

    Multiples share the injection times, tracers and total ligand amounts (nmol) of every
    administration, none carrier-free (`ligand_nmol` given) and no activity zero.  In a
    model whose labelled and unlabelled forms of a ligand share their kinetics (physical
    decay turning one into the other), such as `pbpk.psma_model`, the total ligand then
    follows the same course and the labelled fraction scales with f: A_k(t) = f A_r(t)
    exactly, so TIA and dose scale with f and the Lea-Catcheside factor G of the dose rate
    is the same.  (Carrier-free schedules are excluded: their total ligand scales with the
    activity, which saturable binding does not follow linearly.)"""
    def key(s: pbpk.Schedule):
        if any(a.ligand_nmol is None or a.activity_mbq <= 0 for a in s):
            return None
        return tuple((a.time_h, a.tracer.name, a.ligand_nmol) for a in s)

    keys = [key(s) for s in schedules]
    activities = [np.array([a.activity_mbq for a in s]) for s in schedules]
    out: list[tuple[int, float]] = []
    for k in range(len(schedules)):
        match = (k, 1.0)
        for r in range(k):
            if keys[k] is not None and out[r][0] == r and keys[r] == keys[k]:
                f = activities[k][0] / activities[r][0]
                if np.allclose(activities[k], f * activities[r], rtol=1e-12, atol=0.0):
                    match = (r, float(f))
                    break
        out.append(match)
    return out


def _group(schedules: Sequence[pbpk.Schedule]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for k, s in enumerate(schedules):
        groups.setdefault(schedule_structure(s), []).append(k)
    return groups


@dataclass(frozen=True)
class OutcomeArrays:
    """Outcomes of every draw, failed solves included: arrays (n_draws, n_schedules, n_regions)
    as in `Outcomes` (tia over the model's regions, dose and BED over the operator's) and
    solver_ok (n_draws,): False where any schedule's solve failed (its values are then not
    to be trusted; non-finite amounts are replaced by 0 before the dose)."""

    schedule_names: tuple[str, ...]
    tia_mbq_h: np.ndarray
    dose_gy: np.ndarray
    bed_gy: np.ndarray
    solver_ok: np.ndarray


def outcome_arrays(model: pbpk.Model, parameters: Callable, thetas: np.ndarray,
                   schedules: Mapping[str, pbpk.Schedule], operator: DoseOperator,
                   radiobiology: Mapping[str, metrics.Radiobiology], *, dose_scale: np.ndarray | None = None,
                   options: pbpk.SolverOptions = pbpk.SolverOptions(), cache: dict | None = None,
                   lockstep: bool | None = None, scale_activity: bool = False,
                   pad_schedules: bool = True) -> OutcomeArrays:
    """Outcomes of every schedule for every draw, failed draws kept and flagged (see
    `simulate_outcomes` for the arguments).

    scale_activity: solve only one of the schedules that differ by a common factor on their
      activities (`activity_multiples`) and scale its outcomes; only for models whose
      labelled and unlabelled ligand share their kinetics (`pbpk.psma_model`).
    pad_schedules: pad each group of schedules solved together to `bucket_size` (a caller
      whose schedule count changes between calls, e.g. an optimiser, then reuses a few
      compiled shapes); False for a caller with one fixed set (a trial), which then solves
      no padding.

    lockstep: solve the draws in lockstep (True), vmapped (False), or lockstep from
      `LOCKSTEP_MIN_DRAWS` draws on (None).  A failed lockstep solve is redone vmapped.

    dose_scale: optional (n_draws, n_dose_regions) factor on each row of S per draw, for
      draws that are different patients (e.g. reference mass / patient mass of a self-dose
      row).  The Lea-Catcheside factor does not change with a constant factor on the dose
      rate, so BED_d = D_d + G D_d^2 / (alpha/beta) with the scaled D_d.
    """
    cache = {} if cache is None else cache
    names = tuple(schedules)
    scheds = [pbpk.schedule.as_schedule(schedules[n]) for n in names]
    if not scheds:
        raise TwinError("no schedules to evaluate")
    for name, s in zip(names, scheds):
        if schedule_nuclide(s) != operator.nuclide:
            raise TwinError(f"schedule {name!r} gives {schedule_nuclide(s)}; the dose operator is for "
                            f"{operator.nuclide}")
    thetas = jnp.asarray(np.atleast_2d(np.asarray(thetas, dtype=np.float64)))
    lam_phys = math.log(2.0) / half_life_h(operator.nuclide)
    n_draws, n_sched = thetas.shape[0], len(scheds)
    n_model, n_dose = len(model.region_names), len(operator.regions)
    scale = np.ones((n_draws, n_dose)) if dose_scale is None else np.asarray(dose_scale, dtype=np.float64)
    if scale.shape != (n_draws, n_dose) or not np.all(np.isfinite(scale)):
        raise TwinError(f"dose_scale: expected finite values of shape {(n_draws, n_dose)}, got {scale.shape}")
    tia = np.zeros((n_draws, n_sched, n_model))
    dose_gy = np.zeros((n_draws, n_sched, n_dose))
    g_factor = np.full((n_draws, n_sched, n_dose), np.nan)  # NaN: no LQ parameters
    ok_all = np.ones(n_draws, dtype=bool)
    s_matrix = operator.matrix
    multiples = activity_multiples(scheds) if scale_activity else [(k, 1.0) for k in range(n_sched)]
    solved = [k for k, (r, _) in enumerate(multiples) if r == k]

    for members in _group([scheds[k] for k in solved]).values():
        indices = [solved[m] for m in members]
        group = [scheds[k] for k in indices]
        if pad_schedules:  # fewer compiled shapes
            group += [group[-1]] * (bucket_size(len(group)) - len(group))
        grids = np.stack([output_grid_h(s) for s in group])
        arrays = batch_arrays(model, group, grids)
        key = (id(model), schedule_structure(group[0]), options)
        if key not in cache:
            def batched(thetas, arrays, structure_of=group[0]):
                def one(theta):
                    b = solve_batch(model, structure_of, arrays, parameters(theta), options=options)
                    return b.region_activity_mbq, b.region_tia_mbq_h, b.solver_ok
                return jax.vmap(one)(thetas)

            def in_lockstep(thetas, arrays, structure_of=group[0]):
                b = solve_batch_lockstep(model, structure_of, arrays, jax.vmap(parameters)(thetas), options=options)
                return b.region_activity_mbq, b.region_tia_mbq_h, b.solver_ok
            cache[key] = (model, jax.jit(batched), jax.jit(in_lockstep))  # the model keeps its id unique
        use_lockstep = (n_draws >= LOCKSTEP_MIN_DRAWS and options.method == "rodas4") if lockstep is None else lockstep
        activity, region_tia, ok = cache[key][2 if use_lockstep else 1](thetas, arrays)
        if use_lockstep and not np.asarray(ok).all():  # one failing draw fails its lockstep solve
            activity, region_tia, ok = cache[key][1](thetas, arrays)
        nuc = list(model.nuclides).index(operator.nuclide)  # simulations report every model nuclide
        activity = np.asarray(activity)[:, :, nuc]  # (draws, group, regions, t)
        region_tia = np.asarray(region_tia)[:, :, nuc]  # (draws, group, regions)
        ok_all &= np.asarray(ok).all(axis=1)
        region_tia = np.where(np.isfinite(region_tia), region_tia, 0.0)
        activity = np.where(np.isfinite(activity), np.maximum(activity, 0.0), 0.0)
        for g, k in enumerate(indices):
            tia[:, k] = region_tia[:, g]
            dose_gy[:, k] = (region_tia[:, g] @ s_matrix.T) * scale
            rate = np.einsum("drt,qr->dqt", activity[:, g], s_matrix)  # Gy/h per dose region (unscaled)
            for j, region in enumerate(operator.regions):
                lq = radiobiology.get(region)
                if lq is not None:
                    g_factor[:, k, j] = metrics.g_factor_sampled(grids[g], rate[:, j], lq.repair_rate_per_h, lam_phys)
    for k, (r, f) in enumerate(multiples):  # schedule k = schedule r with f times the activities
        tia[:, k], dose_gy[:, k], g_factor[:, k] = f * tia[:, r], f * dose_gy[:, r], g_factor[:, r]
    alpha_beta_gy = np.array([radiobiology[r].alpha_beta_gy if r in radiobiology else np.nan
                              for r in operator.regions])
    bed = dose_gy + g_factor * dose_gy ** 2 / alpha_beta_gy
    return OutcomeArrays(names, tia, dose_gy, bed, ok_all)


def simulate_outcomes(model: pbpk.Model, parameters: Callable, thetas: np.ndarray,
                      schedules: Mapping[str, pbpk.Schedule], operator: DoseOperator,
                      radiobiology: Mapping[str, metrics.Radiobiology], *,
                      options: pbpk.SolverOptions = pbpk.SolverOptions(), cache: dict | None = None) -> Outcomes:
    """Outcomes of every schedule for every draw (see module doc); draws whose solve failed
    are dropped and counted in `failed_fraction`.

    parameters: theta -> {parameter name: value} (e.g. `calibration` Problem.parameters);
    thetas: (n_draws, n_free); schedules: name -> therapy schedule, all of `operator.nuclide`;
    radiobiology: dose region -> LQ parameters (regions not in it get BED NaN).
    cache: a dict kept by the caller for the jitted solves (one per model and schedule
      structure; XLA then recompiles only for new array shapes, e.g. another draw count).
    """
    out = outcome_arrays(model, parameters, thetas, schedules, operator, radiobiology, options=options, cache=cache)
    ok = out.solver_ok
    if not ok.any():
        raise TwinError("every posterior draw failed to solve for these schedules; check the schedules "
                        "(activities, ligand amounts) or loosen the solver tolerances")
    return Outcomes(out.schedule_names, model.region_names, operator.regions, out.tia_mbq_h[ok], out.dose_gy[ok],
                    out.bed_gy[ok], float(1.0 - ok.mean()))
