"""A patient twin's voxel dose map of 177Lu-PSMA-617 therapy, and the same map corrected
for tissue heterogeneity by the CNN dose corrector.

Steps:
1. The twin: loaded from a folder written by `PatientTwin.save` (`--twin`, e.g. the one
   examples/alternative_schedules.py writes to <its output>/twin), or built here from the
   synthetic study (`twin.synthetic.make_study`) and calibrated (Laplace, PET + SPECT).
2. Voxel dose maps of one therapy cycle (`--cycles`, default 1 x 7.4 GBq), all computed
   on the corrector's training voxel grid (12 mm for the shipped weights; resampled back
   to the twin's label grid): the water-kernel convolution (`method="kernel"`), the
   density-scaled kernel (`method="density"`, the corrector's input) and the CNN-corrected
   dose (`method="corrected"`: density dose -> 3D U-Net residual, `dose.corrector`).
3. Weights: the shipped ones by default (`dose/corrector/weights/lu177_12mm.pt`, trained
   by examples/train_dose_corrector.py on synthetic phantoms against the heterogeneity-
   aware `reference` dose; their provenance is written into the dose image metadata), or
   `--weights PATH`; with `--train-quick` tiny weights are first trained on a few phantom
   pairs (`twin.corrector_data.phantom_pairs`, `dose.corrector.train`) and written to PATH
   (default <output>/corrector_quick.pt) — they only show the plumbing.
   The shipped weights are validated in lungs and at bone interfaces; in low-dose head
   regions (brain, salivary glands) they over-correct (README, "CNN dose corrector"), so
   compare those regions with the density dose.
Writes <output>/dose_kernel.nii.gz, dose_density.nii.gz, dose_cnn.nii.gz and
region_means.csv; prints the mean dose (Gy) of each labelled region in each map.

Run:  python examples/dose_map_with_cnn.py [--twin DIR] [--output DIR] [--force]
      python examples/dose_map_with_cnn.py --weights W.pt | --train-quick [--quick]
Time: with --twin ~1-2 min on two CPU cores; building the twin adds the calibration
(~3-4 min).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from _common import (ExampleError, calibrated_twin, output_folder, print_frame, synthetic_study, timed, vision,
                     write_csv, write_image)


def train_quick_weights(path: Path, n_pairs: int, epochs: int) -> None:
    """Tiny corrector weights (base 4) trained on `n_pairs` phantom pairs; written to `path`."""
    from twin.corrector_data import phantom_pairs as make_pairs
    from dose.corrector.train import train

    pairs = make_pairs(range(1, n_pairs + 1))
    _, hist = train(pairs, epochs=epochs, base=4, patience=max(2, epochs), checkpoint=str(path))
    print(f"quick corrector: validation loss uncorrected {hist['baseline_val']:.4g}, "
          f"corrected {hist['best_val']:.4g} after {len(hist['val'])} epochs -> {path}")


def region_means(maps: dict[str, np.ndarray], labels: np.ndarray, region_names: dict[int, str]) -> pd.DataFrame:
    """Mean dose (Gy) of every labelled region in every map."""
    rows = []
    for label, name in sorted(region_names.items()):
        mask = labels == label
        if not mask.any():
            continue
        row = {"region": name, "voxels": int(mask.sum())}
        row.update({f"{k}_gy": float(v[mask].mean()) for k, v in maps.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["cnn_vs_density_pct"] = 100.0 * (frame["cnn_gy"] / frame["density_gy"] - 1.0)
    frame["density_vs_kernel_pct"] = 100.0 * (frame["density_gy"] / frame["kernel_gy"] - 1.0)
    return frame


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", help="corrector weights (dose.corrector.inference.save format); "
                    "default: the shipped weights")
    ap.add_argument("--train-quick", action="store_true", help="train tiny weights first (written to --weights)")
    ap.add_argument("--twin", help="folder of a saved twin (PatientTwin.save); default: build and calibrate one")
    ap.add_argument("--cycles", type=int, default=1, help="number of 7.4 GBq cycles (q6w) dosed")
    ap.add_argument("--output", help="output folder (default examples/output/dose_map_with_cnn/)")
    ap.add_argument("--force", action="store_true", help="overwrite files in a non-empty output folder")
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer samples, draws, pairs and epochs")
    ap.add_argument("--seed", type=int, default=0, help="synthetic patient seed (when building the twin)")
    args = ap.parse_args(argv)
    num_samples, max_draws, n_pairs, epochs = (60, 15, 3, 2) if args.quick else (200, 40, 4, 4)
    if args.cycles < 1:
        raise ExampleError(f"--cycles {args.cycles}: expected at least 1")
    out = output_folder("dose_map_with_cnn", args.output, args.force)
    weights = Path(args.weights) if args.weights else (out / "corrector_quick.pt" if args.train_quick else None)
    if weights is not None and not args.train_quick and not weights.is_file():
        raise ExampleError(f"--weights {weights}: no such file (train with --train-quick or "
                           "examples/train_dose_corrector.py)")
    start = time.perf_counter()

    if args.train_quick:
        if weights.exists() and not args.force:
            raise ExampleError(f"--weights {weights}: exists; pass --force to overwrite")
        with timed(f"train quick corrector ({n_pairs} pairs, {epochs} epochs)"):
            train_quick_weights(weights, n_pairs, epochs)

    from twin import PatientTwin

    if args.twin:
        twin = PatientTwin.load(args.twin)
        print(f"twin of patient {twin.patient_id!r} loaded from {args.twin}")
    else:
        with timed("synthetic study"):
            _, study = synthetic_study(out, args.seed, args.force)
        with timed("calibration (PET + SPECT)"):
            twin = calibrated_twin(study, num_samples, seed=args.seed)
    if twin.labels is None:
        raise ExampleError("the twin has no label map (anatomy); voxel dose maps need one")

    if twin.ct is None:
        raise ExampleError("the twin has no CT; the corrector needs a density map")

    from dose.corrector import load

    corrector = load(None if weights is None else str(weights))
    grid_mm = corrector.trained_voxel_mm
    print(f"corrector weights: {corrector.provenance.get('weights', weights)}; dose grid {grid_mm} mm")
    therapy = vision(args.cycles)
    with timed("dose maps (kernel, density, CNN-corrected)"):
        kernel = twin.dose_map(therapy, method="kernel", kernel_voxel_mm=grid_mm, max_draws=max_draws)
        dens = twin.dose_map(therapy, method="density", kernel_voxel_mm=grid_mm, max_draws=max_draws)
        cnn = twin.dose_map(therapy, method="corrected", corrector=corrector, kernel_voxel_mm=grid_mm,
                            max_draws=max_draws)

    for name, image in (("kernel", kernel), ("density", dens), ("cnn", cnn)):
        write_image(image, out / f"dose_{name}.nii.gz")
    maps = {k: sitk.GetArrayFromImage(v).astype(np.float64) for k, v in
            (("kernel", kernel), ("density", dens), ("cnn", cnn))}
    table = region_means(maps, sitk.GetArrayFromImage(twin.labels), twin.region_names)
    write_csv(table, out / "region_means.csv")
    print_frame(table, f"region mean dose (Gy), {args.cycles} x 7.4 GBq 177Lu-PSMA-617:")
    print(f"max dose (Gy): kernel {maps['kernel'].max():.3g}, density {maps['density'].max():.3g}, "
          f"cnn {maps['cnn'].max():.3g}; grid {kernel.GetSize()} at {kernel.GetSpacing()} mm")
    print(f"\nwritten to {out}; total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
