"""Side-by-side timing: our JAX kernel convolution vs scipy.signal.fftconvolve and
scipy.signal.oaconvolve (what PyTheranostics and other peer tools call), same run.

Case (issue 4): a 256^3 TIA map (MBq s, a smooth random "patient-like" map), a 177Lu
voxel kernel in soft tissue.  Kernel sources:
  * ``--kernel generated`` (default): dose.kernels.voxel_kernel("Lu-177", 4.7952 mm),
  * ``--kernel pytheranostics``: the published 51^3 Monte Carlo kernel (4.7952 mm,
    ../shared/reference/pytheranostics_kernel, Apache-2.0), uncropped.
Reports medians (this machine is shared and noisy) of
  * ours: `FFTConvolver` (kernel spectrum cached, JIT-compiled, float32), after JIT;
  * ours end to end: `absorbed_dose(method="kernel")` (kernel lookup + spectrum each call);
  * scipy fftconvolve and oaconvolve (float32, mode="same"),
the ratios, the max relative difference (to the max dose) of each against a float64
fftconvolve, and the peak memory (max RSS) of each method measured in its own child
process (so one method's arrays do not count for another).

Run:  python benchmarks/bench_dose_convolution.py [--size 256] [--repeats 5] [--kernel generated|pytheranostics]
      (JAX_PLATFORMS=cpu taskset -c 0,1 python ... for the 2-core CPU target)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.ndimage
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import median_time  # noqa: E402

VOXEL_MM = 4.7952
REFERENCE_KERNEL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pytheranostics_kernel" / "DK_softtissueICRP_mGyperMBqs.img"


def tia_map(size: int, seed: int = 0) -> np.ndarray:
    """Smooth non-negative map (MBq s per voxel): blurred noise plus a few hot spheres."""
    rng = np.random.default_rng(seed)
    tia = scipy.ndimage.gaussian_filter(rng.random((size, size, size), dtype=np.float32), 3.0)
    grid = np.indices((size, size, size), sparse=True)
    for _ in range(5):
        centre = rng.integers(size // 4, 3 * size // 4, 3)
        r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
        tia[r2 < (size // 16) ** 2] += 5.0
    return (tia * 1e3).astype(np.float32)


def kernel(kind: str, path: str | None = None) -> np.ndarray:
    if path is not None and path.endswith(".npy"):
        return np.load(path).astype(np.float32)  # a kernel saved beforehand (e.g. for a machine without icrp107 data)
    if kind == "pytheranostics":
        return np.fromfile(path or REFERENCE_KERNEL, dtype="<f4").reshape(51, 51, 51)
    from dose.kernels import voxel_kernel

    return np.asarray(voxel_kernel("Lu-177", (VOXEL_MM,) * 3, medium="soft_tissue").values, dtype=np.float32)


def run_one(method: str, size: int, kind: str, repeats: int, path: str | None) -> dict:
    tia, ker = tia_map(size), kernel(kind, path)
    if method == "ours":
        from dose.convolution import FFTConvolver

        conv = FFTConvolver(ker, tia.shape)
        fn = lambda: np.asarray(conv(tia))  # noqa: E731  (includes the device->numpy copy)
    elif method == "ours_end_to_end":
        from dose.absorbed import absorbed_dose

        source = lambda *a: type("K", (), {"values": ker, "density_g_cm3": 1.0})()  # noqa: E731
        fn = lambda: absorbed_dose(tia, (VOXEL_MM,) * 3, "Lu-177", kernel_source=source)  # noqa: E731
    elif method == "fftconvolve":
        fn = lambda: scipy.signal.fftconvolve(tia, ker, mode="same")  # noqa: E731
    elif method == "oaconvolve":
        fn = lambda: scipy.signal.oaconvolve(tia, ker, mode="same")  # noqa: E731
    else:
        raise ValueError(method)
    fn()  # warm-up (JIT compilation for ours)
    seconds = median_time(fn, repeats)
    return {"method": method, "median_s": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kernel", choices=["generated", "pytheranostics"], default="generated")
    ap.add_argument("--kernel-file", help="kernel file: raw float32 51^3 (pytheranostics, default ../shared) or .npy")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.size, args.kernel, args.repeats, args.kernel_file)))
        return

    import jax

    ker = kernel(args.kernel, args.kernel_file)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"TIA map {args.size}^3 float32, 177Lu kernel '{args.kernel}' {ker.shape}, voxel {VOXEL_MM} mm, "
          f"{cores} CPU cores usable, JAX device {jax.devices()[0]}, repeats {args.repeats} (medians)")
    results = {}
    for method in ("ours", "ours_end_to_end", "fftconvolve", "oaconvolve"):
        cmd = [sys.executable, __file__, "--child", method, "--size", str(args.size), "--repeats", str(args.repeats),
               "--kernel", args.kernel] + (["--kernel-file", args.kernel_file] if args.kernel_file else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"  {method:16s} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[method]
        print(f"  {method:16s} median {r['median_s']:.3f} s   peak RSS {r['peak_rss_gb']:.2f} GB")

    base = results["ours"]["median_s"]
    print(f"ratio fftconvolve / ours           = {results['fftconvolve']['median_s'] / base:.2f}x  (target >= 3)")
    print(f"ratio oaconvolve  / ours           = {results['oaconvolve']['median_s'] / base:.2f}x")
    if "ours_end_to_end" in results:
        print(f"ratio fftconvolve / ours_end_to_end = "
              f"{results['fftconvolve']['median_s'] / results['ours_end_to_end']['median_s']:.2f}x")

    from dose.convolution import convolve

    tia = tia_map(args.size)
    exact = scipy.signal.fftconvolve(tia.astype(np.float64), ker.astype(np.float64), mode="same")
    for name, value in (("ours", convolve(tia, ker)), ("fftconvolve", scipy.signal.fftconvolve(tia, ker, mode="same")),
                        ("oaconvolve", scipy.signal.oaconvolve(tia, ker, mode="same"))):
        print(f"max |{name} - float64 fftconvolve| / max = {np.max(np.abs(value - exact)) / exact.max():.2e}")


if __name__ == "__main__":
    main()
