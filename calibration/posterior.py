"""`Posterior`: samples of a patient fit, diagnostics, summaries and predictions.

Samples are kept as arrays shaped (chain, draw, ...): ``theta`` (free parameters, model
units, in the order of `Posterior.free_names`), ``error_scale`` (proportional error sd of
the groups present in the data), ``z`` (the standard-normal coordinates) and
``solver_ok``.  Predictions (`predict`, `predict_activity`) simulate any schedule,
observed or not, for a thinned set of draws with `jax.vmap`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import pbpk
from pbpk.restrict import restrict_ligands

from .likelihood import ERROR_GROUPS, Problem, predicted_activity
from .svi import WINDOW

#: Convergence thresholds: rank-normalised split R-hat < 1.01 (Vehtari et al. 2021,
#: Bayesian Anal 16:667), bulk ESS >= 400 in total, no divergent transitions.
MAX_R_HAT = 1.01
MIN_ESS_BULK = 400


class CalibrationWarning(UserWarning):
    """A fit that finished but did not converge, or whose solves failed."""


def error_scale_samples(error_scale: np.ndarray, used_groups: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``error_scale[<group>]`` -> (chain, draw) samples, groups named by ERROR_GROUPS."""
    return {f"error_scale[{ERROR_GROUPS[g]}]": error_scale[..., k] for k, g in enumerate(used_groups)}


