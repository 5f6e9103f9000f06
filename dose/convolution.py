"""Linear (zero-padded, never circular) 3-D convolution of a TIA map with a voxel kernel.

MIRD voxel schema (Bolch et al. 1999, MIRD Pamphlet 17, J Nucl Med 40:11S): in a
homogeneous medium the dose to voxel t is

    D(t) = sum_s A~(s) * S(t - s),

a 3-D convolution.  It is computed here by FFT in JAX (float32, JIT-compiled):

    D = crop( irfftn( rfftn(pad(A~)) * rfftn(pad(S)) ) ),

where both arrays are zero padded to at least n + k // 2 samples per axis (n image size,
k kernel size; see `fft_shape` for why that is enough for the centred output), so the
kept part of the cyclic convolution of the padded arrays equals the linear one:
activity near one face never deposits dose on the opposite face.  Each padded length is
rounded up to a "good" FFT size (2-3-5-7-11 smooth, `scipy.fft.next_fast_len`).
The output is the central ("same") part: D has the image's shape and the kernel's
source voxel is its centre index k // 2.

`FFTConvolver` caches the kernel spectrum for one image shape (the kernel of a nuclide
and voxel size is reused for many maps), so each call costs one forward and one
inverse real FFT.  Kernel extents beyond 2n - 1 voxels along an axis cannot reach any
voxel of the image and are cropped before the FFT.

Memory traffic, not arithmetic, is most of the cost besides the two FFTs (a 256^3 map
padded to 288^3 is 96 MB per array), so the data path avoids copies: the image is
written once into a zeroed, 64-byte aligned host buffer of the padded shape, which the
CPU backend then uses in place (`jax.device_put` aliases aligned host memory instead of
copying it; `jnp.asarray` of an unaligned 64 MB array costs ~70 ms, padding inside XLA
another ~45 ms), and the "same" output is returned as a read-only numpy view of the
inverse FFT's result rather than a sliced copy (measured in
benchmarks/bench_dose_convolution.py).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from .errors import InvalidDoseInputError


def _check_kernel(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != 3 or any(k % 2 == 0 for k in kernel.shape):
        raise InvalidDoseInputError(
            f"kernel: expected a 3-D array with odd size on every axis (source voxel at the "
            f"centre), got shape {kernel.shape}"
        )
    if not np.all(np.isfinite(kernel)):
        raise InvalidDoseInputError("kernel: values must be finite")
    return kernel


def crop_kernel(kernel: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Centred crop of an odd kernel to at most 2n - 1 voxels per axis: offsets larger than
    n - 1 cannot connect two voxels of an image with n voxels along that axis."""
    kernel = _check_kernel(kernel)
    slices = []
    for k, n in zip(kernel.shape, image_shape):
        half = min(k // 2, n - 1)
        c = k // 2
        slices.append(slice(c - half, c + half + 1))
    return kernel[tuple(slices)]


def fft_shape(image_shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Padded FFT size per axis: the next 2-3-5-7-11 smooth length (radices of the
    pocketfft/ducc FFT used by scipy and XLA; `scipy.fft.next_fast_len`) >= n + k // 2.

    Why n + k // 2 suffices for the "same" output: the full linear convolution has
    length n + k - 1 and we keep its indices m in [c, c + n - 1], c = k // 2.  A cyclic
    convolution of length P adds to index m the full-convolution values at m +- P; these
    are zero when m + P > n + k - 2 and m - P < 0 for every kept m, i.e. P >= n + c.
    So the kept part of the cyclic result equals the linear convolution exactly (no
    wrap-around), with less padding than the n + k - 1 of a full convolution."""
    return tuple(scipy.fft.next_fast_len(n + k // 2, real=False) for n, k in zip(image_shape, kernel_shape))


@partial(jax.jit, static_argnames=("shape",))
def _spectrum(array: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jnp.fft.rfftn(array, s=shape)  # rfftn with s= zero pads at the end of each axis


@partial(jax.jit, static_argnames=("shape",))
def _apply(padded_image: jax.Array, kernel_spectrum: jax.Array, shape) -> jax.Array:
    """Cyclic convolution of two arrays of the padded `shape` (the image already zero padded)."""
    return jnp.fft.irfftn(jnp.fft.rfftn(padded_image) * kernel_spectrum, s=shape)


_ALIGN_BYTES = 64  # XLA's CPU buffer alignment: aligned host arrays are used without a copy


def _aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros of `shape` whose data start on a 64-byte boundary (numpy's large
    allocations start 16 bytes past a page boundary, which makes `jax.device_put` copy)."""
    nbytes = int(np.prod(shape)) * 4
    raw = np.zeros(nbytes + _ALIGN_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN_BYTES
    return raw[start : start + nbytes].view(np.float32).reshape(shape)


class FFTConvolver:
    """Zero-padded FFT convolution with one kernel for images of one shape (float32, JIT).

    ``FFTConvolver(kernel, image_shape)(image)`` returns ``sum_s image[s] kernel[t - s + c]``
    on the image grid (c = kernel centre), i.e. ``scipy.signal.fftconvolve(image, kernel,
    mode="same")`` for odd kernels, as a read-only float32 numpy view into the padded
    result (``np.array(result)`` for a writable contiguous copy).  The kernel spectrum is
    computed once.
    """

    def __init__(self, kernel: np.ndarray, image_shape: tuple[int, int, int]):
        image_shape = tuple(int(n) for n in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise InvalidDoseInputError(f"image_shape: expected three positive sizes, got {image_shape}")
        kernel = crop_kernel(kernel, image_shape)
        self.image_shape = image_shape
        self.kernel_shape = kernel.shape
        self.shape = fft_shape(image_shape, kernel.shape)
        self.offset = tuple(k // 2 for k in kernel.shape)
        self._kernel_spectrum = _spectrum(jnp.asarray(kernel, dtype=jnp.float32), self.shape)

    def __call__(self, image) -> np.ndarray:
        if tuple(np.shape(image)) != self.image_shape:
            raise InvalidDoseInputError(
                f"image: expected shape {self.image_shape} (the shape this convolver was built for), "
                f"got {tuple(np.shape(image))}"
            )
        padded = _aligned_zeros(self.shape)
        padded[tuple(slice(0, n) for n in self.image_shape)] = image  # zero padding at the end of each axis
        full = _apply(jax.device_put(padded), self._kernel_spectrum, self.shape)
        crop = tuple(slice(o, o + n) for o, n in zip(self.offset, self.image_shape))
        if all(d.platform == "cpu" for d in full.devices()):
            return np.asarray(full)[crop]  # host memory already: a view, no copy
        return np.asarray(full[crop])  # accelerator: crop before the transfer to the host


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 4  # kernel spectra kept (one per kernel x image shape; 4 = the multi-kernel classes); a 288^3 spectrum is ~100 MB


def convolver(kernel, image_shape) -> FFTConvolver:
    """An `FFTConvolver` for this kernel and image shape, reused from a small LRU cache keyed
    by the kernel's content (SHA-1 of its float32 bytes) and the image shape."""
    kernel = np.ascontiguousarray(_check_kernel(kernel), dtype=np.float32)
    key = (hashlib.sha1(kernel.tobytes()).hexdigest(), kernel.shape, tuple(int(n) for n in image_shape))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    conv = FFTConvolver(kernel, image_shape)
    _CACHE[key] = conv
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return conv


def convolve(image, kernel) -> np.ndarray:
    """Linear 3-D convolution of `image` with an odd `kernel`, output on the image grid
    (float32, a read-only numpy view; see `FFTConvolver`).  D(t) = sum_s image(s) kernel(t - s + centre)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise InvalidDoseInputError(f"image: expected a 3-D array, got shape {image.shape}")
    return convolver(kernel, image.shape)(image)
