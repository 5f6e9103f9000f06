"""Time per patient of `calibration.fit` (Laplace, SVI, NUTS) on the full two-ligand PSMA
model and on its MBAM reduction (issue 6 benchmark: NUTS 4 chains x 1000 samples after
warm-up <= 120 s and SVI/Laplace <= 10 s on a reduced model of <= 15 parameters, on a
2-core CPU; full-model times reported).

Design (one virtual patient per model): 68Ga-PSMA-11 PET (150 MBq, 1.6 nmol) imaged at
1 h, 177Lu-PSMA-617 therapy (7.4 GBq, 90 nmol) a week later imaged at 4, 24 and 96 h;
regions kidneys, salivary glands, liver, spleen, lesion_1, lesion_2 (24 values).  Data =
the model's own activities at parameters 0.3 log units off the prior centres (alternating
sign; the prior is not centred on the truth) times log-normal noise (5 % PET, 10 % SPECT),
so each model is fitted to data it can represent.  Free: the reduction's free parameters
(benchmarks/results/mbam_psma/free.json: PS products left, receptor densities, release
rates), default priors, the same names for both models.  Reduced model:
benchmarks/results/mbam_psma/psma_reduced.xml (`pbpk.from_sbml`; the full model has 228
species).  Ligands solved separately (``separate_ligands=True``), solver
`calibration.CALIBRATION_SOLVER` (rtol 1e-5) and NUTS's trajectories at
`calibration.NUTS_SOLVER` (rtol 1e-3; its own compiled potential, "NUTS gradient" row), as
`fit` runs them without solver options; --rtol/--atol set every solve, NUTS's too;
forward-mode derivatives (as `fit`).

The phases of `calibration.fit` are timed apart (same functions, same order):
set-up (table checks, ligand segments, NumPyro model tracing) and the first gradient
(JAX compilation; a second patient of the same protocol and model object skips both),
the MAP search (`fit`'s trust-region Newton steps on the Gauss-Newton Hessian, after
its compilation; L-BFGS from the same start timed beside it for comparison), then per method: Laplace (central-difference Hessian + 1000 draws, each
draw's solve recorded: timed twice, the first call compiles the lockstep solves), SVI
(`fit`'s run: started from the Laplace approximation, Adam steps until the ELBO stops
improving, at most ``--svi-steps``, + 1000 draws with their solves; timed twice, the first
call compiles the SVI step; then once from the MAP with a small isotropic scale, for
comparison) and NUTS (``--chains`` x (``--nuts-warmup`` + ``--nuts-samples``) sequential
chains, then twice as many iterations, after a first call of the shorter length that
compiles what all runs share).  Each NUTS call compiles its own loop, so the cost of an
iteration is the difference of the two timed runs over the difference of their lengths
(compilation cancels; it covers later warm-up and sampling iterations); NUTS runs as
`fit` runs it by default (fixed Laplace metric, target acceptance 0.8).  Projected at the
issue's size: 4 x (200 + 1000) iterations (200: `fit`'s default warm-up), two chains at a
time on the two cores, so projected = 4 x 1200 x s/iteration / 2.  --nuts-full runs that
size instead of projecting it: 4 chains in parallel (pmap over 4 host devices on the two
cores).

Run:  .venv/bin/python benchmarks/bench_calibration_speed.py [--models reduced full]
          [--nuts-warmup 30] [--nuts-samples 30] [--chains 1] [--svi-steps 2000] [--nuts-full]
          [--compare-metrics] [--compare-solvers] [--rtol R --atol A]
Measured: see benchmarks/results/bench_calibration_speed_cpu.txt.
"""

from __future__ import annotations

import os

# 4 host devices: --nuts-full runs the 4 chains in parallel (pmap, one thread per device,
# on the 2 cores); every other phase uses one device
# (XLA stops reading its flags at the first word that is not one: the device count first,
# in case the caller's XLA_FLAGS hold such a word)
os.environ["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=4", "--xla_cpu_multi_thread_eigen=false",
                                    os.environ.get("XLA_FLAGS", "")])

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import calibration  # noqa: E402
import pbpk  # noqa: E402

