"""Reading the limit off the end of a geodesic (calibration.md 1.5).

Rules, applied to the unit end velocity u = theta'/|theta'| of a geodesic that met a
boundary criterion:

1. Fold ("equal"): if two log-parameters have met (|theta_a - theta_b| < `fold_tol`)
   and the sloppiest FIM eigenvector at the end point is (e_a - e_b)/sqrt(2) to within
   `fold_alignment`, the boundary is the fold line theta_a = theta_b of a symmetric
   model (e.g. two identical exponentials, mbam `exp_example.py`): the model depends
   only on the merged parameter there.
2. Otherwise the diverging log-parameters are those with |u_i| >= `threshold` * max|u|;
   the sign gives the direction (+: -> infinity, -: -> 0).
3. One diverging parameter: kind "zero" or "infinity".  Two with |u_a|/|u_b| within
   [1/`pair_ratio`, `pair_ratio`]: same sign -> kind "ratio" (both -> infinity or both
   -> 0 with theta_a - theta_b fixed, e.g. rapid equilibrium, or K_M, V_max -> infinity
   at fixed V_max/K_M); opposite signs -> kind "product" (theta_a + theta_b fixed).
   Three or more whose |u_i| all lie within a factor `pair_ratio` of each other: kind
   "scaling" (all move at the same log-rate: the pairwise ratios/products stay fixed,
   e.g. kon -> 0 while every receptor density -> infinity at fixed kon*R).
   Anything else: kind "combination" (the direction sum_i u_i theta_i diverges).
4. `alignment` = |e_min . u| with e_min the sloppiest FIM eigenvector at the end point:
   near 1 confirms that the model no longer depends on the diverging direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fisher import fisher_from_jacobian
from .predictions import MBAMError


@dataclass(frozen=True)
class Limit:
    """A limit of the model manifold.

    kind: "zero", "infinity", "ratio", "product", "scaling", "equal" or "combination";
    parameters: the log-parameter names involved; signs: +1 (-> infinity) / -1 (-> 0) per
    parameter (0 for "equal"); direction: the unit end velocity (all parameters).
    """

    kind: str
    parameters: tuple[str, ...]
    signs: tuple[int, ...]
    direction: tuple[float, ...]
    alignment: float
    names: tuple[str, ...]

    def describe(self) -> str:
        p, s = self.parameters, self.signs
        arrow = lambda sign: "infinity" if sign > 0 else "0"  # noqa: E731
        if self.kind in ("zero", "infinity"):
            return f"{p[0]} -> {arrow(s[0])}"
        if self.kind == "ratio":
            return f"{p[0]}, {p[1]} -> {arrow(s[0])} with {p[0]}/{p[1]} fixed"
        if self.kind == "product":
            return f"{p[0]} -> {arrow(s[0])}, {p[1]} -> {arrow(s[1])} with {p[0]}*{p[1]} fixed"
        if self.kind == "scaling":
            moves = ", ".join(f"{n} -> {arrow(g)}" for n, g in zip(p, s))
            fixed = ", ".join(f"{p[0]}{'*' if g != s[0] else '/'}{n}" for n, g in zip(p[1:], s[1:]))
            return f"{moves} with {fixed} fixed"
        if self.kind == "equal":
            return f"{p[0]} = {p[1]} (fold line)"
        terms = " ".join(f"{u:+.2f}*log({n})" for n, u in zip(self.names, self.direction) if abs(u) > 0.05)
        return f"combination {terms} -> infinity"


def classify_direction(u, names, *, threshold: float = 0.25, pair_ratio: float = 2.0, alignment: float = np.nan) -> Limit:
    """Classify a diverging direction u (rules 2-3 of the module docstring)."""
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (len(names),) or not np.all(np.isfinite(u)) or not np.any(u):
        raise MBAMError("classify_direction: u must be a finite non-zero vector, one entry per parameter")
    u = u / np.linalg.norm(u)
    big = np.flatnonzero(np.abs(u) >= threshold * np.abs(u).max())
    big = big[np.argsort(-np.abs(u[big]))]
    params = tuple(names[i] for i in big)
    signs = tuple(int(np.sign(u[i])) for i in big)
    if big.size == 1:
        kind = "infinity" if signs[0] > 0 else "zero"
    elif big.size == 2 and 1 / pair_ratio <= abs(u[big[0]] / u[big[1]]) <= pair_ratio:
        kind = "ratio" if signs[0] == signs[1] else "product"
    elif big.size >= 3 and abs(u[big[0]] / u[big[-1]]) <= pair_ratio:
        kind = "scaling"
    else:
        kind = "combination"
    return Limit(kind, params, signs, tuple(u), float(alignment), tuple(names))


def identify_limit(predictions, path, *, threshold: float = 0.25, pair_ratio: float = 2.0, fold_tol: float = 0.05,
                   fold_alignment: float = 0.95) -> Limit:
    """The limit at the end of a `Geodesic` (rules 1-4 of the module docstring)."""
    x, u = path.end, path.end_velocity
    names = tuple(path.names)
    fim = fisher_from_jacobian(predictions.jacobian(x), x, names)
    e = fim.sloppiest
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if abs(x[a] - x[b]) < fold_tol:
                d = np.zeros(len(names))
                d[a], d[b] = 1.0, -1.0
                if abs(e @ d) / np.sqrt(2) >= fold_alignment:
                    return Limit("equal", (names[a], names[b]), (0, 0), tuple(u), float(abs(e @ d) / np.sqrt(2)), names)
    return classify_direction(u, names, threshold=threshold, pair_ratio=pair_ratio, alignment=float(abs(e @ u)))
