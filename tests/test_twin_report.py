"""twin.report / twin.plots: self-contained HTML report of a patient twin.

A small synthetic twin (two labelled boxes, a Gaussian dose blob, exponential TACs) is
written once; the tests check the file (self-contained, escaped, every table value), the
figures' geometry and data against direct numpy computations, the file in a real headless
Chromium (images decoded, no network request), and the error paths."""

from __future__ import annotations

import base64
import dataclasses
import html.parser
import io
import os
import pathlib
import shutil

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from twin import plots
from twin.errors import TwinError
from twin.report import ReportContent, figure_count, format_number, render_html, write_report

CHROMIUM = "/usr/bin/chromium"
SHAPE = (16, 24, 20)            # (z, y, x)
SPACING = (2.0, 2.5, 4.0)       # (x, y, z) mm
HOT = (5, 8, 6)                 # (z, y, x) of the dose blob centre
GA_LAMBDA, LU_LAMBDA = np.log(2) / 1.1285, np.log(2) / 159.5  # 68Ga 67.7 min, 177Lu 6.647 d (ICRP-107)


def _content(with_schedules: bool = True) -> ReportContent:
    z, y, x = np.indices(SHAPE)
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[2:9, 4:12, 3:10] = 1            # tumour, around the hot spot
    labels[8:14, 14:22, 11:18] = 2         # kidneys
    r2 = ((z - HOT[0]) * SPACING[2]) ** 2 + ((y - HOT[1]) * SPACING[1]) ** 2 + ((x - HOT[2]) * SPACING[0]) ** 2
    dose = (12.0 * np.exp(-r2 / (2 * 6.0**2)) + 0.5 * (labels == 2)).astype(np.float32)
    ct = np.where((x > 0) & (x < SHAPE[2] - 1), 40.0, -1000.0).astype(np.float32)
    ct[labels == 2] = 30.0

    obs_rows, pred_rows = [], []
    for region, a0_ga, a0_lu in (("tumour", 3.0, 400.0), ("kidneys", 8.0, 900.0)):
        for t, mod, nuc, a0, lam in ((0.5, "PT", "Ga-68", a0_ga, GA_LAMBDA), (1.5, "PT", "Ga-68", a0_ga, GA_LAMBDA),
                                     (24.0, "NM", "Lu-177", a0_lu, 2 * LU_LAMBDA),
                                     (96.0, "NM", "Lu-177", a0_lu, 2 * LU_LAMBDA)):
            obs_rows.append(dict(region=region, modality=mod, nuclide=nuc, time_h=t,
                                 activity_mbq=a0 * np.exp(-lam * t) * 1.05))
        for nuc, a0, lam, times in (("Ga-68", a0_ga, GA_LAMBDA, np.linspace(0, 3, 13)),
                                    ("Lu-177", a0_lu, 2 * LU_LAMBDA, np.linspace(0, 168, 29))):
            for t in times:
                m = a0 * np.exp(-lam * t)
                pred_rows.append(dict(region=region, nuclide=nuc, time_h=t, activity_mbq_q05=0.8 * m,
                                      activity_mbq_q50=m, activity_mbq_q95=1.25 * m))
    predictions = pd.DataFrame([
        dict(region="kidneys", tia_mbq_h_mean=52500.0, tia_mbq_h_q05=41230.0, tia_mbq_h_q50=52341.2,
             tia_mbq_h_q95=66012.0, dose_gy_mean=4.30, dose_gy_q05=3.1, dose_gy_q50=4.2371, dose_gy_q95=5.604,
             bed_gy_mean=5.2, bed_gy_q05=3.71, bed_gy_q50=5.118, bed_gy_q95=7.25),
        dict(region="tumour", tia_mbq_h_mean=23100.0, tia_mbq_h_q05=15020.0, tia_mbq_h_q50=22870.0,
             tia_mbq_h_q95=33333.0, dose_gy_mean=11.9, dose_gy_q05=7.77, dose_gy_q50=11.61, dose_gy_q95=17.05,
             bed_gy_mean=13.4, bed_gy_q05=8.66, bed_gy_q50=13.01, bed_gy_q95=19.9),
    ])
    schedules = pd.DataFrame([
        dict(schedule=s, region=r, dose_gy_q05=d * 0.7, dose_gy_q50=d, dose_gy_q95=d * 1.4,
             bed_gy_q05=b * 0.7, bed_gy_q50=b, bed_gy_q95=b * 1.5)
        for s, k in (("4 x 7.4 GBq", 1.0), ("6 x 7.4 GBq", 1.5)) for r, d, b in
        (("kidneys", 4.2 * k, 5.1 * k), ("tumour", 11.6 * k, 13.0 * k))
    ]) if with_schedules else None
    diagnostics = pd.DataFrame({"mean": [0.31, 1.7e-5], "sd": [0.04, 2.0e-6], "r_hat": [1.003, 1.042],
                                "ess_bulk": [812, 97]}, index=pd.Index(["k_on_per_nmol_h", "k_off_per_h"], name="parameter"))
    return ReportContent(
        patient_id="SYN-001", observed=pd.DataFrame(obs_rows), predicted=pd.DataFrame(pred_rows),
        predictions=predictions, dose_gy=dose, ct_hu=ct, labels=labels,
        region_names={1: "tumour", 2: "kidneys"}, spacing_mm=SPACING, schedules=schedules,
        diagnostics=diagnostics, problems=["r_hat 1.042 > 1.01 for k_off_per_h", "ESS 97 < 400 for k_off_per_h"],
        provenance={"model": "psma_model (pbpk 0.1.0)", "decay data": "ICRP-107",
                    "note": "<script>alert(1)</script> & more"},
        constraints=pd.DataFrame({"constraint": ["kidney BED <= 40 Gy"], "value_gy": [38.2], "active": [True]}),
    )


