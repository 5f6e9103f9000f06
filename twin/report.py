"""Self-contained HTML report of a patient twin.

`write_report(path, content)` writes one HTML file with every figure embedded as a
base64 PNG (twin.plots) and no external URL, script or font, so it opens offline and can be
archived or mailed as is.  Sections:

1. header: patient, generation time (UTC), predicted median doses with 90 % intervals;
2. TAC fits: observed points by modality, predicted median and 90 % band per nuclide;
3. table of predicted TIA (MBq h), absorbed dose (Gy) and BED (Gy): mean, median, q05-q95;
4. dose-map slices over CT through the hottest voxel;
5. cumulative DVHs per region (dose.metrics.cumulative_dvh);
6. schedule comparison (BED median and 90 % interval per schedule), when given;
7. calibration diagnostics (summary table, convergence problems highlighted);
8. optimiser constraints (when given) and provenance.

Numbers are printed with 3 significant digits (`format_number`).  All text from the
inputs is HTML-escaped.  The input is validated first (TwinError naming the field); the
file is written atomically (temporary file in the same folder, then os.replace).
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from imaging.atomic import atomic_file

from . import plots
from .errors import TwinError

QUANTILES = ("mean", "q05", "q50", "q95")
OBSERVED_COLUMNS = ("region", "modality", "nuclide", "time_h", "activity_mbq")
PREDICTED_COLUMNS = ("region", "nuclide", "time_h", "activity_mbq_q05", "activity_mbq_q50", "activity_mbq_q95")
PREDICTION_COLUMNS = ("region",) + tuple(f"{m}_{q}" for m in ("tia_mbq_h", "dose_gy", "bed_gy") for q in QUANTILES)
SCHEDULE_COLUMNS = ("schedule", "region") + tuple(f"{m}_{q}" for m in ("dose_gy", "bed_gy") for q in ("q05", "q50", "q95"))
MODALITIES = ("PT", "NM")


@dataclass(frozen=True)
class ReportContent:
    """Everything the report shows, as plain data (validated on construction).

    observed:    measured TAC points; columns region, modality ("PT"/"NM"), nuclide,
                 time_h (schedule clock, h), activity_mbq (finite, >= 0).
    predicted:   posterior predictive TAC; columns region, nuclide, time_h,
                 activity_mbq_q05 <= activity_mbq_q50 <= activity_mbq_q95.
    predictions: per region (therapy schedule): region and tia_mbq_h_<q>, dose_gy_<q>,
                 bed_gy_<q> for q in mean, q05, q50, q95.
    dose_gy, ct_hu, labels: (z, y, x) arrays on one grid (dose finite >= 0, Gy; CT in HU;
                 integer labels, every non-zero label named in region_names).
    spacing_mm:  (x, y, z) voxel size, mm, as SimpleITK gives it.
    schedules:   what-if comparison, columns schedule, region, dose_gy_q05/q50/q95,
                 bed_gy_q05/q50/q95; or None.
    diagnostics: posterior summary (any columns, index = parameter).
    problems:    convergence warnings (empty if none).
    provenance:  model, priors, decay data, kernel, versions ... (str -> str).
    constraints: optimiser result rows (free form), or None.
    """

    patient_id: str
    observed: pd.DataFrame
    predicted: pd.DataFrame
    predictions: pd.DataFrame
    dose_gy: np.ndarray
    ct_hu: np.ndarray
    labels: np.ndarray
    region_names: Mapping[int, str]
    spacing_mm: tuple[float, float, float]
    schedules: pd.DataFrame | None
    diagnostics: pd.DataFrame
    problems: Sequence[str]
    provenance: Mapping[str, str]
    constraints: pd.DataFrame | None = None

    def __post_init__(self):
        validate(self)


# ----------------------------------------------------------------------------- validation

def _frame(name: str, df, columns: Sequence[str], allow_empty: bool = False) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TwinError(f"{name}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TwinError(f"{name}: missing column(s) {missing}; expected columns {list(columns)}")
    if not allow_empty and len(df) == 0:
        raise TwinError(f"{name}: expected at least one row")


def _finite(name: str, df: pd.DataFrame, columns: Sequence[str], non_negative: bool = False) -> None:
    """Finite numbers, except that the BED columns of a row may all be NaN together: the
    twin's mark of a region without LQ parameters (rendered as "–")."""
    bed = [c for c in columns if c.startswith("bed_gy")]
    no_lq = df[bed].isna().all(axis=1).to_numpy() if bed else np.zeros(len(df), dtype=bool)
    for c in columns:
        try:
            values = df[c].to_numpy(dtype=float)
        except (TypeError, ValueError):
            raise TwinError(f"{name}.{c}: expected numbers") from None
        if c in bed:
            values = values[~no_lq]
        if not np.all(np.isfinite(values)):
            raise TwinError(f"{name}.{c}: contains NaN or inf")
        if non_negative and np.any(values < 0):
            raise TwinError(f"{name}.{c}: expected values >= 0, got minimum {values.min()!r}")


