"""Seeded training with a validation split, early stopping and safe checkpoints.

Loss (dimensionless): L = mean_{v in body} ((D_corr(v) - D_ref(v)) / s)^2, s = max(D_phys),
so every patient counts equally whatever its activity.  The uncorrected baseline is
the same loss with D_corr = D_phys (the network starts there: its output layer is zero).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidDoseInputError
from .inference import check_inputs, save
from .network import DoseUNet3D


def _tensors(pair):
    d, r = check_inputs(pair["physics_gy"], pair["density_g_cm3"])
    ref = np.asarray(pair["reference_gy"], float)
    if ref.shape != d.shape:
        from ..errors import GeometryError
        raise GeometryError(f"reference_gy: shape {ref.shape} differs from physics_gy {d.shape}")
    crop = tuple(slice(0, (n // 4) * 4) for n in d.shape)
    mask = np.asarray(pair.get("body", np.ones(d.shape, bool)), bool)[crop]
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a[crop]), dtype=torch.float32)[None, None]
    s = float(d.max())
    return t(d), t(r), t(ref), torch.as_tensor(mask)[None, None], torch.full((1, 1, 1, 1, 1), s)


def _loss(pred, ref, mask, s):
    e = ((pred - ref) / s)[mask]
    return (e ** 2).mean()


def train(pairs, epochs: int = 30, lr: float = 3e-3, val_fraction: float = 0.34, patience: int = 8,
          seed: int = 0, base: int = 8, checkpoint: str | None = None):
    """Train a DoseUNet3D on `pairs` (see data.make_pair).  Returns (model, history)
    where history has per-epoch 'train', 'val' and the constant 'baseline_val'
    (uncorrected physics-dose loss on the validation set).  The best-validation
    weights are restored (and written to `checkpoint` with inference.save)."""
    if len(pairs) < 2:
        raise InvalidDoseInputError(f"pairs: expected >= 2 training pairs (train + validation), got {len(pairs)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    n_val = max(1, int(round(val_fraction * len(pairs))))
    data = [_tensors(pairs[i]) for i in order]
    val, tr = data[:n_val], data[n_val:]
    model = DoseUNet3D(base=base)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def evaluate(items):
        with torch.no_grad():
            return float(np.mean([_loss(model(d, r, s), ref, m, s).item() for d, r, ref, m, s in items]))

    baseline = float(np.mean([_loss(d, ref, m, s).item() for d, r, ref, m, s in val]))
    hist = {"train": [], "val": [], "baseline_val": baseline, "val_seeds": [int(pairs[i]["seed"]) for i in order[:n_val]]}
    best, best_state, wait = np.inf, None, 0
    for _ in range(epochs):
        model.train()
        tl = []
        for k in rng.permutation(len(tr)):
            d, r, ref, m, s = tr[k]
            # random flips (physics is mirror symmetric) as augmentation
            dims = [i + 2 for i in range(3) if rng.random() < 0.5]
            if dims:
                d, r, ref, m = (torch.flip(a, dims) for a in (d, r, ref, m))
            opt.zero_grad()
            loss = _loss(model(d, r, s), ref, m, s)
            loss.backward()
            opt.step()
            tl.append(loss.item())
        model.eval()
        v = evaluate(val)
        hist["train"].append(float(np.mean(tl)))
        hist["val"].append(v)
        if v < best:
            best, wait = v, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            wait += 1
            if wait >= patience:
                break
    model.load_state_dict(best_state)
    hist["best_val"] = best
    if checkpoint is not None:
        save(model, checkpoint, {"seed": seed, "epochs_run": len(hist["val"]), "best_val": best,
                                 "baseline_val": baseline, "train_seeds": [int(pairs[i]["seed"]) for i in order[n_val:]],
                                 "val_seeds": hist["val_seeds"]})
    return model, hist
