"""The block-arrow linear solver of the Rosenbrock steps (pbpk.block_solve) against
LAPACK's pivoted dense solve, on the PSMA model's own iteration matrices and on generic
arrow-shaped patterns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pbpk
from pbpk.block_solve import BlockArrowSolve, DenseLU, _gauss_jordan_inverse, size_groups
from pbpk.compile import compile_model
from pbpk.simulate import _plan

TRACER = "Lu-177-PSMA-617"


def _dense(n, rows, cols, values):
    m = np.zeros((n, n))
    m[rows, cols] = values
    return m


def test_gauss_jordan_inverse_equals_numpy():
    a = np.random.default_rng(0).normal(size=(4, 7, 7)) + 5 * np.eye(7)
    np.testing.assert_allclose(_gauss_jordan_inverse(jnp.asarray(a)), np.linalg.inv(a), rtol=1e-12, atol=1e-14)


def test_size_groups_cover_every_block_once_at_least_cost():
    """Blocks grouped by padded size: every block once, and no single grouping is cheaper
    than the chosen one (sum of n_g K_g^3 + overhead per group, brute force)."""
    sizes = np.array([9, 4, 4, 8, 2, 1, 8, 4, 8, 3, 9, 9, 2, 2, 2, 2, 2, 2])
    groups = size_groups(sizes, overhead=100.0)
    assert sorted(np.concatenate(groups).tolist()) == list(range(sizes.size))

    def cost(gs):
        return sum(g.size * float(sizes[g].max()) ** 3 + 100.0 for g in gs)

    order = np.argsort(sizes, kind="stable")
    best = min(cost([order[:i], order[i:j], order[j:]] if j < sizes.size else [order[:i], order[i:]])
               for i in range(1, sizes.size) for j in range(i + 1, sizes.size + 1))
    assert cost(groups) <= min(best, cost([order])) + 1e-9
    assert len(groups) > 1


@pytest.fixture(scope="module")
def psma_system():
    """The PSMA model's linear system (species + TIA quadratures) and states along a solve."""
    model = pbpk.psma_model(tracers=[TRACER])
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
    plan = _plan(model, schedule)
    solver, rows, cols, quad_values = plan.linear_system(True)
    c = compile_model(model)
    p = c.parameter_vector()
    kinetics = c.kinetics(p, c.assignments(p))
    times = np.array([0.01, 0.1, 1.0, 10.0, 100.0])
    traj = pbpk.simulate(model, schedule, times, tia=False)
    return solver, rows, cols, quad_values, kinetics, np.asarray(traj.amounts_nmol)


def test_psma_plan_is_block_arrow_with_blood_pool_hubs(psma_system):
    solver = psma_system[0]
    assert isinstance(solver, BlockArrowSolve)
    assert 2 <= solver.hubs.size <= 12 and solver.sinks.size > 0  # the quadratures are sinks
    assert max(g.blocks.shape[1] for g in solver.groups) <= 12
    covered = np.concatenate([g.blocks.ravel() for g in solver.groups] + [solver.hubs, solver.sinks])
    assert sorted(covered[covered < solver.n].tolist()) == list(range(solver.n))


