"""CNN dose corrector (issue 8): a residual 3D U-Net that maps the fast density-scaled
kernel dose towards the heterogeneity-aware `reference` dose.  torch is imported only
inside this package."""
from .inference import Corrector, load, save

__all__ = ["Corrector", "load", "save"]
