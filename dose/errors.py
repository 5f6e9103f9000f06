"""Exceptions raised by the dose package."""


class DoseError(ValueError):
    """Base class for invalid input to the dose engine."""


class UnknownNuclideError(DoseError, KeyError):
    """A nuclide name that is not in the ICRP-107 data."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class GeometryError(DoseError):
    """Images or arrays that must share one voxel grid do not (shape, spacing, origin,
    direction), or a voxel size that is not a positive finite number."""


class InvalidDoseInputError(DoseError):
    """A dose-engine input with invalid values: negative or NaN activity, an unknown
    method or unit, a kernel of the wrong shape, invalid radiobiology parameters."""
