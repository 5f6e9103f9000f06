"""Exceptions raised by the dose package."""


class DoseError(ValueError):
    """Base class for invalid input to the dose engine."""


class UnknownNuclideError(DoseError, KeyError):
    """A nuclide name that is not in the ICRP-107 data."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])
