"""Homogeneous media for voxel kernels: density and the composition data the kernel
physics needs (electron-to-mass ratio Z/A and mean excitation energy I).

Where the numbers come from (each row below repeats its source):

* Densities: ICRU Report 44 (1989, "Tissue substitutes in radiation dosimetry and
  measurement") and ICRU Report 46 (1992) body tissues, as also used for the ICRP
  adult reference tissues (ICRP Publication 89 / 110).
* ``Z/A`` and ``I``: NIST ESTAR / XCOM material compositions (Berger MJ, Coursey JS,
  Zucker MA, Chang J, NISTIR 4999; ICRU Report 37, 1984), which take the compositions
  from ICRU 44 / ICRP.  Values recalled from the NIST material table; they enter the
  kernels only through the electron stopping power (logarithmic in I) and the photon
  electron-density scaling, so a 1 % error in Z/A moves a kernel by about 1 %.

`Medium.electron_density_rel_water` = ρ (Z/A) / (ρ_w (Z/A)_w) is the quantity that
scales Compton-dominated photon attenuation between media.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DoseError


@dataclass(frozen=True)
class Medium:
    """A homogeneous medium: mass density (g/cm³), Z/A (mol/g, electrons per nucleon),
    mean excitation energy (eV) and the source of the numbers."""

    name: str
    density_g_cm3: float
    z_over_a: float
    mean_excitation_ev: float
    source: str

    @property
    def electron_density_rel_water(self) -> float:
        """ρ_e(medium) / ρ_e(water) = ρ (Z/A) / (1.000 × 0.55508)."""
        return self.density_g_cm3 * self.z_over_a / (WATER.density_g_cm3 * WATER.z_over_a)


# Liquid water: ρ = 1.000 g/cm³; Z/A = 0.55508, I = 75.0 eV (ICRU Report 37 / NIST ESTAR "Water, liquid").
WATER = Medium("water", 1.000, 0.55508, 75.0, "ICRU 37; NIST ESTAR 'Water, liquid'")

_MEDIA = {
    "water": WATER,
    # Adult soft tissue: ρ = 1.03 g/cm³ (ICRU 46 / ICRP 89 adult soft tissue);
    # Z/A = 0.54975, I = 72.3 eV (NIST ESTAR 'Tissue, soft (ICRP)').
    "soft_tissue": Medium("soft_tissue", 1.03, 0.54975, 72.3, "ρ: ICRU 46 / ICRP 89; Z/A, I: NIST ESTAR 'Tissue, soft (ICRP)'"),
    # Inflated lung: ρ = 0.26 g/cm³ (ICRU 44 'Lung, inflated'); Z/A = 0.54965, I = 75.3 eV
    # (NIST ESTAR 'Lung (ICRP)', the composition of lung tissue, at the inflated density).
    "lung": Medium("lung", 0.26, 0.54965, 75.3, "ρ: ICRU 44 inflated lung; Z/A, I: NIST ESTAR 'Lung (ICRP)'"),
    # Cortical bone: ρ = 1.85 g/cm³, Z/A = 0.52130, I = 106.4 eV, all three from the NIST
    # ESTAR material 'Bone, cortical (ICRP)' (ICRU 44 lists 1.92 g/cm³ for its cortical bone).
    "cortical_bone": Medium("cortical_bone", 1.85, 0.52130, 106.4, "NIST ESTAR 'Bone, cortical (ICRP)'"),
    # Adipose tissue: ρ = 0.95 g/cm³ (ICRU 44 / ICRU 46 "Adipose tissue"); Z/A = 0.55947,
    # I = 63.2 eV (NIST ESTAR 'Adipose tissue (ICRP)').
    "adipose": Medium("adipose", 0.95, 0.55947, 63.2, "ρ: ICRU 44/46 adipose; Z/A, I: NIST ESTAR 'Adipose tissue (ICRP)'"),
}

MEDIA_NAMES = tuple(_MEDIA)


def medium(name: str) -> Medium:
    """The medium called `name` (one of :data:`MEDIA_NAMES`); DoseError otherwise."""
    if isinstance(name, Medium):
        return name
    try:
        return _MEDIA[name]
    except (KeyError, TypeError):
        raise DoseError(f"medium: unknown medium {name!r}; expected one of {', '.join(MEDIA_NAMES)}") from None


def density_g_cm3(name: str) -> float:
    """Mass density of the medium `name`, g/cm³."""
    return medium(name).density_g_cm3
