"""Seeded training with a validation split, early stopping and safe checkpoints.

Loss (dimensionless, mean absolute relative error over the body):
    L = mean_{v in body} |D_corr(v) - D_ref(v)| / (D_ref(v) + eps s),  s = max(D_phys), eps = 1e-3,
so every voxel counts by its relative error whatever its dose (cold lung next to a hot
kidney as much as the kidney) and every patient equally whatever its activity; eps s
keeps voxels far from all activity from dominating.  The uncorrected baseline is the
same loss with D_corr = D_phys (the network starts there: its output layer is zero).
Adam with a cosine-decaying learning rate and gradient-norm clipping.  Training steps see random crops (`crop` voxels a side, multiples of 4) of each pair,
validation the whole volumes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidDoseInputError
from ..kernels import _voxel_tuple
from .data import pair_from_reference
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


def _as_pair(item, k: int, voxel_mm, nuclide: str, tia_units: str) -> dict:
    """A pair dict as given, or one made by `pair_from_reference` from a (tia, ct_hu,
    reference_gy[, body]) tuple of arrays, SimpleITK images or image file paths."""
    if isinstance(item, dict):
        return item
    if isinstance(item, (tuple, list)) and len(item) in (3, 4):
        body = item[3] if len(item) == 4 else None
        return pair_from_reference(*item[:3], voxel_mm, nuclide=nuclide, tia_units=tia_units, body=body)
    raise InvalidDoseInputError(f"pairs[{k}]: expected a pair dict (dose.corrector.pair_from_reference, make_pair) or "
                                f"a (tia, ct_hu, reference_gy[, body]) tuple of arrays or image paths, got "
                                f"{type(item).__name__}")


def _common_geometry(pairs) -> dict:
    """The voxel size (z, y, x mm) and nuclide the pairs record, for the weights'
    provenance (the corrector is specific to both); InvalidDoseInputError if they differ."""
    voxels = {_voxel_tuple(p["voxel_mm"]) for p in pairs if p.get("voxel_mm") is not None}
    nuclides = {str(p["nuclide"]) for p in pairs if p.get("nuclide") is not None}
    for key, values in (("voxel_mm", voxels), ("nuclide", nuclides)):
        if len(values) > 1:
            raise InvalidDoseInputError(f"pairs: {key} differs between pairs ({sorted(values)}); a corrector is trained "
                                        "for one voxel size and one nuclide")
    out = {}
    if voxels:
        out["voxel_mm"] = list(voxels.pop())
    if nuclides:
        out["nuclide"] = nuclides.pop()
    return out


def _pair_id(pair: dict, index: int) -> int:
    """The pair's phantom seed, or its index in `pairs` when it has none (user data)."""
    return int(pair["seed"] if pair.get("seed") is not None else index)


REL_EPS = 1e-3  # eps of the loss (fraction of the maximum dose), a design choice
GRAD_CLIP = 1.0  # global gradient-norm clip (design choice: the relative loss has heavy-tailed gradients)


def _loss(pred, ref, mask, s):
    e = ((pred - ref).abs() / (ref + REL_EPS * s))[mask]
    return e.mean() if e.numel() else (pred.sum() * 0.0)


def _crop(items, crop, rng):
    """A random (crop, crop, crop) window (clipped to the volume) of every tensor in items."""
    shape = items[0].shape[2:]
    sl = [slice(None), slice(None)]
    for n in shape:
        c = min(crop, n)
        o = int(rng.integers(0, n - c + 1))
        sl.append(slice(o, o + c))
    return [a[tuple(sl)] for a in items]


