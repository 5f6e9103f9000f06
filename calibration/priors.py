"""Which parameters a fit frees, and their log-normal priors; error-model priors.

A free parameter is sampled non-centred: z ~ Normal(0, 1), theta = median * exp(sigma_log z),
so NUTS sees a unit-scale, roughly isotropic space.  All other parameters stay at the
model's values.

Defaults (`default_free_parameters`):
1. every model parameter that carries a `LogNormalPrior` in the model representation;
2. otherwise, by name, the patient-specific quantities of receptor-ligand PBPK models
   (Kletting 2016, Begum 2018, which fit exactly these per patient): receptor densities
   ``*_rden_nmol_l``, release rates ``*_lambda_rel_per_h``, ``gfr_ml_min`` and
   ``tumour_perfusion_per_h``.
The centres are the model's defaults (each sourced in `model.parameter_table()`); the
spreads are weakly informative choices, not population estimates: sigma_log 0.5 (CV ~
53 %) for receptor densities, release rates and perfusion, 0.25 for GFR.  A cohort fit
(`calibration.fit_cohort`, to come) replaces them by a fitted population.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import pbpk

from .errors import CalibrationError

#: name pattern -> sigma_log of the weakly informative default prior (see module docstring).
DEFAULT_SPREADS = (
    ("_rden_nmol_l", 0.5),
    ("_lambda_rel_per_h", 0.5),
    ("gfr_ml_min", 0.25),
    ("tumour_perfusion_per_h", 0.5),
)

#: Error model: proportional (log-normal) sd per modality x region type, prior medians
#: from the best error model of the PBPK PET -> 177Lu prediction study (Vasic et al.
#: EJNMMI Phys 2026;13:9): therapeutic (SPECT) organ 0.16, tumour 0.39; diagnostic (PET)
#: organ 0.35, tumour 0.27.  Order: (PET organ, PET lesion, SPECT organ, SPECT lesion).
ERROR_SCALE_MEDIANS = (0.35, 0.27, 0.16, 0.39)
#: Log-sd of the log-normal prior on each error scale (weakly informative).
ERROR_SCALE_PRIOR_SIGMA = 0.5


def error_scale_medians(groups, medians=ERROR_SCALE_MEDIANS) -> list[float]:
    """Prior medians of the error scales of `groups` (indices into ERROR_GROUPS), from
    `medians` (one per group; default the published ERROR_SCALE_MEDIANS)."""
    return [medians[g] for g in groups]


@dataclass(frozen=True)
class FreeParameter:
    """A fitted parameter with prior log(theta) ~ Normal(log(median), sigma_log)."""

    name: str
    median: float
    sigma_log: float
    source: str = ""

    def __post_init__(self):
        if not (self.median > 0 and math.isfinite(self.median)):
            raise CalibrationError(f"free parameter {self.name!r}: prior median {self.median}; expected > 0")
        if not (self.sigma_log > 0 and math.isfinite(self.sigma_log)):
            raise CalibrationError(f"free parameter {self.name!r}: sigma_log {self.sigma_log}; expected > 0")


def default_free_parameters(model: pbpk.Model) -> tuple[FreeParameter, ...]:
    """The default free set of `model` (see module docstring)."""
    out = []
    for p in model.parameters:
        if p.prior is not None:
            out.append(FreeParameter(p.name, p.prior.median, p.prior.sigma_log, p.prior.source))
            continue
        for pattern, sigma in DEFAULT_SPREADS:
            if p.name.endswith(pattern) and p.value > 0:
                out.append(FreeParameter(p.name, p.value, sigma,
                                         f"centre: model default ({p.source}); spread: weakly informative"))
                break
    if not out:
        raise CalibrationError(f"model {model.name!r} has no default free parameters; pass free=[...]")
    return tuple(out)


def resolve_free_parameters(model: pbpk.Model,
                            free: Iterable[str | FreeParameter] | Mapping[str, tuple[float, float]] | None
                            ) -> tuple[FreeParameter, ...]:
    """Free parameters from names (default priors), FreeParameter objects, or a mapping
    name -> (median, sigma_log).  Unknown names raise `CalibrationError`."""
    if free is None:
        return default_free_parameters(model)
    known = {p.name: p for p in model.parameters}
    defaults = {}
    if isinstance(free, Mapping):
        items = [FreeParameter(n, float(m), float(s), "user") for n, (m, s) in free.items()]
    else:
        items = []
        for f in free:
            if isinstance(f, FreeParameter):
                items.append(f)
                continue
            if not defaults:
                defaults = {fp.name: fp for fp in _all_defaults(model)}
            if f not in known:
                raise CalibrationError(f"free parameter {f!r} is not a parameter of model {model.name!r}")
            items.append(defaults.get(f) or FreeParameter(f, known[f].value, 0.5,
                                                          f"centre: model default ({known[f].source}); "
                                                          "spread: weakly informative"))
    for fp in items:
        if fp.name not in known:
            raise CalibrationError(f"free parameter {fp.name!r} is not a parameter of model {model.name!r}")
    names = [fp.name for fp in items]
    if len(set(names)) != len(names) or not names:
        raise CalibrationError(f"free parameters {names}: expected a non-empty list of distinct names")
    return tuple(items)


def _all_defaults(model: pbpk.Model) -> tuple[FreeParameter, ...]:
    try:
        return default_free_parameters(model)
    except CalibrationError:
        return ()
