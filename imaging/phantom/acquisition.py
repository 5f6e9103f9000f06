"""Simulated emission imaging: PSF blur, rebinning to the scanner grid, decay, Poisson noise.

Image-domain model (no projection/reconstruction): the reconstructed image is taken as
the true activity blurred by a Gaussian system PSF (after attenuation, scatter and
resolution-recovery corrections, which are assumed perfect), integrated over the
scanner's voxels, and Poisson distributed with a mean proportional to the detected
counts.  Reconstruction amplifies and correlates noise in real images; `noise_gain`
g >= 1 scales the variance (voxel = Poisson(lambda / g) * g, mean lambda, variance g lambda)
to mimic that.

Steps, for activity A_v (MBq) in phantom voxel v at acquisition start t:
1. blur:   B = G_sigma * A, sigma = FWHM / (2 sqrt(2 ln 2)); scipy.ndimage.gaussian_filter
   with a normalised kernel and "reflect" boundaries, so sum B = sum A exactly;
2. rebin:  C_j = sum_v W_jv B_v, W the product of the three 1-D overlap fractions between
   phantom voxel v and scanner voxel j (each phantom voxel's weights sum to 1: exact
   conservation, plus the box blur of the scanner voxel);
3. counts: lambda_j = S * C_j * tau, tau = (1 - exp(-lambda T)) / lambda the decay-weighted
   frame duration (T frame length, lambda decay constant of the nuclide, ICRP-107 half-life
   from dose.nuclides), S the count sensitivity (cps/MBq);
4. noise:  N_j ~ Poisson(lambda_j) (numpy Generator from the seed).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from ..errors import ImagingError

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def blur(values_zyx: np.ndarray, spacing_mm, fwhm_mm: float) -> np.ndarray:
    """Gaussian PSF blur of a (z, y, x) array with isotropic FWHM (mm); conserves the sum."""
    if not (np.isfinite(fwhm_mm) and fwhm_mm >= 0):
        raise ImagingError(f"fwhm_mm = {fwhm_mm!r}; expected a non-negative FWHM in mm")
    if fwhm_mm == 0:
        return np.array(values_zyx, dtype=np.float64)
    sigma_vox = [fwhm_mm / FWHM_PER_SIGMA / s for s in spacing_mm[::-1]]
    return ndi.gaussian_filter(np.asarray(values_zyx, np.float64), sigma_vox, mode="reflect", truncate=4.0)


def scanner_grid(origin_mm, spacing_mm, size_xyz, voxel_mm: float):
    """Grid of isotropic `voxel_mm` voxels covering the phantom grid, centred on it.

    Returns (origin_mm, spacing_mm, size_xyz) of the scanner image.
    """
    if not (np.isfinite(voxel_mm) and voxel_mm > 0):
        raise ImagingError(f"voxel_mm = {voxel_mm!r}; expected a positive voxel size in mm")
    extent = np.asarray(spacing_mm, float) * np.asarray(size_xyz)
    n = np.ceil(extent / voxel_mm - 1e-9).astype(int)
    centre = np.asarray(origin_mm, float) + 0.5 * (np.asarray(size_xyz) - 1) * np.asarray(spacing_mm)
    origin = centre - 0.5 * (n - 1) * voxel_mm
    return tuple(origin.tolist()), (float(voxel_mm),) * 3, tuple(int(k) for k in n)


def _overlap_matrix(src_origin, src_step, n_src, dst_origin, dst_step, n_dst) -> np.ndarray:
    """W[j, i] = |src voxel i  intersect  dst voxel j| / src_step along one axis."""
    s_lo = src_origin - 0.5 * src_step + src_step * np.arange(n_src)
    d_lo = dst_origin - 0.5 * dst_step + dst_step * np.arange(n_dst)
    lo = np.maximum(d_lo[:, None], s_lo[None, :])
    hi = np.minimum(d_lo[:, None] + dst_step, s_lo[None, :] + src_step)
    return np.clip(hi - lo, 0.0, None) / src_step


def rebin(values_zyx: np.ndarray, src_origin, src_spacing, dst_origin, dst_spacing, dst_size_xyz) -> np.ndarray:
    """Integrate a per-voxel quantity (e.g. MBq) onto another axis-aligned grid.

    Exact overlap weighting; conserves the sum when the destination covers the source.
    """
    nz, ny, nx = values_zyx.shape
    wx, wy, wz = (_overlap_matrix(src_origin[k], src_spacing[k], (nx, ny, nz)[k],
                                  dst_origin[k], dst_spacing[k], dst_size_xyz[k]) for k in range(3))
    out = np.tensordot(values_zyx, wx, axes=([2], [1]))          # (z, y, X)
    out = np.tensordot(out, wy, axes=([1], [1]))                 # (z, X, Y)
    out = np.tensordot(out, wz, axes=([0], [1]))                 # (X, Y, Z)
    return np.ascontiguousarray(out.transpose(2, 1, 0))          # (Z, Y, X)


def decay_weighted_duration_s(duration_s: float, half_life_h: float) -> float:
    """tau = integral_0^T exp(-lambda t) dt = (1 - exp(-lambda T)) / lambda  (seconds)."""
    if not (np.isfinite(duration_s) and duration_s > 0):
        raise ImagingError(f"duration_s = {duration_s!r}; expected a positive frame duration in s")
    lam = math.log(2.0) / (half_life_h * 3600.0)
    return -math.expm1(-lam * duration_s) / lam


def poisson_counts(expected: np.ndarray, rng: np.random.Generator, noise_gain: float = 1.0) -> np.ndarray:
    """N = g * Poisson(expected / g): mean `expected`, variance g * expected."""
    if not (np.isfinite(noise_gain) and noise_gain >= 1.0):
        raise ImagingError(f"noise_gain = {noise_gain!r}; expected a variance gain >= 1")
    return noise_gain * rng.poisson(expected / noise_gain).astype(np.float64)


def to_image(values_zyx: np.ndarray, origin_mm, spacing_mm, dtype=np.float32) -> sitk.Image:
    img = sitk.GetImageFromArray(np.asarray(values_zyx, dtype))
    img.SetOrigin(tuple(float(v) for v in origin_mm))
    img.SetSpacing(tuple(float(v) for v in spacing_mm))
    return img
