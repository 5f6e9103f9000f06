"""Errors of the twin package.  Every message names the file, field or argument at fault
and what was expected."""


class TwinError(Exception):
    """Base class of twin errors."""


class StudyError(TwinError):
    """A study folder or its config file is unusable (missing file, bad field)."""


class MissingModalityError(StudyError):
    """A study lacks an image the twin needs (CT, label map, or any emission scan)."""


class InconsistentTimesError(StudyError):
    """Scan or administration times contradict each other."""


class UnknownTracerError(StudyError):
    """A study names a tracer that pbpk does not know."""


class ConfigError(TwinError):
    """A command-line config (TOML) is unusable."""


class NotCalibratedError(TwinError):
    """A prediction was asked of a twin that has not been calibrated."""
