"""Resampling a scan onto another grid: activity conserving, nearest-neighbour labels, linear CT.

Activity (`kind="activity"`): the concentration C (Bq/mL or SUV; counts are first
turned into counts/mL) is integrated over each target voxel by averaging a linear
interpolation at k_x*k_y*k_z sub-voxel points (k_i = ceil(target spacing / source
spacing), so every source voxel is sampled when downsampling; `sitk.Resample` then
`sitk.BinShrink`).  When the target grid covers the whole source image, the result is
then scaled so that the total activity sum(C * v) equals the source's exactly (the
sub-sampling leaves errors of order (s/k)^2 C''); otherwise activity outside the
target field of view is lost and no scaling is done.
Labels: nearest neighbour (pixel type kept, background 0).  CT: linear (outside -1000 HU).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import SimpleITK as sitk

from .errors import ImagingError
from .scan import Scan

#: Upper bound on the number of sub-voxel sample points of one activity resampling.
MAX_SUPERSAMPLED_VOXELS = 64_000_000


def _image(x) -> sitk.Image:
    return x.image if isinstance(x, Scan) else x


def _kind(x, kind):
    if kind is not None:
        if kind not in ("activity", "label", "ct"):
            raise ImagingError(f"resample kind {kind!r}; expected 'activity', 'label' or 'ct'")
        return kind
    if isinstance(x, Scan):
        return {"LABEL": "label", "HU": "ct"}.get(x.units, "activity")
    raise ImagingError("resample_to: a plain SimpleITK image needs kind='activity', 'label' or 'ct'")


def _corners(image: sitk.Image) -> list[np.ndarray]:
    size = image.GetSize()
    return [np.array(image.TransformContinuousIndexToPhysicalPoint([(-0.5 if c == 0 else n - 0.5)
                                                                    for c, n in zip(combo, size)]))
            for combo in itertools.product((0, 1), repeat=3)]


def _inside(point, image: sitk.Image, tol_vox: float = 1e-3) -> bool:
    idx = np.array(image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point)))
    return bool(np.all(idx >= -0.5 - tol_vox) and np.all(idx <= np.array(image.GetSize()) - 0.5 + tol_vox))


def _covers(reference: sitk.Image, source: sitk.Image, transform: sitk.Transform | None) -> bool:
    """Whether the reference grid contains the whole source image (after `transform`,
    which maps reference points to source points)."""
    inverse = transform.GetInverse() if transform is not None else None
    for p in _corners(source):
        q = inverse.TransformPoint(tuple(p)) if inverse is not None else p
        if not _inside(q, reference):
            return False
    return True


def _resample_concentration(src: sitk.Image, ref: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    s_src = np.array(src.GetSpacing())
    s_ref = np.array(ref.GetSpacing())
    k = np.maximum(1, np.ceil(s_ref / s_src - 1e-6)).astype(int)
    n_ref = int(np.prod(ref.GetSize()))
    while n_ref * int(np.prod(k)) > MAX_SUPERSAMPLED_VOXELS and k.max() > 1:
        k[int(np.argmax(k))] -= 1
    if np.all(k == 1):
        return sitk.Resample(src, ref, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    direction = np.array(ref.GetDirection()).reshape(3, 3)
    fine_spacing = s_ref / k
    fine_origin = np.array(ref.GetOrigin()) + direction @ ((-0.5 + 0.5 / k) * s_ref)
    fine = sitk.Resample(src, [int(n) * int(f) for n, f in zip(ref.GetSize(), k)], transform, sitk.sitkLinear,
                         tuple(fine_origin), tuple(fine_spacing), ref.GetDirection(), 0.0, sitk.sitkFloat32)
    out = sitk.BinShrink(fine, [int(v) for v in k])
    out.CopyInformation(ref)
    return out


def _total(image: sitk.Image) -> float:
    sx, sy, sz = image.GetSpacing()
    return float(np.sum(sitk.GetArrayViewFromImage(image), dtype=np.float64)) * sx * sy * sz


def resample_to(scan, reference, kind: str | None = None, transform: sitk.Transform | None = None,
                default_value: float | None = None):
    """Resample `scan` (a `Scan` or SimpleITK image) onto the grid of `reference` (a Scan
    or image).  `transform` maps reference-space points to `scan`-space points (as
    SimpleITK registration returns it); identity by default.  Returns the same type as
    `scan` (a Scan keeps its metadata).  See the module doc for each kind."""
    kind = _kind(scan, kind)
    src, ref = _image(scan), _image(reference)
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    if kind == "label":
        out = sitk.Resample(src, ref, tx, sitk.sitkNearestNeighbor, default_value or 0, src.GetPixelID())
    elif kind == "ct":
        out = sitk.Resample(src, ref, tx, sitk.sitkLinear, -1000.0 if default_value is None else default_value,
                            sitk.sitkFloat32)
    else:
        counts = isinstance(scan, Scan) and scan.units == "CNTS"
        v_src = math.prod(src.GetSpacing()) / 1000.0
        v_ref = math.prod(ref.GetSpacing()) / 1000.0
        conc = sitk.Cast(src, sitk.sitkFloat32)
        if counts:
            conc = conc / v_src
        out = _resample_concentration(conc, ref, tx)
        if _covers(ref, src, transform):
            before, after = _total(conc), _total(out)
            if after != 0.0:
                out = out * (before / after)
            elif before != 0.0:
                raise ImagingError("resample_to: all activity fell outside the reference grid")
        if counts:
            out = out * v_ref
    if isinstance(scan, Scan):
        return scan.with_image(out)
    return out
