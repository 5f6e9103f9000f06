"""Summaries of a virtual trial read part by part (memory independent of the trial size):
dose and BED distributions per schedule and region, and the fraction of patients over
each organ-at-risk limit, as tables and plots.

Quantiles come from log-spaced histograms accumulated over the parts: `BINS_PER_DECADE`
bins per decade between `LOW_GY` and `HIGH_GY` (bin ratio 10^(1/100) = 1.023), values
interpolated geometrically within a bin, so a quantile is within ~1.2 % of the exact one.
Means and exceedance fractions are exact.  Only patients whose solve succeeded count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import TwinError
from .limits import Limit

LOW_GY, HIGH_GY, BINS_PER_DECADE = 1e-4, 1e4, 100
QUANTITIES = ("dose_gy", "bed_gy")
QUANTILES = (0.05, 0.5, 0.95)


def _edges() -> np.ndarray:
    decades = np.log10(HIGH_GY) - np.log10(LOW_GY)
    return np.logspace(np.log10(LOW_GY), np.log10(HIGH_GY), int(decades * BINS_PER_DECADE) + 1)


@dataclass
class _Accumulator:
    """Counts, sums and histograms per (schedule, region, quantity) and exceedance counts
    per (schedule, limit)."""

    limits: Sequence[Limit]
    edges: np.ndarray = field(default_factory=_edges)
    counts: dict = field(default_factory=dict)   # (schedule, region) -> [n_ok, n_failed]
    sums: dict = field(default_factory=dict)     # (schedule, region, quantity) -> sum
    hists: dict = field(default_factory=dict)    # (schedule, region, quantity) -> (under, bins..., over)
    over: dict = field(default_factory=dict)     # (schedule, limit label) -> [n_over, n]

    def add(self, part: pd.DataFrame) -> None:
        for (schedule, region), g in part.groupby(["schedule", "region"], sort=False):
            ok = g["solver_ok"].to_numpy(dtype=bool)
            c = self.counts.setdefault((schedule, region), [0, 0])
            c[0] += int(ok.sum())
            c[1] += int((~ok).sum())
            for q in QUANTITIES:
                values = g[q].to_numpy(dtype=np.float64)[ok]
                values = values[np.isfinite(values)]
                key = (schedule, region, q)
                self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
                hist = self.hists.setdefault(key, np.zeros(len(self.edges) + 1, dtype=np.int64))
                np.add.at(hist, np.searchsorted(self.edges, values, side="right"), 1)
            for lim in self.limits:
                if lim.region == region:
                    values = g[lim.quantity].to_numpy(dtype=np.float64)[ok]
                    o = self.over.setdefault((schedule, lim.label), [0, 0])
                    o[0] += int((values > lim.value).sum())
                    o[1] += int(np.isfinite(values).sum())

    def quantile(self, key, q: float) -> float:
        hist = self.hists[key]
        n = hist.sum()
        if n == 0:
            return float("nan")
        target = q * n
        cum = np.cumsum(hist)
        k = int(np.searchsorted(cum, target, side="left"))
        if k == 0:
            return float(self.edges[0])
        if k >= len(self.edges):
            return float(self.edges[-1])
        lo, hi = self.edges[k - 1], self.edges[k]
        before = cum[k - 1] - hist[k]
        frac = (target - before) / hist[k] if hist[k] else 0.5
        return float(lo * (hi / lo) ** min(max(frac, 0.0), 1.0))


def accumulate(parts: Iterable[pd.DataFrame], limits: Sequence[Limit]) -> _Accumulator:
    acc = _Accumulator(tuple(limits))
    for part in parts:
        acc.add(part)
    return acc


def outcome_parts(folder) -> Iterable[pd.DataFrame]:
    """The outcome parts of a trial folder, one at a time, in part order."""
    files = sorted((Path(folder) / "outcomes").glob("part-*.parquet"))
    if not files:
        raise TwinError(f"{folder}/outcomes: no parts; run the trial first")
    for f in files:
        yield pd.read_parquet(f, columns=["schedule", "region", "dose_gy", "bed_gy", "solver_ok"])


def summary_tables(acc: _Accumulator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per schedule and region: patients, failed solves, mean and quantiles of dose and
    BED; per schedule and limit: patients over the limit and their fraction)."""
    rows = []
    for (schedule, region), (n_ok, n_failed) in acc.counts.items():
        row = dict(schedule=schedule, region=region, patients=n_ok, failed_solves=n_failed)
        for q in QUANTITIES:
            key = (schedule, region, q)
            n_finite = int(acc.hists[key].sum())
            row[f"{q}_mean"] = acc.sums[key] / n_finite if n_finite else float("nan")
            row.update({f"{q}_q{round(p * 100):02d}": acc.quantile(key, p) for p in QUANTILES})
        rows.append(row)
    exceed = [dict(schedule=s, limit=label, patients_over=o, patients=n, fraction_over=o / n if n else float("nan"))
              for (s, label), (o, n) in acc.over.items()]
    return pd.DataFrame(rows), pd.DataFrame(exceed, columns=["schedule", "limit", "patients_over", "patients",
                                                             "fraction_over"])


