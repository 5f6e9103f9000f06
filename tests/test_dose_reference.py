"""Heterogeneity-aware reference method (dose.reference) against exact analytic kernels.

The analytic Gaussian kernel of test_dose_convolution is evaluated directly in a medium
of any density (sigma = sigma_w / rho, voxel mass rho L^3), which is independent of the
range-scaling identity S_r,L = r^2 S_w,rL that dose.reference relies on.
"""

import numpy as np
import pytest

from dose.absorbed import absorbed_dose
from dose.errors import InvalidDoseInputError
from dose.reference import reference_dose
from test_dose_convolution import direct_sum, gaussian_kernel_source

VOXEL = (4.0, 4.0, 4.0)
N = 16


def _tia():
    rng = np.random.default_rng(7)
    tia = np.zeros((N, N, N))
    tia[4:12, 5:11, 3:13] = rng.random((8, 6, 10)) * 100.0
    return tia


def test_reference_equals_kernel_in_water():
    tia = _tia()
    water = np.ones(tia.shape)
    ref = absorbed_dose(tia, VOXEL, "Lu-177", method="reference", density_g_cm3=water, kernel_source=gaussian_kernel_source)
    kernel = absorbed_dose(tia, VOXEL, "Lu-177", medium="water", kernel_source=gaussian_kernel_source)
    assert np.max(np.abs(ref - kernel)) / kernel.max() < 1e-4


@pytest.mark.parametrize("rho", [0.3, 1.75])  # density nodes: exact
def test_reference_is_exactly_range_scaled_in_uniform_media(rho):
    tia = _tia()
    ref = reference_dose(tia, VOXEL, "Lu-177", np.full(tia.shape, rho), kernel_source=gaussian_kernel_source)
    exact = direct_sum(tia, gaussian_kernel_source("Lu-177", VOXEL, density=rho).values) * 1e-3
    assert np.max(np.abs(ref - exact)) / exact.max() < 1e-9


def test_reference_between_density_nodes_is_close():
    tia = _tia()
    ref = reference_dose(tia, VOXEL, "Lu-177", np.full(tia.shape, 0.26), kernel_source=gaussian_kernel_source)
    exact = direct_sum(tia, gaussian_kernel_source("Lu-177", VOXEL, density=0.26).values) * 1e-3
    # linear interpolation between the 0.2 and 0.3 nodes
    assert np.max(np.abs(ref - exact)) / exact.max() < 0.05


def test_lung_and_bone_differ_from_water_in_the_expected_direction():
    """Same activity, same energy: (a) inside a uniform source region the dose is energy
    over mass, so lung (low density) > water > bone; (b) the energy kept in the source
    voxel (self-absorbed fraction D(0) m / E) falls with the longer range in lung and rises
    in bone; (c) beyond an interface, electrons reach further into lung (higher dose a few
    voxels away) and less far into bone."""
    uniform = np.full((N, N, N), 10.0)
    point = np.zeros((N, N, N))
    point[8, 8, 8] = 1000.0
    results = {}
    for name, rho in (("lung", 0.3), ("water", 1.0), ("bone", 1.75)):
        density = np.full((N, N, N), rho)
        results[name] = (
            reference_dose(uniform, VOXEL, "Lu-177", density, kernel_source=gaussian_kernel_source)[8, 8, 8],
            reference_dose(point, VOXEL, "Lu-177", density, kernel_source=gaussian_kernel_source)[8, 8, 8] * rho,
        )
    assert results["lung"][0] > results["water"][0] > results["bone"][0]
    assert results["lung"][0] / results["water"][0] == pytest.approx(1 / 0.3, rel=1e-3)
    assert results["lung"][1] < results["water"][1] < results["bone"][1]

    source = np.zeros((N, N, N))
    source[8, 8, 7] = 1000.0  # in water, next to a slab starting at x = 8
    far = {}
    for name, rho in (("lung", 0.3), ("water", 1.0), ("bone", 1.75)):
        density = np.ones((N, N, N))
        density[:, :, 8:] = rho
        far[name] = reference_dose(source, VOXEL, "Lu-177", density, kernel_source=gaussian_kernel_source)[8, 8, 9]
    assert far["lung"] > far["water"] > far["bone"]


def test_reference_rejects_bad_nodes_and_shapes():
    tia = _tia()
    with pytest.raises(InvalidDoseInputError, match="nodes"):
        reference_dose(tia, VOXEL, "Lu-177", np.ones(tia.shape), kernel_source=gaussian_kernel_source, nodes=(0.5, 2.0))
    with pytest.raises(InvalidDoseInputError, match="shape"):
        reference_dose(tia, VOXEL, "Lu-177", np.ones((N, N, N + 1)), kernel_source=gaussian_kernel_source)


# ---- with the physics kernels of dose.kernels (177Lu, 4 mm voxels) ----


def test_reference_equals_kernel_in_water_with_generated_kernels():
    tia = _tia()
    ref = absorbed_dose(tia, VOXEL, "Lu-177", method="reference", density_g_cm3=np.ones(tia.shape))
    kernel = absorbed_dose(tia, VOXEL, "Lu-177", medium="water")
    assert np.max(np.abs(ref - kernel)) / kernel.max() < 1e-4


def test_generated_kernels_lung_and_bone_direction():
    """As for the analytic kernel: uniform-source dose lung > water > bone (energy over
    mass); self-absorbed energy in the source voxel lung < water < bone (range); dose one
    voxel across an interface from a water source lung > water > bone (range)."""
    uniform, point, source = np.full((N, N, N), 10.0), np.zeros((N, N, N)), np.zeros((N, N, N))
    point[8, 8, 8] = 1000.0
    source[8, 8, 7] = 1000.0
    inside, self_absorbed, across = {}, {}, {}
    for name, rho in (("lung", 0.26), ("water", 1.0), ("bone", 1.92)):
        density = np.full((N, N, N), rho)
        inside[name] = absorbed_dose(uniform, VOXEL, "Lu-177", method="reference", density_g_cm3=density)[8, 8, 8]
        self_absorbed[name] = absorbed_dose(point, VOXEL, "Lu-177", method="reference", density_g_cm3=density)[8, 8, 8] * rho
        slab = np.ones((N, N, N))
        slab[:, :, 8:] = rho
        across[name] = absorbed_dose(source, VOXEL, "Lu-177", method="reference", density_g_cm3=slab)[8, 8, 8]
    assert inside["lung"] > inside["water"] > inside["bone"]
    assert self_absorbed["lung"] < self_absorbed["water"] < self_absorbed["bone"]
    assert across["lung"] > across["water"] > across["bone"]