fit_module = importlib.import_module("calibration.fit")  # `calibration.fit` is the function
svi_module = importlib.import_module("calibration.svi")
REDUCTION = Path(__file__).resolve().parent / "results" / "mbam_psma"
GA, LU = "Ga-68-PSMA-11", "Lu-177-PSMA-617"
SCHEDULE = pbpk.Schedule([pbpk.Administration(0.0, 150.0, 1.6, GA), pbpk.Administration(168.0, 7400.0, 90.0, LU)])
PET_H, SPECT_H = (1.0,), (4.0, 24.0, 96.0)
REGIONS = ("kidneys", "salivary_glands", "liver", "spleen", "lesion_1", "lesion_2")
SIGMA_LOG = {"PT": 0.05, "NM": 0.10}
OFFSET_LOG = 0.3
ISSUE_CHAINS, ISSUE_SAMPLES, CORES = 4, 1000, 2
ISSUE_WARMUP = fit_module.default_warmup("laplace")  # `fit`'s default with its fixed Laplace metric
TYPICAL_LEAPFROG_STEPS = 7  # tree depth 3: a short trajectory for a well-conditioned posterior


def models() -> dict[str, pbpk.Model]:
    return {"reduced": pbpk.from_sbml(REDUCTION / "psma_reduced.xml"), "full": pbpk.psma_model((GA, LU))}


