"""Patch-based sliding-window inference, save / load in a safe format.

Weights: `torch.save(state_dict)` (tensors only, loaded with weights_only=True, no
pickle of code) plus a JSON provenance file `<path>.json` with the network config.
Blending: each patch output is weighted by a separable tent w(i) = min(i+1, n-i) so
overlapping patches average smoothly:  D(v) = sum_p w_p(v) D_p(v) / sum_p w_p(v).
The input normalisation s = max(D) is global (whole volume), so patches agree and
linearity in activity holds exactly.  The local additive scale (max of D over a few
voxels, see `network`) is computed inside each patch; the overlap (16 voxels) is wider
than its window, and the tent weights make the patch borders, where the window is cut,
count little.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_atomic
from ..errors import GeometryError, InvalidDoseInputError
from ..kernels import _voxel_tuple
from .network import DoseUNet3D

#: the shipped weights, written by examples/train_dose_corrector.py (177Lu, 12 mm voxels)
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "lu177_12mm.pt"
VOXEL_RTOL = 1e-3  # relative tolerance on the voxel size the weights were trained for


def default_weights() -> Path:
    """Path of the shipped weights (`DEFAULT_WEIGHTS`); InvalidDoseInputError if absent."""
    if not DEFAULT_WEIGHTS.is_file():
        raise InvalidDoseInputError(f"{DEFAULT_WEIGHTS}: the shipped dose corrector weights are missing; "
                                    "regenerate them with examples/train_dose_corrector.py")
    return DEFAULT_WEIGHTS


def _device(device):
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_inputs(dose_gy, density_g_cm3) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(dose_gy, dtype=np.float64)
    r = np.asarray(density_g_cm3, dtype=np.float64)
    if d.ndim != 3:
        raise GeometryError(f"dose_gy: expected a 3-D array (z, y, x), got shape {d.shape}")
    if r.shape != d.shape:
        raise GeometryError(f"density_g_cm3: shape {r.shape} differs from dose_gy shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise InvalidDoseInputError("dose_gy: non-finite values (NaN/inf)")
    if d.size and d.min() < -1e-6 * max(d.max(), 0.0):
        raise InvalidDoseInputError(f"dose_gy: negative values (min {d.min():.3g} Gy) beyond FFT round-off")
    d = np.maximum(d, 0.0)  # FFT round-off (|d| < 1e-6 max) -> 0
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise InvalidDoseInputError("density_g_cm3: expected finite values >= 0")
    return d, r


def _starts(n: int, patch: int, step: int) -> list[int]:
    if n <= patch:
        return [0]
    s = list(range(0, n - patch + 1, step))
    if s[-1] != n - patch:
        s.append(n - patch)
    return s


class Corrector:
    """Trained corrector: `Corrector(model)(dose_gy, density_g_cm3)` -> corrected dose (Gy).

    The network is specific to the voxel size and nuclide it was trained for (its
    kernels learn the dose carried across a fixed number of voxels).  When the weights'
    provenance records them (`load` of weights written by examples/train_dose_corrector.py:
    ``training.voxel_mm``, ``training.nuclide``), a call with `voxel_mm` / `nuclide`
    checks them: GeometryError for another voxel size, InvalidDoseInputError for
    another nuclide."""

    def __init__(self, model: DoseUNet3D, device=None, patch: int = 128, overlap: int = 16,
                 provenance: dict | None = None):
        if patch % 4 or patch < 8 or not 0 <= overlap < patch:
            raise InvalidDoseInputError(f"patch/overlap: expected patch a multiple of 4 >= 8 and 0 <= overlap < patch, got {patch}/{overlap}")
        self.device = _device(device)
        # channels-last 3-D layout: oneDNN's fast convolution path (1.6x faster on CPU)
        self.model = model.to(self.device, memory_format=torch.channels_last_3d).eval()
        self.patch, self.overlap = patch, overlap
        self.provenance = dict(provenance or {})  # weights file and training record (`load`)

    @property
    def trained_voxel_mm(self) -> tuple[float, float, float] | None:
        v = self.provenance.get("training", {}).get("voxel_mm")
        if v is None:
            return None
        return _voxel_tuple(v)

    @property
    def trained_nuclide(self) -> str | None:
        return self.provenance.get("training", {}).get("nuclide")

    def check_compatible(self, voxel_mm=None, nuclide: str | None = None) -> None:
        """GeometryError if `voxel_mm` ((z, y, x) or one size, mm) differs from the voxel
        size the weights were trained for (relative tolerance VOXEL_RTOL);
        InvalidDoseInputError if `nuclide` differs from the trained nuclide.  Checks only
        what both the call and the provenance give."""
        tv = self.trained_voxel_mm
        if voxel_mm is not None and tv is not None:
            v = _voxel_tuple(voxel_mm)
            if not np.allclose(v, tv, rtol=VOXEL_RTOL, atol=0):
                raise GeometryError(f"voxel_mm: the corrector weights {self.provenance.get('weights', '')} were "
                                    f"trained for {tv} mm voxels, got {v}; resample (absorbed_dose "
                                    f"kernel_voxel_mm={tv}) or train weights for this voxel size")
        tn = self.trained_nuclide
        if nuclide is not None and tn is not None and nuclide != tn:
            raise InvalidDoseInputError(f"nuclide: the corrector weights {self.provenance.get('weights', '')} were "
                                        f"trained for {tn}, got {nuclide!r}")

    def __call__(self, dose_gy, density_g_cm3, *, voxel_mm=None, nuclide: str | None = None) -> np.ndarray:
        """Corrected dose (Gy) of the physics dose `dose_gy` (Gy, (z, y, x)) on the density
        map `density_g_cm3`; `voxel_mm` and `nuclide` (optional) are checked against the
        weights' training record (`check_compatible`)."""
        self.check_compatible(voxel_mm, nuclide)
        d, r = check_inputs(dose_gy, density_g_cm3)
        scale = float(d.max()) if d.size else 0.0
        if scale == 0.0:
            return np.zeros_like(d)
        shape = d.shape
        # pad to a multiple of 4 (dose with 0, density by edge replication)
        size = [-(-n // 4) * 4 for n in shape]
        pads = [(0, s - n) for s, n in zip(size, shape)]
        dp = np.pad(d, pads, mode="constant")
        rp = np.pad(r, pads, mode="edge")
        out = np.zeros(size)
        wsum = np.zeros(size)
        step = self.patch - self.overlap
        pz, py, px = (min(self.patch, s) for s in size)
        tent = [np.minimum(np.arange(p) + 1, p - np.arange(p)).astype(float) for p in (pz, py, px)]
        w = tent[0][:, None, None] * tent[1][None, :, None] * tent[2][None, None, :]
        s_t = torch.full((1, 1, 1, 1, 1), scale, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for z in _starts(size[0], pz, step):
                for y in _starts(size[1], py, step):
                    for x in _starts(size[2], px, step):
                        sl = (slice(z, z + pz), slice(y, y + py), slice(x, x + px))
                        dt, rt = (torch.as_tensor(a[sl], dtype=torch.float32, device=self.device)[None, None]
                                  .contiguous(memory_format=torch.channels_last_3d) for a in (dp, rp))
                        o = self.model(dt, rt, s_t)[0, 0].cpu().numpy().astype(np.float64)
                        out[sl] += w * o
                        wsum[sl] += w
        res = (out / wsum)[: shape[0], : shape[1], : shape[2]]
        return np.maximum(res, 0.0)  # dose is non-negative; max(0, a x) = a max(0, x) keeps linearity


def save(model: DoseUNet3D, path: str, provenance: dict | None = None) -> None:
    """Write `path` (state_dict, torch.save) and `path + '.json'`, each atomically (a
    failed write leaves no partial file)."""
    meta = {"format": "rpt-twin dose corrector v1", "config": model.config, "provenance": provenance or {}}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    write_atomic(str(path) + ".json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))


def load(path: str | os.PathLike | None = None, device=None, **kwargs) -> Corrector:
    """Load weights saved by `save` (torch.load(weights_only=True)); path None = the
    shipped weights (`default_weights()`).  InvalidDoseInputError when the file or its
    JSON provenance is missing or malformed."""
    path = str(default_weights() if path is None else path)
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
        # files written before the local additive scale existed used the global maximum
        config = {"additive_scale_voxels": 0, **meta["config"]}
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, EOFError) as e:
        raise InvalidDoseInputError(f"{path}: cannot load dose corrector weights ({e})") from e
    try:
        model = DoseUNet3D(**config)
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidDoseInputError(f"{path}: weights do not match the network config {config} ({e})") from e
    provenance = {"weights": os.path.abspath(path), "format": meta.get("format"), "config": config,
                  "training": meta.get("provenance", {})}
    return Corrector(model, device=device, provenance=provenance, **kwargs)