def train(pairs, epochs: int = 30, lr: float = 3e-3, val_fraction: float = 0.34, patience: int = 8,
          seed: int = 0, base: int = 8, checkpoint: str | None = None, crop: int | None = None,
          provenance: dict | None = None, progress: bool = False, additive_scale_voxels: int = 5,
          voxel_mm=None, nuclide: str = "Lu-177", tia_units: str = "MBq*s"):
    """Train a DoseUNet3D on `pairs`: dicts of `data.pair_from_reference` / `data.make_pair`,
    or (tia, ct_hu, reference_gy[, body]) tuples of arrays, SimpleITK images or image file
    paths (NIfTI, e.g. a Monte Carlo dose from the user's own engine), made into pairs with
    `voxel_mm` (arrays only), `nuclide` and `tia_units`.  Returns (model, history)
    where history has per-epoch 'train', 'val' and the constant 'baseline_val'
    (uncorrected physics-dose loss on the validation set).  The best-validation
    weights are restored (and written to `checkpoint` with inference.save; its JSON
    provenance records the pairs' voxel size and nuclide, which `load` checks at use, and
    is extended by `provenance`).  train_seeds / val_seeds: the pairs' seeds, or their
    indices in `pairs` for pairs without one.  crop: edge (voxels,
    multiple of 4) of the random training windows; None = whole volumes.  progress: print
    one line per epoch.  additive_scale_voxels: window of the local dose maximum that scales
    the network's additive term (`network.DoseUNet3D`)."""
    if crop is not None and (crop % 4 or crop < 8):
        raise InvalidDoseInputError(f"crop: expected a multiple of 4 >= 8 voxels, got {crop}")
    if len(pairs) < 2:
        raise InvalidDoseInputError(f"pairs: expected >= 2 training pairs (train + validation), got {len(pairs)}")
    pairs = [_as_pair(p, k, voxel_mm, nuclide, tia_units) for k, p in enumerate(pairs)]
    geometry = _common_geometry(pairs)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    n_val = max(1, int(round(val_fraction * len(pairs))))
    data = [_tensors(pairs[i]) for i in order]
    val, tr = data[:n_val], data[n_val:]
    model = DoseUNet3D(base=base, additive_scale_voxels=additive_scale_voxels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # cosine decay of the learning rate over all steps (lr -> 0.05 lr), a common choice
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(tr)), eta_min=0.05 * lr)

    def evaluate(items):
        with torch.no_grad():
            return float(np.mean([_loss(model(d, r, s), ref, m, s).item() for d, r, ref, m, s in items]))

    baseline = float(np.mean([_loss(d, ref, m, s).item() for d, r, ref, m, s in val]))
    hist = {"train": [], "val": [], "baseline_val": baseline, "val_seeds": [_pair_id(pairs[i], i) for i in order[:n_val]]}
    best, best_state, wait = np.inf, None, 0
    for _ in range(epochs):
        model.train()
        tl = []
        for k in rng.permutation(len(tr)):
            d, r, ref, m, s = tr[k]
            if crop is not None:
                d, r, ref, m = _crop([d, r, ref, m], crop, rng)
            # random flips (physics is mirror symmetric) as augmentation
            dims = [i + 2 for i in range(3) if rng.random() < 0.5]
            if dims:
                d, r, ref, m = (torch.flip(a, dims) for a in (d, r, ref, m))
            opt.zero_grad()
            loss = _loss(model(d, r, s), ref, m, s)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
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
        if progress:
            print(f"epoch {len(hist['val'])}: train {hist['train'][-1]:.4g}, val {v:.4g} (uncorrected {baseline:.4g})",
                  flush=True)
    model.load_state_dict(best_state)
    hist["best_val"] = best
    if checkpoint is not None:
        record = {"seed": seed, "epochs": epochs, "epochs_run": len(hist["val"]), "lr": lr, "crop": crop,
                  "loss": "mean |D - D_ref| / (D_ref + 1e-3 max D) over the body", "best_val": best,
                  "baseline_val": baseline, "train_loss": hist["train"], "val_loss": hist["val"],
                  "train_seeds": [_pair_id(pairs[i], i) for i in order[n_val:]], "val_seeds": hist["val_seeds"],
                  "torch_version": torch.__version__, **geometry}
        record.update(provenance or {})
        save(model, checkpoint, record)
    return model, hist
