"""Side-by-side timing: our exported PSMA SBML model in libroadrunner (CVODE) vs
pbpk.simulate (diffrax Rodas4, after JIT) on the same model.

Both simulate the same SBML file (the PSMA model exported by `pbpk.to_sbml`; ours
re-imported by `pbpk.from_sbml`).  Case (issue 5): 7 days, 200 output times, rtol 1e-6; single simulation, and 256 parameter
sets (our jax.vmap and our lockstep `pbpk.simulate_cohort` vs roadrunner simulations).  Roadrunner's `resetAll()` after a
parameter change (re-evaluating the exported initial assignments) takes seconds on this
model, so it is timed and printed separately and NOT charged to roadrunner: the ratios use
roadrunner's simulate-only time, the favourable case for the peer.  Medians, ratios.

Single simulations are timed twice, interleaved with roadrunner's (roadrunner, ours,
roadrunner, ...) so both see the same machine load:
  * on one core (the target's comparison: roadrunner's CVODE is single-threaded): a child
    process started with its CPU affinity set to one core, so XLA sizes its thread pool
    to one thread (it sizes the pool from the affinity mask when the backend starts);
  * in this process, on all the cores the process may use (informative): XLA's CPU
    runtime then hands the small operations of one solve to a pool of threads, which
    costs more in cross-thread hand-offs than it gains (1.4-1.6 cores busy, slower).
Batched throughput uses the whole process (all its cores) for ours and roadrunner's loop.

Run:  python benchmarks/bench_roadrunner.py [--patients 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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


class Setup:
    """The exported PSMA model in roadrunner and re-imported for pbpk, and the runs to time."""

    def __init__(self, patients: int):
        model = pbpk.psma_model(tracers=[TRACER])
        self.schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
        self.times = np.linspace(168.0 / 200, 168.0, 200)
        self.rden = np.asarray(40.0 * np.random.default_rng(0).lognormal(0.0, 0.3, patients))
        with tempfile.TemporaryDirectory() as tmp:
            path = pbpk.to_sbml(model, Path(tmp) / "psma.xml")
            self.rr = roadrunner.RoadRunner(str(path))
            self.model = pbpk.from_sbml(path)  # both tools simulate the same SBML file
        self.hot = pbpk.tracer(TRACER).hot_nmol(7400.0)
        self.rr.integrator.relative_tolerance = 1e-6
        self.rr.integrator.absolute_tolerance = 1e-9 * 90.0
        self.rr.timeCourseSelections = ["time"] + list(self.model.species_names)

    def rr_prepare(self, kidney_rden=40.0):
        self.rr.resetAll()  # re-evaluates the initial assignments (derived volumes, flows, R0)
        self.rr.setValue("kidneys_rden_nmol_l", kidney_rden)
        self.rr.setValue("init(venous__hot_lu_177_psma_617)", self.hot)
        self.rr.setValue("init(venous__cold_psma_617)", 90.0 - self.hot)

    def rr_simulate(self):
        return self.rr.simulate(times=[0.0] + list(self.times))

    def ours(self, batched=None):
        run = lambda r: pbpk.simulate(self.model, self.schedule, self.times, {"kidneys_rden_nmol_l": r},  # noqa: E731
                                      tia=False).region_activity_mbq
        if batched == "vmap":
            return jax.jit(jax.vmap(run))
        if batched == "lockstep":
            return jax.jit(lambda r: pbpk.simulate_cohort(self.model, self.schedule, self.times,
                                                          {"kidneys_rden_nmol_l": r}, tia=False).region_activity_mbq)
        return jax.jit(run)

    def single_times(self) -> dict:
        """Median single-simulation times (s), roadrunner's and ours interleaved over 16 pairs;
        roadrunner's resetAll before each of its runs timed apart."""
        single = self.ours()
        jax.block_until_ready(single(40.0))
        self.rr_prepare()
        self.rr_simulate()
        sim_times, reset_times, our_times = [], [], []
        for r in np.resize(self.rden[:8], 16):
            t0 = time.perf_counter()
            self.rr_prepare(float(r))
            t1 = time.perf_counter()
            self.rr_simulate()
            reset_times.append(t1 - t0)
            sim_times.append(time.perf_counter() - t1)
            t2 = time.perf_counter()
            jax.block_until_ready(single(float(r)))
            our_times.append(time.perf_counter() - t2)
        return {"rr": statistics.median(sim_times), "rr_reset": statistics.median(reset_times),
                "ours": statistics.median(our_times), "cores": len(os.sched_getaffinity(0))}


def single_on_one_core(patients: int) -> dict | None:
    """`Setup.single_times` in a child process whose affinity is one core (None where the
    platform cannot set affinities)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, __file__, "--single-child", "--patients", str(patients)],
                         capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    if out.returncode != 0:
        raise SystemExit(f"one-core child failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=256)
    ap.add_argument("--single-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single_child:
        print(json.dumps(Setup(args.patients).single_times()))
        return
    one_core = single_on_one_core(args.patients)
    setup = Setup(args.patients)
    here = setup.single_times()
    rden = jnp.asarray(setup.rden)
    batched = setup.ours("vmap")
    jax.block_until_ready(batched(rden))
    t_ours_batch = median_time(lambda: jax.block_until_ready(batched(rden)), 3) / args.patients
    lockstep = setup.ours("lockstep")
    jax.block_until_ready(lockstep(rden))
    t_ours_lockstep = median_time(lambda: jax.block_until_ready(lockstep(rden)), 3) / args.patients
    t_rr = here["rr"]

    model = setup.model
    print(f"model: {len(model.species)} species, {len(model.reactions)} reactions (exported SBML); 7 days, 200 outputs, rtol 1e-6")
    for label, t in (("one core (child process)", one_core), (f"this process ({here['cores']} cores)", here)):
        if t is None:
            continue
        print(f"single, {label}: libroadrunner {roadrunner.__version__} CVODE {t['rr'] * 1e3:.1f} ms"
              f" (+ {t['rr_reset'] * 1e3:.0f} ms resetAll per parameter change, not counted);"
              f" pbpk Rodas4 after JIT {t['ours'] * 1e3:.1f} ms; ratio ours / roadrunner {t['ours'] / t['rr']:.2f}"
              + ("  (target <= 2)" if t is one_core else "  (informative)"))
    print(f"libroadrunner per parameter set, simulate only:  {t_rr * 1e3:8.1f} ms")
    print(f"pbpk vmap x{args.patients} (per set):                   {t_ours_batch * 1e3:8.1f} ms")
    print(f"pbpk simulate_cohort x{args.patients} (lockstep, per set): {t_ours_lockstep * 1e3:8.1f} ms")
    print(f"ratio roadrunner / ours batched (vmap): {t_rr / t_ours_batch:6.2f} (target >= 1; simulate-only roadrunner time)")
    print(f"ratio roadrunner / ours batched (lockstep): {t_rr / t_ours_lockstep:6.2f} (target >= 1)")


if __name__ == "__main__":
    main()
