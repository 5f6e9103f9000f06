"""Exceptions raised by the imaging package.

Each names the file (or image) and the field at fault and what was expected.  All
derive from `ImagingError`, itself a `ValueError`, so callers can catch one class.
"""


class ImagingError(ValueError):
    """Base class for invalid image input or a failed imaging operation."""


class MissingTagError(ImagingError):
    """A DICOM tag or metadata field needed for quantification or timing is absent."""


class UnitsError(ImagingError):
    """Pixel units that are unknown or cannot be converted to what was asked."""


class GeometryMismatchError(ImagingError):
    """Two images (e.g. a label map and a scan) that must share a grid do not."""


class EmptyMaskError(ImagingError):
    """A label or region that has no voxels."""


class InvalidVoxelError(ImagingError):
    """NaN, infinite or negative voxels where activity is expected."""
