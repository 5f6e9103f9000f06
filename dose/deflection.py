"""Turning particle directions by a polar angle, with a uniform azimuth (shared by the
photon and electron transport of the kernels)."""

from __future__ import annotations

import math

import numpy as np


def deflect(directions: np.ndarray, cos_theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors turned by the polar angle θ (``cos_theta``) from ``directions`` (n, 3),
    the azimuth about the old direction drawn uniformly in [0, 2π):

        d' = d cos θ + (u₁ cos φ + u₂ sin φ) sin θ,   u₁ ⟂ d, u₂ = d × u₁.
    """
    d = np.asarray(directions, dtype=float)
    ref = np.zeros_like(d)
    use_z = np.abs(d[:, 2]) < 0.9
    ref[use_z, 2] = 1.0
    ref[~use_z, 0] = 1.0
    u1 = np.cross(d, ref)
    u1 /= np.sqrt((u1 * u1).sum(axis=1))[:, None]
    u2 = np.cross(d, u1)
    azimuth = rng.uniform(0.0, 2 * math.pi, d.shape[0])
    sin_theta = np.sqrt(np.maximum(0.0, 1.0 - cos_theta**2))
    return d * cos_theta[:, None] + (u1 * np.cos(azimuth)[:, None] + u2 * np.sin(azimuth)[:, None]) * sin_theta[:, None]
