"""Side-by-side timing: our JAX kernel convolution vs scipy.signal.fftconvolve and
scipy.signal.oaconvolve (what PyTheranostics and other peer tools call), same run.

Case (issue 4): a 256^3 TIA map (MBq s, a smooth random "patient-like" map), a 177Lu
voxel kernel in soft tissue.  Kernel sources:
  * ``--kernel generated`` (default): dose.kernels.voxel_kernel("Lu-177", 4.7952 mm),
  * ``--kernel pytheranostics``: the published 51^3 Monte Carlo kernel (4.7952 mm,
    ../shared/reference/pytheranostics_kernel, Apache-2.0), uncropped.
Reports medians (this machine is shared and noisy) of
  * ours: `FFTConvolver` (kernel spectrum cached, JIT-compiled, float32), after JIT;
  * ours end to end: `absorbed_dose(method="kernel")` (input checks, kernel lookup,
    unit scaling and the convolver cache's kernel hash each call);
  * scipy fftconvolve and oaconvolve (float32, mode="same"), as peer tools call them
    (scipy.fft's default of one worker), and fftconvolve with two scipy.fft workers for
    a like-for-like core count (informative; the target is against the default),
timed in one process in interleaved rounds (every method once per round, order rotated),
so a slow phase of the machine hits all methods alike; the ratios (of the medians, and
the median of the per-round ratios); the max relative difference (to the max dose) of
each against a float64 fftconvolve; and the peak memory (max RSS) of each method
measured in its own child process (so one method's arrays do not count for another).

Run:  python benchmarks/bench_dose_convolution.py [--size 256] [--repeats 9] [--kernel generated|pytheranostics]
      (JAX_PLATFORMS=cpu taskset -c 0,1 python ... for the 2-core CPU target;
       GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python ... backs every method's large
       buffers with transparent huge pages, see the README)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.signal

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


METHODS = ("ours", "ours_end_to_end", "fftconvolve", "oaconvolve", "fftconvolve_2workers")


def method_call(method: str, tia: np.ndarray, ker: np.ndarray):
    """A no-argument callable computing the dose map with `method` (after its set-up)."""
    if method == "ours":
        from dose.convolution import FFTConvolver

        conv = FFTConvolver(ker, tia.shape)
        return lambda: conv(tia)  # a numpy array (read-only view), nothing left on the device
    if method == "ours_end_to_end":
        from dose.absorbed import absorbed_dose

        source = lambda *a: type("K", (), {"values": ker, "density_g_cm3": 1.0})()  # noqa: E731
        return lambda: absorbed_dose(tia, (VOXEL_MM,) * 3, "Lu-177", kernel_source=source)
    if method == "fftconvolve":
        return lambda: scipy.signal.fftconvolve(tia, ker, mode="same")
    if method == "fftconvolve_2workers":  # not what peer tools call; shown for a like-for-like core count

        def fn():
            with scipy.fft.set_workers(2):
                return scipy.signal.fftconvolve(tia, ker, mode="same")

        return fn
    if method == "oaconvolve":
        return lambda: scipy.signal.oaconvolve(tia, ker, mode="same")
    raise ValueError(method)


def peak_memory(method: str, size: int, kind: str, path: str | None) -> dict:
    """Child process: two calls (the first compiles ours); peak RSS of this method alone."""
    fn = method_call(method, tia_map(size), kernel(kind, path))
    fn()
    fn()
    return {"method": method, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def interleaved_times(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times of `repeats` rounds; each round calls every method once, in an order
    rotated from round to round, so slow phases of a shared machine hit all methods alike."""
    names = list(calls)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds (one call of every method each)")
    ap.add_argument("--kernel", choices=["generated", "pytheranostics"], default="generated")
    ap.add_argument("--kernel-file", help="kernel file: raw float32 51^3 (pytheranostics, default ../shared) or .npy")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(peak_memory(args.child, args.size, args.kernel, args.kernel_file)))
        return

    import jax

    ker = kernel(args.kernel, args.kernel_file)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"TIA map {args.size}^3 float32, 177Lu kernel '{args.kernel}' {ker.shape}, voxel {VOXEL_MM} mm, "
          f"{cores} CPU cores usable, JAX device {jax.devices()[0]}, repeats {args.repeats} (medians)")
    memory = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--child", method, "--size", str(args.size), "--kernel", args.kernel] + (
            ["--kernel-file", args.kernel_file] if args.kernel_file else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{method} failed: {out.stderr.strip()}")
        memory[method] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_gb"]

    tia = tia_map(args.size)
    calls = {method: method_call(method, tia, ker) for method in METHODS}
    for fn in calls.values():
        fn()  # warm-up (JIT compilation for ours)
    times = interleaved_times(calls, args.repeats)
    median = {m: statistics.median(t) for m, t in times.items()}
    for m in METHODS:
        print(f"  {m:22s} median {median[m]:.3f} s  (min {min(times[m]):.3f})   peak RSS {memory[m]:.2f} GB (own process)")

    def ratio(peer: str, ours: str = "ours") -> str:
        per_round = [a / b for a, b in zip(times[peer], times[ours])]
        return f"{median[peer] / median[ours]:.2f}x (median of per-round ratios {statistics.median(per_round):.2f}x)"

    print(f"ratio fftconvolve / ours            = {ratio('fftconvolve')}  (target >= 3)")
    print(f"ratio oaconvolve  / ours            = {ratio('oaconvolve')}")
    print(f"ratio fftconvolve / ours_end_to_end = {ratio('fftconvolve', 'ours_end_to_end')}")
    print(f"ratio fftconvolve (2 scipy.fft workers) / ours = {ratio('fftconvolve_2workers')}")

    from dose.convolution import convolve

    tia = tia_map(args.size)
    exact = scipy.signal.fftconvolve(tia.astype(np.float64), ker.astype(np.float64), mode="same")
    for name, value in (("ours", convolve(tia, ker)), ("fftconvolve", scipy.signal.fftconvolve(tia, ker, mode="same")),
                        ("oaconvolve", scipy.signal.oaconvolve(tia, ker, mode="same"))):
        print(f"max |{name} - float64 fftconvolve| / max = {np.max(np.abs(value - exact)) / exact.max():.2e}")


if __name__ == "__main__":
    main()
