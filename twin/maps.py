"""From region TIA to voxel TIA maps and region absorbed doses (the twin's dose operator).

Placement of model regions on the label map
-------------------------------------------
* a model region whose name is a label name (kidneys, liver, lesion_1, ...) is a
  **source** of its own: its TIA is spread over that label's voxels;
* ``whole_body`` (an aggregate) and ``urine`` (the cumulative excreted activity; no
  voiding model) are not placed: bladder contents are not dosed;
* every other model region (blood, gi, red marrow, muscle, rest, ...) has no mask; its TIA
  goes to the **remainder**: all body voxels (label > 0) not covered by a placed region.

Within a source s with TIA T_s the voxel TIA is T_s w(v) / sum_{u in s} w(u), where w is
the intra-region activity shape of the most recent emission image (resampled onto the
label grid, negatives clipped to 0); uniform when no image is given or the image holds
no counts in that region.  The map conserves every placed TIA exactly.

Dose operator
-------------
The dose engine is linear in the TIA map, so the mean absorbed dose of a region is a
matrix product D = S @ T (Gy, T in MBq*h):

* masked region t: S[t, s] = mean over t's voxels of the dose map of 1 MBq*h spread with
  source s's shape (one convolution per source, any `dose.absorbed_dose` method);
* unmasked model region t (red marrow, blood, ...): self-dose by local absorption of the
  non-penetrating energy, S[t, t] = Delta_np / m_t (m_t from the model's region volume
  at 1.0 g/mL); cross-dose from other regions is neglected for these regions.

The dose-rate curve of region t under a time course A(t) is R_t = S @ A(t), which the
twin uses for the Lea-Catcheside factor of the BED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

import dose
import imaging

from .errors import TwinError

NOT_PLACED = ("whole_body", "urine")
REMAINDER = "remainder"
_MEV_TO_J = 1.602176634e-13
_UNIT_DENSITY_KG_PER_ML = 1.0e-3  # 1.0 g/mL for unmasked regions (soft tissue, ICRU 44 ~1.03; documented choice)


@dataclass(frozen=True)
class Placement:
    """Where each model region's TIA goes.

    sources: names of the dose sources (placed label names, then "remainder");
    masks: (n_sources, z, y, x) bool voxel masks (disjoint);
    weights: (n_sources, z, y, x) float64 shapes, each summing to 1 over its mask;
    matrix: (n_sources, n_model_regions) 0/1, model region -> source;
    model_regions: the model's region names; unmasked: those without a mask of their own.
    """

    sources: tuple[str, ...]
    masks: np.ndarray
    weights: np.ndarray
    matrix: np.ndarray
    model_regions: tuple[str, ...]
    unmasked: tuple[str, ...]


def place_regions(model_regions: Sequence[str], labels: sitk.Image, region_names: Mapping[int, str],
                  activity_image: sitk.Image | imaging.Scan | None = None) -> Placement:
    """Resolve model regions onto the label map and build each source's shape (see module doc)."""
    label_array = sitk.GetArrayFromImage(labels)
    by_name = {name: code for code, name in region_names.items()}
    placed = [r for r in model_regions if r in by_name and r not in NOT_PLACED]
    if not placed:
        raise TwinError(f"no model region {list(model_regions)} has a mask in the label map {sorted(by_name)}")
    masks = [label_array == by_name[r] for r in placed]
    remainder = (label_array > 0) & ~np.any(masks, axis=0)
    sources = tuple(placed) + ((REMAINDER,) if remainder.any() else ())
    if remainder.any():
        masks.append(remainder)
    masks = np.stack(masks)
    empty = [s for s, m in zip(sources, masks) if not m.any()]
    if empty:
        raise TwinError(f"label map: region(s) {empty} have no voxels")

    shape = np.ones(label_array.shape)
    if activity_image is not None:
        resampled = imaging.resample_to(activity_image, labels, kind="activity")
        img = resampled.image if isinstance(resampled, imaging.Scan) else resampled
        shape = np.clip(sitk.GetArrayFromImage(img).astype(np.float64), 0.0, None)
        if not np.all(np.isfinite(shape)):
            raise TwinError("activity image: non-finite voxel values; expected a finite activity map")
    weights = np.zeros(masks.shape)
    for k, m in enumerate(masks):
        w = np.where(m, shape, 0.0)
        total = w.sum()
        weights[k] = w / total if total > 0 else m / m.sum()

    matrix = np.zeros((len(sources), len(model_regions)))
    unmasked = []
    for j, r in enumerate(model_regions):
        if r in NOT_PLACED:
            continue
        if r in placed:
            matrix[sources.index(r), j] = 1.0
        else:
            unmasked.append(r)
            if REMAINDER in sources:
                matrix[sources.index(REMAINDER), j] = 1.0
    return Placement(sources, masks, weights, matrix, tuple(model_regions), tuple(unmasked))


