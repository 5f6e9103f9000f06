"""MBAM (Manifold Boundary Approximation Method) for pbpk models: predictions as a
function of log-parameters, Fisher information, geodesics to the manifold boundary,
limit identification and symbolic limits on the model (Transtrum & Qiu, PRL 2014)."""

from .fisher import FisherInformation, fisher_from_jacobian, fisher_information
from .geodesic import Geodesic, geodesic, geodesic_acceleration, initial_velocity
from .limits import Limit, classify_direction, identify_limit
from .predictions import FunctionPredictions, MBAMError, Predictions, default_free_parameters
from .reduce import ReductionResult, ReductionStep, apply_limit, reduce

__all__ = [
    "FisherInformation", "FunctionPredictions", "Geodesic", "Limit", "MBAMError", "Predictions", "ReductionResult",
    "ReductionStep", "apply_limit", "classify_direction", "default_free_parameters", "fisher_from_jacobian",
    "fisher_information", "geodesic", "geodesic_acceleration", "identify_limit", "initial_velocity", "reduce",
]
