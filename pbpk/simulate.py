"""Simulation of any compiled model under a schedule of administrations (diffrax).

The state is the vector of species amounts (nmol) augmented with quadratures
Q_{n,r}(t) = integral of the labelled amount of nuclide n in region r (nmol*h), so that
time-integrated activity comes out of the same stiff solve:

    TIA_{n,r} [MBq*h] = lambda_n N_A * Q_{n,r}(infinity).

The solver restarts at every administration (a dose is added to the dosing species
between segments; segments run under `jax.lax.scan`, so the compiled program does not grow
with the number of cycles).  After the last administration the solve continues for
`TAIL_HALF_LIVES` physical half-lives of the longest-lived nuclide; the activity left then
(<= 2**-TAIL_HALF_LIVES of the injected activity, since biological clearance only adds
to physical decay) is integrated analytically as A(T)/lambda, an upper bound of the true
tail.  No truncation at the last output time.

Solver: `pbpk.rosenbrock.Rodas4` (linearly implicit, L-stable, order 4) with the model's
analytic Jacobian, or diffrax's Kvaerno5 (ESDIRK, order 5), inside `diffrax.diffeqsolve`
with an adaptive step-size controller, float64 (see `SolverOptions`).  `simulate` works
under `jax.jit`, `jax.vmap` (over parameter sets) and `jax.grad`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from dose.nuclides import AVOGADRO_PER_MOL

from .compile import CompiledModel, compile_model
from .errors import PBPKError, ScheduleError, SolverError
from .block_solve import BlockArrowSolve, DenseLU, LockstepSolve, stacked_rows
from .linear_solver import PermutedLU
from .rosenbrock import Rodas4
from .model import Model, decay_parameter_name
from .schedule import Administration, Schedule, as_schedule

TAIL_HALF_LIVES = 20.0
_MBQ_PER_NMOL_PER_LAMBDA_H = AVOGADRO_PER_MOL * 1e-9 / 3600.0 / 1e6  # MBq per (nmol * 1/h)


@dataclass(frozen=True)
class SolverOptions:
    """Tolerances and step limit of the stiff solver.

    method: "rodas4" (default; `pbpk.rosenbrock.Rodas4`, linearly implicit, with the
    model's analytic Jacobian) or "kvaerno5" (diffrax's ESDIRK with chord-Newton
    iterations).  Both run inside `diffrax.diffeqsolve` with a PID step-size controller.
    linear_solve (Rodas4): "auto" uses `pbpk.block_solve.BlockArrowSolve` (block
    inverses + Schur complement on the blood-pool hubs, from the model's structural
    Jacobian pattern) when it needs fewer flops than a dense LU, "dense" always uses the
    dense pivoted LU.  Both give the same solution to round-off.
    adjoint: how derivatives pass through the solve: "reverse" (diffrax's
    RecursiveCheckpointAdjoint, for `jax.grad` with many parameters) or "forward"
    (diffrax's ForwardMode, for `jax.jvp`/`jax.jacfwd` with few parameters, e.g. NUTS
    with `forward_mode_differentiation=True`; reverse mode is then unavailable).
    The solver works on amounts scaled by the largest administered amount of each ligand
    form (labelled per tracer, unlabelled per ligand), so `atol` is relative to the dose:
    1e-9 means 1e-9 of the injected amount, whether that is 0.001 nmol of 68Ga-PSMA-11 or
    90 nmol of PSMA-617.
    """

    rtol: float = 1e-6
    atol: float = 1e-9
    method: str = "rodas4"
    max_steps: int = 20_000
    adjoint: str = "reverse"
    linear_solve: str = "auto"

    def __post_init__(self):
        if self.adjoint not in ("reverse", "forward"):
            raise PBPKError(f"SolverOptions.adjoint = {self.adjoint!r}; expected 'reverse' or 'forward'")
        if self.linear_solve not in ("auto", "dense"):
            raise PBPKError(f"SolverOptions.linear_solve = {self.linear_solve!r}; expected 'auto' or 'dense'")
    pcoeff: float | None = None
    icoeff: float | None = None

    def controller(self, norm=None) -> diffrax.PIDController:
        """Step-size controller: the integral (I) controller for Rodas4, whose embedded
        error estimate is smooth; the PI settings recommended by diffrax for Kvaerno5.
        norm: the error norm (diffrax's RMS norm by default)."""
        default = (0.0, 1.0) if self.method == "rodas4" else (0.3, 0.4)
        pcoeff = default[0] if self.pcoeff is None else self.pcoeff
        icoeff = default[1] if self.icoeff is None else self.icoeff
        extra = {} if norm is None else dict(norm=norm)
        return diffrax.PIDController(rtol=self.rtol, atol=self.atol, pcoeff=pcoeff, icoeff=icoeff, **extra)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Trajectory:
    """Result of `simulate`: arrays (JAX pytree leaves) plus static labels.

    amounts_nmol: (n_times, n_species) species amounts;
    region_activity_mbq: (n_nuclides, n_regions, n_times);
    region_tia_mbq_h: (n_nuclides, n_regions) time-integrated activity to infinity (MBq*h);
    injected_mbq: (n_nuclides, n_times) activity of each nuclide injected up to each time;
    urine_ligand_fraction: (n_ligands, n_times) cumulative urinary excretion of each
      ligand as a fraction of the ligand injected so far (decay-independent, i.e. the
      decay-corrected %IA excreted / 100).
    solver_ok: scalar bool, True when every solve segment succeeded (always True unless
      `simulate(..., check=False)`; then a False here means the other arrays are invalid).
    """

    times_h: jnp.ndarray
    amounts_nmol: jnp.ndarray
    region_activity_mbq: jnp.ndarray
    region_tia_mbq_h: jnp.ndarray
    injected_mbq: jnp.ndarray
    urine_ligand_fraction: jnp.ndarray
    solver_ok: jnp.ndarray
    species: tuple[str, ...] = field(metadata=dict(static=True))
    regions: tuple[str, ...] = field(metadata=dict(static=True))
    nuclides: tuple[str, ...] = field(metadata=dict(static=True))
    ligands: tuple[str, ...] = field(metadata=dict(static=True))

    # ---------------------------------------------------------------- views
    def _nuclide_index(self, nuclide: str | None) -> int:
        if nuclide is None:
            if len(self.nuclides) != 1:
                raise PBPKError(
                    f"this trajectory has several nuclides {self.nuclides}; select one with "
                    f"trajectory.activity_of(nuclide) / trajectory.tia_of(nuclide)"
                )
            return 0
        from dose.nuclides import normalise_name

        name = normalise_name(nuclide)
        if name not in self.nuclides:
            raise PBPKError(f"nuclide {nuclide!r} not in this trajectory; it has {self.nuclides}")
        return self.nuclides.index(name)

    def activity_of(self, nuclide: str | None = None) -> dict[str, jnp.ndarray]:
        """Region name -> activity (MBq) of `nuclide` at `times_h`."""
        i = self._nuclide_index(nuclide)
        return {r: self.region_activity_mbq[..., i, k, :] for k, r in enumerate(self.regions)}

    def tia_of(self, nuclide: str | None = None) -> dict[str, jnp.ndarray]:
        """Region name -> time-integrated activity to infinity (MBq*h) of `nuclide`."""
        i = self._nuclide_index(nuclide)
        return {r: self.region_tia_mbq_h[..., i, k] for k, r in enumerate(self.regions)}

    @property
    def activity_mbq(self) -> dict[str, jnp.ndarray]:
        """Region -> activity (MBq) at `times_h` (single-nuclide schedules)."""
        return self.activity_of(None)

    @property
    def tia_mbq_h(self) -> dict[str, jnp.ndarray]:
        """Region -> TIA to infinity (MBq*h) (single-nuclide schedules)."""
        return self.tia_of(None)

    def percent_ia_of(self, nuclide: str | None = None) -> dict[str, jnp.ndarray]:
        """Region -> activity as % of the activity of `nuclide` injected up to each time
        (not decay corrected)."""
        i = self._nuclide_index(nuclide)
        inj = self.injected_mbq[..., i, :]
        return {r: 100.0 * a / jnp.where(inj > 0, inj, jnp.nan) for r, a in self.activity_of(nuclide).items()}

    def to_frame(self):
        """Long pandas DataFrame: time_h, nuclide, region, activity_mbq, percent_ia."""
        import pandas as pd

        act = np.asarray(self.region_activity_mbq)
        inj = np.asarray(self.injected_mbq)
        if act.ndim != 3:
            raise PBPKError("to_frame() needs an unbatched trajectory (index a vmapped one first)")
        t = np.asarray(self.times_h)
        frames = []
        for i, nuc in enumerate(self.nuclides):
            with np.errstate(invalid="ignore", divide="ignore"):
                pia = np.where(inj[i] > 0, 100.0 * act[i] / np.where(inj[i] > 0, inj[i], 1.0), np.nan)
            for k, region in enumerate(self.regions):
                frames.append(pd.DataFrame(dict(time_h=t, nuclide=nuc, region=region,
                                                activity_mbq=act[i, k], percent_ia=pia[k])))
        return pd.concat(frames, ignore_index=True)

    def tia_frame(self):
        """pandas DataFrame: nuclide, region, tia_mbq_h (to infinity)."""
        import pandas as pd

        tia = np.asarray(self.region_tia_mbq_h)
        return pd.DataFrame(
            [dict(nuclide=n, region=r, tia_mbq_h=float(tia[i, k]))
             for i, n in enumerate(self.nuclides) for k, r in enumerate(self.regions)]
        )


# --------------------------------------------------------------------- setup
@dataclass(frozen=True, eq=False)
class _Plan:
    """Static structure of one (model, schedule shape): index tables, no amounts or times.

    Dose rows come in pairs per administration: the labelled part into the hot dosing
    species, the unlabelled rest into the cold one.
    """

    compiled: CompiledModel
    nuclides: tuple[str, ...]
    ligands: tuple[str, ...]
    lambda_index: np.ndarray  # parameter index of each nuclide's decay constant
    region_hot: np.ndarray  # (n_nuclides * n_regions, n_species) 0/1
    urine_ligand: np.ndarray  # (n_ligands, n_species) 0/1
    n_events: int
    dose_species: np.ndarray  # (n_rows,) species index
    dose_event: np.ndarray  # (n_rows,) event index
    dose_nuclide: np.ndarray  # (n_rows,) nuclide index of the administration
    dose_ligand: np.ndarray  # (n_rows,) ligand index
    dose_is_hot: np.ndarray  # (n_rows,) True for labelled rows
    scale_of_row: np.ndarray  # (n_forms, n_rows) 1 where a dose row sets the scale of a form
    species_form: np.ndarray  # (n_species,) form index (last index: species of no dosed form)
    quadrature_form: np.ndarray  # (n_quadratures,) form index
    _linear_systems: dict = field(default_factory=dict)

    def linear_system(self, with_tia: bool) -> tuple:
        """Rodas4's linear solver for the state (species, plus TIA quadratures when
        `with_tia`), built once from the structural Jacobian pattern: the block-arrow
        solver where it needs fewer flops, else the dense LU, both taking J at the
        pattern's entries.  Returns (solver, rows, cols, quadrature-row values): the
        species entries come first, in `CompiledModel.jacobian_entries` order, then the
        constant quadrature rows."""
        if with_tia not in self._linear_systems:
            compiled = self.compiled
            n_sp = len(compiled.model.species)
            quad = self.region_hot if with_tia else self.region_hot[:0]
            n = n_sp + quad.shape[0]
            pattern = np.eye(n, dtype=bool)
            pattern[:n_sp, :n_sp] |= compiled.jacobian_pattern
            pattern[n_sp:, :n_sp] |= quad != 0
            solver = BlockArrowSolve.from_pattern(pattern)
            rows, cols = np.nonzero(pattern)
            if solver is None:
                solver = DenseLU(rows, cols, n)
            species_rows, species_cols = compiled.jacobian_entries
            n_species_entries = species_rows.size
            assert np.array_equal(rows[:n_species_entries], species_rows)
            assert np.array_equal(cols[:n_species_entries], species_cols)
            tail_rows, tail_cols = rows[n_species_entries:], cols[n_species_entries:]
            quad_values = np.where(tail_cols < n_sp, quad[tail_rows - n_sp, np.minimum(tail_cols, n_sp - 1)], 0.0)
            self._linear_systems[with_tia] = (solver, rows, cols, quad_values)
        return self._linear_systems[with_tia]


def _decay_parameter(model: Model, nuclide: str) -> str:
    name = decay_parameter_name(nuclide)
    if name not in model.parameter_names:
        raise PBPKError(f"model {model.name!r} has no decay-constant parameter {name!r} for {nuclide}")
    return name


def _plan(model: Model, schedule: Schedule) -> _Plan:
    """The static plan for this schedule structure (event pattern and tracers), cached on
    the compiled model."""
    events = schedule.event_times_h
    structure = tuple((events.index(a.time_h), a.tracer.name) for a in schedule)
    plans = compile_model(model).plans
    if structure not in plans:
        plans[structure] = _build_plan(model, schedule, structure)
    return plans[structure]


def _build_plan(model: Model, schedule: Schedule, structure) -> _Plan:
    compiled = compile_model(model)
    sidx = compiled.species_index
    nuclides, ligands, regions = model.nuclides, model.ligands, model.regions
    region_hot = np.zeros((len(nuclides) * len(regions), len(model.species)))
    by_name = {s.name: s for s in model.species}
    for i, nuc in enumerate(nuclides):
        for k, reg in enumerate(regions):
            for s in reg.species:
                if by_name[s].nuclide == nuc:
                    region_hot[i * len(regions) + k, sidx[s]] = 1.0
    urine_ligand = np.zeros((len(ligands), len(model.species)))
    for s in model.species:
        if s.compartment == "urine" and s.ligand in ligands:
            urine_ligand[ligands.index(s.ligand), sidx[s.name]] = 1.0

    rows = []  # (species, event, nuclide, ligand, is_hot)
    for (event, _), a in zip(structure, schedule):
        lig, nuc = a.tracer.ligand.name, a.tracer.nuclide
        for key in ((lig, nuc), (lig, None)):
            if key not in model.dose_targets:
                raise ScheduleError(
                    f"model {model.name!r} cannot be dosed with {a.tracer.name}: no dose target for "
                    f"{'labelled' if key[1] else 'unlabelled'} {lig}; build the model with this tracer, "
                    f"e.g. psma_model(tracers=[..., {a.tracer.name!r}])"
                )
        for is_hot in (True, False):
            target = model.dose_targets[(lig, nuc if is_hot else None)]
            rows.append((sidx[target], event, nuclides.index(nuc), ligands.index(lig), is_hot))
    cols = [np.array(c) for c in zip(*rows)]
    lam_idx = np.array([compiled.parameter_index[_decay_parameter(model, n)] for n in nuclides], dtype=int)

    # Scaling forms: labelled (ligand, nuclide) and unlabelled (ligand, None).  A cold form
    # takes its scale from every dose of its ligand (hot ligand decays into it).
    forms = sorted({(s.ligand, s.nuclide) for s in model.species if s.ligand is not None}, key=str)
    row_forms = [(ligands[li], nuclides[ni] if hot else None) for ni, li, hot in zip(cols[2], cols[3], cols[4])]
    scale_of_row = np.zeros((len(forms) + 1, len(rows)))
    for f, (lig, nuc) in enumerate(forms):
        for r, (rlig, rnuc) in enumerate(row_forms):
            if rlig == lig and (rnuc == nuc or nuc is None):
                scale_of_row[f, r] = 1.0
    species_form = np.array([forms.index((s.ligand, s.nuclide)) if (s.ligand, s.nuclide) in forms else len(forms)
                             for s in model.species], dtype=int)
    quadrature_form = np.array([species_form[np.argmax(row)] if row.any() else len(forms) for row in region_hot],
                               dtype=int)
    return _Plan(compiled, nuclides, ligands, lam_idx, region_hot, urine_ligand, len(schedule.event_times_h),
                 cols[0].astype(int), cols[1].astype(int), cols[2].astype(int), cols[3].astype(int),
                 cols[4].astype(bool), scale_of_row, species_form, quadrature_form)


def _initial_amounts(model: Model, schedule: Schedule, params, varied=()) -> np.ndarray:
    """Species amounts (nmol) just before the first administration: zero, or the model's
    own initial amounts (SBML imports), which are taken to hold at t = 0, so the schedule
    must then start at t = 0 (an administration of 0 MBq serves as a start marker).  They
    are evaluated at the default parameters with the concrete entries of `params`; a traced
    parameter (or one of `varied`, parameters that differ between the sets of a cohort)
    that an initial amount depends on is refused."""
    n = len(model.species)
    initial = tuple(getattr(model, "initial_amounts", ()))
    if not any(sp.sympify(expr).is_zero is not True for _, expr in initial):
        return np.zeros(n)
    if schedule.first_time_h != 0.0:
        raise ScheduleError(
            f"model {model.name!r} has initial amounts, which hold at t = 0, but the schedule starts at "
            f"{schedule.first_time_h} h; add an administration at t = 0 (0 MBq is allowed)")
    used = set().union(*(sp.sympify(expr).free_symbols for _, expr in initial))
    traced = [k for k, v in (params or {}).items() if isinstance(v, jax.core.Tracer)] + list(varied)
    if any(sp.Symbol(k) in used for k in traced):
        raise PBPKError(f"model {model.name!r}: initial amounts depend on traced or varied parameters "
                        f"{[k for k in traced if sp.Symbol(k) in used]}; they must be concrete values")
    concrete = {k: float(v) for k, v in (params or {}).items() if k not in traced}
    return np.asarray(model.initial_amounts_nmol(concrete), dtype=np.float64)


def _schedule_arrays(schedule: Schedule):
    """Per dose row: administered activity (MBq) and total ligand (nmol; NaN = carrier free)."""
    activity, total = [], []
    for a in schedule:
        tot = np.nan if a.ligand_nmol is None else float(a.ligand_nmol)
        activity += [a.activity_mbq] * 2
        total += [tot] * 2
    return np.array(schedule.event_times_h), np.array(activity, dtype=np.float64), np.array(total, dtype=np.float64)


def _dose_amounts(plan: _Plan, lam, activity, total) -> jnp.ndarray:
    """Amount (nmol) of each dose row: labelled rows A/(lambda N_A), cold rows total - hot."""
    hot = activity / (lam * _MBQ_PER_NMOL_PER_LAMBDA_H)[plan.dose_nuclide]
    total = jnp.where(jnp.isnan(total), hot, total)
    return jnp.where(jnp.asarray(plan.dose_is_hot), hot, total - hot)


# ---------------------------------------------------------------------- core
def _setup(plan: _Plan, with_tia: bool, p, activity, total, y_init):
    """Per parameter set (pure JAX): the kinetics' arrays, the solver's scale s (the state
    is z = y / s, s = largest dose of each species' ligand form), the scaled dose rows
    (n_events, n_state), z(0), the decay constants (1/h) and the dose-row amounts (nmol)."""
    c = plan.compiled
    d = c.assignments(p)
    lam = p[plan.lambda_index]  # (n_nuclides,) 1/h
    n_sp = len(c.model.species)
    n_q = plan.region_hot.shape[0] if with_tia else 0
    amount = _dose_amounts(plan, lam, activity, total)
    doses = jnp.zeros((plan.n_events, n_sp + n_q)).at[plan.dose_event, plan.dose_species].add(amount)
    form_scale = jnp.max(jnp.asarray(plan.scale_of_row) * amount[None, :], axis=1)
    initial_scale = jax.ops.segment_max(jnp.abs(y_init), jnp.asarray(plan.species_form),
                                        num_segments=plan.scale_of_row.shape[0])
    form_scale = jnp.maximum(form_scale, initial_scale)
    form_scale = jnp.where(form_scale > 0, form_scale, 1.0)
    scale = jnp.concatenate([form_scale[plan.species_form], form_scale[plan.quadrature_form[:n_q]]])
    z0 = jnp.concatenate([y_init, jnp.zeros(n_q)]) / scale
    return c.kinetics(p, d).arrays, scale, doses / scale, z0, lam, amount


def _lockstep_norm(error):
    """Step-size control norm of a lockstep solve: the largest over the parameter sets
    (last axis) of each set's RMS error, so every set meets the tolerances."""
    return jnp.max(jnp.sqrt(jnp.mean(jnp.square(error), axis=0)))


def _integrate(plan: _Plan, opts: SolverOptions, with_tia: bool, kinetics_arrays, scale, doses, z0, times,
               event_times, t_end, lockstep: bool):
    """The stiff solve from `_setup`'s output: amounts (nmol) at `times`
    (n_times, n_species), the state at t_end (n_species + n_quadratures) and a success
    flag.  With `lockstep`, every array carries the parameter sets along a last axis and
    one solve with one step-size sequence (controlled by `_lockstep_norm`) serves them all
    (`LockstepSolve` for the linear algebra); the flag is then per set."""
    c = plan.compiled
    n_sp = len(c.model.species)
    region_hot = jnp.asarray(plan.region_hot if with_tia else plan.region_hot[:0])
    kinetics = c.kinetics_from(kinetics_arrays)
    species_field = kinetics.field
    # rows one after the other (lockstep: slice by slice, see `block_solve.stacked_rows`)
    join = (lambda parts: stacked_rows(parts, 0)) if lockstep else jnp.concatenate

    def vector_field(t, z, args):
        amounts = z[:n_sp] * scale[:n_sp]
        return join([species_field(amounts), region_hot @ amounts]) / scale

    if opts.method == "rodas4" and (opts.linear_solve == "auto" or lockstep):
        linear_solver, rows, cols, quad_values = plan.linear_system(with_tia)
        if opts.linear_solve == "dense":
            linear_solver = DenseLU(rows, cols, linear_solver.n)
        if lockstep:
            linear_solver = LockstepSolve(linear_solver)
        entry_scale = scale[cols] / scale[rows]

        def jacobian(t, z, args):
            """d(dz/dt)/dz = diag(1/s) [[J(y), 0], [R, 0]] diag(s) at the pattern's entries."""
            j_species = kinetics.jacobian_values(z[:n_sp] * scale[:n_sp])
            quad = jnp.broadcast_to(quad_values.reshape((-1,) + (1,) * (z.ndim - 1)),
                                    (quad_values.size,) + z.shape[1:])
            return join([j_species, quad]) * entry_scale
    elif lockstep:
        raise PBPKError(f"a lockstep solve needs SolverOptions(method='rodas4'), got {opts.method!r}")
    else:
        linear_solver = DenseLU()
        n_q = region_hot.shape[0]

        def jacobian(t, z, args):
            """d(dz/dt)/dz = diag(1/s) [[J(y), 0], [R, 0]] diag(s), y = s z, dense."""
            j_species = kinetics.jacobian(z[:n_sp] * scale[:n_sp])
            top = jnp.concatenate([j_species, jnp.zeros((n_sp, n_q))], axis=1)
            bottom = jnp.concatenate([region_hot, jnp.zeros((n_q, n_q))], axis=1)
            return jnp.concatenate([top, bottom], axis=0) * scale[None, :] / scale[:, None]

    term = diffrax.ODETerm(vector_field)
    solver = _make_solver(opts, jacobian, linear_solver)
    controller = opts.controller(norm=_lockstep_norm if lockstep else None)
    adjoint = diffrax.ForwardMode() if opts.adjoint == "forward" else diffrax.RecursiveCheckpointAdjoint()
    seg_t1 = jnp.concatenate([event_times[1:], jnp.reshape(t_end, (1,))])
    last = jnp.arange(plan.n_events) == plan.n_events - 1

    def segment(carry, inputs):
        y, out, ok = carry
        dose, t0, t1, is_last = inputs
        y = y + dose
        sol = diffrax.diffeqsolve(
            term, solver, t0, t1, dt0=None, y0=y,
            saveat=diffrax.SaveAt(ts=jnp.clip(times, t0, t1), t1=True),
            stepsize_controller=controller, max_steps=opts.max_steps, throw=False, adjoint=adjoint,
        )
        in_seg = (times >= t0) & ((times < t1) | is_last)
        out = jnp.where(in_seg.reshape(in_seg.shape + (1,) * (out.ndim - 1)), sol.ys[:-1], out)
        ok = ok & (sol.result == diffrax.RESULTS.successful)
        return (sol.ys[-1], out, ok), None

    out0 = jnp.zeros((times.shape[0],) + z0.shape)
    (z_end, out, ok), _ = jax.lax.scan(segment, (z0, out0, jnp.asarray(True)), (doses, event_times, seg_t1, last))
    ok = ok & jnp.all(jnp.isfinite(out), axis=(0, 1)) & jnp.all(jnp.isfinite(z_end), axis=0)
    return out[:, :n_sp] * scale[:n_sp], z_end * scale, ok


@eqx.filter_jit
def _solve(plan: _Plan, opts: SolverOptions, with_tia: bool, p, times, event_times, t_end, activity, total, y_init):
    """Pure JAX (jitted per plan): amounts at `times` and the full state at t_end.

    Returns (amounts (n_times, n_species), y_end (n_species + n_quadratures), ok, lambda,
    dose-row amounts (nmol));
    the TIA quadratures are part of the state only when `with_tia`.
    """
    arrays, scale, doses, z0, lam, amount = _setup(plan, with_tia, p, activity, total, y_init)
    amounts, y_end, ok = _integrate(plan, opts, with_tia, arrays, scale, doses, z0, times, event_times, t_end,
                                    lockstep=False)
    return amounts, y_end, ok, lam, amount


@eqx.filter_jit
def _solve_lockstep(plan: _Plan, opts: SolverOptions, with_tia: bool, p, times, event_times, t_end, activity, total,
                    y_init):
    """`_solve` for parameter sets p (n_sets, n_parameters) under one schedule, in one
    lockstep solve; every output gains a leading set axis."""
    setup = jax.vmap(lambda q: _setup(plan, with_tia, q, activity, total, y_init), out_axes=-1)
    arrays, scale, doses, z0, lam, amount = setup(p)
    amounts, y_end, ok = _integrate(plan, opts, with_tia, arrays, scale, doses, z0, times, event_times, t_end,
                                    lockstep=True)
    return (jnp.moveaxis(amounts, -1, 0), jnp.moveaxis(y_end, -1, 0), ok, jnp.moveaxis(lam, -1, 0),
            jnp.moveaxis(amount, -1, 0))


@eqx.filter_jit
def _postprocess(plan: _Plan, with_tia: bool, amounts, y_end, lam, times, event_times, doses_nmol):
    """Region activities (MBq), TIA to infinity (MBq*h) and urinary ligand fractions."""
    n_sp = amounts.shape[1]
    n_nuc, n_reg = len(plan.nuclides), plan.region_hot.shape[0] // max(len(plan.nuclides), 1)
    mbq_per_nmol = lam * _MBQ_PER_NMOL_PER_LAMBDA_H  # (n_nuc,)
    region_hot = jnp.asarray(plan.region_hot)
    activity = (amounts @ region_hot.T).T.reshape(n_nuc, n_reg, -1) * mbq_per_nmol[:, None, None]
    if with_tia:
        q_end = y_end[n_sp:].reshape(n_nuc, n_reg)
        tail = (region_hot @ y_end[:n_sp]).reshape(n_nuc, n_reg) / lam[:, None]
        tia_values = (q_end + tail) * mbq_per_nmol[:, None]
    else:
        tia_values = jnp.full((n_nuc, n_reg), jnp.nan)
    # ligand injected so far (nmol, labelled + unlabelled) per ligand, from the dose rows
    after = times[None, :] >= event_times[plan.dose_event][:, None]  # (n_rows, n_times)
    per_ligand = jnp.asarray(np.eye(len(plan.ligands))[plan.dose_ligand].T)  # (n_ligands, n_rows)
    ligand_injected = per_ligand @ (after * doses_nmol[:, None])
    urine = (amounts @ jnp.asarray(plan.urine_ligand).T).T  # (n_ligands, n_times)
    urine_fraction = urine / jnp.where(ligand_injected > 0, ligand_injected, jnp.nan)
    return activity, tia_values, urine_fraction


def _make_solver(opts: SolverOptions, jacobian, linear_solver):
    if opts.method == "rodas4":
        return Rodas4(jacobian=jacobian, linear_solver=linear_solver, implicit_tangents=opts.adjoint == "forward")
    if opts.method == "kvaerno5":
        return diffrax.Kvaerno5(
            root_finder=diffrax.with_stepsize_controller_tols(diffrax.VeryChord)(linear_solver=PermutedLU())
        )
    raise PBPKError(f"SolverOptions.method must be 'rodas4' or 'kvaerno5', got {opts.method!r}")


def simulate(
    model: Model,
    schedule: Schedule | Administration | Sequence[Administration],
    times_h,
    params: Mapping[str, object] | None = None,
    *,
    tia: bool = True,
    options: SolverOptions = SolverOptions(),
    check: bool = True,
) -> Trajectory:
    """Simulate `model` under `schedule`, reporting at `times_h` (h, schedule clock).

    params: parameter overrides (name -> value); values may be JAX tracers, so this
      function can be wrapped in `jax.jit`, `jax.vmap` and `jax.grad`.
    tia: integrate to infinity for time-integrated activity (default); with False the
      solve stops at the last output time and `region_tia_mbq_h` holds NaN.
    Raises ScheduleError for output times before the first administration, ParameterError
    for parameters out of bounds (checked when concrete) and SolverError when the solver
    fails (under jit the failure surfaces as an `equinox` runtime error with the same text).
    check=False turns the solver-failure error off: the result's `solver_ok` flag says
    whether the solve succeeded (for samplers and optimisers that must survive extreme
    proposals; parameter bounds are then not checked either).
    """
    schedule = as_schedule(schedule)
    y_init = _initial_amounts(model, schedule, params)
    run = _run_inputs(model, schedule, times_h, tia)
    c = run.plan.compiled
    p = c.parameter_vector(params)
    concrete = not isinstance(p, jax.core.Tracer)
    if concrete and check:
        c.check_parameters(np.asarray(p))
    amounts, y_end, ok, lam, doses_nmol = _solve(run.plan, options, bool(tia), p, *run.solve_arguments(y_init))
    message = _failure_message(model, options)
    if check and concrete:
        if not bool(ok):
            raise SolverError(message)
    elif check:
        amounts = eqx.error_if(amounts, ~ok, message)
    return run.trajectory(model, amounts, y_end, ok, lam, doses_nmol, _postprocess)


@dataclass(frozen=True)
class _Run:
    """What a solve needs besides the parameters: the plan, output times (h), the solve's
    end (h) and the schedule's arrays."""

    schedule: Schedule
    plan: _Plan
    tia: bool
    times: np.ndarray
    t_end: float
    event_times: np.ndarray
    activity: np.ndarray
    total: np.ndarray

    def solve_arguments(self, y_init) -> tuple:
        """(times, event_times, t_end, activity, total, y_init) as `_solve` takes them."""
        return (jnp.asarray(self.times), jnp.asarray(self.event_times), jnp.asarray(self.t_end),
                jnp.asarray(self.activity), jnp.asarray(self.total), jnp.asarray(y_init))

    def trajectory(self, model: Model, amounts, y_end, ok, lam, doses_nmol, postprocess) -> Trajectory:
        """The `Trajectory` from a solve's outputs; `postprocess` is `_postprocess` or a
        vmap of it (then every array has a leading parameter-set axis)."""
        plan, times = self.plan, self.times
        activity, tia_values, urine_fraction = postprocess(
            plan, self.tia, amounts, y_end, lam, jnp.asarray(times), jnp.asarray(self.event_times), doses_nmol)
        injected = np.zeros((len(plan.nuclides), times.size))  # activity injected so far, per nuclide
        for i, nuc in enumerate(plan.nuclides):
            for time_h, mbq in self.schedule.injected_activity_mbq(nuc):
                injected[i] += np.where(times >= time_h, mbq, 0.0)
        lead = jnp.shape(ok)  # () or (n_sets,)
        return Trajectory(
            times_h=jnp.broadcast_to(times, lead + times.shape), amounts_nmol=amounts, region_activity_mbq=activity,
            region_tia_mbq_h=tia_values, injected_mbq=jnp.broadcast_to(injected, lead + injected.shape),
            urine_ligand_fraction=urine_fraction, solver_ok=jnp.asarray(ok), species=model.species_names,
            regions=model.region_names, nuclides=plan.nuclides, ligands=plan.ligands,
        )


def _run_inputs(model: Model, schedule: Schedule, times_h, tia: bool) -> _Run:
    """Checks the output times against the schedule and fixes the solve's end: the last
    output time, or with `tia` the last administration + `TAIL_HALF_LIVES` half-lives of
    the longest-lived nuclide."""
    times = np.asarray(times_h, dtype=np.float64)
    if times.ndim != 1 or times.size == 0 or not np.all(np.isfinite(times)):
        raise ScheduleError("times_h must be a non-empty 1-D sequence of finite times (h)")
    if np.any(np.diff(times) < 0):
        raise ScheduleError("times_h must be sorted in ascending order")
    if times[0] < schedule.first_time_h:
        raise ScheduleError(
            f"output time {times[0]} h is before the first administration at {schedule.first_time_h} h"
        )
    plan = _plan(model, schedule)
    decay_constants = np.asarray(plan.compiled.default_parameters)[plan.lambda_index]
    longest_half_life_h = float(np.log(2) / np.min(decay_constants)) if decay_constants.size else 0.0
    last = max(float(times[-1]), schedule.last_time_h)
    t_end = schedule.last_time_h + TAIL_HALF_LIVES * longest_half_life_h if tia else last
    event_times, activity, total = _schedule_arrays(schedule)
    return _Run(schedule, plan, bool(tia), times, max(t_end, last), event_times, activity, total)


def _failure_message(model: Model, options: SolverOptions) -> str:
    return (f"pbpk solver failed for model {model.name!r} (step-size collapse, max_steps={options.max_steps} "
            f"reached or non-finite state); check parameters, or loosen rtol/atol")
