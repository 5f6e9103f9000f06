"""Analytic anatomy of the synthetic patient: shapes, label map and CT numbers.

Coordinates are patient LPS millimetres, as SimpleITK and DICOM use: +x towards the
patient's left, +y posterior, +z superior.  x = y = 0 is the body axis, z = 0 the bottom
of the default grid (below the pelvic floor).  The body is a head-and-trunk phantom (no
limbs): an elliptic-cylinder trunk, neck and head, with organs as ellipsoids and
elliptic cylinders, painted in order (a later structure overwrites an earlier one).

Each `Structure` gives a label region, a CT number and a relative uptake weight (the
intra-organ activity shape: e.g. renal cortex 1, medulla `MEDULLA_WEIGHT`).  Organ volumes
are set near the ICRP Publication 89 adult male reference masses (liver 1800 g, spleen
150 g, kidneys 310 g, parotids 2 x 25 g, submandibular glands 2 x 12.5 g, brain 1450 g);
lungs, bladder and bones are simplified shapes.  A seed varies every organ's semi-axes by
a log-normal factor (`anatomy_sd`) to make a cohort of different patients.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import ImagingError

# CT numbers (HU) of the tissues: representative values inside the ranges of the tissue
# classes of the HU-to-tissue calibration of Schneider W, Bortfeld T, Schlegel W, Phys Med
# Biol 2000;45:459 (lung, adipose, soft tissues, spongiosa, cortical bone; ranges recalled,
# not re-read) and standard radiology values (urine ~5, air -1000 by definition of HU).
# Not patient measurements.
HU = {
    "air": -1000.0,
    "lungs": -740.0,
    "adipose": -90.0,
    "muscle": 40.0,
    "liver": 60.0,
    "spleen": 45.0,
    "kidney": 30.0,
    "brain": 35.0,
    "heart": 40.0,  # myocardium and blood pool
    "salivary": 35.0,
    "urine": 5.0,
    "spongiosa": 350.0,  # vertebrae and pelvis (trabecular bone with marrow)
    "cortical": 1200.0,  # skull
    "lesion": 45.0,
}

#: Relative PSMA uptake of the renal medulla and pelvis versus the cortex inside the
#: "kidneys" label.  A modelling choice (PSMA-ligand uptake is predominantly cortical),
#: not a fitted literature value; the kidney total is unaffected by it.
MEDULLA_WEIGHT = 0.25

#: Region names painted by the generator; they follow pbpk.psma_model region names where
#: the model has the region (kidneys, salivary_glands, liver, spleen, lungs, heart,
#: brain, bone, urine, lesion_N).  "body" is the remainder of the body outline, which
#: the PBPK regions gi, muscle, adipose, skin, red_marrow, prostate, blood, rest and
#: tumour_rest are spread over (see activity.py).  "kidney_medulla" is not used: the
#: medulla is part of "kidneys".
BASE_REGIONS = ("body", "bone", "lungs", "heart", "liver", "spleen", "kidneys",
                "salivary_glands", "urine", "brain")


@dataclass(frozen=True)
class Ellipsoid:
    center_mm: tuple[float, float, float]
    semi_mm: tuple[float, float, float]

    def mask(self, x, y, z):
        (cx, cy, cz), (a, b, c) = self.center_mm, self.semi_mm
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2 <= 1.0

    def scaled(self, f):
        return replace(self, semi_mm=tuple(s * f for s in self.semi_mm))

    @property
    def volume_ml(self) -> float:
        a, b, c = self.semi_mm
        return 4.0 / 3.0 * np.pi * a * b * c / 1000.0


@dataclass(frozen=True)
class EllipticCylinder:
    """Axis along z from z0_mm to z1_mm; optional upper half-ellipsoid cap not included."""

    center_xy_mm: tuple[float, float]
    semi_xy_mm: tuple[float, float]
    z0_mm: float
    z1_mm: float

    def mask(self, x, y, z):
        (cx, cy), (a, b) = self.center_xy_mm, self.semi_xy_mm
        return (((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0) & (z >= self.z0_mm) & (z <= self.z1_mm)

    def scaled(self, f):
        return replace(self, semi_xy_mm=tuple(s * f for s in self.semi_xy_mm))


@dataclass(frozen=True)
class Structure:
    """One painted shape: its label region, CT number (HU) and relative uptake weight."""

    region: str
    shape: object
    hu: float
    weight: float = 1.0
    vary: bool = True  # its size varies with the anatomy seed


@dataclass(frozen=True)
class Lesion:
    """A spherical lesion: centre (LPS mm, frame of this module) and volume (mL)."""

    center_mm: tuple[float, float, float]
    volume_ml: float

    def __post_init__(self):
        if not (np.isfinite(self.volume_ml) and self.volume_ml > 0):
            raise ImagingError(f"Lesion.volume_ml = {self.volume_ml!r}; expected a positive volume in mL")
        if len(self.center_mm) != 3 or not np.all(np.isfinite(self.center_mm)):
            raise ImagingError(f"Lesion.center_mm = {self.center_mm!r}; expected three finite mm coordinates")

    @property
    def radius_mm(self) -> float:
        return (3.0 * self.volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)


#: Default lesions: a 10 mL pelvic lymph-node lesion and a 5 mL vertebral bone lesion.
DEFAULT_LESIONS = (Lesion((45.0, 0.0, 150.0), 10.0), Lesion((0.0, 85.0, 450.0), 5.0))


def reference_structures() -> tuple[Structure, ...]:
    """The reference (seed-independent) anatomy, in painting order."""
    E, C = Ellipsoid, EllipticCylinder
    S = Structure
    kidney_r, kidney_l = (-65.0, 55.0, 205.0), (65.0, 55.0, 235.0)
    return (
        # body outline: adipose everywhere, muscle inside (15 mm subcutaneous fat layer)
        S("body", C((0.0, 10.0), (170.0, 115.0), 20.0, 560.0), HU["adipose"], vary=False),
        S("body", C((0.0, 0.0), (60.0, 60.0), 560.0, 600.0), HU["adipose"], vary=False),
        S("body", C((0.0, 0.0), (80.0, 95.0), 600.0, 700.0), HU["adipose"], vary=False),
        S("body", E((0.0, 0.0, 700.0), (80.0, 95.0, 100.0)), HU["adipose"], vary=False),
        S("body", C((0.0, 10.0), (155.0, 100.0), 35.0, 545.0), HU["muscle"], vary=False),
        S("body", C((0.0, 0.0), (50.0, 50.0), 545.0, 610.0), HU["muscle"], vary=False),
        S("body", C((0.0, 0.0), (72.0, 87.0), 605.0, 700.0), HU["muscle"], vary=False),
        # bones: spine, pelvis, skull (skull shell = outer ellipsoid, brain painted inside)
        S("bone", C((0.0, 82.0), (22.0, 20.0), 40.0, 620.0), HU["spongiosa"], vary=False),
        S("bone", E((-95.0, 35.0, 110.0), (30.0, 55.0, 60.0)), HU["spongiosa"], vary=False),
        S("bone", E((95.0, 35.0, 110.0), (30.0, 55.0, 60.0)), HU["spongiosa"], vary=False),
        S("bone", E((0.0, 5.0, 720.0), (73.0, 88.0, 74.0)), HU["cortical"], vary=False),
        S("brain", E((0.0, 5.0, 720.0), (65.0, 80.0, 66.0)), HU["brain"]),
        S("lungs", E((-85.0, 10.0, 440.0), (65.0, 80.0, 120.0)), HU["lungs"]),
        S("lungs", E((85.0, 10.0, 450.0), (60.0, 80.0, 115.0)), HU["lungs"]),
        S("heart", E((25.0, -30.0, 390.0), (55.0, 45.0, 60.0)), HU["heart"]),
        S("liver", E((-65.0, -5.0, 300.0), (90.0, 75.0, 65.0)), HU["liver"]),  # 1838 mL
        S("spleen", E((100.0, 40.0, 320.0), (26.0, 36.0, 38.0)), HU["spleen"]),  # 149 mL
        S("kidneys", E(kidney_r, (28.0, 26.0, 50.0)), HU["kidney"]),  # 152 mL each
        S("kidneys", E(kidney_l, (28.0, 26.0, 50.0)), HU["kidney"]),
        S("kidneys", E(kidney_r, (17.0, 15.0, 34.0)), HU["kidney"], weight=MEDULLA_WEIGHT),
        S("kidneys", E(kidney_l, (17.0, 15.0, 34.0)), HU["kidney"], weight=MEDULLA_WEIGHT),
        S("salivary_glands", E((-55.0, 10.0, 640.0), (12.0, 20.0, 25.0)), HU["salivary"]),  # parotid
        S("salivary_glands", E((55.0, 10.0, 640.0), (12.0, 20.0, 25.0)), HU["salivary"]),
        S("salivary_glands", E((-35.0, -40.0, 625.0), (11.0, 13.0, 21.0)), HU["salivary"]),  # submandibular
        S("salivary_glands", E((35.0, -40.0, 625.0), (11.0, 13.0, 21.0)), HU["salivary"]),
        S("urine", E((0.0, -30.0, 70.0), (45.0, 35.0, 35.0)), HU["urine"]),
    )


def varied_structures(rng: np.random.Generator, anatomy_sd: float) -> tuple[Structure, ...]:
    """Reference structures with each organ's size scaled by exp(N(0, anatomy_sd)).

    One factor per region (so cortex and medulla, left and right, scale together).
    """
    if not (np.isfinite(anatomy_sd) and 0.0 <= anatomy_sd <= 0.2):
        raise ImagingError(f"anatomy_sd = {anatomy_sd!r}; expected a log-sd between 0 and 0.2")
    structures = reference_structures()
    regions = sorted({s.region for s in structures if s.vary})
    factors = dict(zip(regions, np.exp(anatomy_sd * rng.standard_normal(len(regions)))))
    return tuple(replace(s, shape=s.shape.scaled(factors[s.region])) if s.vary else s for s in structures)


def voxel_centres_mm(origin_mm, spacing_mm, shape_xyz):
    """Open-grid voxel-centre coordinates (x, y, z) broadcastable to a (z, y, x) array."""
    nx, ny, nz = shape_xyz
    x = origin_mm[0] + spacing_mm[0] * np.arange(nx)
    y = origin_mm[1] + spacing_mm[1] * np.arange(ny)
    z = origin_mm[2] + spacing_mm[2] * np.arange(nz)
    return x[None, None, :], y[None, :, None], z[:, None, None]


def paint(structures, lesions, origin_mm, spacing_mm, shape_xyz):
    """Label, CT and relative-uptake arrays (z, y, x) and the region-name table.

    Returns (labels uint16, hu float32, weight float64, region_names {label: name}).
    Lesions are painted last as spheres, labelled lesion_1, lesion_2, ...
    """
    x, y, z = voxel_centres_mm(origin_mm, spacing_mm, shape_xyz)
    nx, ny, nz = shape_xyz
    labels = np.zeros((nz, ny, nx), np.uint16)
    hu = np.full((nz, ny, nx), HU["air"], np.float32)
    weight = np.zeros((nz, ny, nx), np.float64)
    names = {i + 1: r for i, r in enumerate(BASE_REGIONS)}
    code = {r: i for i, r in names.items()}
    for s in structures:
        m = s.shape.mask(x, y, z)
        labels[m], hu[m], weight[m] = code[s.region], s.hu, s.weight
    for k, lesion in enumerate(lesions, start=1):
        name = f"lesion_{k}"
        code[name] = len(names) + 1
        names[code[name]] = name
        m = Ellipsoid(tuple(map(float, lesion.center_mm)), (lesion.radius_mm,) * 3).mask(x, y, z)
        if not m.any():
            raise ImagingError(f"lesions[{k - 1}] at {lesion.center_mm} mm: no voxel of the grid inside it")
        if (labels[m] == 0).any():
            raise ImagingError(f"lesions[{k - 1}] at {lesion.center_mm} mm: sphere reaches outside the body")
        labels[m], hu[m], weight[m] = code[name], HU["lesion"], 1.0
    faces = (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1])
    if any(f.any() for f in faces):
        raise ImagingError("grid too small: the body outline touches the grid border; enlarge shape or voxel_mm")
    missing = [n for c, n in names.items() if not (labels == c).any()]
    if missing:
        raise ImagingError(f"grid too small or coarse: regions {missing} have no voxel; enlarge shape or refine voxel_mm")
    return labels, hu, weight, names
