"""Linear solves with the iteration matrix of a stiff step, W x = b, W = I/(h gamma) - J.

Whole-body PBPK Jacobians are very sparse (the 114-species PSMA model has 413 structural
non-zeros of 12 996) and arrow-shaped: a few hub states (venous and arterial blood, hot
and cold ligand) couple small blocks (one organ's vascular/interstitial/bound species
each), and some states feed nothing back (the time-integral quadratures).  With the
states ordered [blocks | hubs] and the sinks solved last,

    W = [[B, E], [F, H]],   B = diag(B_1, ..., B_m)  (block k of size <= K),

W x = b is solved by the Schur complement S = H - F B^{-1} E on the h hubs:

    y_B = B^{-1} b_B,   x_H = S^{-1} (b_H - F y_B),   x_B = y_B - (B^{-1} E) x_H,
    x_sink = (b_sink - W[sink, :] x) / W[sink, sink].

Both solvers take the Jacobian J and the diagonal shift 1/(h gamma): `DenseLU` a dense
J (or its values at given structural entries), `BlockArrowSolve` the values of J at its
pattern's entries (row-major), which it gathers straight into the block layout.

`factor` forms the explicit block inverses B_k^{-1} (Gauss-Jordan elimination on the
diagonal, all blocks at once; blocks grouped by size, each group padded to its largest
block with identity rows), G = B^{-1} E
and S^{-1} (LAPACK, partial pivoting); `solve` is then a handful of small batched
matrix-vector products.  Work per factorisation ~ m K^3 + n h^2 instead of n^3/3, and every
operation vectorises across a `jax.vmap`-ed cohort (no per-matrix LAPACK call except the
h x h Schur complement).

Pivoting: the blocks are eliminated on their diagonal without pivoting.  W's diagonal is
1/(h gamma) - J_ii >= 1/(h gamma) > 0 for a kinetic model (a species' own outflow makes
J_ii <= 0), and `tests/test_block_solve.py` checks the solves against LAPACK's pivoted LU
on states of the PSMA model's trajectories for step sizes from 1e-8 h to 1e3 h.  The
hubs, where pivoting can matter, go through the pivoted h x h inverse.

`BlockArrowSolve.from_pattern` chooses the hubs (states of highest degree) and the block
partition (connected components of the rest) from the structural pattern by minimising
a flop count, and returns `None` when a dense LU is cheaper (small or dense models).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sps
from scipy.sparse.csgraph import connected_components

from .linear_solver import lu_factor_permuted, lu_solve_permuted


class DenseLU:
    """LU with partial pivoting of the dense W (LAPACK getrf), the permutation computed
    once per factorisation.  With `rows`/`cols` given, J arrives as its values at those
    entries; otherwise as a dense matrix."""

    def __init__(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None, n: int | None = None):
        self.rows, self.cols, self.n = rows, cols, n

    def factor(self, jac: jnp.ndarray, shift):
        if self.rows is not None:
            jac = jnp.zeros((self.n, self.n), jac.dtype).at[self.rows, self.cols].set(jac)
        return lu_factor_permuted(jnp.eye(jac.shape[0], dtype=jac.dtype) * shift - jac)

    def solve(self, factors, b: jnp.ndarray) -> jnp.ndarray:
        lu, perm = factors
        return lu_solve_permuted(lu, perm, b[:, None])[:, 0]

    def matvec(self, jac: jnp.ndarray, shift, x: jnp.ndarray) -> jnp.ndarray:
        """W x = shift x - J x (J dense, or its values at `rows`/`cols`)."""
        if self.rows is not None:
            return shift * x - jax.ops.segment_sum(jac * x[self.cols], self.rows, num_segments=self.n)
        return shift * x - jac @ x


def _gauss_jordan_inverse(blocks: jnp.ndarray) -> jnp.ndarray:
    """Inverses of a stack of K x K matrices (..., K, K), in place, diagonal pivots,
    unrolled over K.

    Gauss-Jordan step on pivot p with d = a_pp, c = a[:, p] (the sweep operator):
        a_ij <- a_ij - c_i a_pj / d  (i, j != p),   a_ip <- -c_i / d  (i != p),
        a_pj <- a_pj / d  (j != p),                a_pp <- 1 / d,
    i.e. with v = a[p, :] / d except v_p = 1 / d and u = c except u_p = 0: row p becomes
    v, the other rows a' - u v^T with a' = a whose column p is zeroed (row p is set, not
    updated, so no cancellation when d is large, e.g. W for tiny steps); one fused
    elementwise update per step.  After all K steps a holds the inverse.
    """
    k = blocks.shape[-1]
    a = blocks
    for p in range(k):
        is_p = np.eye(k, dtype=bool)[p]
        d = a[..., p, p:p + 1]
        v = jnp.where(is_p, 1.0, a[..., p, :]) / d
        u = jnp.where(is_p, 0.0, a[..., :, p])
        update = jnp.where(is_p[None, :], 0.0, a) - u[..., :, None] * v[..., None, :]
        a = jnp.where(is_p[:, None], v[..., None, :], update)
    return a


_GROUP_OVERHEAD_FLOPS = 4000.0  # per extra group of blocks: the cost of its extra operations
_MAX_GROUPS = 3


def size_groups(sizes: np.ndarray, power: float = 3.0, overhead: float = _GROUP_OVERHEAD_FLOPS) -> list[np.ndarray]:
    """Split items (by index) into <= _MAX_GROUPS groups of similar size, minimising the
    sum over groups of n_g K_g^power (K_g the largest size in the group, every item of a
    group padded to it) plus `overhead` per group (dynamic programming over the sorted
    sizes).  power 3: Gauss-Jordan on blocks; power 1: padded sparse rows."""
    order = np.argsort(sizes, kind="stable")
    s = sizes[order]
    m = s.size

    def cost(i, j):  # blocks order[i:j] in one group
        return (j - i) * float(s[j - 1]) ** power + overhead

    # best[g][j]: cheapest split of the first j blocks into g groups
    best = {(0, 0): (0.0, [])}
    for g in range(1, _MAX_GROUPS + 1):
        for j in range(1, m + 1):
            options = [(best[(g - 1, i)][0] + cost(i, j), best[(g - 1, i)][1] + [(i, j)])
                       for i in range(j) if (g - 1, i) in best]
            if options:
                best[(g, j)] = min(options, key=lambda o: o[0])
    _, split = min((best[(g, m)] for g in range(1, _MAX_GROUPS + 1) if (g, m) in best), key=lambda o: o[0])
    return [order[i:j] for i, j in split]


@dataclass(frozen=True, eq=False)
class _BlockGroup:
    """Blocks padded to one size K: `blocks` (m, K) state indices (padding = n) and the
    entry index filling each slot of B (m, K, K), E (m, K, h) and F (h, m, K)."""

    blocks: np.ndarray
    b_src: np.ndarray
    e_src: np.ndarray
    f_src: np.ndarray
    pad_eye: np.ndarray


@dataclass(frozen=True, eq=False)
class BlockArrowSolve:
    """Block-diagonal + hub (arrow) solver for a fixed sparsity pattern (see module doc).

    Static index tables (numpy): `rows`, `cols` the pattern's entries (row-major), the
    order in which J's values arrive; `diagonal` their positions on the diagonal;
    `groups` the blocks, grouped by size (`_BlockGroup`); `hubs` (h,); `sinks` (s,);
    `h_src` (h, h) the entry index filling each slot of H (padding: the index of an
    appended zero); `sink_cols`/`sink_src` (s, w) the off-diagonal entries of the sink
    rows (column, entry index; padded), `sink_diagonal` their diagonal entries; `core_position`/`position`
    the gathers that assemble x from the block, hub and sink parts.
    """

    n: int
    rows: np.ndarray
    cols: np.ndarray
    diagonal: np.ndarray
    groups: tuple
    hubs: np.ndarray
    sinks: np.ndarray
    h_src: np.ndarray
    sink_cols: np.ndarray
    sink_src: np.ndarray
    sink_diagonal: np.ndarray
    core_position: np.ndarray
    position: np.ndarray

    @classmethod
    def from_pattern(cls, pattern: np.ndarray, max_hubs: int = 24) -> "BlockArrowSolve | None":
        """Plan for the structural Jacobian pattern (n x n bool, True where J_ij may be
        non-zero; the diagonal is always included).  Returns None when a dense LU needs
        fewer flops."""
        p = np.asarray(pattern, dtype=bool)
        n = p.shape[0]
        if p.ndim != 2 or p.shape[1] != n:
            raise ValueError(f"Jacobian pattern must be square, got shape {p.shape}")
        p = p | np.eye(n, dtype=bool)
        off = p & ~np.eye(n, dtype=bool)
        sinks = np.flatnonzero(~off.any(axis=0))  # nothing depends on these states
        core = np.setdiff1d(np.arange(n), sinks)
        sub = off[np.ix_(core, core)]
        degree = sub.sum(axis=0) + sub.sum(axis=1)
        by_degree = np.argsort(-degree, kind="stable")
        n_core = core.size
        dense_cost = 2.0 * n_core**3 / 3.0 + 6 * 2.0 * n_core**2
        best = None
        for h in range(0, min(max_hubs, n_core - 1) + 1):
            hub_local = np.sort(by_degree[:h])
            rest = np.setdiff1d(np.arange(n_core), hub_local)
            graph = sps.csr_matrix(sub[np.ix_(rest, rest)] | sub[np.ix_(rest, rest)].T)
            n_blocks, label = connected_components(graph, directed=False)
            sizes = np.bincount(label)
            groups = size_groups(sizes)
            padded = [(g.size, int(sizes[g].max())) for g in groups]
            cost = (sum(2.0 * m * k**3 + 2.0 * m * k**2 * h + 6 * 4.0 * m * k**2 for m, k in padded)
                    + 2.0 * h * n_core * h + h**3 + 6 * (4.0 * n_core * h + h**2)
                    + _GROUP_OVERHEAD_FLOPS * len(groups))
            if best is None or cost < best[0]:
                best = (cost, hub_local, rest, label, groups, sizes)
        cost, hub_local, rest, label, groups, sizes = best
        if cost >= dense_cost:
            return None
        hubs = core[hub_local]
        rows, cols = np.nonzero(p)
        index = np.full((n + 1, n + 1), rows.size, dtype=int)  # (row, col) -> entry; absent -> zero slot
        index[rows, cols] = np.arange(rows.size)
        block_groups, layout = [], []
        for members_of_group in groups:
            k = int(sizes[members_of_group].max())
            blocks = np.full((members_of_group.size, k), n, dtype=int)
            for row, b in enumerate(members_of_group):
                members = core[rest[label == b]]
                blocks[row, :members.size] = members
            pad_eye = ((blocks[:, :, None] == n) & (blocks[:, None, :] == n) & np.eye(k, dtype=bool)).astype(float)
            block_groups.append(_BlockGroup(blocks=blocks, b_src=index[blocks[:, :, None], blocks[:, None, :]],
                                            e_src=index[blocks][:, :, hubs], f_src=index[hubs][:, blocks],
                                            pad_eye=pad_eye))
            layout.append(blocks.ravel())
        # x is assembled by gathers: [x_B of every group | x_H | 0] -> core states (sinks
        # read the zero), then [core x | x_sinks] -> all states
        layout = np.concatenate(layout + [hubs])
        core_position = np.full(n, layout.size, dtype=int)
        core_position[layout[layout < n]] = np.flatnonzero(layout < n)
        position = np.arange(n)
        position[sinks] = n + np.arange(sinks.size)
        sink_off = off[sinks]
        width = max(int(sink_off.sum(axis=1).max()), 1) if sinks.size else 1
        sink_cols = np.zeros((sinks.size, width), dtype=int)
        sink_src = np.full((sinks.size, width), rows.size, dtype=int)
        for r, row in enumerate(sink_off):
            c = np.flatnonzero(row)
            sink_cols[r, :c.size], sink_src[r, :c.size] = c, index[sinks[r], c]
        return cls(n=n, rows=rows, cols=cols, diagonal=index[np.arange(n), np.arange(n)], groups=tuple(block_groups),
                   hubs=hubs, sinks=sinks, h_src=index[np.ix_(hubs, hubs)],
                   sink_cols=sink_cols, sink_src=sink_src, sink_diagonal=index[sinks, sinks],
                   core_position=core_position, position=position)

    def factor(self, jac_values: jnp.ndarray, shift):
        """Factors of W = shift * I - J, J given at the pattern's entries."""
        w = (-jac_values).at[self.diagonal].add(shift)
        w = jnp.concatenate([w, jnp.zeros((1,), w.dtype)])
        h = self.hubs.size
        schur = w[self.h_src]
        per_group = []
        for grp in self.groups:
            b_inv = _gauss_jordan_inverse(w[grp.b_src] + grp.pad_eye)  # (m, K, K)
            g = jnp.einsum("mij,mjh->mih", b_inv, w[grp.e_src])  # B^-1 E, (m, K, h)
            f = w[grp.f_src]  # (h, m, K)
            if h:
                schur = schur - f.reshape(h, -1) @ g.reshape(-1, h)
            per_group.append((b_inv, f, g))
        s_inv = jnp.linalg.inv(schur) if self.hubs.size else schur
        return tuple(per_group), s_inv, (w[self.sink_src], w[self.sink_diagonal])

    def matvec(self, jac_values: jnp.ndarray, shift, x: jnp.ndarray) -> jnp.ndarray:
        """W x = shift x - J x, J given at the pattern's entries (a segment sum)."""
        return shift * x - jax.ops.segment_sum(jac_values * x[self.cols], self.rows, num_segments=self.n)

    def solve(self, factors, b: jnp.ndarray) -> jnp.ndarray:
        per_group, s_inv, (sink_off, sink_diag) = factors
        sinks = self.sinks
        b_pad = jnp.pad(b, (0, 1))
        h = self.hubs.size
        y = [jnp.einsum("mij,mj->mi", b_inv, b_pad[grp.blocks]) for grp, (b_inv, _, _) in zip(self.groups, per_group)]
        r_h = b[self.hubs]
        for y_b, (_, f, _) in zip(y, per_group):
            r_h = r_h - f.reshape(h, -1) @ y_b.ravel() if h else r_h
        x_h = s_inv @ r_h
        x_b = [(y_b - g @ x_h).ravel() for y_b, (_, _, g) in zip(y, per_group)]
        x = jnp.concatenate(x_b + [x_h, jnp.zeros((1,), b.dtype)])[self.core_position]
        if sinks.size:
            x_s = (b[sinks] - jnp.sum(sink_off * x[self.sink_cols], axis=1)) / sink_diag
            x = jnp.concatenate([x, x_s])[self.position]
        return x


