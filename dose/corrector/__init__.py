"""CNN dose corrector (issue 8): a residual 3D U-Net that maps the fast density-scaled
kernel dose towards the heterogeneity-aware `reference` dose.  torch is imported only
inside this package."""
from .data import make_pair, pair_from_reference
from .inference import DEFAULT_WEIGHTS, Corrector, default_weights, load, save
from .train import train

__all__ = ["Corrector", "DEFAULT_WEIGHTS", "default_weights", "load", "make_pair", "pair_from_reference", "save", "train"]
