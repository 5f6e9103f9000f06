"""Kernel convolution, local deposition, density methods and input checks of dose.absorbed_dose.

Most tests use an analytic kernel (`gaussian_kernel_source`): a Gaussian energy-spread
point kernel, box-averaged exactly over source and target voxels (closed form with
erf), density-scaled like a real kernel (sigma ~ 1/rho).  It is independent of
dose.kernels, so the convolution machinery is tested against exact numbers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.signal
import SimpleITK as sitk
from scipy.special import erf

from dose import nuclides
from dose.absorbed import absorbed_dose, resample_activity
from dose.convolution import FFTConvolver, convolve, fft_shape
from dose.errors import GeometryError, InvalidDoseInputError, UnknownNuclideError

MEDIUM_DENSITY = {"water": 1.0, "soft_tissue": 1.03, "lung": 0.26, "adipose": 0.95, "cortical_bone": 1.92}
SIGMA_WATER_MM = 1.2  # spread of the analytic point kernel in unit-density water


@dataclass(frozen=True)
class AnalyticKernel:
    values: np.ndarray
    voxel_mm: tuple
    nuclide: str
    medium: str
    density_g_cm3: float


def _box_fraction(i: np.ndarray, length: float, sigma: float) -> np.ndarray:
    """Fraction of the energy emitted uniformly in [-L/2, L/2] absorbed in voxel i: second
    difference of F(z) = sigma (u Phi(u) + phi(u)), u = z/sigma, divided by L."""

    def antiderivative(z):
        u = z / sigma
        return sigma * (u * 0.5 * (1 + erf(u / math.sqrt(2))) + np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi))

    x = i * length
    return (antiderivative(x + length) - 2 * antiderivative(x) + antiderivative(x - length)) / length


def gaussian_kernel_source(nuclide, voxel_mm, medium="water", sigma_water_mm=SIGMA_WATER_MM, density=None):
    """Voxel S values (mGy/(MBq s)) of a Gaussian point kernel carrying the non-penetrating
    energy per decay, in a medium of density rho (sigma = sigma_water / rho); `density`
    (g/cm^3) overrides the medium's density."""
    rho = MEDIUM_DENSITY[medium] if density is None else density
    sigma = sigma_water_mm / rho
    fractions = []
    for length in voxel_mm:
        half = int(math.ceil(6 * sigma / length))
        fractions.append(_box_fraction(np.arange(-half, half + 1, dtype=float), length, sigma))
    p = fractions[0][:, None, None] * fractions[1][None, :, None] * fractions[2][None, None, :]
    mass_kg = rho * 1e-6 * float(np.prod(voxel_mm))  # g/cm^3 -> kg/mm^3 is 1e-6
    energy_j = 1e6 * nuclides.non_penetrating_energy_mev(nuclide) * nuclides.MEV_TO_J  # per MBq s
    return AnalyticKernel(energy_j * p / mass_kg * 1e3, tuple(voxel_mm), nuclide, medium, rho)


