"""Regenerate training pairs and corrector weights (issue 8).

    .venv/bin/python examples/train_dose_corrector.py OUT.pt [--seeds 12] [--epochs 60]

Pairs: twin.corrector_data.phantom_pairs (synthetic whole-body phantoms, 12 mm grid,
density-kernel dose -> reference dose).  Writes OUT.pt (state_dict, torch.save) and
OUT.pt.json (config + provenance: seeds, losses).  About 4 s per pair plus training.
"""
import argparse

from twin.corrector_data import phantom_pairs as make_pairs
from dose.corrector.train import train


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    pairs = make_pairs(range(1, a.seeds + 1))
    _, hist = train(pairs, epochs=a.epochs, lr=a.lr, checkpoint=a.out)
    print(f"validation loss: uncorrected {hist['baseline_val']:.4g}, corrected {hist['best_val']:.4g} "
          f"({len(hist['val'])} epochs); weights -> {a.out}")


if __name__ == "__main__":
    main()