def _ordered(name: str, df: pd.DataFrame, lo: str, mid: str, hi: str) -> None:
    a, b, c = (df[k].to_numpy(float) for k in (lo, mid, hi))
    bad = ~((a <= b * (1 + 1e-9) + 1e-12) & (b <= c * (1 + 1e-9) + 1e-12)) & ~np.isnan(b)
    if np.any(bad):
        row = df.index[int(np.argmax(bad))]
        raise TwinError(f"{name}: row {row!r}: expected {lo} <= {mid} <= {hi}")


def _strings(name: str, df: pd.DataFrame, columns: Sequence[str]) -> None:
    for c in columns:
        if not all(isinstance(v, str) and v for v in df[c]):
            raise TwinError(f"{name}.{c}: expected non-empty strings")


def _unique(name: str, df: pd.DataFrame, key: Sequence[str]) -> None:
    dup = df.duplicated(list(key))
    if dup.any():
        first = tuple(v.item() if isinstance(v, np.generic) else v for v in df.loc[dup, list(key)].iloc[0])
        raise TwinError(f"{name}: duplicate rows for ({', '.join(key)}) = {first}; expected one row per key")


def validate(content: ReportContent) -> None:
    """Check every field of `content`; raise TwinError naming the first bad field."""
    c = content
    if not isinstance(c.patient_id, str) or not c.patient_id.strip():
        raise TwinError("patient_id: expected a non-empty string")

    _frame("observed", c.observed, OBSERVED_COLUMNS, allow_empty=True)
    _strings("observed", c.observed, ("region", "nuclide"))
    bad = sorted(set(c.observed["modality"]) - set(MODALITIES), key=str)
    if bad:
        raise TwinError(f"observed.modality: unknown modality {bad}; expected one of {list(MODALITIES)}")
    _finite("observed", c.observed, ("time_h",))
    _finite("observed", c.observed, ("activity_mbq",), non_negative=True)

    _frame("predicted", c.predicted, PREDICTED_COLUMNS)
    _strings("predicted", c.predicted, ("region", "nuclide"))
    _finite("predicted", c.predicted, ("time_h",))
    _finite("predicted", c.predicted, PREDICTED_COLUMNS[3:], non_negative=True)
    _ordered("predicted", c.predicted, *PREDICTED_COLUMNS[3:])
    _unique("predicted", c.predicted, ("region", "nuclide", "time_h"))

    _frame("predictions", c.predictions, PREDICTION_COLUMNS)
    _strings("predictions", c.predictions, ("region",))
    _unique("predictions", c.predictions, ("region",))
    _finite("predictions", c.predictions, PREDICTION_COLUMNS[1:], non_negative=True)
    for m in ("tia_mbq_h", "dose_gy", "bed_gy"):
        _ordered("predictions", c.predictions, f"{m}_q05", f"{m}_q50", f"{m}_q95")

    arrays = {"dose_gy": c.dose_gy, "ct_hu": c.ct_hu, "labels": c.labels}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.ndim != 3 or 0 in a.shape:
            raise TwinError(f"{name}: expected a non-empty 3-D numpy array (z, y, x), got "
                            f"{getattr(a, 'shape', type(a).__name__)}")
    for name in ("ct_hu", "labels"):
        if arrays[name].shape != c.dose_gy.shape:
            raise TwinError(f"{name}: shape {arrays[name].shape} differs from dose_gy shape {c.dose_gy.shape}; "
                            "expected arrays on one grid")
    if not np.issubdtype(c.dose_gy.dtype, np.number) or not np.all(np.isfinite(c.dose_gy)):
        raise TwinError("dose_gy: contains NaN or inf; expected finite doses in Gy")
    if np.any(c.dose_gy < 0):
        raise TwinError(f"dose_gy: expected doses >= 0 Gy, got minimum {float(c.dose_gy.min())!r}")
    if not np.issubdtype(c.ct_hu.dtype, np.number) or not np.all(np.isfinite(c.ct_hu)):
        raise TwinError("ct_hu: contains NaN or inf; expected finite HU")
    if not np.issubdtype(c.labels.dtype, np.integer):
        raise TwinError(f"labels: expected an integer label array, got dtype {c.labels.dtype}")

    if not isinstance(c.region_names, Mapping):
        raise TwinError("region_names: expected a mapping label (int) -> name (str)")
    for k, v in c.region_names.items():
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not isinstance(v, str) or not v:
            raise TwinError(f"region_names: entry {k!r}: {v!r}; expected int label -> non-empty str")
    unnamed = sorted(int(v) for v in np.unique(c.labels) if v != 0 and int(v) not in c.region_names)
    if unnamed:
        raise TwinError(f"region_names: label value(s) {unnamed} of labels have no name")

    try:
        spacing = tuple(float(s) for s in c.spacing_mm)
    except (TypeError, ValueError):
        raise TwinError(f"spacing_mm: expected three numbers (x, y, z) in mm, got {c.spacing_mm!r}") from None
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise TwinError(f"spacing_mm: expected three positive finite numbers (x, y, z) in mm, got {c.spacing_mm!r}")

    if c.schedules is not None:
        _frame("schedules", c.schedules, SCHEDULE_COLUMNS)
        _strings("schedules", c.schedules, ("schedule", "region"))
        _finite("schedules", c.schedules, SCHEDULE_COLUMNS[2:], non_negative=True)
        for m in ("dose_gy", "bed_gy"):
            _ordered("schedules", c.schedules, f"{m}_q05", f"{m}_q50", f"{m}_q95")
        _unique("schedules", c.schedules, ("schedule", "region"))

    if not isinstance(c.diagnostics, pd.DataFrame):
        raise TwinError(f"diagnostics: expected a pandas DataFrame, got {type(c.diagnostics).__name__}")
    if isinstance(c.problems, (str, bytes)) or not all(isinstance(p, str) for p in c.problems):
        raise TwinError("problems: expected a sequence of strings (not a single string)")
    if not isinstance(c.provenance, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in c.provenance.items()):
        raise TwinError("provenance: expected a mapping str -> str")
    if c.constraints is not None and not isinstance(c.constraints, pd.DataFrame):
        raise TwinError(f"constraints: expected a pandas DataFrame or None, got {type(c.constraints).__name__}")


