"""Side-by-side timing: our exported PSMA SBML model in libroadrunner (CVODE) vs
pbpk.simulate (diffrax Rodas4, after JIT) on the same model.

Both simulate the same SBML file (the PSMA model exported by `pbpk.to_sbml`; ours
re-imported by `pbpk.from_sbml`).  Case (issue 5): 7 days, 200 output times, rtol 1e-6; single simulation, and 256 parameter
sets (our jax.vmap and our lockstep `pbpk.simulate_cohort` vs roadrunner simulations).  Roadrunner's `resetAll()` after a
parameter change (re-evaluating the exported initial assignments) takes seconds on this
model, so it is timed and printed separately and NOT charged to roadrunner: the ratios use
roadrunner's simulate-only time, the favourable case for the peer.  Medians, ratios.

Run:  python benchmarks/bench_roadrunner.py [--patients 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import roadrunner

import pbpk
from timing import median_time

TRACER = "Lu-177-PSMA-617"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=256)
    args = ap.parse_args()
    model = pbpk.psma_model(tracers=[TRACER])
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
    times = np.linspace(168.0 / 200, 168.0, 200)
    rden = np.asarray(40.0 * np.random.default_rng(0).lognormal(0.0, 0.3, args.patients))

    with tempfile.TemporaryDirectory() as tmp:
        path = pbpk.to_sbml(model, Path(tmp) / "psma.xml")
        rr = roadrunner.RoadRunner(str(path))
        model = pbpk.from_sbml(path)  # both tools simulate the same SBML file
    hot = pbpk.tracer(TRACER).hot_nmol(7400.0)
    rr.integrator.relative_tolerance = 1e-6
    rr.integrator.absolute_tolerance = 1e-9 * 90.0
    rr.timeCourseSelections = ["time"] + list(model.species_names)

    def rr_prepare(kidney_rden=40.0):
        rr.resetAll()  # re-evaluates the initial assignments (derived volumes, flows, R0)
        rr.setValue("kidneys_rden_nmol_l", kidney_rden)
        rr.setValue("init(venous__hot_lu_177_psma_617)", hot)
        rr.setValue("init(venous__cold_psma_617)", 90.0 - hot)

    def rr_simulate():
        return rr.simulate(times=[0.0] + list(times))

    single = jax.jit(lambda r: pbpk.simulate(model, schedule, times, {"kidneys_rden_nmol_l": r}, tia=False).region_activity_mbq)
    jax.block_until_ready(single(40.0))
    rr_prepare()
    rr_simulate()
    # single simulations interleaved (roadrunner, ours, roadrunner, ...) so that both see
    # the same machine load; roadrunner's resetAll before each of its runs is timed apart
    sim_times, reset_times, our_times = [], [], []
    for r in np.resize(rden[: min(args.patients, 8)], 16):
        t0 = time.perf_counter()
        rr_prepare(float(r))
        t1 = time.perf_counter()
        rr_simulate()
        reset_times.append(t1 - t0)
        sim_times.append(time.perf_counter() - t1)
        t2 = time.perf_counter()
        jax.block_until_ready(single(float(r)))
        our_times.append(time.perf_counter() - t2)
    t_rr = statistics.median(sim_times)
    t_rr_reset = statistics.median(reset_times)
    t_ours = statistics.median(our_times)
    batched = jax.jit(jax.vmap(lambda r: pbpk.simulate(model, schedule, times, {"kidneys_rden_nmol_l": r}, tia=False).region_activity_mbq))
    jax.block_until_ready(batched(jnp.asarray(rden)))
    t_ours_batch = median_time(lambda: jax.block_until_ready(batched(jnp.asarray(rden))), 3) / args.patients
    lockstep = jax.jit(lambda r: pbpk.simulate_cohort(model, schedule, times, {"kidneys_rden_nmol_l": r}, tia=False).region_activity_mbq)
    jax.block_until_ready(lockstep(jnp.asarray(rden)))
    t_ours_lockstep = median_time(lambda: jax.block_until_ready(lockstep(jnp.asarray(rden))), 3) / args.patients

    print(f"model: {len(model.species)} species, {len(model.reactions)} reactions (exported SBML); 7 days, 200 outputs, rtol 1e-6")
    print(f"libroadrunner {roadrunner.__version__} CVODE single (median): {t_rr * 1e3:8.1f} ms"
          f"  (+ {t_rr_reset * 1e3:.0f} ms resetAll/parameter change before each run, not counted)")
    print(f"pbpk Rodas4 single after JIT (median):        {t_ours * 1e3:8.1f} ms")
    print(f"libroadrunner per parameter set, simulate only:  {t_rr * 1e3:8.1f} ms")
    print(f"pbpk vmap x{args.patients} (per set):                   {t_ours_batch * 1e3:8.1f} ms")
    print(f"pbpk simulate_cohort x{args.patients} (lockstep, per set): {t_ours_lockstep * 1e3:8.1f} ms")
    print(f"ratio ours / roadrunner single:  {t_ours / t_rr:6.2f} (target <= 2)")
    print(f"ratio roadrunner / ours batched (vmap): {t_rr / t_ours_batch:6.2f} (target >= 1; simulate-only roadrunner time)")
    print(f"ratio roadrunner / ours batched (lockstep): {t_rr / t_ours_lockstep:6.2f} (target >= 1)")


if __name__ == "__main__":
    main()
