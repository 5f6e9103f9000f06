"""Side-by-side timing: pbpk.simulate (diffrax + Rodas4, JAX) vs scipy BDF on the same
right-hand side with the JAX Jacobian.

Case (issue 2): full PSMA model, 2 lesions, one 7.4 GBq / 90 nmol 177Lu-PSMA-617 injection,
7 days, 200 output times, rtol 1e-6.  Reports medians (this machine is shared and noisy)
and the ratios:
  * single simulation after JIT (ours: block-arrow linear solves, and the dense LU for
    comparison) vs one scipy BDF solve;
  * throughput of jax.vmap over 256 virtual patients (time per patient) vs scipy, and of
    `pbpk.simulate_cohort` (the same patients in one lockstep solve).
Also checks that both methods agree (max relative difference of organ TACs).

Run:  python benchmarks/bench_simulate.py [--patients 256 [4096 ...]] [--repeats 5] [--no-kvaerno]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

import pbpk
from timing import median_time
from pbpk.compile import compile_model

TRACER = "Lu-177-PSMA-617"


def virtual_cohort(model, n, seed=0):
    """Log-normal variation (CV ~30 %) of receptor densities, GFR and kidney volume."""
    rng = np.random.default_rng(seed)
    names = ["kidneys_rden_nmol_l", "lesion_1_rden_nmol_l", "lesion_2_rden_nmol_l",
             "salivary_glands_rden_nmol_l", "gfr_ml_min", "kidneys_volume_l"]
    return {n_: jnp.asarray(model.parameter(n_).value * rng.lognormal(0.0, 0.3, n)) for n_ in names}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, nargs="+", default=[256],
                    help="virtual-cohort sizes for the vmapped run (several allowed, e.g. on a GPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-kvaerno", action="store_true", help="skip the Kvaerno5 single-simulation timing")
    args = ap.parse_args()

    model = pbpk.psma_model(tracers=[TRACER])
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
    times = np.linspace(168.0 / 200, 168.0, 200)
    opts = pbpk.SolverOptions(rtol=1e-6)

    # ---- ours: single simulation after JIT
    single = jax.jit(lambda p: pbpk.simulate(model, schedule, times, p, tia=False, options=opts).region_activity_mbq)
    p0 = {"kidneys_rden_nmol_l": jnp.asarray(model.parameter("kidneys_rden_nmol_l").value)}
    t0 = time.perf_counter()
    ours = np.asarray(jax.block_until_ready(single(p0)))
    compile_single = time.perf_counter() - t0
    t_single = median_time(lambda: jax.block_until_ready(single(p0)), args.repeats * 4)

    # ---- ours: single simulation with the dense LU instead of the block-arrow solves
    dense_opts = pbpk.SolverOptions(rtol=1e-6, linear_solve="dense")
    single_dense = jax.jit(lambda p: pbpk.simulate(model, schedule, times, p, tia=False, options=dense_opts).region_activity_mbq)
    jax.block_until_ready(single_dense(p0))
    t_single_dense = median_time(lambda: jax.block_until_ready(single_dense(p0)), args.repeats * 4)

    # ---- ours: single simulation with diffrax's Kvaerno5 instead of Rodas4
    t_single_kv = None
    if not args.no_kvaerno:
        kv_opts = pbpk.SolverOptions(rtol=1e-6, method="kvaerno5")
        single_kv = jax.jit(lambda p: pbpk.simulate(model, schedule, times, p, tia=False, options=kv_opts).region_activity_mbq)
        jax.block_until_ready(single_kv(p0))
        t_single_kv = median_time(lambda: jax.block_until_ready(single_kv(p0)), args.repeats)

    # ---- ours: vmapped virtual cohorts (one compilation per cohort size)
    batched = jax.jit(jax.vmap(lambda p: pbpk.simulate(model, schedule, times, p, tia=False, options=opts).region_activity_mbq))
    # ---- ours: the same cohorts in one lockstep solve (pbpk.simulate_cohort)
    lockstep = jax.jit(lambda p: pbpk.simulate_cohort(model, schedule, times, p, tia=False, options=opts).region_activity_mbq)
    batch_results = []
    for n in args.patients:
        cohort = virtual_cohort(model, n)
        t0 = time.perf_counter()
        by_vmap = np.asarray(jax.block_until_ready(batched(cohort)))
        compile_batched = time.perf_counter() - t0
        t_batch = median_time(lambda: jax.block_until_ready(batched(cohort)), max(1, args.repeats // 2))
        t0 = time.perf_counter()
        by_lockstep = np.asarray(jax.block_until_ready(lockstep(cohort)))
        compile_lockstep = time.perf_counter() - t0
        t_lockstep = median_time(lambda: jax.block_until_ready(lockstep(cohort)), max(1, args.repeats // 2))
        floor = 1e-6 * np.abs(by_vmap).max()
        agreement = float(np.max(np.abs(by_lockstep - by_vmap) / np.maximum(np.abs(by_vmap), floor)))
        batch_results.append((n, compile_batched, t_batch, compile_lockstep, t_lockstep, agreement))

    # ---- scipy BDF, same right-hand side and the JAX Jacobian
    c = compile_model(model)
    p = c.parameter_vector()
    d = c.assignments(p)
    field = c.vector_field(p, d)
    f = jax.jit(field)
    jac = jax.jit(jax.jacfwd(field))
    y0 = np.zeros(len(model.species))
    hot = pbpk.tracer(TRACER).hot_nmol(7400.0)
    y0[c.species_index["venous__hot_lu_177_psma_617"]] = hot
    y0[c.species_index["venous__cold_psma_617"]] = 90.0 - hot
    f(y0), jac(y0)

    def scipy_solve():
        return solve_ivp(lambda t, y: np.asarray(f(y)), (0.0, times[-1]), y0, method="BDF", t_eval=times,
                         jac=lambda t, y: np.asarray(jac(y)), rtol=1e-6, atol=1e-9 * 90.0)

    ref = scipy_solve()
    t_scipy = median_time(scipy_solve, args.repeats)
    mbq = pbpk.tracer(TRACER).mbq_per_nmol
    worst = 0.0
    for k, region in enumerate(model.regions):
        if region.name == "urine":
            continue
        cols = [c.species_index[s] for s in region.species if "hot" in s]
        tac = ref.y[cols].sum(axis=0) * mbq
        worst = max(worst, float(np.max(np.abs(ours[0, k] - tac) / np.maximum(np.abs(tac), 1e-3))))

    print(f"model: {len(model.species)} species, {len(model.reactions)} reactions; 7 days, 200 outputs, rtol 1e-6")
    print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), {jax.device_count()} device(s)")
    print(f"compile: single {compile_single:.1f} s")
    print(f"ours single (median after JIT):      {t_single * 1e3:9.1f} ms")
    print(f"ours single, dense LU (median):      {t_single_dense * 1e3:9.1f} ms  "
          f"(block-arrow solves {t_single_dense / t_single:.1f}x faster)")
    if t_single_kv is not None:
        print(f"ours single, Kvaerno5 (median):     {t_single_kv * 1e3:9.1f} ms")
    print(f"scipy BDF + JAX Jacobian (median):   {t_scipy * 1e3:9.1f} ms  ({ref.nfev} f-evals, {ref.njev} jac-evals)")
    print(f"ratio scipy / ours single:           {t_scipy / t_single:9.1f} x")
    if t_single_kv is not None:
        print(f"ratio scipy / ours single Kvaerno5:  {t_scipy / t_single_kv:9.1f} x")
    for n, compile_batched, t_batch, compile_lockstep, t_lockstep, agreement in batch_results:
        per_patient = t_batch / n
        print(f"ours vmap x{n} (per patient): {per_patient * 1e3:9.3f} ms  (batch {t_batch:.2f} s, "
              f"compile {compile_batched:.1f} s); ratio scipy / ours batched: {t_scipy / per_patient:7.1f} x")
        per_patient = t_lockstep / n
        print(f"ours simulate_cohort x{n} (lockstep, per patient): {per_patient * 1e3:9.3f} ms  (batch "
              f"{t_lockstep:.2f} s, compile {compile_lockstep:.1f} s); ratio scipy / ours lockstep: "
              f"{t_scipy / per_patient:7.1f} x; vs vmap {t_batch / t_lockstep:.2f} x faster, max relative "
              f"difference {agreement:.1e}")
    print(f"max relative TAC difference ours vs scipy: {worst:.2e}")


if __name__ == "__main__":
    main()
