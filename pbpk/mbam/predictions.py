"""Model predictions as a function of log-parameters: the map r(theta) of MBAM.

For a `pbpk.Model`, schedules s = 1..S and output times t_k (h), the prediction vector is

    r_m(theta) = w_m * A_{s, region, t}(exp(theta))        (dimensionless, sigma units)

with A the region activity (MBq) of every (nuclide, region) pair in `regions` (and, with
`include_tia=True`, also each pair's time-integrated activity to infinity, MBq*h, per
schedule, weighted the same way; `include_tia=[names]` takes the TIA of those regions
instead, e.g. of every organ, imaged or not, so that a reduction keeps them too) and
theta = log of the free parameters (decay constants are physics and never free).  The
weights w_m = 1 / (rel_sigma * |A_m(theta_ref)| + abs_sigma_mbq) are fixed at the
reference (fitted) point theta_ref: a proportional error model with a floor, frozen so
that r stays a smooth function whose limits (A -> 0) are allowed (Transtrum & Qiu, PRL
2014; weights folded into r as the mbam package requires, calibration.md 1.1).

`Predictions` bundles r, its Jacobian J = dr/dtheta (`jax.jacfwd` through the diffrax
solve with `SolverOptions(adjoint="forward")`) and the second directional derivative
A_vv(theta, v) = d^2/ds^2 r(theta + s v) at s = 0 (nested `jax.jvp`).  Each is jitted
once per `Predictions`.  A failed solve returns NaN (never a silent value): callers test
`np.isfinite`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import PBPKError
from ..model import Model, decay_parameter_name
from ..restrict import restrict_ligands
from ..schedule import Schedule, as_schedule
from ..simulate import SolverOptions, simulate


class MBAMError(PBPKError):
    """Invalid MBAM input (unknown parameter or region, bad weights) or a failed MBAM step."""


def default_free_parameters(model: Model) -> tuple[str, ...]:
    """All parameters except physical decay constants and parameters whose value is 0
    (log undefined)."""
    decay = {decay_parameter_name(n) for n in model.nuclides}
    return tuple(p.name for p in model.parameters if p.name not in decay and p.value > 0)


@dataclass(eq=False)
class Predictions:
    """r(theta), J(theta) and A_vv(theta, v) of `model` (see module docstring).

    schedules: one schedule or a sequence (e.g. PET and therapy); times_h: output times
    (h) per schedule (one array for all, or one per schedule); regions: region names
    (default: every region); free: names of the log-parameters (default: all but decay
    constants); rel_sigma, abs_sigma_mbq: the error model of the weights; theta_ref:
    log-parameters where the weights are frozen (default: the model's values).
    """

    model: Model
    schedules: Sequence[Schedule]
    times_h: Sequence[np.ndarray]
    regions: tuple[str, ...]
    free: tuple[str, ...]
    rel_sigma: float = 0.1
    abs_sigma_mbq: float = 1e-3
    options: SolverOptions = SolverOptions(rtol=1e-8, atol=1e-10, adjoint="forward")
    tia_regions: tuple[str, ...] = ()  # regions whose TIA is predicted (see `build`'s include_tia)
    weights: np.ndarray | None = None
    _fns: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, model: Model, schedules, times_h, *, regions=None, free=None, rel_sigma: float = 0.1,
              abs_sigma_mbq: float = 1e-3, theta_ref=None, options: SolverOptions | None = None,
              include_tia: bool | Sequence[str] = False) -> "Predictions":
        if isinstance(schedules, Schedule) or not isinstance(schedules, (list, tuple)):
            schedules = [schedules]
        schedules = [as_schedule(s) for s in schedules]
        t = np.asarray(times_h, dtype=np.float64) if not isinstance(times_h, (list, tuple)) or np.ndim(times_h[0]) == 0 \
            else None
        times = [t] * len(schedules) if t is not None else [np.asarray(x, dtype=np.float64) for x in times_h]
        if len(times) != len(schedules):
            raise MBAMError(f"times_h: {len(times)} time arrays for {len(schedules)} schedules; expected one per schedule")
        regions = tuple(model.region_names if regions is None else regions)
        unknown = sorted(set(regions) - set(model.region_names))
        if unknown:
            raise MBAMError(f"regions {unknown} not in model {model.name!r}; it has {model.region_names}")
        free = tuple(default_free_parameters(model) if free is None else free)
        unknown = sorted(set(free) - set(model.parameter_names))
        if unknown:
            raise MBAMError(f"free parameters {unknown} not in model {model.name!r}")
        for n in free:
            if model.parameter(n).value <= 0:
                raise MBAMError(f"free parameter {n!r} = {model.parameter(n).value}; log-parameters need a value > 0")
        if not (rel_sigma >= 0 and abs_sigma_mbq >= 0 and rel_sigma + abs_sigma_mbq > 0):
            raise MBAMError(f"rel_sigma={rel_sigma}, abs_sigma_mbq={abs_sigma_mbq}: expected >= 0, not both 0")
        opts = options or SolverOptions(rtol=1e-8, atol=1e-10, adjoint="forward")
        if opts.adjoint != "forward":
            raise MBAMError("Predictions need SolverOptions(adjoint='forward') (jax.jacfwd through the solve)")
        if include_tia is None or isinstance(include_tia, (bool, np.bool_)):
            tia_regions = regions if include_tia else ()
        else:
            tia_regions = tuple(include_tia)
        unknown = sorted(set(tia_regions) - set(model.region_names))
        if unknown:
            raise MBAMError(f"include_tia: regions {unknown} not in model {model.name!r}; it has {model.region_names}")
        pred = cls(model, schedules, times, regions, free, rel_sigma, abs_sigma_mbq, opts, tia_regions)
        ref = pred.theta0 if theta_ref is None else np.asarray(theta_ref, dtype=np.float64)
        raw = np.asarray(pred._raw_fn(jnp.asarray(ref)))
        if not np.all(np.isfinite(raw)):
            raise MBAMError(f"model {model.name!r}: the solve failed at the reference parameters")
        pred.weights = 1.0 / (rel_sigma * np.abs(raw) + abs_sigma_mbq)
        return pred

    # ------------------------------------------------------------ helpers
    @property
    def theta0(self) -> np.ndarray:
        """Log of the model's own values of the free parameters."""
        return np.log([self.model.parameter(n).value for n in self.free])

    @property
    def include_tia(self) -> bool:
        """Whether TIA are among the predictions (of `tia_regions`)."""
        return bool(self.tia_regions)

    @property
    def n_predictions(self) -> int:
        return int(self.weights.size)

    def labels(self) -> list[str]:
        """A name for each prediction, in the order of r: 'schedule s: nuclide region at t h'
        for activities and 'schedule s: nuclide region TIA' (traces the solve's shapes only,
        `jax.eval_shape`)."""
        out = []
        for s, (sched, t) in enumerate(zip(self.schedules, self.times_h), 1):
            nuclides = jax.eval_shape(lambda: simulate(self._model_for(sched), sched, t, tia=False, options=self.options,
                                                       check=False)).nuclides
            out += [f"schedule {s}: {n} {r} at {x:g} h" for n in nuclides for r in self.regions for x in t]
            if self.include_tia:
                out += [f"schedule {s}: {n} {r} TIA" for n in nuclides for r in self.tia_regions]
        return out

    def label(self, k: int) -> str:
        """The name of prediction k (see `labels`)."""
        return self.labels()[k]

    def params(self, theta) -> dict:
        """Parameter overrides (name -> value) for log-parameters theta."""
        return {n: jnp.exp(theta[i]) for i, n in enumerate(self.free)}

    def raw(self, theta) -> np.ndarray:
        """Unweighted predictions at log-parameters theta (jit-compiled `_raw`)."""
        return np.asarray(self._raw_fn(jnp.asarray(theta, dtype=jnp.float64)))

    def _raw(self, theta):
        """Unweighted predictions, concatenated over schedules: activities (MBq, nuclide x
        region x time, for the nuclides of the ligands each schedule gives) then, with
        `include_tia`, TIA (MBq*h, nuclide x TIA region); NaN if a solve failed."""
        region_idx = np.array([self.model.region_names.index(r) for r in self.regions])
        tia_idx = np.array([self.model.region_names.index(r) for r in self.tia_regions], dtype=int)
        out = []
        for sched, t in zip(self.schedules, self.times_h):
            tr = simulate(self._model_for(sched), sched, t, self.params(theta), tia=self.include_tia,
                          options=self.options, check=False)
            a = tr.region_activity_mbq[:, region_idx, :].ravel()
            if self.include_tia:
                a = jnp.concatenate([a, tr.region_tia_mbq_h[:, tia_idx].ravel()])
            out.append(jnp.where(tr.solver_ok, a, jnp.nan))
        return jnp.concatenate(out)

    def _model_for(self, schedule: Schedule) -> Model:
        """The model restricted to the ligands `schedule` gives (`pbpk.restrict`; exact, as the
        other ligands' species stay 0), so a PET schedule does not carry the therapy
        ligand's states."""
        ligands = sorted({t.ligand.name for t in schedule.tracers})
        return self._fn(("model",) + tuple(ligands), lambda: restrict_ligands(self.model, ligands))

    def _fn(self, key, make: Callable) -> Callable:
        if key not in self._fns:
            self._fns[key] = make()
        return self._fns[key]

    @property
    def _raw_fn(self):
        return self._fn("raw", lambda: jax.jit(self._raw))

    def _r(self, theta):
        return self._raw(theta) * jnp.asarray(self.weights)

    # ------------------------------------------------------------ public maps
    def r(self, theta) -> np.ndarray:
        """Weighted predictions r(theta) (sigma units), shape (M,)."""
        return np.asarray(self._fn("r", lambda: jax.jit(self._r))(jnp.asarray(theta, dtype=jnp.float64)))

    def jet(self, theta, v):
        """(r, J, A_vv) at theta in direction v; one compiled function (see `jet_function`)."""
        out = self._fn("jet", lambda: jet_function(self._r))(jnp.asarray(theta, dtype=jnp.float64),
                                                             jnp.asarray(v, dtype=jnp.float64))
        return tuple(np.asarray(x) for x in out)

    def jacobian(self, theta) -> np.ndarray:
        """J = dr/dtheta, shape (M, N) (`value_and_jacobian`)."""
        return self.value_and_jacobian(theta)[1]

    def avv(self, theta, v) -> np.ndarray:
        """A_vv = d^2/ds^2 r(theta + s v)|_{s=0}, shape (M,)."""
        return self.jet(theta, v)[2]

    def value_and_jacobian(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """(r, J) at theta from the compiled `jet` (direction 0), the last point remembered:
        a least-squares fit that asks for r and then J at the same theta solves once, and a
        refit, the FIM and the geodesics of one reduction step share one compiled function
        (on the PSMA design the jet compiles in ~46 s, r and J apart in ~9 + 20 s)."""
        theta = np.asarray(theta, dtype=np.float64)
        last = self._fns.get("last_jet")
        if last is None or not np.array_equal(last[0], theta):
            r, jac, _ = self.jet(theta, np.zeros_like(theta))
            last = self._fns["last_jet"] = (theta.copy(), r, jac)
        return last[1], last[2]

    def jacobian_only(self, theta) -> np.ndarray:
        """J alone (a smaller compiled function than `jet`, for fits that do not also need
        A_vv, e.g. many patients' fits of one model)."""
        fn = self._fn("jac", lambda: jax.jit(lambda th: _jacobian_columns(self._r, th)))
        return np.asarray(fn(jnp.asarray(theta, dtype=jnp.float64)))

    def with_model(self, model: Model, free: Sequence[str]) -> "Predictions":
        """The same design and the same frozen weights for another (e.g. reduced) model."""
        p = Predictions(model, self.schedules, self.times_h, self.regions, tuple(free), self.rel_sigma,
                        self.abs_sigma_mbq, self.options, self.tia_regions)
        p.weights = self.weights
        return p


def _jacobian_columns(r: Callable, theta):
    """J = dr/dtheta: the jvps of all unit vectors at once (`jax.vmap` over the tangents,
    as `jax.jacfwd`); the primal solve and its step-size control are shared, only the
    tangent arithmetic is batched.  (With the block-arrow linear solves this is ~4x faster
    than `jax.lax.map` over one tangent at a time: 0.22 s vs 0.95 s for 12 parameters of
    the PSMA therapy solve; the reverse held with the dense LU.)"""
    return jax.vmap(lambda e: jax.jvp(r, (theta,), (e,))[1])(jnp.eye(theta.shape[0], dtype=theta.dtype)).T


def jet_function(r: Callable) -> Callable:
    """jit-compiled (theta, v) -> (r(theta), J(theta), A_vv(theta, v)) for a JAX function r.

    J is built from the forward tangents of all unit vectors (`_jacobian_columns`).  A_vv
    is the nested jvp d/ds [J(theta + s v) v] at s = 0.
    """

    def jet(theta, v):
        first = lambda x: jax.jvp(r, (x,), (v,))  # noqa: E731
        (r_theta, _), (_, avv) = jax.jvp(first, (theta,), (v,))
        return r_theta, _jacobian_columns(r, theta), avv

    return jax.jit(jet)


@dataclass(eq=False)
class FunctionPredictions:
    """`Predictions`-like wrapper of any JAX function r(theta) -> (M,) (already weighted),
    e.g. the mbam package's example models re-written in JAX."""

    fn: Callable
    n_parameters: int
    names: tuple[str, ...] | None = None
    _fns: dict = field(default_factory=dict, repr=False)

    @property
    def free(self) -> tuple[str, ...]:
        return self.names or tuple(f"theta_{i}" for i in range(self.n_parameters))

    def r(self, theta) -> np.ndarray:
        if "r" not in self._fns:
            self._fns["r"] = jax.jit(self.fn)
        return np.asarray(self._fns["r"](jnp.asarray(theta, dtype=jnp.float64)))

    def jet(self, theta, v):
        if "jet" not in self._fns:
            self._fns["jet"] = jet_function(self.fn)
        out = self._fns["jet"](jnp.asarray(theta, dtype=jnp.float64), jnp.asarray(v, dtype=jnp.float64))
        return tuple(np.asarray(x) for x in out)

    def jacobian(self, theta) -> np.ndarray:
        return self.jet(theta, np.zeros(self.n_parameters))[1]

    def avv(self, theta, v) -> np.ndarray:
        return self.jet(theta, v)[2]
