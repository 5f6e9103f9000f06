"""Shared plumbing of the example scripts: output folders (never overwritten without
--force), atomic file writes (temporary file in the same folder, then os.replace), the
synthetic study + calibrated PSMA twin that several examples start from, and timing.

Not an example itself; the scripts import it (run them from the repository root or from
examples/, both work because the script's folder is on sys.path).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from imaging.atomic import atomic_file

EXAMPLES = Path(__file__).resolve().parent
THERAPY_TRACER = "Lu-177-PSMA-617"
WEEK_H = 168.0
#: Receptor densities freed in calibration: the organs at risk and lesions that the study
#: images see (a small set keeps the Laplace fit to a few minutes on two CPU cores).
FREE = ("kidneys_rden_nmol_l", "salivary_glands_rden_nmol_l", "lesion_1_rden_nmol_l", "lesion_2_rden_nmol_l")
#: The VISION trial regimen, 7.4 GBq every 6 weeks (Sartor O et al. NEJM 2021;385:1091);
#: 90 nmol ligand per cycle as in twin.synthetic.
VISION_ACTIVITY_MBQ, VISION_INTERVAL_H, VISION_LIGAND_NMOL = 7400.0, 6 * WEEK_H, 90.0


class ExampleError(RuntimeError):
    """Bad command-line input of an example (names the option and what was expected)."""


def output_folder(name: str, given: str | None, force: bool) -> Path:
    """The output folder (default examples/output/<name>/).  An existing non-empty folder
    raises ExampleError unless `force` (then its files are replaced one by one as written)."""
    folder = Path(given) if given else EXAMPLES / "output" / name
    if folder.exists() and not folder.is_dir():
        raise ExampleError(f"--output {folder}: exists and is not a folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise ExampleError(f"--output {folder}: folder is not empty; pass --force to overwrite its files")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _atomic(path: Path, write) -> Path:
    """Write through `imaging.atomic.atomic_file` (temporary file with the same suffix, then rename)."""
    with atomic_file(path) as tmp:
        write(str(tmp))
    return Path(path)


def write_csv(frame: pd.DataFrame, path) -> Path:
    """Write `frame` as CSV atomically."""
    return _atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_parquet(frame: pd.DataFrame, path) -> Path:
    """Write `frame` as Parquet (pyarrow) atomically."""
    return _atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_figure(fig, path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (format from the suffix of `path`)."""
    fmt = Path(path).suffix.lstrip(".")
    return _atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))


def write_image(image, path) -> Path:
    """Write a SimpleITK image atomically (NIfTI when `path` ends in .nii.gz)."""
    import SimpleITK as sitk

    return _atomic(path, lambda tmp: sitk.WriteImage(image, tmp))  # the temporary name keeps the suffix


def synthetic_study(out: Path, seed: int, force: bool):
    """Write the synthetic study `twin.synthetic.make_study(seed)` into out/study and load
    it; returns (SyntheticStudy with the true parameters, loaded twin.study.Study)."""
    from twin.study import load_study
    from twin.synthetic import make_study

    folder = out / "study"
    if folder.exists() and not force:
        raise ExampleError(f"{folder}: exists; pass --force")
    synthetic = make_study(folder, seed=seed, overwrite=force)
    return synthetic, load_study(synthetic.folder)


def calibrated_twin(study, num_samples: int, seed: int = 0):
    """A PatientTwin of the whole study (PET + SPECT) with `FREE` receptor densities,
    calibrated by Laplace with one model per ligand (`separate_ligands=True`)."""
    from twin import PatientTwin

    twin = PatientTwin.from_study(study, free=list(FREE))
    twin.calibrate("laplace", separate_ligands=True, num_samples=num_samples, seed=seed)
    return twin


def vision(n_cycles: int = 4, activity_mbq: float = VISION_ACTIVITY_MBQ, interval_h: float = VISION_INTERVAL_H,
           ligand_nmol: float = VISION_LIGAND_NMOL):
    """`n_cycles` therapy cycles of THERAPY_TRACER starting at t = 0 (therapy clock, h)."""
    import pbpk

    return pbpk.Schedule.cycles(n_cycles, activity_mbq=activity_mbq, ligand_nmol=ligand_nmol,
                                interval_h=interval_h, tracer=THERAPY_TRACER)


@contextmanager
def timed(label: str, log: dict | None = None):
    """Print (and record in `log`) the wall time of a block."""
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    if log is not None:
        log[label] = dt
    print(f"[{label}: {dt:.1f} s]", flush=True)


def print_frame(frame: pd.DataFrame, title: str | None = None, floatfmt: str = "{:.4g}") -> None:
    """Print a DataFrame in full width."""
    if title:
        print(f"\n{title}")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 200,
                           "display.float_format", floatfmt.format):
        print(frame.to_string(index=False))
    sys.stdout.flush()