@pytest.fixture(scope="module")
def content() -> ReportContent:
    return _content()


@pytest.fixture(scope="module")
def report(content, tmp_path_factory) -> pathlib.Path:
    return write_report(tmp_path_factory.mktemp("report") / "twin_report.html", content)


class _Tags(html.parser.HTMLParser):
    """Collects tags with their attributes and the parent chain of each <img>."""

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.img_parents = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "img":
            self.img_parents.append(self.stack[-1] if self.stack else None)
        elif tag not in ("meta", "br", "hr", "link", "input"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack.pop() != tag:
                pass


def _parse(text: str) -> _Tags:
    p = _Tags()
    p.feed(text)
    return p


# ----------------------------------------------------------------------------- the file

def test_format_number_three_significant_digits():
    cases = {4.2371: "4.24", 52341.2: "52341", 0.012345: "0.0123", 3.1: "3.10", 17.05: "17.1", 0.0: "0",
             1.7e-5: "1.70e-05", 2.5e7: "2.50e+07", -4.2371: "-4.24", 812: "812", "k_off": "k_off"}
    for value, expected in cases.items():
        assert format_number(value) == expected, value


def test_report_self_contained_with_every_value(report, content):
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for forbidden in ("http://", "https://", 'src="file', "<script", "<link", "@import", "url("):
        assert forbidden not in text, forbidden
    tags = _parse(text)
    srcs = [a.get("src") for t, a in tags.tags if "src" in a]
    assert len(srcs) == 4 == figure_count(content) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(h.startswith("#") for t, a in tags.tags for h in [a.get("href")] if h is not None)
    # every image: non-empty alt, directly inside a <figure> that has a <figcaption>
    imgs = [a for t, a in tags.tags if t == "img"]
    assert all(a.get("alt", "").strip() for a in imgs)
    assert tags.img_parents == ["figure"] * 4
    assert text.count("<figcaption>") == 4
    # the embedded PNGs decode to real images
    for s in srcs:
        png = base64.b64decode(s.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100 and float(img.std()) > 0
    # table values, formatted with 3 significant digits (hand-written expectations)
    for expected in ("4.24", "3.10 – 5.60", "52341", "41230 – 66012", "5.12", "3.71 – 7.25", "4.30",
                     "11.6", "7.77 – 17.1", "13.0", "8.66 – 19.9", "22870", "15020 – 33333"):
        assert f"<td>{expected}</td>" in text, expected
    assert '<td class="t">6 x 7.4 GBq</td>' in text and '<td class="t">kidney BED &lt;= 40 Gy</td>' in text
    assert '<td class="t">k_off_per_h</td>' in text and '<td class="t">True</td>' in text and "<td>1.04</td>" in text and "<td>1.70e-05</td>" in text
    # header summary names the highest-dose region first
    assert text.index("tumour: absorbed dose 11.6 Gy") < text.index("kidneys: absorbed dose 4.24 Gy")
    # user text is escaped, problems are highlighted
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text
    block = text[text.index('<div class="problems">'):]
    block = block[:block.index("</div>")]
    assert all(p.replace(">", "&gt;").replace("<", "&lt;") in block for p in content.problems)
    for anchor in ("tac", "predictions", "dose-map", "dvh", "schedules", "diagnostics", "constraints", "provenance"):
        assert f'<section id="{anchor}">' in text
    assert report.stat().st_size < 3_000_000


def test_report_without_schedules_or_problems(tmp_path):
    c = dataclasses.replace(_content(with_schedules=False), problems=[], constraints=None)
    text = write_report(tmp_path / "r.html", c).read_text(encoding="utf-8")
    assert text.count("<img ") == 3 == figure_count(c)
    assert 'id="schedules"' not in text and 'id="constraints"' not in text
    assert "No convergence problems reported." in text and 'class="problems"' not in text


# ----------------------------------------------------------------------------- figures

def test_slices_through_hottest_voxel_with_spacing_aspect(content):
    dose = content.dose_gy
    z0, y0, x0 = (int(i[0]) for i in np.nonzero(dose == dose.max()))
    assert (z0, y0, x0) == HOT == plots.hottest_voxel(dose)
    fig = plots.dose_slices_figure(dose, content.ct_hu, content.labels, content.spacing_mm)
    sx, sy, sz = SPACING
    expected = {"axial": (dose[z0], sy / sx), "coronal": (dose[:, y0], sz / sx), "sagittal": (dose[:, :, x0], sz / sy)}
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(axes) == set(expected)
    for name, (ref, aspect) in expected.items():
        ax = axes[name]
        assert ax.get_aspect() == pytest.approx(aspect)
        ct_img, wash = ax.images
        np.testing.assert_array_equal(ct_img.get_array(), content.ct_hu[{"axial": (z0,), "coronal": (slice(None), y0),
                                                                         "sagittal": (Ellipsis, x0)}[name]])
        arr = wash.get_array()
        np.testing.assert_array_equal(np.ma.getmaskarray(arr), ref < 0.01 * dose.max())
        np.testing.assert_allclose(arr.compressed(), ref[ref >= 0.01 * dose.max()])
        assert wash.get_clim() == pytest.approx((0.0, float(dose.max())))
    colourbar = [ax for ax in fig.axes if ax.get_ylabel() == "absorbed dose (Gy)"]
    assert len(colourbar) == 1


def test_dvh_lines_match_direct_count(content):
    fig = plots.dvh_figure(content.dose_gy, content.labels, content.region_names)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"tumour", "kidneys"}
    for value, name in content.region_names.items():
        d = content.dose_gy[content.labels == value].astype(float)
        levels, percent = lines[name].get_xdata(), lines[name].get_ydata()
        assert levels[0] == 0.0 and levels[-1] == pytest.approx(d.max())
        direct = np.array([100.0 * np.count_nonzero(d >= level) / d.size for level in levels])
        np.testing.assert_allclose(percent, direct)
        assert percent[0] == 100.0 and np.all(np.diff(percent) <= 0)


def test_tac_panels_log_axis_and_medians(content):
    fig = plots.tac_figure(content.observed, content.predicted)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert set(panels) == {"kidneys", "tumour"}
    for region, ax in panels.items():
        assert ax.get_yscale() == "log"
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        for nuclide in ("Ga-68", "Lu-177"):
            pred = content.predicted.query("region == @region and nuclide == @nuclide").sort_values("time_h")
            np.testing.assert_allclose(lines[f"{nuclide} median"].get_ydata(), pred["activity_mbq_q50"])
        pet = content.observed.query("region == @region and modality == 'PT'")
        np.testing.assert_allclose(lines["PET Ga-68"].get_ydata(), pet["activity_mbq"])
        assert lines["PET Ga-68"].get_marker() == "o" and lines["SPECT Lu-177"].get_marker() == "s"
        assert len(ax.collections) == 2  # one 90 % band per nuclide


def test_schedule_error_bars_are_bed_quantiles(content):
    fig = plots.schedules_figure(content.schedules)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert set(panels) == {"kidneys", "tumour"}
    for region, ax in panels.items():
        rows = content.schedules[content.schedules["region"] == region]
        medians = ax.get_lines()[0].get_ydata()
        np.testing.assert_allclose(medians, rows["bed_gy_q50"])
        segments = ax.collections[0].get_segments()  # vertical error bars, one per schedule
        np.testing.assert_allclose([s[:, 1].min() for s in segments], rows["bed_gy_q05"])
        np.testing.assert_allclose([s[:, 1].max() for s in segments], rows["bed_gy_q95"])
        assert [t.get_text() for t in ax.get_xticklabels()] == list(rows["schedule"])


# ----------------------------------------------------------------------------- in a browser

@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (CI installs Debian's chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from playwright.sync_api import sync_playwright

    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.resolve().as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images).map(i => ({
                complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                alt: i.alt, inFigure: i.parentElement.tagName === 'FIGURE'}))""")
            n_tables = page.evaluate("() => document.querySelectorAll('table').length")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert len(images) == 4
    assert all(i["complete"] and i["w"] > 100 and i["h"] > 100 and i["alt"] and i["inFigure"] for i in images)
    assert n_tables == 5  # predictions, schedules, diagnostics, constraints, provenance
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 900 and pixels.shape[1] == 1280
    assert float(pixels[..., :3].std()) > 0.01


# ----------------------------------------------------------------------------- errors

def test_refuses_to_overwrite_unless_asked(tmp_path, content):
    target = tmp_path / "r.html"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(TwinError, match="exists.*overwrite=True"):
        write_report(target, content)
    assert target.read_text(encoding="utf-8") == "old"
    write_report(target, content, overwrite=True)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")



@pytest.mark.parametrize("change, message", [
    (lambda c: {"observed": c.observed.drop(columns=["modality"])}, r"observed: missing column\(s\) \['modality'\]"),
    (lambda c: {"predictions": c.predictions.drop(columns=["dose_gy_q95", "bed_gy_mean"])},
     r"predictions: missing column\(s\) \['dose_gy_q95', 'bed_gy_mean'\]"),
    (lambda c: {"ct_hu": c.ct_hu[:-1]}, r"ct_hu: shape \(15, 24, 20\) differs from dose_gy shape \(16, 24, 20\)"),
    (lambda c: {"labels": c.labels[..., :-1]}, r"labels: shape .* differs from dose_gy"),
    (lambda c: {"dose_gy": np.where(c.labels == 1, np.nan, c.dose_gy)}, r"dose_gy: contains NaN"),
    (lambda c: {"dose_gy": c.dose_gy - 1.0}, r"dose_gy: expected doses >= 0"),
    (lambda c: {"dose_gy": c.dose_gy[0]}, r"dose_gy: expected a non-empty 3-D"),
    (lambda c: {"labels": c.labels.astype(float)}, r"labels: expected an integer"),
    (lambda c: {"region_names": {1: "tumour"}}, r"region_names: label value\(s\) \[2\]"),
    (lambda c: {"observed": c.observed.assign(modality="CT")}, r"observed.modality: unknown modality \['CT'\]"),
    (lambda c: {"observed": c.observed.assign(activity_mbq=-1.0)}, r"observed.activity_mbq: expected values >= 0"),
    (lambda c: {"predicted": c.predicted.assign(activity_mbq_q05=c.predicted["activity_mbq_q95"] * 2)},
     r"predicted: row .* activity_mbq_q05 <= activity_mbq_q50"),
    (lambda c: {"schedules": c.schedules.drop(columns=["bed_gy_q05"])}, r"schedules: missing column\(s\) \['bed_gy_q05'\]"),
    (lambda c: {"predicted": pd.concat([c.predicted, c.predicted.iloc[[3]]])},
     r"predicted: duplicate rows for \(region, nuclide, time_h\) = \('tumour', 'Ga-68', 0.75\)"),
    (lambda c: {"predictions": c.predictions.assign(region="kidneys")}, r"predictions: duplicate rows for \(region\)"),
    (lambda c: {"schedules": pd.concat([c.schedules, c.schedules.iloc[[0]]])}, r"schedules: duplicate rows"),
    (lambda c: {"spacing_mm": (2.0, 0.0, 4.0)}, r"spacing_mm: expected three positive"),
    (lambda c: {"problems": "r_hat high"}, r"problems: expected a sequence of strings"),
    (lambda c: {"provenance": {"model": 3}}, r"provenance: expected a mapping str -> str"),
    (lambda c: {"patient_id": " "}, r"patient_id"),
])
def test_bad_input_names_the_field(content, change, message):
    with pytest.raises(TwinError, match=message):
        dataclasses.replace(content, **change(content))


def test_input_spoiled_after_construction_writes_nothing(tmp_path, content):
    dose = content.dose_gy.copy()
    c = dataclasses.replace(content, dose_gy=dose)
    dose[HOT] = np.nan  # arrays are mutable: write_report validates again
    with pytest.raises(TwinError, match="dose_gy: contains NaN"):
        write_report(tmp_path / "r.html", c)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, content, monkeypatch):
    original = pathlib.Path.write_text

    def half_then_fail(self, data, *args, **kwargs):
        original(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path / "new.html", content)
    assert list(tmp_path.iterdir()) == []
    # an existing report survives a failed overwrite unchanged
    old = tmp_path / "old.html"
    shutil.copyfile(__file__, old)
    with pytest.raises(OSError, match="disk full"):
        write_report(old, content, overwrite=True)
    assert old.read_bytes() == pathlib.Path(__file__).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html"]


def test_render_html_is_deterministic_given_the_time(content):
    import datetime

    when = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.timezone.utc)
    a, b = render_html(content, when), render_html(content, when)
    assert a == b and "Generated 2026-11-27 12:00 UTC." in a


def test_degenerate_but_valid_inputs_render(tmp_path, content):
    """No measured points, a zero dose map and no posterior summary still give a full report."""
    c = dataclasses.replace(content, observed=content.observed.iloc[0:0], dose_gy=np.zeros(SHAPE, np.float32),
                            diagnostics=pd.DataFrame(), schedules=None)
    text = write_report(tmp_path / "r.html", c).read_text(encoding="utf-8")
    assert text.count("<img ") == 3 and "maximum 0 Gy" in text and "No posterior summary given." in text
