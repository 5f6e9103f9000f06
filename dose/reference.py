"""Heterogeneity-aware reference dose: range-scaled voxel-kernel superposition.

Slow and explicit on purpose: it is the training target of the CNN corrector, so
correctness and documented assumptions come before speed (a 32^3-48^3 grid takes
seconds).  Float64 throughout.

Physics
-------
Density scaling (O'Connor's theorem, for media of water-like composition): in a
uniform medium of density rho = r rho_w (r relative to the water kernel's density
rho_w) every length scales by 1/r, so the point kernel is K_r(x) = r^2 K_w(r x) (energy
per volume scales as r^3, mass per volume as r).  Averaging over a source and a target
voxel of size L (the voxel S value, MIRD Pamphlet 17) and substituting x' = r x gives

    S_r,L(Delta) = r^2 S_w,rL(Delta),                                          (1)

the water kernel tabulated for voxels of size r L, read at the same integer offset.
(1) is exact for uniform media: ``absorbed_dose(method="reference")`` in uniform
water is the plain water kernel convolution, and in a uniform medium of density r it is
(1) at every offset.

Heterogeneous media: for a source voxel s and a target voxel t = s + Delta we use (1)
with an effective relative density r_eff(s, t), the mean density on the straight
segment between the voxel centres (radiological path length / geometric length):

    r_eff(s, t) = (1/M) sum_j r(s + f_j Delta),  f_j = (j + 1/2)/M,  M = ceil(2 |Delta|_inf)

(midpoint rule, trilinear interpolation of the density map), r_eff(s, s) = r(s), and
S(s -> t) is interpolated linearly in r between water kernels tabulated at the density
nodes `nodes` (each node kernel is voxel_kernel(nuclide, r_k L, "water"), so S at a node
is exactly (1); the node r = 1 is the plain water kernel).

    D(t) = sum_s A~(s) S(t - s; r_eff(s, t))

Assumptions (document these wherever the output is used):

1. Composition: all media are water with a scaled density (no change of mass stopping
   power or mass attenuation coefficient with composition; cortical bone's higher Z is
   ignored).  The ``kernel``/``multi_kernel`` methods with tabulated media kernels do
   include composition.
2. Straight-line (rectilinear) transport: the path density between s and t alone scales
   the kernel (no lateral scatter effects of neighbouring heterogeneities); the target
   dose uses r_eff for both range and mass, i.e. dose = fluence x mass stopping power,
   which is right for thin targets and for uniform regions.
3. Near/far split: the straight-path r_eff is applied for offsets with
   |Delta|_2 <= `near_radius_vox` voxels (default 3: in unit-density tissue this holds
   the electron range of 177Lu (CSDA range of E_max ~1.8 mm) and 131I (~3.3 mm) for
   voxels >= 1.1 mm; in lung the range is 3-5x longer and partly falls outside).  Beyond it (mostly photons, and the tail of
   high-energy betas) r_eff is the source voxel's density: the far part of the kernel of
   each density node is convolved (scipy FFT, float64) with the activity weighted by
   the node's linear-interpolation weight of r(s).  In uniform media the two parts join
   exactly (both equal (1)).
4. Density range: r is clamped to [nodes[0], nodes[-1]] (default 0.2-2.0 relative to
   water).  Air (r < 0.2) is treated as low-density lung: electrons crossing air are
   range-limited to lung-like ranges and dose to air voxels is not meaningful.
5. Kernels beyond the grid reach (offsets >= n voxels) cannot connect two voxels and
   are cropped.  With the built-in kernels, node r uses a photon medium of radius
   r x 125 mm of water (the same 125 mm body at density r).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import scipy.signal

from .errors import InvalidDoseInputError

MGY_TO_GY = 1e-3
DEFAULT_NODES = (0.2, 0.3, 0.45, 0.65, 0.85, 1.0, 1.2, 1.45, 1.75, 2.0)
"""Relative densities (to the water kernel) at which water kernels are tabulated:
lung (0.2-0.45), adipose/soft (0.85-1.2), trabecular to cortical bone (1.2-2.0)."""


def _fit(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centred crop or zero-pad of an odd kernel to `shape` (odd)."""
    out = np.zeros(shape, dtype=np.float64)
    src, dst = [], []
    for k, m in zip(values.shape, shape):
        h = min(k // 2, m // 2)
        src.append(slice(k // 2 - h, k // 2 + h + 1))
        dst.append(slice(m // 2 - h, m // 2 + h + 1))
    out[tuple(dst)] = values[tuple(src)]
    return out


def _node_kernel(kernel_source, nuclide: str, voxel_mm, r: float):
    """Water kernel for voxels r L.  For the built-in kernels (dose.kernels.voxel_kernel)
    the size of the surrounding medium for photon tails is scaled by r as well
    (max_radius_mm = r x default), so that node r describes the same physical body of
    density r (O'Connor scaling of the whole geometry); r = 1 is the default kernel."""
    from . import kernels

    voxel = tuple(float(r) * v for v in voxel_mm)
    if kernel_source is kernels.voxel_kernel:
        return kernels.voxel_kernel(nuclide, voxel, "water", max_radius_mm=float(r) * kernels.DEFAULT_MAX_RADIUS_MM)
    return kernel_source(nuclide, voxel, "water")


def node_kernels(nuclide: str, voxel_mm, nodes, shape, kernel_source) -> tuple[np.ndarray, float]:
    """Stack g_k = r_k^2 S_w,r_k L of shape (len(nodes), *shape), mGy/(MBq s), and the water
    kernel's density rho_w (g/cm^3)."""
    stack, rho_w = [], None
    for r in nodes:
        kernel = _node_kernel(kernel_source, nuclide, voxel_mm, float(r))
        rho_w = float(kernel.density_g_cm3) if rho_w is None else rho_w
        stack.append(r * r * _fit(np.asarray(kernel.values, dtype=np.float64), shape))
    return np.stack(stack), rho_w


def _interp_at(rho_padded: np.ndarray, region: tuple[slice, ...], shift: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of the (edge-padded by 1) density at region + shift."""
    base = np.floor(shift).astype(int)
    frac = shift - base
    out = 0.0
    for corner in itertools.product((0, 1), repeat=3):
        weight = np.prod([f if c else 1.0 - f for f, c in zip(frac, corner)])
        if weight == 0.0:
            continue
        sl = tuple(slice(r.start + 1 + b + c, r.stop + 1 + b + c) for r, b, c in zip(region, base, corner))
        out = out + weight * rho_padded[sl]
    return out


def reference_dose(
    tia_mbq_s: np.ndarray,
    voxel_mm,
    nuclide: str,
    density_g_cm3: np.ndarray,
    *,
    kernel_source,
    nodes=DEFAULT_NODES,
    near_radius_vox: float = 3.0,
) -> np.ndarray:
    """Reference absorbed dose (Gy, float64) by range-scaled kernel superposition (see the
    module docstring for the formula and its assumptions)."""
    tia = np.asarray(tia_mbq_s, dtype=np.float64)
    rho = np.asarray(density_g_cm3, dtype=np.float64)
    nodes = np.asarray(nodes, dtype=np.float64)
    if rho.shape != tia.shape:
        raise InvalidDoseInputError(f"density_g_cm3: shape {rho.shape} differs from the TIA shape {tia.shape}")
    if nodes.ndim != 1 or nodes.size < 2 or np.any(np.diff(nodes) <= 0) or nodes[0] <= 0 or not np.any(nodes == 1.0):
        raise InvalidDoseInputError(f"nodes: expected increasing relative densities > 0 including 1.0, got {nodes}")
    shape = tuple(2 * n - 1 for n in tia.shape)
    table, rho_w = node_kernels(nuclide, voxel_mm, nodes, shape, kernel_source)
    rel = np.clip(rho / rho_w, nodes[0], nodes[-1])
    centre = np.array([m // 2 for m in shape])

    # near part: path-averaged density per (source, offset)
    radius = int(math.floor(near_radius_vox))
    near = np.zeros(shape, dtype=bool)
    dose = np.zeros(tia.shape, dtype=np.float64)
    rel_padded = np.pad(rel, 1, mode="edge")
    for delta in itertools.product(range(-radius, radius + 1), repeat=3):
        delta = np.array(delta)
        if np.sum(delta * delta) > near_radius_vox**2 or np.any(np.abs(delta) >= tia.shape):
            continue
        idx = tuple(centre + delta)
        near[idx] = True
        column = table[(slice(None),) + idx]
        if not np.any(column):
            continue
        src = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(delta, tia.shape))
        dst = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(delta, tia.shape))
        activity = tia[src]
        if not np.any(activity):
            continue
        steps = int(math.ceil(2 * np.abs(delta).max()))
        if steps == 0:
            r_eff = rel[src]
        else:
            r_eff = sum(_interp_at(rel_padded, src, (j + 0.5) / steps * delta) for j in range(steps)) / steps
        dose[dst] += activity * np.interp(r_eff, nodes, column)

    # far part: source-voxel density, node weights by linear interpolation in r(s)
    far = np.where(near[None], 0.0, table)
    for k in range(nodes.size):
        weight = np.interp(rel, nodes, np.eye(nodes.size)[k])
        source = tia * weight
        if np.any(source) and np.any(far[k]):
            dose += scipy.signal.fftconvolve(source, far[k], mode="same")
    return dose * MGY_TO_GY
