"""Fisher information of the predictions and its eigen-spectrum (the sloppiness picture).

With r(theta) the weighted predictions (sigma units, `pbpk.mbam.predictions`) and
J = dr/dtheta (M x N), the Fisher information matrix of unit-variance Gaussian residuals
is g = J^T J (also the metric of the model manifold).  Its eigenvalues are the squared
singular values of J; eigenvectors with tiny eigenvalues are the sloppy directions
(Transtrum, Machta & Sethna, PRE 2011).  Eigenvalues come from the SVD of J (not from
forming J^T J), which keeps the smallest ones accurate to ~eps * sigma_max^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .predictions import MBAMError


@dataclass(frozen=True)
class FisherInformation:
    """FIM g = J^T J at `theta` (log-parameters `names`), eigenvalues ascending and the
    matching eigenvectors (columns)."""

    theta: np.ndarray
    names: tuple[str, ...]
    jacobian: np.ndarray
    matrix: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray

    @property
    def sloppiest(self) -> np.ndarray:
        """Unit eigenvector of the smallest eigenvalue."""
        return self.eigenvectors[:, 0]

    @property
    def spread_decades(self) -> float:
        """log10(largest / smallest eigenvalue)."""
        lo = max(self.eigenvalues[0], np.finfo(float).tiny)
        return float(np.log10(self.eigenvalues[-1] / lo))

    def summary(self) -> str:
        ev = ", ".join(f"{e:.3g}" for e in self.eigenvalues)
        return (f"FIM eigenvalues (ascending): {ev}; spread {self.spread_decades:.1f} decades; sloppiest "
                f"direction: " + ", ".join(f"{n} {c:+.2f}" for n, c in zip(self.names, self.sloppiest) if abs(c) > 0.1))


def fisher_from_jacobian(jac, theta, names, weights=None) -> FisherInformation:
    """FIM from a Jacobian (M x N); optional extra weights w_m give g = J^T diag(w^2) J."""
    j = np.asarray(jac, dtype=np.float64)
    if weights is not None:
        j = j * np.asarray(weights, dtype=np.float64)[:, None]
    if j.ndim != 2 or not np.all(np.isfinite(j)):
        raise MBAMError("Jacobian of the predictions is not a finite M x N matrix (the solve failed?)")
    _, s, vh = np.linalg.svd(j, full_matrices=True)
    n = j.shape[1]
    sig2 = np.zeros(n)
    sig2[: s.size] = s**2
    order = np.argsort(sig2)
    vecs = vh.T[:, order]
    # fix the sign: largest component positive (reproducible reports)
    vecs = vecs * np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(n)])
    return FisherInformation(np.asarray(theta, dtype=np.float64), tuple(names), j, j.T @ j, sig2[order], vecs)


def fisher_information(predictions, theta=None, weights=None) -> FisherInformation:
    """FIM of `predictions` (a `Predictions` or `FunctionPredictions`) at log-parameters
    `theta` (default: the model's values)."""
    if theta is None:
        if not hasattr(predictions, "theta0"):
            raise MBAMError("fisher_information: give theta (these predictions have no default parameters)")
        theta = predictions.theta0
    return fisher_from_jacobian(predictions.jacobian(theta), theta, predictions.free, weights)
