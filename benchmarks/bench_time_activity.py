"""Time-activity extraction: 512 x 512 x 300 label map (20 labels, 1 x 1 x 1.5 mm) on a
4 mm SPECT (128 x 128 x 112).  Target: <= 2 s on a 2-core CPU (issue 3).

Two ways of putting label map and SPECT on one grid are timed:
  resample="labels": labels -> SPECT grid (nearest neighbour), statistics on 1.9 M voxels;
  resample="scan":   SPECT -> label grid (linear, activity conserving), statistics on 79 M voxels.
Also checked: the total activity over all labels equals the SPECT's total (the label map
covers the SPECT field of view), so the fast path is not fast by being wrong.

Run: .venv/bin/python benchmarks/bench_time_activity.py [--repeats 3] [--threads 2]
"""

import argparse
import os
import sys
import time

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imaging  # noqa: E402
from imaging import Scan  # noqa: E402
from timing import median_time  # noqa: E402


def make_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (300, 512, 512)  # z, y, x
    spacing = (1.0, 1.0, 1.5)
    # 20 labelled boxes of random size and place on a grid, label 20 = everything else ("rest").
    lab = np.full(shape, 20, np.uint8)
    for k in range(1, 20):
        size = rng.integers(20, 90, 3)
        start = [rng.integers(0, n - s) for n, s in zip(shape, size)]
        lab[start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]] = k
    labels = sitk.GetImageFromArray(lab)
    labels.SetSpacing(spacing)
    labels.SetOrigin((-255.5, -255.5, -224.25))
    # 4 mm SPECT covering the same field of view (512 mm x 512 mm x 448 mm -> 128 x 128 x 112).
    spect_shape = (112, 128, 128)
    counts = rng.poisson(30.0, spect_shape).astype(np.float32)
    image = sitk.GetImageFromArray(counts)
    image.SetSpacing((4.0, 4.0, 4.0))
    image.SetOrigin((-256.0 + 2.0, -256.0 + 2.0, -225.0 + 2.0))
    spect = Scan(image, "NM", "CNTS", nuclide="Lu-177", time_h=24.0, acquisition_duration_s=1200.0,
                 calibration_cps_per_mbq=10.0)
    return spect, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    t0 = time.perf_counter()
    spect, labels = make_inputs()
    print(f"inputs built in {time.perf_counter() - t0:.1f} s; labels {labels.GetSize()}, SPECT {spect.image.GetSize()}, "
          f"{args.threads} SimpleITK threads")
    names = {k: f"region_{k}" for k in range(1, 21)}
    # Total activity at acquisition start: counts / (T S), times the frame-average -> start factor.
    start = imaging.to_bqml(spect, "START")
    total_mbq = float(sitk.GetArrayViewFromImage(start.image).sum(dtype=np.float64)) * start.voxel_volume_ml / 1e6
    for mode in ("labels", "scan"):
        table = imaging.time_activity(spect, labels, names, resample=mode)
        t = median_time(lambda: imaging.time_activity(spect, labels, names, resample=mode), args.repeats)
        print(f"resample={mode:6s}: {t:.2f} s (median of {args.repeats}); {len(table)} rows; "
              f"sum of regions / SPECT total = {table['activity_mbq'].sum() / total_mbq:.5f}; "
              f"target <= 2 s: {'met' if t <= 2.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
