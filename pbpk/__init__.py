"""Whole-body PBPK models of radioligands: model representation, reference PSMA model,
tracers, schedules and diffrax simulation.  Importing `pbpk` enables float64 in JAX."""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from .builder import ModelBuilder  # noqa: E402
from .compile import compile_model, region_volumes_ml  # noqa: E402
from .errors import (  # noqa: E402
    ModelError, ParameterError, PBPKError, SBMLError, ScheduleError, SolverError, UnknownTracerError,
)
from .model import Compartment, LogNormalPrior, Model, Parameter, Reaction, Region, Species  # noqa: E402
from .psma import psma_model  # noqa: E402
from .schedule import Administration, Schedule  # noqa: E402
from .sbml import to_sbml  # noqa: E402
from .sbml_import import SBMLModel, from_sbml  # noqa: E402
from .simulate import SolverOptions, Trajectory, simulate  # noqa: E402
from .cohort import simulate_cohort  # noqa: E402
from .tracers import LIGANDS, Ligand, Tracer, tracer  # noqa: E402
from . import mbam  # noqa: E402  (pbpk.mbam: model reduction; needs the names above)

__all__ = [
    "Administration", "Compartment", "LIGANDS", "Ligand", "LogNormalPrior", "Model", "ModelBuilder",
    "ModelError", "Parameter", "ParameterError", "PBPKError", "Reaction", "Region", "Schedule",
    "ScheduleError", "SolverError", "SolverOptions", "Trajectory", "simulate", "simulate_cohort", "Species", "Tracer", "UnknownTracerError", "compile_model",
    "psma_model", "region_volumes_ml", "to_sbml", "tracer", "from_sbml", "SBMLModel", "SBMLError", "mbam",
]
