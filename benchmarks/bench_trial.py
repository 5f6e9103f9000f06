"""Virtual-trial throughput and memory: in-process vs Dask LocalCluster with 1 and 2
workers (scaling efficiency), and peak memory at two population sizes.

Trial: N virtual patients (twin.population defaults, 2 lesions) x S schedules of C
cycles each (177Lu-PSMA-617, every 6 weeks, activities spread over 4-10 GBq; --ligand
fixed: 100 nmol per injection, so the schedules are activity multiples of one another and
each patient is solved once, the others scaled (`twin.outcomes.activity_multiples`);
--ligand proportional: 100 nmol per 7.4 GBq, one specific activity, every schedule solved),
the full single-tracer PSMA model (`pbpk.psma_model`, 106 species with two lesions; the
MBAM-reduced PSMA model of benchmarks/results/mbam_psma simulates a 6-cycle therapy no
faster, 0.91x, benchmarks/results/mbam_psma/evaluation.txt), at the trial's default
solver tolerance (rtol 1e-4).  A simulation = one patient under one schedule.

* throughput: each mode first computes one warm-up chunk in every process (compilation),
  then runs the timed trial; simulations per second and the ratios
  (2 workers / 1 worker = scaling; in-process / 1 worker = Dask overhead), end to end and
  for the chunks alone (the summary tables and plots at the end run serially in the
  calling process, a fixed cost that weighs on small trials);
* memory: the in-process trial at N_small and N_large patients (one 1-cycle schedule, to
  keep it short), each in its own child process; the child's peak RSS (ru_maxrss) is printed for both (it must not grow with N:
  chunks are written and dropped);
* extrapolation: wall time of a 10^5-patient trial at the measured 2-worker rate.

Run:  python benchmarks/bench_trial.py [--patients 40] [--schedules 10] [--cycles 6]
          [--chunk 10] [--memory 100 1000] [--ligand fixed|proportional]
      python benchmarks/bench_trial.py --draws compare --patients 64 --chunk 32
          (in-process only: a chunk's patients solved in lockstep vs vmapped)
      python benchmarks/bench_trial.py --padding compare --patients 256 --chunk 32 --lesion-counts 1 2 3
          (in-process only: a chunk's lesion-count groups padded to a power of two vs the chunk)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin import runner  # noqa: E402
from twin.trial import TrialConfig, run_trial, trial_chunk  # noqa: E402


LIGAND_NMOL = 100.0  # per injection (fixed), or per 7.4 GBq (proportional)


def trial_config(patients: int, schedules: int, cycles: int, chunk: int, seed: int = 1,
                 lesion_counts: list[int] | None = None, ligand: str = "fixed") -> TrialConfig:
    """The benchmark's trial; `lesion_counts`: a lesion-count 'choice' (equal weights) in
    place of the population's fixed 2 lesions.  ligand "fixed": 100 nmol per injection at
    every activity (the schedules are activity multiples of the first: one solve per
    patient, `twin.outcomes.activity_multiples`); "proportional": 100 nmol per 7.4 GBq (one
    specific activity: every schedule is solved)."""
    activities = [4000.0 + 6000.0 * k / max(schedules - 1, 1) for k in range(schedules)]
    population = {} if lesion_counts is None else {"n_lesions": {"distribution": "choice", "values": lesion_counts}}
    nmol = {"fixed": lambda a: LIGAND_NMOL, "proportional": lambda a: LIGAND_NMOL * a / 7400.0}[ligand]
    return TrialConfig.from_dict({
        "trial": {"patients": patients, "seed": seed, "chunk_size": chunk},
        "population": population,
        "schedules": [{"name": f"{cycles} x {a / 1000:.2f} GBq", "cycles": cycles, "activity_mbq": a,
                       "ligand_nmol": nmol(a), "interval_h": 1008.0} for a in activities],
    })


def timed_run(config: TrialConfig, warm: TrialConfig, client, folder: Path, phases: dict | None = None) -> float:
    """Compile on every worker first (client.run runs on each), then time the trial.
    Returns the end-to-end seconds; `phases` (if given) receives the seconds until the
    last chunk was stored ("chunks") and of the summary tables and plots that follow
    ("summary", serial in the calling process)."""
    if client is None:
        trial_chunk(warm.to_dict(), 0)
    else:
        client.run(trial_chunk, warm.to_dict(), 0)
    marks = {}

    def note(finished, total):
        if finished == total:
            marks["chunks"] = time.perf_counter()

    start = time.perf_counter()
    run_trial(config, folder / "timed", client=client, force=True, progress=note)
    end = time.perf_counter()
    if phases is not None:
        phases.update(chunks=marks["chunks"] - start, summary=end - marks["chunks"])
    return end - start


def memory_child(patients: int, schedules: int, cycles: int, chunk: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_trial(trial_config(patients, schedules, cycles, chunk), Path(tmp) / "t")
    print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def compare_lockstep(args) -> None:
    """In-process trial throughput with each chunk's patients solved in lockstep
    (`pbpk.batch.solve_batch_lockstep`) and vmapped (`twin.trial.SOLVE_IN_LOCKSTEP` off),
    same config, each after its own warm-up chunk; two rounds, medians."""
    from twin import trial

    config = trial_config(args.patients, args.schedules, args.cycles, args.chunk, ligand=args.ligand)
    warm = trial_config(args.chunk, args.schedules, args.cycles, args.chunk, seed=2, ligand=args.ligand)
    sims = args.patients * args.schedules
    print(f"trial: {args.patients} patients x {args.schedules} schedules x {args.cycles} cycles "
          f"(chunks of {args.chunk}), ligand {args.ligand}, full PSMA model, in-process; {os.cpu_count()} CPUs")
    times = {"vmapped": [], "lockstep": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(2):
            for mode, in_lockstep in (("vmapped", False), ("lockstep", True)):
                trial.SOLVE_IN_LOCKSTEP = in_lockstep
                times[mode].append(timed_run(config, warm, None, Path(tmp) / mode))
    trial.SOLVE_IN_LOCKSTEP = True
    rate = {mode: sims / statistics.median(t) for mode, t in times.items()}
    for mode, r in rate.items():
        print(f"  {mode:9s} {r:8.2f} simulations/s")
    print(f"  lockstep / vmapped: {rate['lockstep'] / rate['vmapped']:.2f}x")


def compare_padding(args) -> None:
    """In-process trial throughput with a lesion-count 'choice' population (--lesion-counts):
    each lesion-count group of a chunk padded to the next power of two (`twin.trial.padded_rows`)
    vs to the whole chunk (what trials did before).  Each mode runs the trial twice: the
    first run compiles every shape it meets (power-of-two padding meets more of them), the
    second is timed warm."""
    from twin import trial

    config = trial_config(args.patients, args.schedules, args.cycles, args.chunk, lesion_counts=args.lesion_counts,
                          ligand=args.ligand)
    sims = args.patients * args.schedules
    print(f"trial: {args.patients} patients x {args.schedules} schedules x {args.cycles} cycles "
          f"(chunks of {args.chunk}), lesion counts {args.lesion_counts} (equal weights), full PSMA model, "
          f"in-process; {os.cpu_count()} CPUs")
    powers_of_two = trial.padded_rows
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, rows in (("whole chunk", lambda n, chunk: chunk), ("power of two", powers_of_two)):
            trial.padded_rows = rows
            seconds = []
            for k in range(2):
                start = time.perf_counter()
                run_trial(config, Path(tmp) / f"{mode}-{k}".replace(" ", "_"))
                seconds.append(time.perf_counter() - start)
            rates[mode] = sims / seconds[1]
            print(f"  {mode:13s} first run (with compilation) {seconds[0]:7.1f} s; warm {seconds[1]:7.1f} s, "
                  f"{rates[mode]:.2f} simulations/s", flush=True)
    trial.padded_rows = powers_of_two
    print(f"  power of two / whole chunk, warm: {rates['power of two'] / rates['whole chunk']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--schedules", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--memory", type=int, nargs=2, default=(40, 400), metavar=("N_SMALL", "N_LARGE"),
                    help="population sizes of the memory runs (1 schedule of 1 cycle each, chunks of --chunk)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--draws", choices=["compare", "auto"], default="auto",
                    help="compare: in-process only, patients of a chunk solved in lockstep vs vmapped")
    ap.add_argument("--padding", choices=["compare", "auto"], default="auto",
                    help="compare: in-process only, lesion-count groups padded to a power of two vs the chunk")
    ap.add_argument("--lesion-counts", type=int, nargs="+", default=[1, 2, 3],
                    help="lesion counts of the --padding compare population (default 1 2 3)")
    ap.add_argument("--ligand", choices=["fixed", "proportional"], default="fixed",
                    help="fixed: 100 nmol per injection (activity multiples: one solve per patient); "
                         "proportional: 100 nmol per 7.4 GBq (every schedule solved)")
    args = ap.parse_args()
    if args.padding == "compare":
        compare_padding(args)
        return
    if args.memory_child is not None:
        memory_child(args.memory_child, args.schedules, args.cycles, args.chunk)
        return
    if args.draws == "compare":
        compare_lockstep(args)
        return

    config = trial_config(args.patients, args.schedules, args.cycles, args.chunk, ligand=args.ligand)
    warm = trial_config(args.chunk, args.schedules, args.cycles, args.chunk, seed=2, ligand=args.ligand)
    sims = args.patients * args.schedules
    print(f"trial: {args.patients} patients x {args.schedules} schedules x {args.cycles} cycles "
          f"(chunks of {args.chunk}), ligand {args.ligand} ({LIGAND_NMOL:g} nmol "
          f"{'per injection' if args.ligand == 'fixed' else 'per 7.4 GBq'}), full PSMA model; {os.cpu_count()} CPUs")
    rates, chunk_rates = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in (None, 1, 2):
            mode = "in-process" if n is None else f"{n} worker(s)"
            phases = {}
            with runner.connect(workers=n, cache_dir=tmp / "jax-cache") as client:
                rates[mode] = sims / timed_run(config, warm, client, tmp / mode.replace(" ", "_"), phases)
            chunk_rates[mode] = sims / phases["chunks"]
            print(f"  {mode:12s} {rates[mode]:8.2f} simulations/s end to end; chunks {phases['chunks']:.1f} s "
                  f"({chunk_rates[mode]:.2f}/s), summary and plots {phases['summary']:.1f} s", flush=True)
    for label, r in (("end to end", rates), ("chunks only", chunk_rates)):
        print(f"  scaling 2 workers / 1 worker, {label}: {r['2 worker(s)'] / r['1 worker(s)']:.2f}x "
              f"(target >= 1.8x); in-process / 1 worker: {r['in-process'] / r['1 worker(s)']:.2f}x")
    minutes = 1e5 * args.schedules / rates["2 worker(s)"] / 60
    print(f"  10^5 patients x {args.schedules} schedules at the 2-worker rate: {minutes:.1f} min "
          "(target 15 min with a reduced model)")

    for n in args.memory:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--schedules", "1",
                              "--cycles", "1", "--chunk", str(args.chunk)],
                             check=True, capture_output=True, text=True)
        rss = json.loads(out.stdout.strip().splitlines()[-1])["max_rss_mb"]
        print(f"  peak memory (in-process, {n} patients): {rss:.0f} MB")


if __name__ == "__main__":
    main()
