"""Compact residual 3D U-Net with built-in physics constraints.

Inputs: physics dose D (Gy) and mass density rho (g/cm^3) on the same grid.
    s = max(D)                                            (dose scale, Gy)
    x = [D / s, 1 + log(D / s + eps) / log(1 / eps), rho - rho_ref]   (channels, eps = 1e-4)
    (m, a) = UNet(x)                                      (two dimensionless outputs)
    g = min(1, maxpool_k(|rho - rho_ref|) / 0.05)         (heterogeneity gate)
    L = maxpool_l(D)                                      (local dose scale, Gy)
    D_corr = D (1 + g c_m m) + L g c_a a
The multiplicative term carries the local (self-dose) part of the correction, which is
a density-dependent factor on D; the additive term, in units of the largest dose within
l // 2 voxels, the dose carried across interfaces (e.g. from a hot organ into a
neighbouring cold lung).  Dose carried across an interface comes from nearby voxels, so
the local scale bounds the additive term where it must be small: with the global
maximum (``additive_scale_voxels=0``, the first weights' form) a low-dose region far
from a hot lesion (brain at 1e-4 Gy next to a 500 Gy lesion elsewhere) received
additive terms of 1e-3 Gy, ten times its dose.
The log channel gives the net the dose shape over the whole dynamic range (hot organs
next to cold tissue) in a scale-free form.
Constraints, exact by construction:
  * D == 0 everywhere  ->  s = 0  ->  D_corr = 0;
  * D_corr(a * D) = a * D_corr(D) for a > 0 (x is scale-free, outputs multiplied by D, L);
  * homogeneous medium rho == rho_ref  ->  g = 0  ->  D_corr = D (residual exactly 0).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

GATE_WIDTH_G_CM3 = 0.05  # density deviation at which the gate fully opens (design choice)
RESIDUAL_SCALE = 1e-2  # c_a: additive residuals are small fractions of max dose; keeps early updates gentle
FACTOR_SCALE = 1e-1  # c_m: multiplicative corrections are tens of per cent at most
LOG_EPS = 1e-4  # floor of the log-dose channel (dose below 1e-4 of the maximum looks like 0)


def box_max(x: torch.Tensor, k: int) -> torch.Tensor:
    """Maximum of x (N, C, Z, Y, X) over the k x k x k box centred on each voxel (k odd;
    the box is cut at the volume's edges).  A box maximum is separable (max over z of
    max over y of max over x), and each 1-D maximum is the elementwise maximum of k
    shifted copies: 3 (k - 1) elementwise operations per voxel instead of a k^3 pooling
    window (torch's cubic max pooling took half the network's inference time at k = 5)."""
    h = k // 2
    for dim in (2, 3, 4):
        n = x.shape[dim]
        pad = [0, 0] * 3
        pad[2 * (4 - dim)] = pad[2 * (4 - dim) + 1] = h  # F.pad lists the last dimension first
        padded = F.pad(x, pad, value=float("-inf"))
        out = padded.narrow(dim, 0, n)
        for shift in range(1, k):
            out = torch.maximum(out, padded.narrow(dim, shift, n))
        x = out
    return x


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.c1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.c2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return F.silu(self.skip(x) + self.c2(F.silu(self.c1(x))))


class DoseUNet3D(nn.Module):
    """Two-level residual U-Net; spatial sizes must be multiples of 4 (inference pads)."""

    def __init__(self, base: int = 8, rho_ref_g_cm3: float = 1.0, gate_voxels: int = 5, additive_scale_voxels: int = 5):
        super().__init__()
        if additive_scale_voxels < 0 or (additive_scale_voxels and additive_scale_voxels % 2 == 0):
            raise ValueError(f"additive_scale_voxels: expected 0 (global maximum) or an odd window, got {additive_scale_voxels}")
        self.config = {"base": base, "rho_ref_g_cm3": rho_ref_g_cm3, "gate_voxels": gate_voxels,
                       "additive_scale_voxels": additive_scale_voxels}
        self.rho_ref = rho_ref_g_cm3
        self.gate_voxels = gate_voxels
        self.additive_scale_voxels = additive_scale_voxels
        b = base
        self.e1 = ResBlock(3, b)
        self.e2 = ResBlock(b, 2 * b)
        self.e3 = ResBlock(2 * b, 4 * b)
        self.d2 = ResBlock(4 * b + 2 * b, 2 * b)
        self.d1 = ResBlock(2 * b + b, b)
        self.out = nn.Conv3d(b, 2, 1)  # (m, a)
        nn.init.zeros_(self.out.weight)  # start as the identity correction (residual 0)
        nn.init.zeros_(self.out.bias)

    def residual(self, x):
        h1 = self.e1(x)
        h2 = self.e2(F.avg_pool3d(h1, 2))
        h3 = self.e3(F.avg_pool3d(h2, 2))
        u2 = self.d2(torch.cat([F.interpolate(h3, scale_factor=2, mode="trilinear"), h2], 1))
        u1 = self.d1(torch.cat([F.interpolate(u2, scale_factor=2, mode="trilinear"), h1], 1))
        return self.out(u1)

    def forward(self, dose, density, scale):
        """dose, density: (N, 1, Z, Y, X); scale: (N, 1, 1, 1, 1) dose scale s (Gy), > 0
        where the dose is non-zero.  Returns the corrected dose (Gy), same shape."""
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        dev = density - self.rho_ref
        rel = dose / safe
        logd = 1.0 + torch.log(rel + LOG_EPS) / math.log(1.0 / LOG_EPS)
        x = torch.cat([rel, logd, dev], 1)
        k = self.gate_voxels
        gate = torch.clamp(box_max(dev.abs(), k) / GATE_WIDTH_G_CM3, max=1.0)
        r = self.residual(x)
        w = self.additive_scale_voxels
        local = box_max(dose, w) if w else scale
        return dose * (1.0 + gate * FACTOR_SCALE * r[:, :1]) + local * gate * RESIDUAL_SCALE * r[:, 1:]
