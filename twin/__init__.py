"""Patient digital twins: `PatientTwin` composes pbpk (model), imaging (study folders,
time-activity tables), calibration (posterior) and dose (voxel dose, BED) into one object
for schedule what-ifs, optimisation, PET-based therapy prediction and reports; `twin` is
also the command line (`twin demo`, `twin calibrate`, ...).  Virtual trials
(`run_trial`: a `Population` x schedules, in-process or on Dask) run many patients at
once.  Nothing imports `twin`."""

from .covariates import Covariates
from .errors import (ConfigError, InconsistentTimesError, MissingModalityError, NotCalibratedError, StudyError,
                     TwinError, UnknownTracerError)
from .limits import DEFAULT_LIMITS, Limit
from .outcomes import Outcomes
from .patient import PatientTwin
from .population import Population
from .study import Study, load_study, write_study
from .trial import TrialConfig, load_trial_config, run_trial

__all__ = [
    "ConfigError", "Covariates", "DEFAULT_LIMITS", "InconsistentTimesError", "Limit", "MissingModalityError",
    "NotCalibratedError", "Outcomes", "PatientTwin", "Population", "Study", "StudyError", "TrialConfig", "TwinError",
    "UnknownTracerError", "load_study", "load_trial_config", "run_trial", "write_study",
]
