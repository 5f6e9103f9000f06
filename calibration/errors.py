"""Exceptions raised by the calibration package.

Each names the table column, patient/region or fit at fault and what was expected.  All
derive from `CalibrationError`, itself a `ValueError`, so callers can catch one class.
"""

import math


class CalibrationError(ValueError):
    """Base class for invalid calibration input or a failed calibration computation."""


class TableError(CalibrationError):
    """A time-activity table that cannot be used: missing column, wrong type, bad values."""


class EmptyTableError(TableError):
    """A time-activity table (or the selection from it) that has no rows."""


class MissingColumnError(TableError):
    """A time-activity table without a column that the computation needs."""


class UnknownRegionError(TableError, KeyError):
    """A region, patient or tracer name that does not occur in the time-activity table."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class InvalidTimeError(TableError):
    """Times that are NaN, infinite, at or before the injection (t <= 0 h), or repeated."""


class InvalidActivityError(TableError):
    """Activities or activity uncertainties that are NaN, infinite, zero or negative."""


class ScheduleMismatchError(CalibrationError):
    """A schedule that does not match the table (tracer or nuclide absent, scan before the
    administration it should follow)."""


class FitError(CalibrationError):
    """A time-activity fit that cannot be done or did not succeed."""


class IllPosedFitError(FitError):
    """A fit with fewer data points than parameters (or otherwise not identifiable)."""


class FitFailedError(FitError, RuntimeError):
    """The optimiser did not converge to a valid solution."""


class UnknownPopulationValueError(CalibrationError, KeyError):
    """No population value (e.g. effective half-life) is tabulated for a region/tracer."""

    def __str__(self) -> str:
        return str(self.args[0])


def positive_number(value, field: str, expected: str = "a positive number") -> float:
    """`value` as a float when it is a finite number > 0; else a CalibrationError naming
    `field` and what was `expected`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"{field} = {value!r}; expected {expected}") from None
    if not (math.isfinite(number) and number > 0):
        raise CalibrationError(f"{field} = {value!r}; expected {expected}")
    return number
