"""Voxel S-value kernels (MIRD Pamphlet 17 voxel schema) generated from physics.

``voxel_kernel(nuclide, voxel_mm, medium)`` returns S(Δ) in mGy/(MBq·s): the mean
absorbed dose rate in the target voxel at integer offset Δ per unit activity uniformly
distributed in the source voxel (index ``kernel.center``), in an infinite homogeneous
medium.  With K(r) the dose point kernel (MeV/g per decay) and V = L_x L_y L_z,

    S(Δ) = (1/V²) ∫_src ∫_tgt K(|x − y|) dx dy = ∫ K(|v|) T(v − Δ·L) dv,

where T is the product over axes of the triangular ("tent") density on [−L_i, L_i]
(the distribution of the difference of two uniform points).  Consequences used here:

* Fine grid + box resampling: on a fine grid of h_i = L_i / n_i, the fine voxel S
  values S_f give the coarse ones exactly by the box identity (Dieudonné et al.,
  J Nucl Med 2010;51:1600)
      S(I) = Π_axes n_i⁻² Σ_{d_i = −(n_i−1)}^{n_i−1} (n_i − |d_i|) S_f(n·I + d),
  a separable tent filter followed by sub-sampling (:func:`box_resample`); the same
  identity turns a kernel for L voxels into one for n·L voxels.
* Fine S values: point source at the fine-voxel centre; the dose at distance r is the
  shell average of K over radial shells of width h/4 computed from the cumulative
  absorbed energy C(r) (exact energy bookkeeping); the source cell itself gets
  C(r_eq)/m_cell (r_eq: radius of the sphere of the cell's volume) and the cells
  within two cells of it are averaged over 4³ sub-points.  The electron part is then
  rescaled by the ratio of exact to discretised electron energy
  (``electron_renormalisation``, within 1–2 % of 1).
* Far field (photons beyond the electron range): second-order expansion of the tent
  average, S ≈ K(r) + ½ Σ_i (L_i²/6) ∂²K/∂x_i² (tent variance L²/6), accurate to
  O((L/r)⁴) where it is used (r ≥ 3 L).
* Extent: the medium is the cube |x_i| ≤ ``max_radius_mm``.  The computed kernel
  (near block + photon far field out to the cube half-width beyond which the photon
  energy still absorbed inside the medium is below (1 − energy_fraction)/2 of the total)
  is cropped to the smallest box (Chebyshev
  distance in mm) holding ≥ ``energy_fraction`` (99.5 %) of Σ S — no fixed crop.

Units: K in MeV/g per decay → S in mGy/(MBq·s) by × 1.602176634e-13 J/MeV × 1e3 g/kg
× 1e3 mGy/Gy × 1e6 decays/(MBq·s) = × 0.1602176634.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy.ndimage import convolve1d

from . import electron_kernel as _ek
from . import nuclides as _nuc
from . import photon_kernel as _pk
from .errors import DoseError, GeometryError
from .media import MEDIA_NAMES, medium as _medium

MGY_PER_MBQ_S_PER_MEV_PER_G = _nuc.MEV_TO_J * 1e3 * 1e3 * 1e6  # = 0.1602176634
# Default medium for photon tails: the cube |x_i| ≤ 125 mm (about the extent of the
# 51³ × 4.7952 mm reference kernels of PyTheranostics), about a torso.
DEFAULT_MAX_RADIUS_MM = 125.0
DEFAULT_ENERGY_FRACTION = 0.995  # issue 4: kernel extent holds ≥ 99.5 % of Σ S
COMPONENTS = ("total", "non_penetrating", "photon")
_MAX_FINE_CELLS = 6_000_000
_MAX_KERNEL_CELLS = 30_000_000
_MAX_FINE_FACTOR = 25


@dataclass(frozen=True, eq=False)
class VoxelKernel:
    """Voxel S values ``values[i, j, k]`` in mGy/(MBq·s), source voxel at ``center``.

    ``component``: "total", "non_penetrating" (electrons, alphas, recoils) or "photon".
    ``fine_factor``: fine-grid subdivisions per voxel used to build it (per axis).
    """

    values: np.ndarray
    voxel_mm: tuple[float, float, float]
    nuclide: str
    medium: str
    density_g_cm3: float
    component: str = "total"
    in_situ_equilibrium: bool = False
    max_radius_mm: float = DEFAULT_MAX_RADIUS_MM
    fine_factor: tuple[int, int, int] = (1, 1, 1)
    electron_renormalisation: float = 1.0

    @property
    def center(self) -> tuple[int, int, int]:
        return tuple(s // 2 for s in self.values.shape)

    @property
    def half_widths(self) -> tuple[int, int, int]:
        return tuple(s // 2 for s in self.values.shape)

    @property
    def voxel_mass_g(self) -> float:
        """ρ L_x L_y L_z (g), voxel volume converted from mm³ to cm³."""
        return self.density_g_cm3 * math.prod(self.voxel_mm) * 1e-3

    def s(self, i: int, j: int, k: int) -> float:
        """S value at integer offset (i, j, k) from the source voxel (0 outside)."""
        idx = tuple(c + o for c, o in zip(self.center, (i, j, k)))
        if any(not 0 <= q < n for q, n in zip(idx, self.values.shape)):
            return 0.0
        return float(self.values[idx])

    def absorbed_energy_mev(self) -> float:
        """Energy budget: Σ S × voxel mass, converted to MeV per decay.
        Equals the energy per decay absorbed inside the kernel box."""
        return float(self.values.sum()) * self.voxel_mass_g / MGY_PER_MBQ_S_PER_MEV_PER_G

    def expected_absorbed_energy_mev(self) -> float:
        """Independent energy budget: non-penetrating energy per decay (all absorbed
        inside the extent) + photon energy absorbed inside the kernel box from a point
        source at its centre (:func:`photon_energy_in_box_mev`)."""
        out = 0.0
        if self.component in ("total", "non_penetrating"):
            out += _ek.electron_source(self.nuclide, self.in_situ_equilibrium).total_mev
        if self.component in ("total", "photon"):
            half = tuple((h + 0.5) * l for h, l in zip(self.half_widths, self.voxel_mm))
            out += photon_energy_in_box_mev(self.nuclide, half, self.medium, self.in_situ_equilibrium)
        return out


def photon_energy_in_box_mev(nuclide: str, half_extent_mm: Sequence[float], medium="water",
                             in_situ_equilibrium: bool = False, nodes: int = 160) -> float:
    """Photon energy per decay absorbed inside the box |x_i| ≤ H_i around a point source:
    (1/4π) ∫ C_γ(R(Ω)) dΩ with R(Ω) = min_i H_i/|Ω_i| (Gauss–Legendre in cos θ and φ
    over one octant; the box is symmetric)."""
    ct, wt = np.polynomial.legendre.leggauss(nodes)
    ct, wt = 0.5 * (ct + 1.0), 0.5 * wt  # cos θ on [0, 1]
    ph, wp = np.polynomial.legendre.leggauss(nodes)
    ph, wp = 0.25 * math.pi * (ph + 1.0), 0.25 * math.pi * wp  # φ on [0, π/2]
    st = np.sqrt(1.0 - ct**2)
    ux = np.abs(st[:, None] * np.cos(ph)[None, :])
    uy = np.abs(st[:, None] * np.sin(ph)[None, :])
    uz = np.broadcast_to(ct[:, None], ux.shape)
    hx, hy, hz = (float(h) for h in half_extent_mm)
    with np.errstate(divide="ignore"):
        r = np.minimum(np.minimum(hx / ux, hy / uy), hz / uz)
    c = _pk.cumulative_energy_mev(nuclide, r, medium, in_situ_equilibrium)
    w = wt[:, None] * wp[None, :] / (0.5 * math.pi)  # mean over the octant of the sphere
    return float(np.sum(c * w))


def _voxel_tuple(voxel_mm) -> tuple[float, float, float]:
    if isinstance(voxel_mm, (str, bytes)) or (np.ndim(voxel_mm) == 1 and any(isinstance(v, (str, bytes)) for v in voxel_mm)):
        raise GeometryError(f"voxel_mm: expected a positive number or three positive numbers (mm), got {voxel_mm!r}")
    try:
        v = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))
    except (TypeError, ValueError):
        raise GeometryError(f"voxel_mm: expected a positive number or three positive numbers (mm), got {voxel_mm!r}") from None
    if not np.all(np.isfinite(v)) or np.any(v <= 0.0):
        raise GeometryError(f"voxel_mm: voxel size must be positive and finite (mm), got {voxel_mm!r}")
    return tuple(float(x) for x in v)


def voxel_kernel(nuclide: str, voxel_mm, medium: str = "soft_tissue", *, component: str = "total",
                 in_situ_equilibrium: bool = False, max_radius_mm: float = DEFAULT_MAX_RADIUS_MM,
                 energy_fraction: float = DEFAULT_ENERGY_FRACTION) -> VoxelKernel:
    """Voxel S-value kernel of `nuclide` for voxels of `voxel_mm` (scalar or (x, y, z),
    mm) in the homogeneous `medium` (see :mod:`dose.media`), mGy/(MBq·s).

    ``in_situ_equilibrium``: include the decay chain (per parent decay).
    ``max_radius_mm``: half-width of the cube of medium around the source (photon tails;
    voxels whose centres lie outside it are zero).
    Results are cached (lru_cache on the normalised arguments); the arrays are read-only.
    Raises UnknownNuclideError, GeometryError (``voxel_mm``) or DoseError (``medium``,
    ``component``, ``max_radius_mm``, ``energy_fraction``, kernel too large).
    """
    name = _nuc.normalise_name(nuclide)
    _nuc.half_life_h(name)  # UnknownNuclideError if not in ICRP-107
    voxel = _voxel_tuple(voxel_mm)
    med = _medium(medium).name
    if component not in COMPONENTS:
        raise DoseError(f"component: expected one of {COMPONENTS}, got {component!r}")
    if not (isinstance(max_radius_mm, (int, float)) and math.isfinite(max_radius_mm) and max_radius_mm > 0):
        raise DoseError(f"max_radius_mm: expected a positive number of mm, got {max_radius_mm!r}")
    if not (isinstance(energy_fraction, (int, float)) and 0.0 < energy_fraction <= 1.0):
        raise DoseError(f"energy_fraction: expected a number in (0, 1], got {energy_fraction!r}")
    return _kernel(name, voxel, med, component, bool(in_situ_equilibrium), float(max_radius_mm), float(energy_fraction))


def _shell_table(cumulative, r_max_mm: float, dr_mm: float, density: float):
    """Radial grid of shell midpoints and shell-averaged dose (MeV/g) from C(r)."""
    edges = np.arange(0.0, r_max_mm + 2 * dr_mm, dr_mm)
    c = cumulative(edges)
    vol_cm3 = 4.0 / 3.0 * math.pi * np.diff(edges**3) * 1e-3
    dose = np.diff(c) / (density * vol_cm3)
    return 0.5 * (edges[1:] + edges[:-1]), dose, c


def _fine_values(cumulative, grid, h, density, r_max):
    """Fine-voxel doses (MeV/g) for a point source at the centre of fine cell 0."""
    mids, dose, _ = _shell_table(cumulative, r_max, min(h) / 4.0, density)
    x, y, z = grid
    r = np.sqrt(x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2)
    out = np.interp(r, mids, dose, right=0.0)
    del r
    c = tuple(len(a) // 2 for a in grid)
    r_eq = (3.0 * math.prod(h) / (4.0 * math.pi)) ** (1.0 / 3.0)
    # cells within two cells of the source: average over 4³ sub-points; sub-points inside
    # the sphere r_eq count zero (that energy is given to the source cell below)
    sub = (np.arange(4) + 0.5) / 4.0 - 0.5
    for i in range(-2, 3):
        for j in range(-2, 3):
            for k in range(-2, 3):
                if (i, j, k) == (0, 0, 0) or not all(abs(q) <= c_ for q, c_ in zip((i, j, k), c)):
                    continue
                px = (i + sub) * h[0]
                py = (j + sub) * h[1]
                pz = (k + sub) * h[2]
                rr = np.sqrt(px[:, None, None] ** 2 + py[None, :, None] ** 2 + pz[None, None, :] ** 2)
                out[c[0] + i, c[1] + j, c[2] + k] = np.where(rr < r_eq, 0.0, np.interp(rr, mids, dose, right=0.0)).mean()
    v_cell_cm3 = math.prod(h) * 1e-3
    out[c] = float(cumulative(np.array([r_eq]))[0]) / (density * v_cell_cm3)
    return out


def _tent_along(values: np.ndarray, n: int, axis: int, half_out: int) -> np.ndarray:
    """Along `axis`: out[I] = n⁻² Σ_{|d|<n} (n − |d|) values[c + n I + d], |I| ≤ half_out
    (zeros outside `values`)."""
    if n == 1:
        c = values.shape[axis] // 2
        idx = np.arange(-half_out, half_out + 1) + c
        valid = (idx >= 0) & (idx < values.shape[axis])
        out = np.zeros(values.shape[:axis] + (idx.size,) + values.shape[axis + 1:])
        sl = [slice(None)] * values.ndim
        sl[axis] = valid
        out[tuple(sl)] = np.take(values, idx[valid], axis=axis)
        return out
    c = values.shape[axis] // 2
    need = n * half_out + n - 1
    pad = max(0, need - c)
    if pad:
        widths = [(0, 0)] * values.ndim
        widths[axis] = (pad, pad)
        values = np.pad(values, widths)
        c += pad
    d = np.arange(-(n - 1), n)
    w = (n - np.abs(d)) / float(n * n)
    conv = convolve1d(values, w, axis=axis, mode="constant", cval=0.0)
    idx = c + n * np.arange(-half_out, half_out + 1)
    return np.take(conv, idx, axis=axis)


def box_resample(values: np.ndarray, factor) -> np.ndarray:
    """Box-resample voxel S values from voxels L to voxels n·L (n: int or one per axis):
    S_n(I) = Π_axes n⁻² Σ_d (n − |d|) S(n·I + d) (Dieudonné et al. 2010 identity).
    Input and output have the source voxel at the centre index; values beyond the input
    are taken as zero."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 3 or any(s % 2 == 0 for s in values.shape):
        raise DoseError(f"values: expected a 3-D kernel with odd sizes, got shape {values.shape}")
    ns = tuple(int(f) for f in np.broadcast_to(np.asarray(factor), (3,)))
    if any(n < 1 for n in ns) or any(float(f) != int(f) for f in np.broadcast_to(np.asarray(factor), (3,))):
        raise DoseError(f"factor: expected positive integers, got {factor!r}")
    out = values
    for axis, n in enumerate(ns):
        half_in = values.shape[axis] // 2
        out = _tent_along(out, n, axis, -(-half_in // n))
    return out


def resample_kernel(kernel: VoxelKernel, factor) -> VoxelKernel:
    """Kernel for voxels factor × kernel.voxel_mm from `kernel` by :func:`box_resample`."""
    ns = tuple(int(f) for f in np.broadcast_to(np.asarray(factor), (3,)))
    values = box_resample(kernel.values, ns)
    values.setflags(write=False)
    return VoxelKernel(values, tuple(l * n for l, n in zip(kernel.voxel_mm, ns)), kernel.nuclide, kernel.medium,
                       kernel.density_g_cm3, kernel.component, kernel.in_situ_equilibrium, kernel.max_radius_mm,
                       tuple(f * 1 for f in kernel.fine_factor), kernel.electron_renormalisation)


def _odd_ceil(x: float) -> int:
    n = max(1, int(math.ceil(x - 1e-9)))
    return n if n % 2 == 1 else n + 1


@lru_cache(maxsize=32)
def _kernel(name, voxel, med, component, chain, max_radius, fraction) -> VoxelKernel:
    m = _medium(med)
    rho = m.density_g_cm3
    want_e = component in ("total", "non_penetrating")
    want_g = component in ("total", "photon")
    src = _ek.electron_source(name, chain)
    e_lines, _, _ = _pk.photon_lines(name, chain)
    has_g = want_g and e_lines.size > 0
    r_e = _ek.max_range_mm(name, m, chain) if want_e else 0.0

    # near block (fine grid) and fine resolution
    near = tuple(max(2, math.ceil(r_e / l - 1e-9)) for l in voxel)
    h_target = r_e / 8.0 if r_e > 0 else min(voxel) / 5.0
    ns = [min(_MAX_FINE_FACTOR, _odd_ceil(l / h_target)) for l in voxel]
    while True:
        half_f = [n * (b + 1) - 1 for n, b in zip(ns, near)]
        if math.prod(2 * f + 1 for f in half_f) <= _MAX_FINE_CELLS or max(ns) == 1:
            break
        ns = [max(1, n - 2) for n in ns]
    if math.prod(2 * f + 1 for f in half_f) > _MAX_FINE_CELLS:
        raise DoseError(f"voxel_mm: {voxel} is too small for {name} (electron range {r_e:.2f} mm): "
                        f"the kernel would need more than {_MAX_FINE_CELLS} fine cells")
    h = tuple(l / n for l, n in zip(voxel, ns))
    grid = tuple(np.arange(-f, f + 1) * hh for f, hh in zip(half_f, h))
    r_fine_max = math.sqrt(sum((f * hh) ** 2 for f, hh in zip(half_f, h))) + max(h)
    v_cell_cm3 = math.prod(h) * 1e-3

    near_vals = np.zeros(tuple(2 * b + 1 for b in near))
    renorm = 1.0
    if want_e:
        fine_e = _fine_values(lambda r: _ek.cumulative_energy_mev(name, r, m, chain), grid, h, rho, r_fine_max)
        discretised = fine_e.sum() * rho * v_cell_cm3
        renorm = src.total_mev / discretised if discretised > 0 else 1.0
        fine_e *= renorm
        near_vals += _resample_fine(fine_e, ns, near)
        del fine_e
    if has_g:
        fine_g = _fine_values(lambda r: _pk.cumulative_energy_mev(name, r, m, chain), grid, h, rho, r_fine_max)
        near_vals += _resample_fine(fine_g, ns, near)
        del fine_g
    elif want_g:  # photons only below 10 keV: all local
        _, _, local = _pk.photon_lines(name, chain)
        near_vals[near] += local / (rho * math.prod(voxel) * 1e-3)

    values = near_vals
    if has_g:
        r_far = _photon_far_radius(name, m, chain, max_radius, fraction, src.total_mev if want_e else 0.0)
        # medium: the cube |x_i| ≤ max_radius_mm; voxel centres inside it
        far = tuple(max(b, min(math.ceil(r_far / l), int(math.floor(max_radius / l + 1e-9)))) for b, l in zip(near, voxel))
        if math.prod(2 * f + 1 for f in far) > _MAX_KERNEL_CELLS:
            raise DoseError(f"voxel_mm: {voxel} is too small for the photon tail of {name} out to {r_far:.0f} mm; "
                            "use larger voxels, a smaller max_radius_mm or component='non_penetrating'")
        if far != near:
            values = _far_field(name, m, chain, voxel, far)
            sl = tuple(slice(f - b, f + b + 1) for f, b in zip(far, near))
            values[sl] = near_vals

    values = _crop(values, voxel, fraction) * MGY_PER_MBQ_S_PER_MEV_PER_G
    values.setflags(write=False)
    return VoxelKernel(values, voxel, name, med, rho, component, chain, max_radius, tuple(ns), float(renorm))


def _resample_fine(fine: np.ndarray, ns, near) -> np.ndarray:
    out = fine
    for axis, (n, b) in enumerate(zip(ns, near)):
        out = _tent_along(out, n, axis, b)
    return out


def _photon_far_radius(name, m, chain, max_radius, fraction, e_nonpen) -> float:
    """Smallest cube half-width R ≤ max_radius such that the photon energy absorbed
    between the cube of half-width R and the medium cube (half-width max_radius) is at
    most (1 − fraction)/2 of all energy absorbed in the medium (bisection, 1 % of R)."""
    def inside(r):
        return photon_energy_in_box_mev(name, (r, r, r), m, chain, nodes=48)

    full = inside(max_radius)
    allowed = 0.5 * (1.0 - fraction) * (e_nonpen + full)
    if full - inside(0.0) <= allowed:
        return 0.0
    lo, hi = 0.0, max_radius
    while hi - lo > 0.01 * max_radius:
        mid = 0.5 * (lo + hi)
        if full - inside(mid) <= allowed:
            hi = mid
        else:
            lo = mid
    return hi


def _far_field(name, m, chain, voxel, far) -> np.ndarray:
    """Photon S (MeV/g) on the whole block: K + ½ Σ σ_i² ∂²K/∂x_i², σ_i² = L_i²/6.
    Computed on the non-negative octant and mirrored (the kernel is even in each axis)."""
    axes = [np.arange(0, f + 1) * l for f, l in zip(far, voxel)]
    r_lo = 0.5 * min(voxel)
    r_hi = math.sqrt(sum(a[-1] ** 2 for a in axes)) * 1.01 + r_lo
    rt = np.geomspace(r_lo, r_hi, 4000)
    eps = 1e-3
    k0 = _pk.point_kernel_mev_per_g(name, rt, m, chain)
    kp = _pk.point_kernel_mev_per_g(name, rt * (1 + eps), m, chain)
    km = _pk.point_kernel_mev_per_g(name, rt * (1 - eps), m, chain)
    d1 = (kp - km) / (2 * eps * rt)
    d2 = (kp - 2 * k0 + km) / (eps * rt) ** 2
    x2, y2, z2 = axes[0][:, None, None] ** 2, axes[1][None, :, None] ** 2, axes[2][None, None, :] ** 2
    r2 = x2 + y2 + z2
    r2[0, 0, 0] = r_lo**2  # source voxel, overwritten by the near block
    r = np.sqrt(r2)
    sig = [l * l / 6.0 for l in voxel]
    proj = (sig[0] * x2 + sig[1] * y2 + sig[2] * z2) / r2
    octant = np.interp(r, rt, k0) + 0.5 * (np.interp(r, rt, d2) * proj + np.interp(r, rt, d1) / r * (sum(sig) - proj))
    del r, r2, proj
    return _mirror(octant)


def _mirror(octant: np.ndarray) -> np.ndarray:
    """Full even array from its non-negative octant (index 0 = centre)."""
    out = octant
    for axis in range(3):
        flipped = np.flip(np.delete(out, 0, axis=axis), axis=axis)
        out = np.concatenate((flipped, out), axis=axis)
    return out


def _crop(values: np.ndarray, voxel, fraction) -> np.ndarray:
    """Smallest centred box (Chebyshev distance max_i |I_i| L_i ≤ R) with ≥ fraction of Σ.

    The array is folded onto its octant (F[a,b,c] = sum over the sign combinations) and
    the box sums are read from the 3-D cumulative sum of F."""
    half = [s // 2 for s in values.shape]
    folded = values
    for axis, b in enumerate(half):
        neg = np.flip(np.take(folded, np.arange(0, b), axis=axis), axis=axis)
        pos = np.take(folded, np.arange(b, 2 * b + 1), axis=axis).copy()
        sl = [slice(None)] * 3
        sl[axis] = slice(1, None)
        pos[tuple(sl)] += neg
        folded = pos
    box = folded.cumsum(0).cumsum(1).cumsum(2)
    total = box[-1, -1, -1]
    if total <= 0:
        return values
    radii = np.unique(np.concatenate([np.arange(b + 1) * l for b, l in zip(half, voxel)]))
    for radius in radii:
        keep = [min(b, int(math.floor(radius / l + 1e-9))) for b, l in zip(half, voxel)]
        if box[tuple(keep)] >= fraction * total * (1 - 1e-12):
            break
    sl = tuple(slice(b - k, b + k + 1) for b, k in zip(half, keep))
    return np.ascontiguousarray(values[sl])


__all__ = ["VoxelKernel", "voxel_kernel", "box_resample", "resample_kernel", "photon_energy_in_box_mev",
           "MGY_PER_MBQ_S_PER_MEV_PER_G", "MEDIA_NAMES", "COMPONENTS"]