def direct_sum(image, kernel):
    """D(t) = sum_s image(s) kernel(t - s + c), float64 loops over kernel offsets."""
    out = np.zeros(image.shape)
    c = [k // 2 for k in kernel.shape]
    for offset in itertools.product(*[range(k) for k in kernel.shape]):
        d = [o - ci for o, ci in zip(offset, c)]
        src = tuple(slice(max(0, -di), n - max(0, di)) for di, n in zip(d, image.shape))
        dst = tuple(slice(max(0, di), n - max(0, -di)) for di, n in zip(d, image.shape))
        if all(s.start < s.stop for s in src):
            out[dst] += kernel[offset] * image[src]
    return out


VOXEL = (4.0, 4.0, 4.0)


def test_fft_convolution_equals_direct_sum():
    rng = np.random.default_rng(1)
    image = rng.random((9, 10, 11))
    for kshape in [(5, 7, 3), (17, 19, 21), (1, 3, 1)]:  # small, larger than the image, degenerate
        kernel = rng.random(kshape)
        result = convolve(image, kernel)
        expected = direct_sum(image, kernel)
        assert result.dtype == np.float32
        assert np.max(np.abs(result - expected)) / np.max(expected) < 1e-5


def test_no_wrap_around_from_an_edge_source():
    n = 16
    image = np.zeros((n, n, n))
    image[0, 8, 8] = 1.0  # source on the first face
    kernel = np.ones((9, 9, 9))  # reaches 4 voxels
    dose = convolve(image, kernel)
    assert np.all(dose[:5, 4:13, 4:13] == pytest.approx(1.0, abs=1e-6))
    # a circular convolution of period n would deposit on the opposite face (indices 12-15)
    assert np.max(np.abs(dose[5:])) < 1e-6
    # the padded FFT length n + k // 2 = 20 is shorter than n + k - 1 = 24 and still enough
    assert fft_shape((n, n, n), (9, 9, 9)) == (20, 20, 20)
    assert np.max(np.abs(dose - direct_sum(image, kernel))) < 1e-6


def test_convolver_is_reusable_and_checks_shapes():
    rng = np.random.default_rng(2)
    kernel = rng.random((5, 5, 5))
    conv = FFTConvolver(kernel, (6, 7, 8))
    for _ in range(2):
        image = rng.random((6, 7, 8))
        assert np.allclose(np.asarray(conv(image)), scipy.signal.fftconvolve(image, kernel, mode="same"), rtol=0, atol=1e-5)
    with pytest.raises(InvalidDoseInputError, match="shape"):
        conv(np.zeros((6, 7, 9)))
    with pytest.raises(InvalidDoseInputError, match="odd"):
        FFTConvolver(np.ones((4, 5, 5)), (6, 7, 8))


def test_convolver_input_layouts_and_read_only_view():
    """Non-contiguous float64 input, integer input: same result as fftconvolve; the output is
    a read-only view (documented), and the padded host buffer is 64-byte aligned."""
    from dose.convolution import _aligned_zeros

    rng = np.random.default_rng(3)
    kernel = rng.random((3, 5, 7))
    base = rng.random((12, 9, 16))
    image = base[::2, :, ::2].transpose(2, 0, 1)  # (8, 6, 9), strided and transposed
    conv = FFTConvolver(kernel, image.shape)
    out = conv(image)
    expected = scipy.signal.fftconvolve(image, kernel, mode="same")
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.max(np.abs(out - expected)) < 1e-5 * np.max(expected)
    assert not out.flags.writeable
    ints = np.arange(np.prod(image.shape)).reshape(image.shape) % 5
    assert np.allclose(conv(ints), scipy.signal.fftconvolve(ints.astype(float), kernel, mode="same"), atol=1e-4)
    for shape in [(8, 6, 9), (288, 288, 288), (1, 1, 1)]:
        assert _aligned_zeros(shape).ctypes.data % 64 == 0 and not _aligned_zeros(shape).any()


def test_delta_source_returns_the_kernel():
    kernel = gaussian_kernel_source("Lu-177", VOXEL, "soft_tissue").values
    n = kernel.shape[0] + 4
    tia = np.zeros((n, n, n))
    c = n // 2
    tia[c, c, c] = 1000.0  # MBq s
    dose = absorbed_dose(tia, VOXEL, "Lu-177", kernel_source=gaussian_kernel_source)
    h = kernel.shape[0] // 2
    block = dose[c - h : c + h + 1, c - h : c + h + 1, c - h : c + h + 1]
    assert np.allclose(block, 1000.0 * kernel * 1e-3, rtol=1e-5, atol=1e-7 * block.max())
    assert dose.sum() == pytest.approx(1000.0 * kernel.sum() * 1e-3, rel=1e-5)


def test_uniform_source_gives_kernel_sum_in_the_interior():
    kernel = gaussian_kernel_source("Lu-177", VOXEL, "soft_tissue").values
    tia = np.full((24, 24, 24), 50.0)  # MBq s per voxel
    dose = absorbed_dose(tia, VOXEL, "Lu-177", kernel_source=gaussian_kernel_source)
    h = kernel.shape[0] // 2
    interior = dose[h:-h, h:-h, h:-h]
    assert np.allclose(interior, kernel.sum() * 50.0 * 1e-3, rtol=1e-5)
    # and Sum S x voxel mass = energy per decay (energy budget of the analytic kernel)
    e_j = nuclides.non_penetrating_energy_mev("Lu-177") * nuclides.MEV_TO_J
    assert kernel.sum() * 1e-3 * 1.03e-6 * 64.0 / 1e6 == pytest.approx(e_j, rel=1e-6)


def test_units_and_image_input():
    kernel_tia = np.zeros((12, 12, 12))
    kernel_tia[6, 6, 6] = 2.0
    gy_s = absorbed_dose(kernel_tia * 3600.0, VOXEL, "Lu-177", kernel_source=gaussian_kernel_source)
    gy_h = absorbed_dose(kernel_tia, VOXEL, "Lu-177", tia_units="MBq*h", kernel_source=gaussian_kernel_source)
    assert np.allclose(gy_s, gy_h, rtol=1e-6)

    image = sitk.GetImageFromArray(kernel_tia)
    image.SetSpacing((4.0, 4.0, 4.0))
    image.SetOrigin((-10.0, 5.0, 3.0))
    out = absorbed_dose(image, None, "Lu-177", tia_units="MBq*h", kernel_source=gaussian_kernel_source)
    assert isinstance(out, sitk.Image)
    assert out.GetOrigin() == image.GetOrigin() and out.GetSpacing() == image.GetSpacing()
    assert np.allclose(sitk.GetArrayFromImage(out), gy_h, rtol=1e-6)


def test_local_deposition_is_energy_over_mass():
    tia = np.zeros((4, 4, 4))
    tia[1, 2, 3] = 1e4  # MBq s
    dose = absorbed_dose(tia, (2.0, 3.0, 5.0), "Lu-177", method="local", density_g_cm3=np.full((4, 4, 4), 1.04))
    # ICRP-107 electrons of 177Lu: 0.1479 MeV per decay (../shared/research/dose.md 6.1)
    expected = 1e4 * 1e6 * 0.1479 * 1.602176634e-13 / (1.04 * 30.0 * 1e-6)
    assert dose[1, 2, 3] == pytest.approx(expected, rel=1e-3)
    assert np.count_nonzero(dose) == 1
    # without a CT the medium's density is used (ICRU 46 soft tissue, 1.03 g/cm^3)
    no_ct = absorbed_dose(tia, (2.0, 3.0, 5.0), "Lu-177", method="local", medium="soft_tissue")
    assert no_ct[1, 2, 3] == pytest.approx(dose[1, 2, 3] * 1.04 / 1.03, rel=1e-9)
    rbe = absorbed_dose(tia, (2.0, 3.0, 5.0), "Ac-225", method="local", density_g_cm3=np.ones((4, 4, 4)), rbe=5.0)
    plain = absorbed_dose(tia, (2.0, 3.0, 5.0), "Ac-225", method="local", density_g_cm3=np.ones((4, 4, 4)))
    assert rbe[1, 2, 3] == pytest.approx(5.0 * plain[1, 2, 3])


def test_density_rescaling_and_low_density_guard():
    tia = np.full((16, 16, 16), 10.0)
    kernel_dose = absorbed_dose(tia, VOXEL, "Lu-177", kernel_source=gaussian_kernel_source)
    rho = np.full(tia.shape, 1.03)
    same = absorbed_dose(tia, VOXEL, "Lu-177", method="density", density_g_cm3=rho, kernel_source=gaussian_kernel_source)
    assert np.allclose(same, kernel_dose, rtol=1e-6)  # medium density: no change
    rho[:8] = 0.00121  # air: guarded at 0.1 g/cm^3, amplification 1.03 / 0.1
    guarded = absorbed_dose(tia, VOXEL, "Lu-177", method="density", density_g_cm3=rho, kernel_source=gaussian_kernel_source)
    assert np.all(np.isfinite(guarded))
    assert np.allclose(guarded[:8], kernel_dose[:8] * 1.03 / 0.1, rtol=1e-5)
    assert np.allclose(guarded[8:], kernel_dose[8:], rtol=1e-6)


def test_multi_kernel_equals_kernel_in_uniform_tissue_and_masks_sources():
    rng = np.random.default_rng(3)
    tia = rng.random((14, 14, 14))
    ct = np.full(tia.shape, 40.0)  # HU of soft tissue -> 1.043 g/cm^3 (Schneider table)
    multi = absorbed_dose(tia, VOXEL, "Lu-177", method="multi_kernel", ct_hu=ct, kernel_source=gaussian_kernel_source)
    dens = absorbed_dose(tia, VOXEL, "Lu-177", method="density", ct_hu=ct, kernel_source=gaussian_kernel_source)
    assert np.allclose(multi, dens, rtol=1e-5)
    ct[:, :, :7] = -800.0  # lung half: its sources use the lung kernel
    multi = absorbed_dose(tia, VOXEL, "Lu-177", method="multi_kernel", ct_hu=ct, kernel_source=gaussian_kernel_source)
    from dose.density import hu_to_density

    rho = hu_to_density(ct)
    lung = np.where(ct < -120, tia, 0.0)
    soft = tia - lung
    k_lung = gaussian_kernel_source("Lu-177", VOXEL, "lung")
    k_soft = gaussian_kernel_source("Lu-177", VOXEL, "soft_tissue")
    expected = (direct_sum(lung, k_lung.values) * 0.26 + direct_sum(soft, k_soft.values) * 1.03) * 1e-3 / np.maximum(rho, 0.1)
    assert np.max(np.abs(multi - expected)) / expected.max() < 1e-5


def test_resampling_to_a_kernel_grid_conserves_activity():
    rng = np.random.default_rng(4)
    tia = rng.random((10, 12, 14)) * 100
    fine = resample_activity(tia, (4.0, 4.0, 4.0), (2.0, 2.0, 2.0))
    assert fine.shape == (20, 24, 28)
    assert fine.sum() == pytest.approx(tia.sum(), rel=1e-12)
    uniform = np.full((16, 16, 16), 8.0)
    direct = absorbed_dose(uniform, (3.0, 3.0, 3.0), "Lu-177", kernel_source=gaussian_kernel_source)
    via = absorbed_dose(uniform, (3.0, 3.0, 3.0), "Lu-177", kernel_voxel_mm=(1.5, 1.5, 1.5), kernel_source=gaussian_kernel_source)
    assert via.shape == uniform.shape
    assert np.allclose(via[6:10, 6:10, 6:10], direct[6:10, 6:10, 6:10], rtol=2e-3)


def test_bad_input_raises_specific_errors():
    tia = np.ones((6, 6, 6))
    with pytest.raises(UnknownNuclideError):
        absorbed_dose(tia, VOXEL, "Xx-999", kernel_source=gaussian_kernel_source)
    for bad in (-1.0, np.nan):
        t = tia.copy()
        t[1, 1, 1] = bad
        with pytest.raises(InvalidDoseInputError, match="tia"):
            absorbed_dose(t, VOXEL, "Lu-177", kernel_source=gaussian_kernel_source)
    for voxel in [(0.0, 4.0, 4.0), (-1.0, 4.0, 4.0), (4.0, 4.0), (np.inf, 1, 1)]:
        with pytest.raises(GeometryError, match="voxel_mm"):
            absorbed_dose(tia, voxel, "Lu-177", kernel_source=gaussian_kernel_source)
    with pytest.raises(GeometryError, match="shape"):
        absorbed_dose(tia, VOXEL, "Lu-177", method="density", ct_hu=np.zeros((6, 6, 7)), kernel_source=gaussian_kernel_source)
    image = sitk.GetImageFromArray(tia)
    ct = sitk.GetImageFromArray(np.zeros((6, 6, 6)))
    ct.SetOrigin((1.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="grid"):
        absorbed_dose(image, None, "Lu-177", method="density", ct_hu=ct, kernel_source=gaussian_kernel_source)
    image.SetSpacing((4.0, 4.0, 3.0))
    with pytest.raises(GeometryError, match="spacing"):
        absorbed_dose(image, VOXEL, "Lu-177", kernel_source=gaussian_kernel_source)
    with pytest.raises(InvalidDoseInputError, match="method"):
        absorbed_dose(tia, VOXEL, "Lu-177", method="monte_carlo")
    with pytest.raises(InvalidDoseInputError, match="rbe"):
        absorbed_dose(tia, VOXEL, "Lu-177", rbe=5.0, kernel_source=gaussian_kernel_source)
    with pytest.raises(InvalidDoseInputError, match="tia_units"):
        absorbed_dose(tia, VOXEL, "Lu-177", tia_units="Bq*s")
    with pytest.raises(InvalidDoseInputError, match="needs a CT"):
        absorbed_dose(tia, VOXEL, "Lu-177", method="density", kernel_source=gaussian_kernel_source)


# ---- with the physics kernels of dose.kernels (the default kernel source) ----


def test_delta_and_uniform_source_with_the_generated_177lu_kernel():
    from dose.kernels import voxel_kernel

    kernel = voxel_kernel("Lu-177", VOXEL, "soft_tissue").values
    n = kernel.shape[0]  # the centre voxel of an n^3 grid sees every kernel offset
    c = n // 2
    delta = np.zeros((n, n, n))
    delta[c, c, c] = 100.0
    dose = absorbed_dose(delta, VOXEL, "Lu-177")
    assert np.max(np.abs(dose - 100.0 * kernel * 1e-3)) < 1e-5 * dose.max()
    uniform = absorbed_dose(np.full((n, n, n), 100.0), VOXEL, "Lu-177")
    assert uniform[c, c, c] == pytest.approx(100.0 * kernel.sum() * 1e-3, rel=1e-5)


def test_multi_kernel_with_generated_kernels():
    rng = np.random.default_rng(5)
    tia = rng.random((12, 12, 12)) * 100
    ct = np.full(tia.shape, 40.0)
    multi = absorbed_dose(tia, VOXEL, "Lu-177", method="multi_kernel", ct_hu=ct)
    dens = absorbed_dose(tia, VOXEL, "Lu-177", method="density", ct_hu=ct)
    assert np.allclose(multi, dens, rtol=1e-5)
    ct[:, :, :6] = 1200.0  # bone half: sources there use the cortical-bone kernel, less dose per decay
    bone = absorbed_dose(tia, VOXEL, "Lu-177", method="multi_kernel", ct_hu=ct)
    assert np.all(np.isfinite(bone)) and bone[6, 6, 2] < dens[6, 6, 2]