# ----------------------------------------------------------------------------- HTML pieces

def format_number(x) -> str:
    """3 significant digits without an exponent for 1e-3 <= |x| < 1e6 (52341 -> "52341",
    4.2371 -> "4.24", 0.012345 -> "0.0123"), otherwise "1.23e-05"; non-numbers as text."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return "–"  # not defined (e.g. BED of a region without LQ parameters)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if not 1e-3 <= abs(x) < 1e6:
        return f"{x:.2e}"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def interval(lo, hi) -> str:
    """"lo – hi" (en dash), each with format_number; "–" when both are NaN."""
    if isinstance(lo, (float, np.floating)) and isinstance(hi, (float, np.floating)) and math.isnan(lo) and math.isnan(hi):
        return "–"
    return f"{format_number(lo)} – {format_number(hi)}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _cell(value) -> str:
    """A table cell; text (not numbers or intervals of numbers) is left-aligned."""
    text = format_number(value)
    if isinstance(value, (bool, np.bool_)):
        numeric = False
    elif isinstance(value, (int, float, np.integer, np.floating)):
        numeric = True
    else:  # intervals "lo – hi" built by `interval`
        numeric = isinstance(value, str) and bool(text) and all(ch in "0123456789.-–e+ " for ch in text)
    return f"<td>{_e(text)}</td>" if numeric else f'<td class="t">{_e(text)}</td>'


def _table(header: Sequence[str], rows: Sequence[Sequence], css_class: str = "") -> str:
    cls = f' class="{_e(css_class)}"' if css_class else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame_table(df: pd.DataFrame, index_name: str | None = None) -> str:
    """A DataFrame as an escaped HTML table, index as the first column unless it is the
    default 0..n-1 RangeIndex of a free-form table."""
    rows = [list(row) for row in df.itertuples(index=False, name=None)]
    header = [str(c) for c in df.columns]
    if not (isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
            and df.index.name is None):
        header = [index_name or (df.index.name or "")] + header
        rows = [[idx, *row] for idx, row in zip(df.index, rows)]
    return _table(header, rows)


def _figure(png_b64: str, alt: str, caption: str) -> str:
    return (f'<figure><img src="data:image/png;base64,{png_b64}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


_CSS = """
body{font-family:sans-serif;margin:2em auto;max-width:1200px;color:#222;line-height:1.4}
h1{margin-bottom:0.2em} h2{border-bottom:1px solid #ccc;padding-bottom:0.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}
th{background:#eee} th:first-child,td.t{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:0.9em;color:#444}
.problems{background:#fde2e1;border:2px solid #c0392b;padding:0.5em 1em;color:#7b1d14}
.ok{background:#e3f4e1;border:1px solid #3c8d3c;padding:0.5em 1em}
.summary li{margin:0.1em 0}
"""


def _header(c: ReportContent, generated: str) -> str:
    pred = c.predictions.sort_values("dose_gy_q50", ascending=False)
    items = "".join(
        f"<li>{_e(r.region)}: absorbed dose {_e(format_number(r.dose_gy_q50))} Gy "
        f"(90 % interval {_e(interval(r.dose_gy_q05, r.dose_gy_q95))} Gy), "
        f"BED {_e(format_number(r.bed_gy_q50))} Gy</li>"
        for r in pred.itertuples(index=False))
    flag = (f'<p class="problems">{len(c.problems)} calibration problem(s) reported: see '
            f'<a href="#diagnostics">diagnostics</a>.</p>') if c.problems else ""
    return (f"<header><h1>Patient twin report: {_e(c.patient_id)}</h1>"
            f"<p>Generated {_e(generated)}.</p>"
            f"<p>Predicted median absorbed dose per region (therapy schedule), highest first:</p>"
            f'<ul class="summary">{items}</ul>{flag}</header>')


def _predictions_table(df: pd.DataFrame) -> str:
    header = ["region"]
    for label in ("TIA (MBq h)", "dose (Gy)", "BED (Gy)"):
        header += [f"{label} median", f"{label} 90 % interval", f"{label} mean"]
    rows = []
    for r in df.itertuples(index=False):
        row = [r.region]
        for m in ("tia_mbq_h", "dose_gy", "bed_gy"):
            row += [getattr(r, f"{m}_q50"), interval(getattr(r, f"{m}_q05"), getattr(r, f"{m}_q95")),
                    getattr(r, f"{m}_mean")]
        rows.append(row)
    return _table(header, rows, "predictions")


def _schedules_table(df: pd.DataFrame) -> str:
    header = ["schedule", "region", "dose median (Gy)", "dose 90 % interval (Gy)",
              "BED median (Gy)", "BED 90 % interval (Gy)"]
    rows = [[r.schedule, r.region, r.dose_gy_q50, interval(r.dose_gy_q05, r.dose_gy_q95),
             r.bed_gy_q50, interval(r.bed_gy_q05, r.bed_gy_q95)] for r in df.itertuples(index=False)]
    return _table(header, rows, "schedules")


def _diagnostics(c: ReportContent) -> str:
    if c.problems:
        problems = ('<div class="problems"><strong>Convergence problems:</strong><ul>'
                    + "".join(f"<li>{_e(p)}</li>" for p in c.problems) + "</ul></div>")
    else:
        problems = '<p class="ok">No convergence problems reported.</p>'
    table = _frame_table(c.diagnostics, "parameter") if len(c.diagnostics.columns) or len(c.diagnostics) \
        else "<p>No posterior summary given.</p>"
    return problems + table


def figure_count(content: ReportContent) -> int:
    """Number of figures the report embeds: TAC, dose slices, DVH, and schedules if given."""
    return 3 + (content.schedules is not None)


def render_html(content: ReportContent, generated_utc: _dt.datetime | None = None) -> str:
    """The report as one HTML string (no file I/O).  `generated_utc` defaults to now."""
    validate(content)
    c = content
    when = (generated_utc or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")

    regions = sorted(set(c.observed["region"]) | set(c.predicted["region"]))
    tac = _figure(plots.png_base64(plots.tac_figure(c.observed, c.predicted)),
                  f"Time-activity curves of {len(regions)} region(s): observed points and predicted bands",
                  "Observed activities (circles PET, squares SPECT; colour = nuclide) and posterior "
                  "predictive median (line) with 90 % band (q05–q95), MBq on a log axis against "
                  "time on the schedule clock (h).")
    z0, y0, x0 = plots.hottest_voxel(c.dose_gy)
    d_max = float(c.dose_gy[z0, y0, x0])
    slices = _figure(plots.png_base64(plots.dose_slices_figure(c.dose_gy, c.ct_hu, c.labels, c.spacing_mm)),
                     "Axial, coronal and sagittal dose slices over CT through the hottest voxel",
                     f"Absorbed dose (Gy, colour) over CT (grey, window {plots.CT_WINDOW_HU[0]:g} to "
                     f"{plots.CT_WINDOW_HU[1]:g} HU) through the hottest voxel (z, y, x) = ({z0}, {y0}, {x0}), "
                     f"maximum {format_number(d_max)} Gy; dose below "
                     f"{100 * plots.DOSE_MASK_FRACTION:g} % of the maximum not shown; white lines: region "
                     f"outlines; voxel spacing (x, y, z) = {tuple(float(s) for s in c.spacing_mm)} mm.")
    dvh = _figure(plots.png_base64(plots.dvh_figure(c.dose_gy, c.labels, c.region_names)),
                  "Cumulative dose-volume histograms per region",
                  "Cumulative DVH: fraction of each region's voxels receiving at least the dose D.")
    parts = [
        _header(c, when),
        _section("tac", "Time-activity curves", tac),
        _section("predictions", "Predicted time-integrated activity, absorbed dose and BED",
                 "<p>Posterior predictive median, 90 % interval (q05 – q95) and mean per region for "
                 "the therapy schedule.</p>" + _predictions_table(c.predictions)),
        _section("dose-map", "Dose map", slices),
        _section("dvh", "Dose-volume histograms", dvh),
    ]
    if c.schedules is not None:
        sched = _figure(plots.png_base64(plots.schedules_figure(c.schedules)),
                        "Schedule comparison: BED median and 90 % interval per schedule and region",
                        "Biologically effective dose (Gy) per schedule: median with error bars from q05 to q95.")
        parts.append(_section("schedules", "Schedule comparison", sched + _schedules_table(c.schedules)))
    parts.append(_section("diagnostics", "Calibration diagnostics", _diagnostics(c)))
    if c.constraints is not None:
        parts.append(_section("constraints", "Optimiser result", _frame_table(c.constraints)))
    parts.append(_section("provenance", "Provenance",
                          _table(["item", "value"], [[k, v] for k, v in c.provenance.items()], "provenance")))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Twin report {_e(c.patient_id)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def write_report(path, content: ReportContent, *, overwrite: bool = False) -> Path:
    """Render `content` (render_html) and write it to `path` atomically; return the path.

    Raises TwinError if `path` exists and not `overwrite`, or if `content` is invalid; on
    any failure no file (or the previous one, unchanged) is left at `path`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise TwinError(f"{path}: report file exists; pass overwrite=True to replace it")
    if path.exists() and not path.is_file():
        raise TwinError(f"{path}: exists and is not a regular file")
    text = render_html(content)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
