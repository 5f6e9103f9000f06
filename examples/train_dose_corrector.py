"""Regenerate the training pairs and the shipped CNN dose-corrector weights (issue 8).

    .venv/bin/python examples/train_dose_corrector.py            # -> dose/corrector/weights/lu177_12mm.pt

Pairs: `twin.corrector_data.phantom_pairs` (synthetic whole-body phantoms, 36 x 28 x 72
voxels of 12 mm, 177Lu; input the density-scaled kernel dose, target the
heterogeneity-aware `reference` dose).  Phantom seeds 1..N (`--pairs`, default 120) are
split into training and validation (`dose.corrector.train`, seeded); seeds 1001..1010 (the
held-out set of benchmarks/bench_corrector.py) and 901..910 (a second unseen set, used to
compare trained weights: `bench_corrector.py --seeds 901-910`) must never be trained on.  Writes
OUT.pt (state_dict, torch.save, loaded with weights_only=True) and OUT.pt.json (network
config + provenance: nuclide, voxel size, grid, seeds, epochs, losses, torch version,
command).  About 1.4 s per pair plus ~22 s per epoch on two CPU cores (defaults: 120 pairs, 60
epochs, 25 min measured).
Deterministic given the arguments on one machine (torch seeded, 2 threads).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dose.corrector.inference import DEFAULT_WEIGHTS
from dose.corrector.train import train
from twin.corrector_data import SMALL_SHAPE_XYZ, SMALL_VOXEL_MM, phantom_pairs

HELD_OUT_SEEDS = tuple(range(1001, 1011))  # benchmarks/bench_corrector.py; never trained on
COMPARISON_SEEDS = tuple(range(901, 911))  # a second unseen set for comparing weights; never trained on
NUCLIDE = "Lu-177"


def train_weights(out: str, n_pairs: int = 120, epochs: int = 60, lr: float = 1e-3, crop: int | None = 32,
                  base: int = 8, seed: int = 0, threads: int = 2, progress: bool = True, command: str = "",
                  additive_window: int = 5):
    """Generate phantom pairs 1..n_pairs, train, write `out` (+ .json).  Returns the history."""
    if n_pairs >= COMPARISON_SEEDS[0]:
        raise ValueError(f"n_pairs: training seeds 1..{n_pairs} would overlap the held-out / comparison seeds "
                         f"{COMPARISON_SEEDS[0]}..{COMPARISON_SEEDS[-1]} and {HELD_OUT_SEEDS[0]}..{HELD_OUT_SEEDS[-1]}")
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pairs = phantom_pairs(range(1, n_pairs + 1), nuclide=NUCLIDE)
    t_pairs = time.perf_counter() - t0
    if progress:
        print(f"{n_pairs} pairs in {t_pairs:.0f} s", flush=True)
    provenance = {"nuclide": NUCLIDE, "voxel_mm": [SMALL_VOXEL_MM] * 3, "grid_xyz": list(SMALL_SHAPE_XYZ),
                  "pair_seeds": [1, n_pairs], "held_out_seeds": list(HELD_OUT_SEEDS),
                  "pairs": "twin.corrector_data.phantom_pairs (density-kernel dose -> reference dose)",
                  "base": base, "threads": threads, "command": command}
    t1 = time.perf_counter()
    _, hist = train(pairs, epochs=epochs, lr=lr, seed=seed, base=base, crop=crop, checkpoint=out,
                    val_fraction=0.2, patience=epochs, provenance=provenance, progress=progress,
                    additive_scale_voxels=additive_window)
    hist["pairs_s"], hist["train_s"] = t_pairs, time.perf_counter() - t1
    return hist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(DEFAULT_WEIGHTS), help="weights path (default: the shipped file)")
    ap.add_argument("--pairs", type=int, default=120, help="phantom seeds 1..N for training + validation")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--crop", type=int, default=32, help="training window edge (voxels); 0 = whole volumes")
    ap.add_argument("--base", type=int, default=8, help="channels of the first U-Net level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--additive-window", type=int, default=5,
                    help="odd window (voxels) of the local dose maximum scaling the additive term")
    a = ap.parse_args(argv)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    command = "python examples/train_dose_corrector.py " + " ".join(sys.argv[1:] if argv is None else argv)
    hist = train_weights(a.out, a.pairs, a.epochs, a.lr, a.crop or None, a.base, a.seed, command=command.strip(),
                         additive_window=a.additive_window)
    print(f"validation loss (mean relative error): uncorrected {hist['baseline_val']:.4g}, corrected "
          f"{hist['best_val']:.4g} ({len(hist['val'])} epochs, {hist['train_s']:.0f} s); weights -> {a.out}")


if __name__ == "__main__":
    main()