def virtual_table(model: pbpk.Model, free: list[str], seed: int = 0) -> pd.DataFrame:
    """Noisy PET + SPECT table of `model` at the free parameters' prior centres times
    exp(+-OFFSET_LOG) (see module doc)."""
    priors = {f.name: f for f in calibration.priors.resolve_free_parameters(model, free)}
    truth = {n: priors[n].median * float(np.exp(OFFSET_LOG * (-1) ** k)) for k, n in enumerate(free)}
    therapy_h = SCHEDULE.administrations[1].time_h
    times = np.array(list(PET_H) + [therapy_h + t for t in SPECT_H])
    traj = pbpk.simulate(model, SCHEDULE, times, truth, tia=False)
    rng = np.random.default_rng(seed)
    rows = []
    for nuclide, modality, tracer, index, t0 in (("Ga-68", "PT", GA, range(len(PET_H)), 0.0),
                                                 ("Lu-177", "NM", LU, range(len(PET_H), times.size), therapy_h)):
        activity = traj.activity_of(nuclide)
        for region in REGIONS:
            for i in index:
                a = float(activity[region][i]) * float(np.exp(SIGMA_LOG[modality] * rng.standard_normal()))
                rows.append(dict(patient="virtual", modality=modality, tracer=tracer, time_h=times[i] - t0,
                                 region=region, activity_mbq=a))
    return pd.DataFrame(rows)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(name: str, model: pbpk.Model, free: list[str], args) -> list[dict]:
    """Rows (model, phase, seconds, note) of one patient's fits (module doc)."""
    table = virtual_table(model, free)
    options = dataclasses.replace(calibration.CALIBRATION_SOLVER, adjoint="forward",
                                  **{k: v for k, v in (("rtol", args.rtol), ("atol", args.atol)) if v is not None})
    rows = []

    def row(phase, seconds, note=""):
        rows.append(dict(model=name, species=len(model.species), free=len(free), phase=phase, seconds=seconds,
                         note=note))
        print(f"{name:8s} {phase:34s} {seconds:9.2f} s  {note}", flush=True)

    problem, t_setup = timed(lambda: fit_module.make_problem(model, table, SCHEDULE, free=free, options=options,
                                                             separate_ligands=True))
    potential, t_trace = timed(lambda: fit_module._Potential(problem, seed=0))
    row("set-up + model tracing", t_setup + t_trace)
    _, t_first = timed(lambda: potential.scipy_objective(potential.x0))
    row("first gradient (compilation)", t_first)
    grads = median_gradient_seconds(potential)
    row("one gradient (median of 5)", grads, f"{grads * 1e3:.1f} ms, {len(free)} forward tangents")
    given = None if args.rtol is None and args.atol is None else options
    nuts_potential = fit_module.nuts_solver_potential(
        "nuts", given, problem, lambda p: fit_module._Potential(p, seed=0), {}) or potential
    if nuts_potential is not potential:
        _, t_nuts_compile = timed(lambda: nuts_potential.scipy_objective(nuts_potential.x0))
        grads = median_gradient_seconds(nuts_potential)
        row("NUTS gradient (median of 5)", grads,
            f"{grads * 1e3:.1f} ms at rtol {calibration.NUTS_SOLVER.rtol:g} (calibration.NUTS_SOLVER); "
            f"compilation {t_nuts_compile:.1f} s")
    (x_lbfgs, opt), t_lbfgs = timed(lambda: fit_module.find_map(potential))
    row("MAP by L-BFGS (for comparison)", t_lbfgs, f"{opt.nit} iterations, {opt.nfev} gradients")
    _, t_first_gn = timed(lambda: potential.gauss_newton(potential.x0))
    row("first Gauss-Newton call (compilation)", t_first_gn)
    (x_map, opt), t_map = timed(lambda: fit_module.find_map(potential, newton=True))
    row("MAP (trust-region Gauss-Newton)", t_map,
        f"{opt.nit} iterations, {opt.nfev} evaluations; max |x - x_LBFGS| {np.max(np.abs(x_map - x_lbfgs)):.1e}")

    key = jax.random.PRNGKey(0)
    (cov, positive), t_hess = timed(lambda: fit_module.laplace_covariance(potential, x_map))
    _, t_first_draws = timed(lambda: fit_module.laplace_draws(potential, x_map, cov, 1000, 0))
    _, t_draws = timed(lambda: fit_module.laplace_draws(potential, x_map, cov, 1000, 1))
    row("Laplace: Hessian", t_hess, f"positive definite: {positive}")
    row("Laplace: 1000 draws, first call", t_first_draws, "compiles the lockstep solves (once per model)")
    row("Laplace: 1000 draws", t_draws, "each draw's solve (lockstep)")
    row("Laplace total after compilation", t_map + t_hess + t_draws, "target <= 10 s on the reduced model")

    def svi_fit(seed, scale_tril):
        result = svi_module.run_svi(potential, x_map, jax.random.PRNGKey(seed), args.svi_steps, 0.01, 1000,
                                    scale_tril=scale_tril)
        return result, potential.constrained_draws(jnp.asarray(result.draws))

    scale_tril, t_start = timed(lambda: fit_module.laplace_scale_tril(potential, x_map, opt.hess))
    _, t_svi_first = timed(lambda: svi_fit(0, scale_tril))
    (result, _), t_svi = timed(lambda: svi_fit(1, scale_tril))
    steps = result.losses.size
    row("SVI: first call", t_svi_first, "compiles the SVI step (once per model and protocol)")
    row("SVI: Laplace start, chol(H_GN^-1)", t_start, "from the MAP search's H_GN (as calibration.fit)")
    row("SVI: steps to convergence + 1000 draws", t_svi,
        f"{steps} steps, converged: {result.converged}, ELBO loss {np.mean(result.losses[-svi_module.WINDOW:]):.2f}")
    row("SVI total after compilation", t_map + t_start + t_svi, "MAP + start + SVI; target <= 10 s on the reduced model")
    (old, _), t_old = timed(lambda: svi_fit(1, None))
    row(f"SVI from the MAP, scale {svi_module.INIT_SCALE} (comparison)", t_old,
        f"{old.losses.size} steps, converged: {old.converged}, "
        f"ELBO loss {np.mean(old.losses[-svi_module.WINDOW:]):.2f}")

    def nuts(scale):
        return timed(lambda: fit_module.run_nuts(
            nuts_potential, x_map, cov if positive else None, key, 0, num_warmup=scale * args.nuts_warmup,
            num_samples=scale * args.nuts_samples, num_chains=args.chains, chain_method="sequential"))

    iterations = args.chains * (args.nuts_warmup + args.nuts_samples)
    (_, t_nuts_first), (_, t_nuts), ((_, stats2, _), t_nuts2) = nuts(1), nuts(1), nuts(2)
    steps = float(np.mean(stats2["num_steps"])) if "num_steps" in stats2 else float("nan")
    per_iteration = (t_nuts2 - t_nuts) / iterations
    row(f"NUTS: {args.chains} x ({args.nuts_warmup} + {args.nuts_samples}), first call", t_nuts_first,
        "compiles what every NUTS run shares")
    row(f"NUTS: {args.chains} x ({args.nuts_warmup} + {args.nuts_samples})", t_nuts)
    row(f"NUTS: {args.chains} x ({2 * args.nuts_warmup} + {2 * args.nuts_samples})", t_nuts2,
        f"{per_iteration:.2f} s/iteration (difference of the two runs), {steps:.1f} leapfrog steps per sample")
    projected = ISSUE_CHAINS * (ISSUE_WARMUP + ISSUE_SAMPLES) * per_iteration / CORES
    row(f"NUTS projected {ISSUE_CHAINS} x ({ISSUE_WARMUP} + {ISSUE_SAMPLES}), {CORES} cores", projected,
        "projection at this run's trajectory lengths, target <= 120 s on the reduced model")
    row(f"NUTS projected, {TYPICAL_LEAPFROG_STEPS} leapfrog steps per iteration", ISSUE_CHAINS * (
        ISSUE_WARMUP + ISSUE_SAMPLES) * TYPICAL_LEAPFROG_STEPS * grads / CORES,
        "a leapfrog step = one gradient; lower estimate (short warm-ups run longer trajectories)")
    if args.nuts_full:
        nuts_at_issue_size(nuts_potential, x_map, cov if positive else None, key, row)
    if args.compare_metrics and positive:
        compare_metrics(nuts_potential, x_map, cov, key, row)
    if args.compare_solvers and positive and nuts_potential is not potential:
        compare_solvers(problem, potential, nuts_potential, x_map, cov, key, row)
    return rows