def tia_map(placement: Placement, region_tia_mbq_h) -> np.ndarray:
    """Voxel TIA map (MBq*h per voxel, (z, y, x)) from the model regions' TIA (MBq*h)."""
    tia = np.asarray(region_tia_mbq_h, dtype=np.float64)
    if tia.shape != (len(placement.model_regions),) or not np.all(np.isfinite(tia)) or np.any(tia < 0):
        raise TwinError(f"region TIA: expected {len(placement.model_regions)} finite values >= 0 "
                        f"(one per model region), got shape {tia.shape}")
    source_tia = placement.matrix @ tia
    return np.tensordot(source_tia, placement.weights, axes=1)


@dataclass(frozen=True)
class DoseOperator:
    """Region mean dose per unit region TIA: dose_gy = matrix @ tia_mbq_h.

    regions: the dose regions (placed model regions, then unmasked ones);
    matrix: (n_regions, n_model_regions) Gy per MBq*h; nuclide, method: how it was made.
    """

    regions: tuple[str, ...]
    matrix: np.ndarray
    nuclide: str
    method: str


def dose_operator(placement: Placement, nuclide: str, voxel_mm_zyx, region_volumes_ml: Mapping[str, float], *,
                  method: str = "kernel", ct_hu=None) -> DoseOperator:
    """One `dose.absorbed_dose` run per source (unit TIA with that source's shape) -> the
    region dose matrix (see module doc).  `voxel_mm_zyx`: voxel size per array axis."""
    placed = [s for s in placement.sources if s != REMAINDER]
    n_src = len(placement.sources)
    s_src = np.zeros((len(placed), n_src))  # Gy per MBq*h in source
    for k in range(n_src):
        unit = dose.absorbed_dose(placement.weights[k], voxel_mm_zyx, nuclide, method=method, ct_hu=ct_hu,
                                  tia_units="MBq*h")
        unit = np.asarray(unit, dtype=np.float64)
        for t in range(len(placed)):
            s_src[t, k] = unit[placement.masks[t]].mean()
    rows = [s_src @ placement.matrix]
    regions = list(placed)
    delta_j = dose.nuclide(nuclide).non_penetrating_mev * _MEV_TO_J * 1e6 * 3600.0  # J per MBq*h
    model_regions = placement.model_regions
    for r in placement.unmasked:
        volume = float(region_volumes_ml.get(r, np.nan))
        if not (np.isfinite(volume) and volume > 0):
            raise TwinError(f"region {r!r}: no positive model volume (mL) for its self-dose")
        row = np.zeros(len(model_regions))
        row[model_regions.index(r)] = delta_j / (volume * _UNIT_DENSITY_KG_PER_ML)
        rows.append(row[None, :])
        regions.append(r)
    return DoseOperator(tuple(regions), np.concatenate(rows, axis=0), nuclide, method)


def self_dose_operator(model_regions: Sequence[str], nuclide: str, region_volumes_ml: Mapping[str, float],
                       regions: Sequence[str] | None = None) -> DoseOperator:
    """Self-dose only (local absorption of the non-penetrating energy, no anatomy):
    S[t, t] = Delta_np / m_t for each dose region t in `regions` (default: every model
    region that is placed, i.e. all but `NOT_PLACED`), m_t from `region_volumes_ml` at
    1.0 g/mL.  Photon self-absorption and cross-dose are neglected (177Lu photons carry
    0.035 of the 0.183 MeV emitted per decay, ICRP-107 via `dose.nuclides`, and mostly
    escape organ-sized volumes)."""
    model_regions = tuple(model_regions)
    regions = tuple(r for r in model_regions if r not in NOT_PLACED) if regions is None else tuple(regions)
    unknown = [r for r in regions if r not in model_regions]
    if unknown:
        raise TwinError(f"dose regions {unknown} are not regions of the model {list(model_regions)}")
    placement = Placement((), np.zeros((0,)), np.zeros((0,)), np.zeros((0, len(model_regions))), model_regions,
                          regions)
    return dose_operator(placement, nuclide, (1.0, 1.0, 1.0), region_volumes_ml)
