"""Exceptions raised by the pbpk package.

Each names the object (model element, parameter, administration) and what was expected.
All derive from `PBPKError`, itself a `ValueError`, so callers can catch one class.
"""


class PBPKError(ValueError):
    """Base class for invalid PBPK input or a failed PBPK computation."""


class ModelError(PBPKError):
    """An inconsistent model definition (unknown symbol, duplicate name, bad volume)."""


class ParameterError(PBPKError):
    """A parameter value outside its documented bounds, or an unknown parameter name."""


class UnknownTracerError(PBPKError, KeyError):
    """A tracer or ligand name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class ScheduleError(PBPKError):
    """An invalid administration or schedule, or output times the schedule cannot serve."""


class SolverError(PBPKError, RuntimeError):
    """The ODE solver failed (step-size collapse, too many steps, non-finite state)."""


class SBMLError(ModelError):
    """An SBML file that cannot be read or uses a construct the importer does not support;
    the message names the file, the construct and the SBML element id."""