def _sparse_gauss_jordan_inverse(a: jnp.ndarray, zero: np.ndarray) -> jnp.ndarray:
    """The sweep of `_gauss_jordan_inverse` for matrices stored along the two leading axes,
    `a` (K, K, ...) (trailing axes innermost in memory), entry by entry, skipping the
    products with structurally zero entries: a[i, j] == 0 wherever zero[i, j] (static).  The sweep on pivot p (d = a_pp):
        a_pj <- a_pj / d,  a_ip <- -a_ip / d,  a_pp <- 1 / d,  a_ij <- a_ij - a_ip a_pj / d,
    where an entry stays structurally zero unless both a_ip and a_pj are non-zero.  Each
    entry is an array over the trailing axes; XLA fuses the whole sweep."""
    k = a.shape[0]
    entry = {(i, j): a[i, j] for i in range(k) for j in range(k) if not zero[i, j] or i == j}
    for p in range(k):
        inv_d = 1.0 / entry[(p, p)]
        row = {j: entry[(p, j)] * inv_d for j in range(k) if j != p and (p, j) in entry}
        new = {(p, j): v for j, v in row.items()}
        new[(p, p)] = inv_d
        for i in range(k):
            if i == p:
                continue
            c = entry.get((i, p))
            for j in range(k):
                if j == p:
                    continue
                old = entry.get((i, j))
                if c is not None and j in row:
                    new[(i, j)] = -c * row[j] if old is None else old - c * row[j]
                elif old is not None:
                    new[(i, j)] = old
            if c is not None:
                new[(i, p)] = -c * inv_d
        entry = new
    zeros = jnp.zeros(a.shape[2:], a.dtype)
    return jnp.stack([jnp.stack([entry.get((i, j), zeros) for j in range(k)]) for i in range(k)])