def plot_distributions(acc: _Accumulator, regions: Sequence[str]):
    """Figure: per region (one panel each), the dose distribution of every schedule as a
    step histogram over the log-spaced bins (patients per bin), the limit as a dashed line."""
    from matplotlib.figure import Figure

    regions = [r for r in regions if any(k[1] == r for k in acc.counts)]
    if not regions:
        raise TwinError(f"no outcomes for regions {list(regions)} in this trial")
    schedules = list(dict.fromkeys(k[0] for k in acc.counts))
    fig = Figure(figsize=(4.0 * len(regions), 3.2))
    coarse = acc.edges[::10]  # 10 bins per decade for display
    for i, region in enumerate(regions):
        ax = fig.add_subplot(1, len(regions), i + 1)
        used = np.zeros(len(coarse) - 1, dtype=bool)
        for s in schedules:
            hist = acc.hists.get((s, region, "dose_gy"))
            if hist is None:
                continue
            merged = hist[1:-1].reshape(-1, 10).sum(axis=1)
            used |= merged > 0
            ax.stairs(merged, coarse, label=s)
        if used.any():
            first, last = np.flatnonzero(used)[[0, -1]]
            ax.set_xlim(coarse[max(first - 2, 0)], coarse[min(last + 3, len(coarse) - 1)])
        for lim in acc.limits:
            if lim.region == region and lim.quantity == "dose_gy":
                ax.axvline(lim.value, ls="--", color="k", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"{region} absorbed dose (Gy)")
        ax.set_ylabel("patients")
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_exceedance(exceedance: pd.DataFrame):
    """Figure: fraction of patients over each limit, bars grouped by limit, one per schedule."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    if exceedance.empty:
        ax.text(0.5, 0.5, "no limit applies to the reported regions", ha="center", transform=ax.transAxes)
        return fig
    limits = list(dict.fromkeys(exceedance["limit"]))
    schedules = list(dict.fromkeys(exceedance["schedule"]))
    width = 0.8 / len(schedules)
    for j, s in enumerate(schedules):
        sub = exceedance[exceedance["schedule"] == s].set_index("limit")
        ax.bar(np.arange(len(limits)) + j * width, [sub["fraction_over"].get(lim, np.nan) for lim in limits],
               width, label=s)
    ax.set_xticks(np.arange(len(limits)) + 0.4 - width / 2, limits, fontsize=8)
    ax.set_ylabel("fraction of patients over the limit")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_summary(folder, limits: Sequence[Limit], regions: Sequence[str]) -> dict[str, Path]:
    """Read the trial's outcome parts once and write summary.csv, exceedance.csv,
    dose_distributions.png and oar_exceedance.png (atomically) into `folder`."""
    from imaging.atomic import atomic_file

    folder = Path(folder)
    acc = accumulate(outcome_parts(folder), limits)
    summary, exceedance = summary_tables(acc)
    written = {}
    for name, df in (("summary.csv", summary), ("exceedance.csv", exceedance)):
        with atomic_file(folder / name) as tmp:
            df.to_csv(tmp, index=False)
        written[name] = folder / name
    for name, fig in (("dose_distributions.png", plot_distributions(acc, regions)),
                      ("oar_exceedance.png", plot_exceedance(exceedance))):
        with atomic_file(folder / name) as tmp:
            fig.savefig(tmp, dpi=90)
        written[name] = folder / name
    return written
