"""Geodesics on the model manifold, from a fit toward the manifold boundary.

Geodesic equation (Transtrum, Machta & Sethna, PRE 2011; calibration.md 1.2) for
log-parameters theta(t):

    theta'' = a = -(J^T J)^{-1} J^T A_vv(theta, theta'),
    A_vv = d^2/ds^2 r(theta + s theta')|_{s=0},

solved as the least-squares problem J a = -A_vv (SVD via `numpy.linalg.lstsq`, stable
near the boundary where J^T J is singular).  As in the mbam package (v0.1.0 default,
`parameterspacenorm=True`) the component of a along theta' is removed,
a <- a - (a.v) v / |v|^2, so the curve has constant parameter-space speed |theta'| = 1
and t is the parameter-space arc length; tau with dtau/dt = |J theta'| is the arc length
in data space (sigma units).  The state (theta, theta', tau) is integrated with
scipy's RK45 (`scipy.integrate.RK45`, stepped one step at a time so that the stopping
rules are checked after every step).

Initial velocity (mbam `initial_velocity`): the sloppiest FIM eigenvector v0, with its
sign chosen so that v0 . a(theta0, v0) > 0 (the direction in which the velocity grows,
"most likely to find a singularity quickest"); `forward=False` takes -v0.

Stopping rules (first met wins; `Geodesic.status` names it):

* "boundary": the smallest FIM eigenvalue along the path has fallen below
  `eig_drop` times its value at the start (default 1e-4: the sloppiest direction has
  lost four decades of information, i.e. the predictions no longer depend on it), or
  the data-space speed |J theta'| has fallen below `speed_drop` (default 1e-3) times its
  start value (tau saturates: the predictions stop changing while parameters still move);
* "diverged": a log-parameter moved more than `max_log_change` (default 20, a factor
  e^20 ~ 5e8) from the start;
* "t_max" / "max_steps": the path ended without reaching a boundary;
* "failed": the right-hand side was not finite (the ODE solve failed) or the step
  size collapsed; the path up to the last good point is kept.

(`pbpk.mbam.reduce` also makes one-point paths with status "flat" for directions whose
FIM eigenvalue is below the solver's noise floor.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import RK45

from .fisher import fisher_from_jacobian
from .predictions import MBAMError


def geodesic_acceleration(jac, avv, v, parameterspacenorm: bool = True) -> np.ndarray:
    """a = -(J^T J)^{-1} J^T A_vv (least squares), optionally minus its component along v."""
    a = -np.linalg.lstsq(jac, avv, rcond=None)[0]
    if parameterspacenorm:
        v2 = float(v @ v)
        if v2 > 0:
            a = a - (a @ v) * v / v2
    return a


def initial_velocity(predictions, theta, i: int = 0, forward: bool = True) -> np.ndarray:
    """Unit eigenvector of the (i+1)-th smallest FIM eigenvalue, signed as in mbam."""
    theta = np.asarray(theta, dtype=np.float64)
    fim = fisher_from_jacobian(predictions.jacobian(theta), theta, predictions.free)
    if not 0 <= i < len(theta):
        raise MBAMError(f"initial_velocity: i = {i}; expected 0 <= i < {len(theta)}")
    v = fim.eigenvectors[:, i].copy()
    _, jac, avv = predictions.jet(theta, v)
    a = geodesic_acceleration(jac, avv, v, parameterspacenorm=False)
    if v @ a < 0:
        v = -v
    v /= np.linalg.norm(v)
    return v if forward else -v


@dataclass
class Geodesic:
    """A geodesic path: arrays per accepted step (row 0 is the start)."""

    names: tuple[str, ...]
    ts: np.ndarray  # parameter-space arc length
    xs: np.ndarray  # (T, N) log-parameters
    vs: np.ndarray  # (T, N) velocities
    taus: np.ndarray  # (T,) data-space arc length (sigma units)
    min_eigenvalues: np.ndarray  # (T,) smallest FIM eigenvalue at each point
    speeds: np.ndarray  # (T,) |J v|
    status: str
    message: str
    n_rhs: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def reached_boundary(self) -> bool:
        return self.status in ("boundary", "diverged", "flat")

    @property
    def end(self) -> np.ndarray:
        return self.xs[-1]

    @property
    def end_velocity(self) -> np.ndarray:
        return self.vs[-1] / np.linalg.norm(self.vs[-1])


def geodesic(predictions, theta0=None, v0=None, *, i: int = 0, forward: bool = True, t_max: float = 30.0,
             max_steps: int = 500, rtol: float = 1e-4, atol: float = 1e-4, parameterspacenorm: bool = True,
             eig_drop: float = 1e-4, speed_drop: float = 1e-3, max_log_change: float = 20.0,
             first_step: float | None = None) -> Geodesic:
    """Integrate the geodesic of `predictions` from `theta0` (default: the model's values)
    with initial velocity `v0` (default: `initial_velocity(predictions, theta0, i, forward)`)
    until a stopping rule of the module docstring.  Never raises on a numerical failure:
    the returned path ends at the last good point with status "failed" and a message."""
    if theta0 is None and not hasattr(predictions, "theta0"):
        raise MBAMError("geodesic: give theta0 (these predictions have no default parameters)")
    theta0 = np.asarray(predictions.theta0 if theta0 is None else theta0, dtype=np.float64)
    n = theta0.size
    if v0 is None:
        v0 = initial_velocity(predictions, theta0, i=i, forward=forward)
    v0 = np.asarray(v0, dtype=np.float64)
    if v0.shape != (n,) or not np.all(np.isfinite(v0)) or not np.any(v0):
        raise MBAMError(f"geodesic: initial velocity must be a finite non-zero vector of length {n}")
    counter = {"n": 0}
    last_jac: dict[bytes, np.ndarray] = {}  # J at the latest RHS point (RK45 is FSAL: reused by point_info)

    def diagnostics(x, v):
        _, jac, avv = predictions.jet(x, v)
        counter["n"] += 1
        last_jac.clear()
        last_jac[np.asarray(x).tobytes()] = jac
        return jac, avv

    def rhs(t, y):
        x, v = y[:n], y[n:2 * n]
        jac, avv = diagnostics(x, v)
        if not (np.all(np.isfinite(jac)) and np.all(np.isfinite(avv))):
            raise FloatingPointError("non-finite Jacobian or A_vv (solve failed)")
        a = geodesic_acceleration(jac, avv, v, parameterspacenorm)
        return np.concatenate([v, a, [np.linalg.norm(jac @ v)]])

    def point_info(x, v):
        jac = last_jac.get(np.asarray(x).tobytes())
        if jac is None:
            jac, _ = diagnostics(x, np.zeros(n))
        s = np.linalg.svd(jac, compute_uv=False)
        lam_min = float(s[-1] ** 2) if s.size == n else 0.0
        return lam_min, float(np.linalg.norm(jac @ v))

    lam0, speed0 = point_info(theta0, v0)
    ts, xs, vs, taus, lams, speeds = [0.0], [theta0], [v0], [0.0], [lam0], [speed0]
    status, message = "t_max", f"reached t_max = {t_max} without meeting a boundary criterion"
    try:
        solver = RK45(rhs, 0.0, np.concatenate([theta0, v0, [0.0]]), t_max, rtol=rtol, atol=atol,
                      first_step=first_step)
    except FloatingPointError as exc:
        return Geodesic(tuple(predictions.free), np.array(ts), np.array(xs), np.array(vs), np.array(taus),
                        np.array(lams), np.array(speeds), "failed", f"geodesic failed at the start: {exc}",
                        counter["n"])
    while True:
        if len(ts) >= max_steps:
            status, message = "max_steps", f"stopped after {max_steps} steps without meeting a boundary criterion"
            break
        try:
            msg = solver.step()
        except FloatingPointError as exc:
            status, message = "failed", f"geodesic failed at t = {solver.t:.3g}: {exc}; kept the last good point"
            break
        if solver.status == "failed":
            status, message = "failed", f"geodesic integrator failed at t = {solver.t:.3g}: {msg}"
            break
        x, v = solver.y[:n].copy(), solver.y[n:2 * n].copy()
        try:
            lam, speed = point_info(x, v)
        except FloatingPointError:
            lam, speed = np.nan, np.nan
        if not np.isfinite(lam):
            status, message = "failed", f"solve failed at t = {solver.t:.3g}; kept the last good point"
            break
        ts.append(solver.t)
        xs.append(x)
        vs.append(v)
        taus.append(solver.y[-1])
        lams.append(lam)
        speeds.append(speed)
        if lam < eig_drop * lam0:
            status, message = "boundary", (f"smallest FIM eigenvalue fell from {lam0:.3g} to {lam:.3g} "
                                           f"(< {eig_drop:g} x start) at t = {solver.t:.3g}")
            break
        if speed < speed_drop * speed0:
            status, message = "boundary", (f"data-space speed |J v| fell from {speed0:.3g} to {speed:.3g} "
                                           f"(< {speed_drop:g} x start) at t = {solver.t:.3g}")
            break
        moved = np.abs(x - theta0)
        if moved.max() > max_log_change:
            status, message = "diverged", (f"log-parameter {predictions.free[int(np.argmax(moved))]!r} moved "
                                           f"{moved.max():.3g} (> {max_log_change:g}) at t = {solver.t:.3g}")
            break
        if solver.status == "finished":
            break
    return Geodesic(tuple(predictions.free), np.array(ts), np.array(xs), np.array(vs), np.array(taus),
                    np.array(lams), np.array(speeds), status, message, counter["n"])