class LockstepSolve:
    """W x = b for many parameter sets at once, every array with the sets along its last
    axis (J values (n_entries, n_sets), b (n, n_sets)), for `pbpk.simulate_cohort`'s
    lockstep solve (one step size, so one scalar shift 1/(h gamma)).

    With a `BlockArrowSolve` plan the factorisation is the same block/Schur algebra laid
    out with the structural axes leading and the sets innermost (blocks (K, K, m, n_sets)),
    so every update is an elementwise operation over contiguous sets, and it skips what is
    structurally zero in every block of a group (static patterns): the block inverses by
    `_sparse_gauss_jordan_inverse`, and the couplings E (block -> hub columns) and
    F (hub rows) enter B^-1 E, the Schur complement and the solves only through their
    non-zero slots (7 of 63 in the PSMA model's 9 x 9 blocks).  Any other solver (the
    dense LU) is mapped over the sets with `jax.vmap`.
    """

    def __init__(self, solver):
        self.solver = solver
        if isinstance(solver, BlockArrowSolve):
            absent = solver.rows.size  # the entry index of the appended zero
            self.structure = []
            for grp in solver.groups:
                block_zero = np.all(grp.b_src == absent, axis=0)  # (K, K) zero in every block
                e_slots = [tuple(int(j) for j in np.flatnonzero(np.any(grp.e_src[:, :, c] != absent, axis=0)))
                           for c in range(solver.hubs.size)]  # per hub column: block rows with E != 0
                f_slots = [tuple(int(j) for j in np.flatnonzero(np.any(grp.f_src[r] != absent, axis=0)))
                           for r in range(solver.hubs.size)]  # per hub row: block columns with F != 0
                self.structure.append((block_zero, e_slots, f_slots))
            # `core_position` for the block parts laid out member-major, (K, m) per group,
            # as the solve produces them (no transpose back to block-major)
            remap = np.arange(solver.core_position.max() + 1)
            offset = 0
            for grp in solver.groups:
                m, k = grp.blocks.shape
                old = np.arange(m * k)
                remap[offset + old] = offset + (old % k) * m + old // k
                offset += m * k
            self.core_position = remap[solver.core_position]
            # the sink rows' off-diagonal entries without the padding (row, column, entry)
            sink_row, slot = np.nonzero(solver.sink_src != absent)
            self.sink_entries = (sink_row, solver.sink_cols[sink_row, slot], solver.sink_src[sink_row, slot])

    def matvec(self, jac_values, shift, x):
        return jax.vmap(self.solver.matvec, in_axes=(-1, None, -1), out_axes=-1)(jac_values, shift, x)

    def factor(self, jac_values: jnp.ndarray, shift):
        s = self.solver
        if not isinstance(s, BlockArrowSolve):
            return jax.vmap(s.factor, in_axes=(-1, None))(jac_values, shift)
        batch = jac_values.shape[1:]
        w = (-jac_values).at[s.diagonal].add(shift)
        w = jnp.concatenate([w, jnp.zeros((1,) + batch, w.dtype)])
        h = s.hubs.size
        hub_block = w[s.h_src]  # H, (h, h, ...)
        schur = [[hub_block[r, c] for c in range(h)] for r in range(h)]  # S = H - F B^-1 E, by entry
        per_group = []
        for grp, (block_zero, e_slots, f_slots) in zip(s.groups, self.structure):
            k = grp.blocks.shape[1]
            pad = np.transpose(grp.pad_eye, (1, 2, 0)).reshape((k, k, -1) + (1,) * len(batch))
            b_inv = _sparse_gauss_jordan_inverse(w[np.transpose(grp.b_src, (1, 2, 0))] + pad, block_zero)
            e = w[np.transpose(grp.e_src, (2, 1, 0))]  # (h, K, m, ...): E's column c, row j
            f = w[np.transpose(grp.f_src, (0, 2, 1))]  # (h, K, m, ...): F's row r, column j
            zero = jnp.zeros(b_inv.shape[:1] + b_inv.shape[2:], w.dtype)
            # G = B^-1 E by hub column, over E's non-zero rows only: (K, m, ...) per hub
            g = [sum((b_inv[:, j] * e[c, j][None] for j in rows_c), zero) for c, rows_c in enumerate(e_slots)]
            for r, cols_r in enumerate(f_slots):  # S[r, c] -= sum over blocks, j of F[r, j] G[j, c]
                for c, rows_c in enumerate(e_slots):
                    if cols_r and rows_c:
                        schur[r][c] = schur[r][c] - jnp.sum(sum(f[r, j] * g[c][j] for j in cols_r), axis=0)
            per_group.append((b_inv, f, g))
        if h:  # pivoted inverse of the h x h Schur complements (LAPACK, sets leading)
            s_inv = jnp.linalg.inv(jnp.stack([jnp.stack(row, axis=-1) for row in schur], axis=-2))
            s_inv = jnp.moveaxis(s_inv, (-2, -1), (0, 1))
        else:
            s_inv = hub_block
        return tuple(per_group), s_inv, (w[self.sink_entries[2]], w[s.sink_diagonal])

    def solve(self, factors, b: jnp.ndarray) -> jnp.ndarray:
        s = self.solver
        if not isinstance(s, BlockArrowSolve):
            return jax.vmap(s.solve, in_axes=(0, -1), out_axes=-1)(factors, b)
        per_group, s_inv, (sink_off, sink_diag) = factors
        batch = b.shape[1:]
        b_pad = jnp.concatenate([b, jnp.zeros((1,) + batch, b.dtype)])
        h = s.hubs.size
        y = []
        for grp, (b_inv, _, _) in zip(s.groups, per_group):
            b_block = b_pad[grp.blocks.T]  # (K, m, ...)
            y.append(sum(b_inv[:, j] * b_block[j][None] for j in range(grp.blocks.shape[1])))
        r_h = [b[s.hubs[r]] for r in range(h)]
        for y_b, (_, f, _), (_, _, f_slots) in zip(y, per_group, self.structure):
            for r, cols_r in enumerate(f_slots):
                if cols_r:
                    r_h[r] = r_h[r] - jnp.sum(sum(f[r, j] * y_b[j] for j in cols_r), axis=0)
        x_h = sum(s_inv[:, j] * r_h[j][None] for j in range(h)) if h else b[s.hubs]
        x_b = []
        for y_b, (_, _, g), (_, e_slots, _) in zip(y, per_group, self.structure):
            for c, rows_c in enumerate(e_slots):
                if rows_c:
                    y_b = y_b - g[c] * x_h[c][None]
            x_b.append(y_b.reshape((-1,) + batch))  # (K * m, ...), member-major
        x = stacked_rows(x_b + [x_h], 1)[self.core_position]
        if s.sinks.size:
            sink_row, sink_col, _ = self.sink_entries
            off = jax.ops.segment_sum(sink_off * x[sink_col], sink_row, s.sinks.size, indices_are_sorted=True)
            x = stacked_rows([x, (b[s.sinks] - off) / sink_diag], 0)[s.position]
        return x


def stacked_rows(pieces: list, zero_rows: int) -> jnp.ndarray:
    """The pieces (rows first, same trailing axes) one after the other, then `zero_rows`
    rows of zeros: written into a zero buffer slice by slice.  Same result as
    `jnp.concatenate`, which XLA's CPU back end fuses with the pieces' producers into a
    slower, element-by-element loop (half the cost of a lockstep solve, measured)."""
    rows = sum(p.shape[0] for p in pieces) + zero_rows
    out = jnp.zeros((rows,) + pieces[0].shape[1:], pieces[0].dtype)
    start = 0
    for piece in pieces:
        out = jax.lax.dynamic_update_slice(out, piece, (start,) + (0,) * (piece.ndim - 1))
        start += piece.shape[0]
    return out