class SampleDiagnostics:
    """Summaries and convergence checks shared by `Posterior` and the cohort posterior.

    Subclasses are dataclasses (problem, method, samples, info, sample_stats) and provide
    `SITES` (with at least ``theta`` and ``solver_ok``), `label` and `parameter_samples`."""

    method: str
    samples: dict
    info: dict
    sample_stats: dict

    #: the sample sites a posterior keeps (arrays (chain, draw, ...))
    SITES: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_draws(cls, problem, method: str, samples: dict, *, chains: int, info: dict,
                   sample_stats: dict | None = None):
        """The posterior from a sampler's draws: `SITES` of `samples`, shaped (chains *
        draws, ...) or, with `sample_stats` (NUTS), already (chain, draw, ...); warns
        (`CalibrationWarning`) when the fit should not be trusted."""
        arrays = {}
        for k in cls.SITES:
            v = np.asarray(samples[k])
            arrays[k] = v if sample_stats is not None else v.reshape((chains, -1) + v.shape[1:])
        post = cls(problem, method, arrays, dict(info), dict(sample_stats or {}))
        problems = post.problems()
        if problems:
            warnings.warn(f"{method} fit of {post.label}: " + "; ".join(problems), CalibrationWarning,
                          stacklevel=3)
        return post

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def free_names(self) -> tuple[str, ...]:
        return self.problem.free_names

    @property
    def n_chains(self) -> int:
        return int(self.samples["theta"].shape[0])

    def parameter_samples(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def to_arviz(self):
        """The samples as an ArviZ InferenceData (posterior, and sample_stats for NUTS)."""
        import arviz as az

        stats = {}
        if "diverging" in self.sample_stats:
            stats = {"diverging": self.sample_stats["diverging"], "energy": self.sample_stats["energy"],
                     "n_steps": self.sample_stats["num_steps"]}
        return az.from_dict(posterior=self.parameter_samples(), sample_stats=stats or None)

    def summary(self) -> pd.DataFrame:
        """Mean, sd, 5/50/95 % quantiles, R-hat and bulk/tail ESS of every parameter."""
        import arviz as az

        data = self.to_arviz()
        rows = []
        for name, v in self.parameter_samples().items():
            flat = v.reshape(-1)
            rows.append(dict(parameter=name, mean=flat.mean(), sd=flat.std(ddof=1),
                             q05=np.quantile(flat, 0.05), median=np.median(flat), q95=np.quantile(flat, 0.95),
                             r_hat=float(az.rhat(data, var_names=[name])[name]) if self.n_chains > 1 else np.nan,
                             ess_bulk=float(az.ess(data, var_names=[name], method="bulk")[name]),
                             ess_tail=float(az.ess(data, var_names=[name], method="tail")[name])))
        return pd.DataFrame(rows).set_index("parameter")

    # ------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict:
        """max R-hat, min bulk ESS, divergences, failed solves (fraction of draws)."""
        s = self.summary()
        out = {"failed_solve_fraction": float(1.0 - np.mean(self.samples["solver_ok"]))}
        if self.method == "nuts":
            out.update(max_r_hat=float(s["r_hat"].max()), min_ess_bulk=float(s["ess_bulk"].min()),
                       divergences=int(np.sum(self.sample_stats.get("diverging", 0))))
        return out

    def problems(self) -> list[str]:
        """Why this fit should not be trusted (empty when it looks fine), with what to try."""
        d = self.diagnostics()
        msgs = []
        if d["failed_solve_fraction"] > 0:
            msgs.append(f"{d['failed_solve_fraction']:.1%} of draws have failed solves (loosen rtol, raise "
                        f"max_steps, or tighten the priors)")
        if self.method == "nuts":
            # a fixed Laplace metric suits a near-Gaussian posterior; else adapt it
            adapt = ", or nuts_metric='adapt'" if self.info.get("nuts_metric") == "laplace" else ""
            if self.n_chains > 1 and not d["max_r_hat"] < MAX_R_HAT:
                msgs.append(f"not converged: max R-hat {d['max_r_hat']:.3f} >= {MAX_R_HAT} (run longer warm-up "
                            f"or more samples{adapt})")
            if d["min_ess_bulk"] < MIN_ESS_BULK:
                msgs.append(f"low effective sample size: min bulk ESS {d['min_ess_bulk']:.0f} < {MIN_ESS_BULK} "
                            f"(draw more samples{adapt})")
            if d["divergences"]:
                msgs.append(f"{d['divergences']} divergent transitions (raise target_accept, reparameterise "
                            f"or fix fewer parameters{adapt})")
        if self.method == "svi" and not self.info.get("svi_converged", True):
            steps, gain = self.info["svi_steps_run"], self.info["svi_elbo_descent_per_window"]
            msgs.append(f"SVI not converged: {steps} steps, too few to check (at least {3 * WINDOW}); raise svi_steps"
                        if not np.isfinite(gain) else
                        f"SVI not converged: the ELBO still improved by {gain:.2f} nats per {WINDOW} steps over "
                        f"the last half of {steps} steps (raise svi_steps or svi_learning_rate)")
        if self.method == "laplace" and not self.info.get("hessian_positive_definite", True):
            msgs.append("the Hessian at the MAP is not positive definite (a parameter is not identified); the "
                        "Laplace covariance was regularised")
        return msgs

    @property
    def converged(self) -> bool:
        return not self.problems()


@dataclass
class Posterior(SampleDiagnostics):
    problem: Problem
    method: str
    samples: dict
    info: dict = field(default_factory=dict)
    sample_stats: dict = field(default_factory=dict)

    SITES: ClassVar[tuple[str, ...]] = ("theta", "error_scale", "z", "solver_ok")

    @property
    def label(self) -> str:
        return f"patient {self.problem.observations.patient!r}"

    @property
    def error_group_names(self) -> tuple[str, ...]:
        return tuple(ERROR_GROUPS[g] for g in self.problem.used_error_groups)

    def parameter_samples(self) -> dict[str, np.ndarray]:
        """name -> (chain, draw) samples of every free parameter (model units) and error scale."""
        out = {n: self.samples["theta"][..., k] for k, n in enumerate(self.free_names)}
        out.update(error_scale_samples(self.samples["error_scale"], self.problem.used_error_groups))
        return out

    # ------------------------------------------------------------ predictions
    def parameter_draws(self, max_draws: int = 200, seed: int = 0) -> np.ndarray:
        """(n, n_free) draws of the free parameters (model units) whose solves succeeded, at
        most `max_draws` of them (a seeded random subset), for posterior predictions."""
        return self._thinned_theta(max_draws, seed)

    def _thinned_theta(self, max_draws: int, seed: int) -> np.ndarray:
        theta = self.samples["theta"].reshape(-1, len(self.free_names))
        ok = self.samples["solver_ok"].reshape(-1).astype(bool)
        theta = theta[ok]
        if theta.shape[0] > max_draws:
            theta = theta[np.random.default_rng(seed).choice(theta.shape[0], max_draws, replace=False)]
        return theta

    def _simulate_draws(self, schedule, times_h, tia: bool, max_draws: int, seed: int):
        """The posterior draws' solves under `schedule`: (activities, TIA, a trajectory of
        the model's defaults for the names, fraction of failed draws); failed draws dropped.

        The model is restricted to the schedule's ligands (`pbpk.restrict.restrict_ligands`:
        exact, the other ligands are never given).  A single-ligand schedule's draws are
        solved together in lockstep (`pbpk.simulate_cohort`, failing draws isolated:
        compiled once per model and schedule structure, so later predictions, and the fits
        of other patients sharing the model object, reuse it); each draw alone (vmap) for
        solvers other than Rodas4 and for schedules of several ligands (the lockstep program
        of the two-ligand PSMA model took 3 min 12 s to compile, the vmapped one ~27 s)."""
        schedule = pbpk.schedule.as_schedule(schedule)
        theta = jnp.asarray(self._thinned_theta(max_draws, seed))
        problem = self.problem
        ligands = {t.ligand.name for t in schedule.tracers}
        model = restrict_ligands(problem.model, ligands) if ligands <= set(problem.model.ligands) else problem.model
        traj0 = pbpk.simulate(model, schedule, times_h, tia=tia, options=problem.options, check=False)
        if problem.options.method == "rodas4" and theta.shape[0] > 1 and len(ligands) == 1:
            traj = pbpk.simulate_cohort(model, schedule, times_h, problem.parameters(theta.T), tia=tia,
                                        options=problem.options, check=False, isolate_failures=True)
            activity, tia_values, ok = traj.region_activity_mbq, traj.region_tia_mbq_h, traj.solver_ok
        else:
            def one(th):
                traj = pbpk.simulate(model, schedule, times_h, problem.parameters(th), tia=tia,
                                     options=problem.options, check=False)
                return traj.region_activity_mbq, traj.region_tia_mbq_h, traj.solver_ok

            activity, tia_values, ok = jax.jit(jax.vmap(one))(theta)
        ok = np.asarray(ok)
        return np.asarray(activity)[ok], np.asarray(tia_values)[ok], traj0, float(1 - ok.mean())

    def predict(self, schedule, *, quantiles=(0.05, 0.5, 0.95), max_draws: int = 200, seed: int = 0) -> pd.DataFrame:
        """Posterior predictive TIA (MBq*h, to infinity) of every region and nuclide under
        `schedule` (any schedule, observed or not): mean and the requested quantiles
        (default: median and 90 % credible interval), one row per (nuclide, region)."""
        schedule = pbpk.schedule.as_schedule(schedule)
        times = np.array([schedule.last_time_h])
        _, tia, traj0, failed = self._simulate_draws(schedule, times, True, max_draws, seed)
        rows = []
        for i, nuc in enumerate(traj0.nuclides):
            for j, region in enumerate(traj0.regions):
                v = tia[:, i, j]
                row = dict(nuclide=nuc, region=region, tia_mbq_h_mean=float(v.mean()))
                row.update({f"tia_mbq_h_q{round(q * 100):02d}": float(np.quantile(v, q)) for q in quantiles})
                rows.append(row)
        out = pd.DataFrame(rows)
        out.attrs["failed_solve_fraction"] = failed
        return out

    def predict_activity(self, schedule, times_h, *, quantiles=(0.05, 0.5, 0.95), max_draws: int = 200,
                         seed: int = 0) -> pd.DataFrame:
        """Posterior predictive activity (MBq) of every region at `times_h` (schedule clock),
        long format: nuclide, region, time_h, mean and quantile columns."""
        times = np.asarray(times_h, dtype=float)
        activity, _, traj0, failed = self._simulate_draws(schedule, times, False, max_draws, seed)
        q = np.quantile(activity, quantiles, axis=0)  # (n_q, nuc, region, time)
        mean = activity.mean(axis=0)
        rows = []
        for i, nuc in enumerate(traj0.nuclides):
            for j, region in enumerate(traj0.regions):
                for k, t in enumerate(times):
                    row = dict(nuclide=nuc, region=region, time_h=float(t), activity_mbq_mean=float(mean[i, j, k]))
                    row.update({f"activity_mbq_q{round(qq * 100):02d}": float(q[n, i, j, k])
                                for n, qq in enumerate(quantiles)})
                    rows.append(row)
        out = pd.DataFrame(rows)
        out.attrs["failed_solve_fraction"] = failed
        return out

    def check_observations(self, *, max_draws: int = 200, seed: int = 0, level: float = 0.9) -> pd.DataFrame:
        """Posterior predictive check: each observed row with the predicted median and the
        `level` interval of a new measurement (error model included) and whether the
        observation falls inside."""
        theta = self._thinned_theta(max_draws, seed)
        pred, ok = jax.jit(jax.vmap(lambda th: predicted_activity(self.problem, th)))(jnp.asarray(theta))
        pred = np.asarray(pred)[np.asarray(ok)]
        scale = self.samples["error_scale"].reshape(-1, len(self.error_group_names))
        rng = np.random.default_rng(seed)
        scale = scale[rng.choice(scale.shape[0], pred.shape[0])]
        groups = np.searchsorted(np.asarray(self.problem.used_error_groups), self.problem.error_groups)
        o = self.problem.observations
        s = np.sqrt(scale[:, groups] ** 2 + o.relative_uncertainty[None, :] ** 2)
        replicated = pred * np.exp(s * rng.standard_normal(pred.shape))
        lo, med, hi = np.quantile(replicated, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
        out = o.table[["patient", "modality", "tracer", "time_h", "region", "activity_mbq"]].copy()
        out["predicted_median_mbq"] = med
        out["predicted_low_mbq"] = lo
        out["predicted_high_mbq"] = hi
        out["inside"] = (o.activity_mbq >= lo) & (o.activity_mbq <= hi)
        return out
