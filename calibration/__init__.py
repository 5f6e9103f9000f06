"""Bayesian calibration of pbpk models (NumPyro) on time-activity tables.

`calibration.fit(model, table, schedule, method="nuts"|"svi"|"laplace", seed=...)` fits
one patient and returns a `Posterior` (`.summary()`, `.to_arviz()`, `.predict(schedule)`,
`.predict_activity(...)`, `.check_observations()`); `calibration.stp` holds the classical
single- and multi-time-point baselines.  Importing `calibration` enables float64 in JAX
(through `pbpk`).  `calibration.fit_cohort(model, table, schedules, ...)` fits many patients
at once with a hierarchical population model and returns a `CohortPosterior`
(`.population_prior()` for a new patient's fit, `.patient(name)`).
"""

import pbpk as _pbpk  # noqa: F401  (enables float64 before anything else touches JAX)

from . import stp  # noqa: E402
from .errors import CalibrationError, TableError  # noqa: E402
from .fit import METHODS, fit, make_problem  # noqa: E402
from .cohort import CohortPosterior, fit_cohort, make_cohort_problem  # noqa: E402
from .likelihood import CALIBRATION_SOLVER, ERROR_GROUPS, NUTS_SOLVER  # noqa: E402
from .observations import Observations, observations_from_table  # noqa: E402
from .posterior import CalibrationWarning, Posterior  # noqa: E402
from .priors import FreeParameter, default_free_parameters  # noqa: E402

__all__ = [
    "CALIBRATION_SOLVER", "CalibrationError", "CalibrationWarning", "CohortPosterior", "ERROR_GROUPS", "FreeParameter", "METHODS",
    "NUTS_SOLVER", "Observations", "Posterior", "TableError", "default_free_parameters", "fit", "fit_cohort", "make_cohort_problem", "make_problem",
    "observations_from_table", "stp",
]
