"""Figures of the twin report, drawn with matplotlib's object-oriented API on the Agg canvas.

Every function takes plain, already validated inputs (see twin.report) and returns a
`matplotlib.figure.Figure`; `png_base64` turns one into a base64 PNG for an `<img>` tag.
Figures are created as `Figure()` objects (never through pyplot), so they render headless
on the Agg canvas, leave no global pyplot state behind and do not change the backend of a
user's interactive session.

Geometry
--------
Arrays are in numpy order (z, y, x) of `SimpleITK.GetArrayFromImage`; `spacing_mm` is
(x, y, z) as SimpleITK gives it.  A displayed slice with row spacing s_r and column
spacing s_c is drawn with `imshow(aspect = s_r / s_c)`, so one millimetre has the same
length on both screen axes:

    axial    dose[z0, :, :]  rows y, columns x   aspect = s_y / s_x   (row 0 at the top)
    coronal  dose[:, y0, :]  rows z, columns x   aspect = s_z / s_x   (z upwards)
    sagittal dose[:, :, x0]  rows z, columns y   aspect = s_z / s_y   (z upwards)

with (z0, y0, x0) the hottest voxel (first maximum in C order).  The image axes are shown
as stored (identity direction assumed; for an LPS scan the axial view is then the
radiological one, patient left on the right).
"""

from __future__ import annotations

import base64
import io
import math
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dose.metrics import cumulative_dvh

DPI = 90
"""Resolution of the embedded PNGs (dots per inch); keeps a report of a dozen regions < 3 MB."""

# Conventional soft-tissue CT display window, width 400 HU at level 40 HU (the standard
# abdominal window of radiology practice, e.g. Radiopaedia "Windowing (CT)").
CT_WINDOW_HU = (40.0 - 200.0, 40.0 + 200.0)

DOSE_MASK_FRACTION = 0.01
"""Dose below this fraction of the maximum is not colour-washed (CT shows through)."""

