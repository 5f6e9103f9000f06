"""Classical time-integrated-activity baselines on the `imaging` time-activity table.

All TIA in MBq*h, times in h after administration, activities in MBq **with physical
decay included** (not decay corrected; pass ``decay_corrected=True`` for a table that was
corrected to the administration time).  Physical decay constants come from
`dose.nuclides` (ICRP-107), through the tracer name ("Lu-177-PSMA-617") or `nuclide=`.

* `trapezoid_tia`: trapezoid rule with an uptake segment from t = 0 and a physical or
  fitted exponential tail;
* `fit_mono_exponential`, `fit_biexponential`, `fit_exponential`: weighted least-squares
  exponential fits with lambda_eff >= lambda_phys, analytic TIA and covariance-based
  uncertainty;
* `haenscheid`, `madsen`: single-time-point estimates (Hänscheid 2018, Madsen 2018), with
  `population_half_life` defaults for 177Lu-PSMA-617, `stp_relative_error` and
  `stp_error_lognormal` (error over a log-normal population, as analysed by Hou 2021);
* `tia_table`: every method on every (patient, tracer, region) of a table, tidy output.
"""

from .fits import ExponentialFit, fit_biexponential, fit_exponential, fit_mono_exponential
from .series import Series, as_series, from_arrays, from_table, nuclide_of_tracer
from .single_time_point import (
    PopulationHalfLife, StpEstimate, haenscheid, madsen, population_half_life, region_class, stp_error_lognormal,
    stp_relative_error,
)
from .table import CURVE_METHODS, STP_METHODS, tia_table
from .trapezoid import TrapezoidTIA, trapezoid_tia

__all__ = [
    "CURVE_METHODS", "ExponentialFit", "PopulationHalfLife", "STP_METHODS", "Series", "StpEstimate",
    "TrapezoidTIA", "as_series", "fit_biexponential", "fit_exponential", "fit_mono_exponential", "from_arrays",
    "from_table", "haenscheid", "madsen", "nuclide_of_tracer", "population_half_life", "region_class",
    "stp_error_lognormal", "stp_relative_error", "tia_table", "trapezoid_tia",
]