@pytest.mark.parametrize("step_h", [1e-8, 1e-4, 1e-1, 10.0, 1e3])
def test_block_solve_equals_pivoted_dense_solve_on_psma_states(psma_system, step_h):
    """W = I/(h gamma) - J at states along a 7.4 GBq solve, for steps from 1e-8 h to
    1e3 h: same solution as LAPACK's pivoted LU (no pivoting inside the blocks)."""
    solver, rows, cols, quad_values, kinetics, states = psma_system
    n_species = states.shape[1]
    rng = np.random.default_rng(int(np.log10(step_h)) + 20)
    shift = 1.0 / (step_h * 0.25)
    dense = DenseLU(rows, cols, solver.n)
    factor = jax.jit(solver.factor)
    solve = jax.jit(solver.solve)
    for y in states:
        values = jnp.concatenate([kinetics.jacobian_values(jnp.asarray(y)), jnp.asarray(quad_values)])
        b = jnp.asarray(rng.standard_normal(solver.n))
        x = np.asarray(solve(factor(values, shift), b))
        w = shift * np.eye(solver.n) - _dense(solver.n, rows, cols, np.asarray(values))
        x_ref = np.linalg.solve(w, np.asarray(b))
        # normwise backward error at round-off, and the forward error within cond(W) of it
        backward = np.linalg.norm(w @ x - b) / (np.linalg.norm(w, 2) * np.linalg.norm(x) + np.linalg.norm(b))
        assert backward < 1e-14
        forward = np.linalg.norm(x - x_ref) / np.linalg.norm(x_ref)
        assert forward < 1e-12 * max(np.linalg.cond(w), 1.0)
        x_dense = np.asarray(dense.solve(dense.factor(values, shift), b))
        assert np.linalg.norm(x_dense - x_ref) / np.linalg.norm(x_ref) < 1e-12 * max(np.linalg.cond(w), 1.0)
        assert n_species < solver.n


def _arrow_pattern(rng, n_blocks, hubs, sinks):
    sizes = rng.integers(1, 7, n_blocks)
    n_core = sizes.sum() + hubs
    n = n_core + sinks
    pattern = np.eye(n, dtype=bool)
    start = 0
    for s in sizes:
        block = rng.random((s, s)) < 0.6
        pattern[start:start + s, start:start + s] |= block
        pattern[start:start + s, start:start + s] |= np.eye(s, k=1, dtype=bool) | np.eye(s, k=-1, dtype=bool)
        start += s
    hub_ids = np.arange(n_core - hubs, n_core)
    for h in hub_ids:
        pattern[h, :n_core] |= rng.random(n_core) < 0.3
        pattern[:n_core, h] |= rng.random(n_core) < 0.3
    pattern[n_core:, :n_core] |= rng.random((sinks, n_core)) < 0.2
    perm = rng.permutation(n)
    return pattern[np.ix_(perm, perm)]


@pytest.mark.parametrize("seed,hubs,sinks", [(0, 3, 0), (1, 0, 4), (2, 5, 3)])
def test_block_solve_on_generic_arrow_patterns(seed, hubs, sinks):
    """Random arrow-shaped patterns (shuffled), diagonally dominant W: the planner finds
    the structure by itself and the solve equals numpy's."""
    rng = np.random.default_rng(seed)
    pattern = _arrow_pattern(rng, n_blocks=30, hubs=hubs, sinks=sinks)
    solver = BlockArrowSolve.from_pattern(pattern)
    assert solver is not None
    rows, cols = np.nonzero(pattern | np.eye(pattern.shape[0], dtype=bool))
    values = -rng.random(rows.size)
    values[rows == cols] = -5.0 - rng.random((rows == cols).sum())
    b = rng.standard_normal(solver.n)
    x = solver.solve(solver.factor(jnp.asarray(values), 2.0), jnp.asarray(b))
    w = 2.0 * np.eye(solver.n) - _dense(solver.n, rows, cols, values)
    np.testing.assert_allclose(x, np.linalg.solve(w, b), rtol=1e-10, atol=1e-13)


def test_dense_pattern_falls_back_to_dense_lu():
    assert BlockArrowSolve.from_pattern(np.ones((6, 6), dtype=bool)) is None


def test_simulate_auto_and_dense_linear_solves_agree():
    model = pbpk.psma_model(tracers=[TRACER])
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
    times = np.array([0.5, 4.0, 24.0, 96.0])
    fast = pbpk.simulate(model, schedule, times)
    dense = pbpk.simulate(model, schedule, times, options=pbpk.SolverOptions(linear_solve="dense"))
    np.testing.assert_allclose(fast.region_activity_mbq, dense.region_activity_mbq, rtol=1e-9, atol=1e-9)
    for region, tia in dense.tia_mbq_h.items():
        np.testing.assert_allclose(fast.tia_mbq_h[region], tia, rtol=1e-9)