_MODALITY_MARKERS = {"PT": "o", "NM": "s"}
_MODALITY_NAMES = {"PT": "PET", "NM": "SPECT"}


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_base64(fig: Figure) -> str:
    """The figure as a base64 PNG (ASCII text, no software metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colours(names) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(names))}


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def tac_figure(observed: pd.DataFrame, predicted: pd.DataFrame) -> Figure:
    """One panel per region (predicted regions in first-seen order, then observed-only ones): observed
    activities (MBq) as markers, one marker per modality (PT circle, NM square) and one
    colour per nuclide; posterior predictive median line and q05-q95 band per nuclide;
    log activity axis, time on the schedule clock (h)."""
    regions = list(dict.fromkeys([*predicted["region"], *observed["region"]]))
    colours = _colours(set(observed["nuclide"]) | set(predicted["nuclide"]))
    rows, cols = _grid(len(regions))
    fig = _new_figure(4.0 * cols, 3.0 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(regions):]:
        ax.set_visible(False)
    for ax, region in zip(axes.flat, regions):
        positive = []
        pred = predicted[predicted["region"] == region]
        for nuclide, part in pred.groupby("nuclide", sort=True):
            part = part.sort_values("time_h")
            t = part["time_h"].to_numpy(float)
            q05, q50, q95 = (part[f"activity_mbq_{q}"].to_numpy(float) for q in ("q05", "q50", "q95"))
            ax.fill_between(t, q05, q95, color=colours[nuclide], alpha=0.25, linewidth=0,
                            label=f"{nuclide} 90 % band")
            ax.plot(t, q50, color=colours[nuclide], linewidth=1.5, label=f"{nuclide} median")
            positive.extend(v for v in np.concatenate([q05, q50, q95]) if v > 0)
        obs = observed[observed["region"] == region]
        for (modality, nuclide), part in obs.groupby(["modality", "nuclide"], sort=True):
            ax.plot(part["time_h"].to_numpy(float), part["activity_mbq"].to_numpy(float),
                    linestyle="none", marker=_MODALITY_MARKERS[modality], markersize=5,
                    markerfacecolor="white", markeredgecolor=colours[nuclide],
                    label=f"{_MODALITY_NAMES[modality]} {nuclide}")
            positive.extend(v for v in part["activity_mbq"].to_numpy(float) if v > 0)
        ax.set_yscale("log", nonpositive="clip")
        if positive:
            hi = max(positive) * 2.0
            lo = max(min(positive) * 0.5, hi * 1e-6)  # at most six decades
            ax.set_ylim(lo, hi)
        ax.set_title(region, fontsize=10)
        ax.set_xlabel("time (h)")
        ax.set_ylabel("activity (MBq)")
        ax.grid(True, which="major", alpha=0.3)
    legend = {}  # one legend for all panels: label -> first handle with that label
    for ax in axes.flat[:len(regions)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(4, len(legend)),
                   fontsize=8)
    return fig


def hottest_voxel(dose_gy: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) index of the maximum dose (first one in C order)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(dose_gy)), dose_gy.shape))


def slice_views(dose_gy: np.ndarray, spacing_mm) -> list[tuple[str, tuple, float]]:
    """The three views through the hottest voxel: (name, numpy index, imshow aspect)."""
    sx, sy, sz = (float(s) for s in spacing_mm)
    z0, y0, x0 = hottest_voxel(dose_gy)
    return [
        ("axial", (z0, slice(None), slice(None)), sy / sx),
        ("coronal", (slice(None), y0, slice(None)), sz / sx),
        ("sagittal", (slice(None), slice(None), x0), sz / sy),
    ]


def dose_slices_figure(dose_gy: np.ndarray, ct_hu: np.ndarray, labels: np.ndarray, spacing_mm) -> Figure:
    """Axial, coronal and sagittal slices through the hottest voxel: CT in grey (soft-tissue
    window CT_WINDOW_HU), dose colour-wash (Gy) masked below DOSE_MASK_FRACTION of the
    maximum, region outlines; one shared colour bar in Gy; aspects from the spacing."""
    d_max = float(np.max(dose_gy))
    vmax = d_max if d_max > 0 else 1.0
    fig = _new_figure(12.0, 4.2)
    axes = fig.subplots(1, 3)
    image = None
    for ax, (name, index, aspect) in zip(axes, slice_views(dose_gy, spacing_mm)):
        origin = "upper" if name == "axial" else "lower"
        ax.imshow(ct_hu[index], cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1],
                  aspect=aspect, origin=origin, interpolation="nearest")
        wash = np.ma.masked_less(dose_gy[index], DOSE_MASK_FRACTION * d_max) if d_max > 0 \
            else np.ma.masked_all(dose_gy[index].shape)
        image = ax.imshow(wash, cmap="turbo", vmin=0.0, vmax=vmax, alpha=0.6, aspect=aspect,
                          origin=origin, interpolation="nearest")
        lab = labels[index]
        for value in np.unique(lab):
            if value != 0:
                ax.contour((lab == value).astype(float), levels=[0.5], colors="white", linewidths=0.7,
                           origin=origin)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes), label="absorbed dose (Gy)", shrink=0.9)
    return fig


def dvh_figure(dose_gy: np.ndarray, labels: np.ndarray, region_names: Mapping[int, str]) -> Figure:
    """Cumulative DVH (dose.metrics.cumulative_dvh, 200 levels from 0 to the region maximum)
    of every non-zero label present in `labels`, volume in percent."""
    present = [int(v) for v in np.unique(labels) if v != 0]
    colours = _colours([region_names[v] for v in present])
    fig = _new_figure(6.5, 4.0)
    ax = fig.subplots()
    for value in present:
        dvh = cumulative_dvh(dose_gy, labels == value)
        name = region_names[value]
        ax.plot(dvh["dose_gy"].to_numpy(), 100.0 * dvh["volume_fraction"].to_numpy(),
                color=colours[name], label=name)
    ax.set_xlabel("absorbed dose D (Gy)")
    ax.set_ylabel("volume receiving ≥ D (%)")
    ax.set_ylim(0.0, 102.0)
    ax.set_xlim(left=0.0)
    ax.grid(True, alpha=0.3)
    if present:
        ax.legend(fontsize=8)
    return fig


def schedules_figure(schedules: pd.DataFrame) -> Figure:
    """One panel per region (first-seen order): BED median per schedule with error bars
    from q05 to q95 (Gy); schedules in first-seen order."""
    schedules = schedules[schedules["bed_gy_q50"].notna()]  # regions without LQ parameters have no BED
    regions = list(dict.fromkeys(schedules["region"]))
    names = list(dict.fromkeys(schedules["schedule"]))  # first-seen order, as the user lists them
    rows, cols = _grid(len(regions))
    fig = _new_figure(4.0 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(regions):]:
        ax.set_visible(False)
    for ax, region in zip(axes.flat, regions):
        part = schedules[schedules["region"] == region].set_index("schedule").reindex(
            [n for n in names if n in set(schedules.loc[schedules["region"] == region, "schedule"])])
        q05, q50, q95 = (part[f"bed_gy_{q}"].to_numpy(float) for q in ("q05", "q50", "q95"))
        x = np.arange(len(part))
        ax.errorbar(x, q50, yerr=np.vstack([q50 - q05, q95 - q50]), fmt="o", capsize=4, color="tab:blue")
        ax.set_xticks(x, [str(n) for n in part.index], rotation=30, ha="right", fontsize=8)
        ax.set_title(region, fontsize=10)
        ax.set_ylabel("BED (Gy), median and 90 %")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_xlim(-0.5, len(part) - 0.5)
    return fig
