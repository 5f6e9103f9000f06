"""Many parameter sets under one schedule, solved in lockstep.

`simulate_cohort` is what a virtual cohort, a posterior predictive or a sensitivity scan
needs: N parameter sets (patients), one schedule, one set of output times.  Instead of
`jax.vmap` over `simulate` (one solve per set, batched by XLA into masked selects), the
N systems are stacked into one state of shape (n_states, N) and integrated together:

* one step-size sequence for all sets, chosen by the largest of the sets' RMS error
  estimates, so every set meets rtol/atol (each set is solved at least as accurately as
  alone; the steps are those of the most demanding set, which is also what a vmapped
  while-loop costs);
* the linear algebra of every Rosenbrock stage laid out with the sets innermost
  (`pbpk.block_solve.LockstepSolve`): contiguous, vectorised updates instead of small
  per-set matrices.

Row k of the result equals `simulate(model, schedule, times_h, params_k)` to within the
tolerances (`tests/test_cohort.py`: 2e-5 relative at rtol 1e-6).  The solve is Rodas4 only
(the Kvaerno5 path forms a dense Jacobian of the whole state).  One failing set (max_steps,
non-finite state) fails the shared solve: `solver_ok` is then False for every set, and
with `check=True` a `SolverError` names the model.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .compile import compile_model
from .errors import ParameterError, PBPKError, SolverError
from .model import Model
from .schedule import Administration, Schedule, as_schedule
from .simulate import (SolverOptions, Trajectory, _failure_message, _initial_amounts, _postprocess, _run_inputs,
                       _solve, _solve_lockstep)


def _parameter_matrix(model: Model, params: Mapping[str, object]) -> tuple[jnp.ndarray, int]:
    """(n_sets, n_parameters) parameter vectors: every value of `params` is a scalar (the
    same for all sets) or a 1-D array over the sets; all arrays must have one length."""
    c = compile_model(model)
    values = {name: jnp.asarray(v, dtype=jnp.float64) for name, v in params.items()}
    lengths = {name: v.shape[0] for name, v in values.items() if v.ndim == 1}
    bad = [name for name, v in values.items() if v.ndim > 1]
    if bad:
        raise ParameterError(f"simulate_cohort: params {bad} must be scalars or 1-D arrays over the parameter sets")
    if len(set(lengths.values())) > 1:
        raise ParameterError(f"simulate_cohort: parameter arrays differ in length: {lengths}")
    if not lengths:
        raise ParameterError("simulate_cohort: give at least one parameter as a 1-D array over the parameter sets")
    n_sets = next(iter(lengths.values()))
    if n_sets == 0:
        raise ParameterError("simulate_cohort: the parameter arrays are empty (no parameter sets)")
    columns = {name: jnp.broadcast_to(v, (n_sets,)) for name, v in values.items()}
    return jax.vmap(c.parameter_vector)(columns), n_sets


def simulate_cohort(
    model: Model,
    schedule: Schedule | Administration,
    times_h,
    params: Mapping[str, object],
    *,
    tia: bool = True,
    options: SolverOptions = SolverOptions(),
    check: bool = True,
    isolate_failures: bool = False,
) -> Trajectory:
    """Simulate `model` for many parameter sets under one `schedule` (lockstep solve).

    params: name -> scalar (shared) or 1-D array with one value per parameter set.
    Returns a `Trajectory` whose arrays have a leading parameter-set axis, as
    `jax.vmap(simulate)` would give (amounts_nmol (N, n_times, n_species),
    region_activity_mbq (N, n_nuclides, n_regions, n_times), region_tia_mbq_h
    (N, n_nuclides, n_regions), solver_ok (N,), ...).
    With check=False a failing set fails the shared solve (every `solver_ok` False);
    isolate_failures=True (concrete parameters) then solves each set alone (vmap), so only
    the failing sets are flagged.
    Raises ParameterError naming the set (row) whose values are out of bounds (concrete
    values), SolverError when the shared solve fails (unless check=False; then see
    `solver_ok`), PBPKError for a method other than Rodas4, and the errors of `simulate`
    for the schedule and output times.
    """
    if options.method != "rodas4":
        raise PBPKError(f"simulate_cohort solves with Rodas4 only; got SolverOptions(method={options.method!r})")
    schedule = as_schedule(schedule)
    varied = {k for k, v in params.items() if np.ndim(v) > 0 or isinstance(v, jax.core.Tracer)}
    y_init = _initial_amounts(model, schedule, {k: v for k, v in params.items() if k not in varied},
                              varied=varied)
    run = _run_inputs(model, schedule, times_h, tia)
    p, n_sets = _parameter_matrix(model, params)
    concrete = not isinstance(p, jax.core.Tracer)
    if concrete and check:
        rows = np.asarray(p)
        for k in range(n_sets):
            try:
                run.plan.compiled.check_parameters(rows[k])
            except ParameterError as err:
                raise ParameterError(f"parameter set {k}: {err}") from None
    amounts, y_end, ok, lam, doses_nmol = _solve_lockstep(run.plan, options, bool(tia), p, *run.solve_arguments(y_init))
    if isolate_failures and concrete and not check and not bool(jnp.all(ok)):
        amounts, y_end, ok, lam, doses_nmol = jax.vmap(
            lambda q: _solve(run.plan, options, bool(tia), q, *run.solve_arguments(y_init)))(p)
    if check and concrete and not bool(jnp.all(ok)):
        failed = np.flatnonzero(~np.asarray(ok))
        raise SolverError(f"{_failure_message(model, options)}; lockstep solve of {n_sets} parameter sets, "
                          f"failed for sets {failed[:10].tolist()}{' ...' if failed.size > 10 else ''}")

    return run.trajectory(model, amounts, y_end, ok, lam, doses_nmol, postprocess_sets)


def postprocess_sets(plan, with_tia: bool, amounts, y_end, lam, times, event_times, doses_nmol):
    """`simulate._postprocess` of every parameter set of a lockstep solve (outputs with a
    leading set axis; times and event times shared)."""
    one = lambda a, y, la, d: _postprocess(plan, with_tia, a, y, la, times, event_times, d)  # noqa: E731
    return jax.vmap(one)(amounts, y_end, lam, doses_nmol)