def compare_solvers(problem, potential, nuts_potential, x_map, cov, key, row, samples: int = 400) -> None:
    """What NUTS's looser solve (`calibration.NUTS_SOLVER`) changes: one chain of `fit`'s
    default warm-up + `samples` draws on each potential (same key and start), the
    difference of their posterior means of log theta in Monte Carlo standard errors (ArviZ
    mcse of each chain, combined) and the ratio of their sds; then the largest relative
    error of the observed rows' predictions at either setting against an rtol-1e-9 solve,
    over 20 of the draws."""
    import arviz as az

    log_theta = {}
    for label, pot in (("CALIBRATION_SOLVER", potential), ("NUTS_SOLVER", nuts_potential)):
        (samples_, stats, adapted), seconds = timed(lambda: fit_module.run_nuts(
            pot, x_map, cov, key, 0, num_warmup=ISSUE_WARMUP, num_samples=samples, num_chains=1,
            chain_method="sequential"))
        log_theta[label] = np.log(samples_["theta"][0])
        row(f"NUTS 1 x ({ISSUE_WARMUP} + {samples}), {label}", seconds,
            f"{np.mean(stats['num_steps']):.1f} leapfrog steps per draw, step size {adapted.step_size[0]:.3f}")

    def mcse(x):
        return np.array([float(az.mcse(x[None, :, k], method="mean")) for k in range(x.shape[1])])

    tight, loose = log_theta["CALIBRATION_SOLVER"], log_theta["NUTS_SOLVER"]
    z = (loose.mean(0) - tight.mean(0)) / np.sqrt(mcse(loose) ** 2 + mcse(tight) ** 2)
    ratio = loose.std(0) / tight.std(0)
    row("posterior, NUTS_SOLVER vs CALIBRATION_SOLVER", 0.0,
        f"log-theta means differ by at most {np.max(np.abs(z)):.2f} Monte Carlo standard errors; "
        f"sd ratios {ratio.min():.2f}-{ratio.max():.2f}")
    theta = np.exp(tight[:: max(1, samples // 20)])

    def predictions(options):
        problem_at = dataclasses.replace(problem, options=options)
        return np.asarray(fit_module.predicted_activity_draws(problem_at, theta)[0])

    reference = predictions(dataclasses.replace(problem.options, rtol=1e-9, atol=1e-12, max_steps=65536))
    for label, options in (("CALIBRATION_SOLVER", problem.options), ("NUTS_SOLVER", calibration.NUTS_SOLVER)):
        error = np.max(np.abs(predictions(fit_module.forward_mode(options)) / reference - 1))
        row(f"solver error of the predictions, {label}", 0.0,
            f"rtol {options.rtol:g}: max relative error {error:.1e} over {len(theta)} posterior draws x "
            f"{reference.shape[1]} observed rows (against rtol 1e-9)")


def median_gradient_seconds(potential) -> float:
    """Median seconds of five gradients near the prior centre (after compilation)."""
    return float(np.median([timed(lambda: potential.scipy_objective(potential.x0 + 0.01 * k))[1]
                            for k in range(1, 6)]))


def nuts_at_issue_size(potential, x_map, inverse_mass, key, row) -> None:
    """`fit`'s NUTS as it runs by default (fixed Laplace metric, step size adapted over
    `default_warmup` iterations, target acceptance 0.8) with ISSUE_CHAINS x ISSUE_SAMPLES
    draws after warm-up, the chains in parallel (``chain_method="parallel"``: pmap over 4
    host devices, two cores): wall time including the compilation of the chains' program
    (the solve traced into it), leapfrog steps and diagnostics."""
    import arviz as az

    (samples, stats, adapted), seconds = timed(lambda: fit_module.run_nuts(
        potential, x_map, inverse_mass, key, 0, num_warmup=ISSUE_WARMUP, num_samples=ISSUE_SAMPLES,
        num_chains=ISSUE_CHAINS, chain_method="parallel"))
    data = az.from_dict(posterior={k: v for k, v in samples.items() if k in ("theta", "error_scale")})
    r_hat = float(max(float(v.max()) for v in az.rhat(data).data_vars.values()))
    ess = float(min(float(v.min()) for v in az.ess(data, method="bulk").data_vars.values()))
    row(f"NUTS {ISSUE_CHAINS} x ({ISSUE_WARMUP} + {ISSUE_SAMPLES}), parallel, {CORES} cores", seconds,
        f"measured end to end; {np.mean(stats['num_steps']):.1f} leapfrog steps per draw, "
        f"step sizes {np.array2string(adapted.step_size, precision=2)}, max R-hat {r_hat:.3f}, "
        f"min bulk ESS {ess:.0f}, divergences {int(np.sum(stats['diverging']))}; target <= 120 s on the reduced model")


def compare_metrics(potential, x_map, cov, key, row, samples: int = 200) -> None:
    """One chain of `samples` draws per NUTS metric at `fit`'s default warm-up and target
    acceptance 0.8 and 0.9: the fixed Laplace metric against NumPyro's windowed adaptation
    started from it (leapfrog steps per draw and step size: what a draw costs)."""
    for target in (0.8, 0.9):
        for metric in fit_module.NUTS_METRICS:
            warmup = fit_module.default_warmup(metric)
            (_, stats, adapted), seconds = timed(lambda: fit_module.run_nuts(
                potential, x_map, cov, key, 0, num_warmup=warmup, num_samples=samples, num_chains=1,
                chain_method="sequential", adapt_metric=metric == "adapt", target_accept=target))
            row(f"NUTS metric {metric}, target {target}: 1 x ({warmup} + {samples})", seconds,
                f"{np.mean(stats['num_steps']):.1f} leapfrog steps per draw, step size {adapted.step_size[0]:.3f}, "
                f"divergences {int(np.sum(stats['diverging']))}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=("reduced", "full"), default=["reduced", "full"])
    ap.add_argument("--nuts-warmup", type=int, default=30)
    ap.add_argument("--nuts-samples", type=int, default=30)
    ap.add_argument("--chains", type=int, default=1)
    ap.add_argument("--svi-steps", type=int, default=2000, help="most SVI steps (`fit`'s default)")
    ap.add_argument("--nuts-full", action="store_true",
                    help=f"also run NUTS at the issue's size ({ISSUE_CHAINS} chains x {ISSUE_SAMPLES} draws after "
                         f"`fit`'s default warm-up, parallel chains), end to end")
    ap.add_argument("--compare-metrics", action="store_true",
                    help="also run one chain per NUTS metric (fixed Laplace / adapted) and target acceptance")
    ap.add_argument("--compare-solvers", action="store_true",
                    help="also run one chain per solver setting (CALIBRATION_SOLVER / NUTS_SOLVER) and compare "
                         "the posteriors and the predictions' solver error")
    ap.add_argument("--rtol", type=float, default=None, help="solver rtol (default: calibration.CALIBRATION_SOLVER)")
    ap.add_argument("--atol", type=float, default=None, help="solver atol (default: calibration.CALIBRATION_SOLVER)")
    ap.add_argument("--csv", type=Path, default=None, help="also write the rows to this CSV file")
    args = ap.parse_args(argv)
    free = json.loads((REDUCTION / "free.json").read_text())
    built = models()
    rows = []
    for name in args.models:
        rows += run(name, built[name], free, args)
    out = pd.DataFrame(rows)
    if len(args.models) == 2:
        wide = out.pivot_table(index="phase", columns="model", values="seconds", sort=False)
        wide["full / reduced"] = wide["full"] / wide["reduced"]
        print("\n" + wide.to_string(float_format=lambda v: f"{v:.2f}"))
    if args.csv is not None:
        out.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
