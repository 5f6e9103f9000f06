"""Virtual population of men with mCRPC treated with PSMA radioligands: covariate
distributions with their sources, a Gaussian copula, and a seeded, chunk-independent sampler.

A `Population` maps every name of `COVARIATES` to a `Distribution` and may correlate the
continuous ones.  `Population.sample(seed, patient_ids)` draws one row per patient and
`patient_parameters(row)` turns a row into the parameter overrides of
``pbpk.psma_model(lesion_volumes_ml=(...) * row["n_lesions"])`` (organ volumes scale with
``body_weight_kg`` symbolically, so one model per lesion count serves every patient).

Sampling (patient i, population seed s)
--------------------------------------
All randomness of patient i comes from ``np.random.default_rng(np.random.SeedSequence([s,
i]))``, so a patient's values do not depend on which other patients are drawn with it.  Per
attempt the patient's generator draws one vector of independent standard normals e ~ N(0, I)
with one entry per random (non-fixed) scalar covariate and per random per-lesion covariate of
each of the `max_lesions` lesion slots.  The copula then maps

    z = L e,   L L^T = C   (Cholesky factor of the correlation matrix C)

separately for the per-patient continuous covariates and, with the same per-lesion matrix, for
each lesion slot.  Each z goes through its marginal:

    normal      x = mean + sd z
    lognormal   x = median exp(sd_log z)
    uniform     x = low + (high - low) Phi(z)
    choice      x = values[k], k = smallest index with Phi(z) < p_1 + ... + p_k
    fixed       x = value   (no draw)

Spearman's rank correlation of two copula-coupled covariates is 6/pi asin(rho/2) whatever the
marginals.  Truncation bounds (low/high of normal and lognormal) are applied by rejection of the
whole patient vector: the generator keeps drawing attempts until every value of the patient (its
scalars and its n_lesions lesions) lies within its bounds.  The lesion count is the one exception:
it is drawn at the first attempt and kept (each attempt still draws its entry, so the stream layout
is fixed), because a patient with more lesions is rejected more often and redrawing the count
would bias it towards fewer lesions.  Every other covariate's acceptance is independent of the
count, so the result is the truncated distribution of each copula block, independent blocks.  The acceptance probability is at
least the product of the marginal masses inside the bounds (per-lesion masses to the power
`max_lesions`); a population whose product is below `MIN_ACCEPTANCE` is refused.

Units: kg, cm, fraction (haematocrit), mL/min (GFR), mL (lesion volumes; `patient_parameters`
converts to L), nmol/L (receptor densities per total tissue volume).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, replace
from functools import lru_cache
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy.integrate import quad
from scipy.special import ndtr
from scipy.stats import norm

from .errors import ConfigError

KINDS = ("fixed", "normal", "lognormal", "uniform", "choice")
CONTINUOUS_KINDS = ("normal", "lognormal", "uniform")
# Keys of a distribution table per kind: (required, optional); "unit" and "source" are allowed
# everywhere.  choice: probabilities may be omitted (equal weights).
_KEYS = {
    "fixed": (("value",), ()),
    "normal": (("mean", "sd"), ("low", "high")),
    "lognormal": (("median", "sd_log"), ("low", "high")),
    "uniform": (("low", "high"), ()),
    "choice": (("values",), ("probabilities",)),
}
_COMMON_KEYS = ("unit", "source")
PROBABILITY_TOL = 1e-9          # |sum(probabilities) - 1| allowed
MIN_ACCEPTANCE = 1e-3           # smallest acceptance probability of truncation by rejection
MAX_ATTEMPTS = 100_000          # rejection attempts per patient before giving up
MAX_LESIONS = 10                # lesion count range 0..10 (issue 10 brief: one model per count)

#: Names a population sets: per-patient scalars, the lesion count, then per-lesion covariates.
SCALAR_COVARIATES = ("weight_kg", "height_cm", "haematocrit", "gfr_ml_min", "kidneys_rden_nmol_l",
                     "salivary_glands_rden_nmol_l", "tumour_rest_rden_nmol_l")
LESION_COVARIATES = ("lesion_volume_ml", "lesion_rden_nmol_l")
COVARIATES: tuple[str, ...] = SCALAR_COVARIATES + ("n_lesions",) + LESION_COVARIATES

UNITS = {"weight_kg": "kg", "height_cm": "cm", "haematocrit": "1", "gfr_ml_min": "mL/min",
         "kidneys_rden_nmol_l": "nmol/L", "salivary_glands_rden_nmol_l": "nmol/L",
         "tumour_rest_rden_nmol_l": "nmol/L", "n_lesions": "1", "lesion_volume_ml": "mL",
         "lesion_rden_nmol_l": "nmol/L"}
# psma_model parameter of each per-patient covariate (same name unless listed).
_MODEL_NAME = {"weight_kg": "body_weight_kg"}
# Covariates whose physical range is the psma_model parameter bounds (pbpk/psma.py `globals`).
_BOUNDED_BY_MODEL = ("weight_kg", "height_cm", "haematocrit", "gfr_ml_min")

# --------------------------------------------------------------------------- literature data
#: Per-lesion PSMA receptor densities (nmol/L) of the 13 TUM patients (lesion 1 and lesion 2
#: lists, R_dens_tu1 / R_dens_tu2) in the Amsterdam PSMA-617 PBPK code,
#: ibartelink/Target-Site-PBPK-in-oncology, file 2.PSMA_PBPK_A_parameters_PSMA_DCFPYL (read
#: 2026-11-27).  The code itself does not say where they come from; the shared research notes
#: (research/pbpk.md section 1.2) read them as the individual fits of the TUM cohort of Begum
#: et al. J Nucl Med 2018;59:929 / Sci Rep 2019;9:20041 (an attribution, not confirmed).
LESION_RDEN_1_NMOL_L = (87.0, 73.0, 78.0, 78.0, 33.0, 46.0, 17.0, 60.0, 45.0, 68.0, 41.0, 10.0, 19.0)
LESION_RDEN_2_NMOL_L = (94.0, 52.0, 87.0, 87.0, 64.0, 27.0, 33.0, 43.0, 63.0, 21.0, 23.0, 18.0, 87.0)
_RDEN_SOURCE = ("ibartelink/Target-Site-PBPK-in-oncology 2.PSMA_PBPK_A_parameters_PSMA_DCFPYL R_dens_tu1/2 "
                "(13 patients x 2 lesions; research/pbpk.md reads them as the Begum 2018/2019 TUM fits)")

#: Lesion volume: median 12 mL, range 0.33-92 mL over the 26 lesions (13 patients x 2) of
#: Rinscheid A et al. EJNMMI Phys 2020, doi:10.1186/s40658-020-00311-0 (research/pbpk.md 1.1).
LESION_VOLUME_MEDIAN_ML = 12.0
LESION_VOLUME_RANGE_ML = (0.33, 92.0)
LESION_VOLUME_N = 26

#: Weight and GFR: prostate cancer patients on androgen deprivation referred for PSMA PET
#: (n = 56, age 70.4 +- 8.0 y): weight 83.4 +- 13.6 kg, GFR 81.0 +- 14.2 mL/min (mean +- SD);
#: J Nucl Med, Table 1 "Demographic and Clinical Patient Data", ADT group
#: (jnm.snmjournals.org/highwire/markup/116021; article title not retrieved).
WEIGHT_MEAN_KG, WEIGHT_SD_KG = 83.4, 13.6
GFR_MEAN_ML_MIN, GFR_SD_ML_MIN = 81.0, 14.2
_JNM_ADT = ("J Nucl Med Table 1 'Demographic and Clinical Patient Data', ADT group n=56 "
            "(jnm.snmjournals.org/highwire/markup/116021)")
#: Height SD of US men 18-79 y: 2.85 in (NCHS Vital Health Stat Series 11 No. 8, Weight,
#: Height and Selected Body Dimensions of Adults, United States 1960-1962, estimated SD of
#: Table 2); 2.85 in = 7.239 cm.
HEIGHT_SD_CM = 2.85 * 2.54
#: Haematocrit: adult male reference interval 40-52 % (GPnotebook, "Haematocrit (Hct), packed
#: cell volume"), read as mean +- 1.96 SD -> SD = 0.12 / 3.92.
HAEMATOCRIT_SD = (0.52 - 0.40) / (2 * 1.959963984540054)
#: Inter-patient CV of absorbed dose per activity, 177Lu-PSMA-617 (Kabasakal L et al. Mol
#: Imaging Radionucl Ther 2017;26:62, n = 7): kidneys 0.82 +- 0.25 Gy/GBq, parotid
#: 1.90 +- 1.19 Gy/GBq.
KIDNEY_DOSE_CV = 0.25 / 0.82
SALIVARY_DOSE_CV = 1.19 / 1.90


def lognormal_fit(values: Sequence[float]) -> tuple[float, float]:
    """(median, sd_log) of a log-normal fitted to positive `values`: median = exp(mean ln x),
    sd_log = sample standard deviation of ln x (ddof = 1)."""
    logs = np.log(np.asarray(values, dtype=float))
    return float(np.exp(logs.mean())), float(logs.std(ddof=1))


def expected_normal_range(n: int) -> float:
    """d2(n) = E[max - min] of n standard normals = integral of 1 - Phi^n - (1 - Phi)^n."""
    value, _ = quad(lambda x: 1.0 - norm.cdf(x) ** n - norm.sf(x) ** n, -np.inf, np.inf)
    return float(value)


def cv_to_sd_log(cv: float) -> float:
    """sd of ln X for a log-normal X with coefficient of variation cv: sqrt(ln(1 + cv^2))."""
    return math.sqrt(math.log1p(cv * cv))


@lru_cache(maxsize=1)
def _reference_parameters():
    """Parameters of the reference PSMA model (defaults and bounds are read, never retyped)."""
    from pbpk import psma_model

    model = psma_model(lesion_volumes_ml=())
    return {name: model.parameter(name) for name in model.parameter_names}


def physical_range(name: str) -> tuple[float, float, bool]:
    """(lower, upper, lower_open) of a covariate: psma_model bounds for body size, haematocrit
    and GFR; (0, inf) open at 0 for volumes and receptor densities; 0..MAX_LESIONS lesions."""
    if name in _BOUNDED_BY_MODEL:
        p = _reference_parameters()[_MODEL_NAME.get(name, name)]
        return float(p.lower), float(p.upper), False
    if name == "n_lesions":
        return 0.0, float(MAX_LESIONS), False
    return 0.0, math.inf, True


# --------------------------------------------------------------------------- Distribution
def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _number(value, where: str) -> float:
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(f"{where} = {value!r}; expected a finite number")
    return float(value)


@dataclass(frozen=True)
class Distribution:
    """One covariate's distribution. kind in {"fixed","normal","lognormal","uniform","choice"}.

    fixed: value; normal: mean, sd; lognormal: median, sd_log (sd of ln X); uniform: low, high;
    choice: values (numbers or strings), probabilities (default: equal).  Optional truncation
    bounds low/high for normal and lognormal (rejection sampling).  unit: str; source: str
    (literature source or the words 'assumption: ...').  `where` (not stored) names the
    config field in error messages.
    """

    kind: str
    value: float | str | None = None
    mean: float | None = None
    sd: float | None = None
    median: float | None = None
    sd_log: float | None = None
    low: float | None = None
    high: float | None = None
    values: tuple | None = None
    probabilities: tuple[float, ...] | None = None
    unit: str = ""
    source: str = ""
    where: InitVar[str] = "distribution"

    def __post_init__(self, where: str):
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: unknown distribution {self.kind!r}; expected one of {KINDS}")
        required, optional = _KEYS[self.kind]
        for f in ("value", "mean", "sd", "median", "sd_log", "low", "high", "values", "probabilities"):
            given = getattr(self, f) is not None
            if f in required and not given:
                raise ConfigError(f"{where}: a {self.kind} distribution needs {f!r}")
            if given and f not in required + optional:
                raise ConfigError(f"{where}.{f}: not a parameter of a {self.kind} distribution "
                                  f"(expected {required + optional})")
        for f in ("unit", "source"):
            if not isinstance(getattr(self, f), str):
                raise ConfigError(f"{where}.{f} = {getattr(self, f)!r}; expected a string")
        set_ = lambda f, v: object.__setattr__(self, f, v)  # noqa: E731 (frozen dataclass)
        for f in ("mean", "sd", "median", "sd_log", "low", "high"):
            if getattr(self, f) is not None:
                set_(f, _number(getattr(self, f), f"{where}.{f}"))
        if self.kind == "fixed" and not isinstance(self.value, str):
            set_("value", _number(self.value, f"{where}.value"))
        if self.sd is not None and not self.sd > 0:
            raise ConfigError(f"{where}.sd = {self.sd}; expected > 0")
        if self.sd_log is not None and not self.sd_log > 0:
            raise ConfigError(f"{where}.sd_log = {self.sd_log}; expected > 0")
        if self.median is not None and not self.median > 0:
            raise ConfigError(f"{where}.median = {self.median}; expected > 0")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ConfigError(f"{where}: low = {self.low} >= high = {self.high}; expected low < high")
        if self.kind == "choice":
            self._check_choice(where)

    def _check_choice(self, where: str) -> None:
        values = self.values
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ConfigError(f"{where}.values = {values!r}; expected a non-empty list")
        for k, v in enumerate(values):
            if not (isinstance(v, str) or (_is_number(v) and math.isfinite(float(v)))):
                raise ConfigError(f"{where}.values[{k}] = {v!r}; expected a finite number or a string")
        probs = self.probabilities
        if probs is None:
            probs = (1.0 / len(values),) * len(values)
            probs = probs[:-1] + (1.0 - sum(probs[:-1]),)
        if isinstance(probs, (str, bytes)) or not isinstance(probs, Sequence):
            raise ConfigError(f"{where}.probabilities = {probs!r}; expected a list of numbers")
        if len(probs) != len(values):
            raise ConfigError(f"{where}.probabilities has {len(probs)} entries for {len(values)} values; "
                              "expected one probability per value")
        probs = tuple(_number(p, f"{where}.probabilities[{k}]") for k, p in enumerate(probs))
        for k, p in enumerate(probs):
            if p < 0:
                raise ConfigError(f"{where}.probabilities[{k}] = {p}; expected >= 0")
        if abs(sum(probs) - 1.0) > PROBABILITY_TOL:
            raise ConfigError(f"{where}.probabilities sum to {sum(probs)!r}; expected 1 (tolerance "
                              f"{PROBABILITY_TOL})")
        object.__setattr__(self, "values", tuple(values))
        object.__setattr__(self, "probabilities", probs)

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> "Distribution":
        """Distribution from a config table: {"distribution": kind, <parameters>, "unit",
        "source"}; e.g. {"distribution": "lognormal", "median": 85, "sd_log": 0.18}."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} = {data!r}; expected a table with a 'distribution' key")
        if "distribution" not in data:
            raise ConfigError(f"{where}: missing 'distribution' (one of {KINDS})")
        kind = data["distribution"]
        if not isinstance(kind, str) or kind not in KINDS:
            raise ConfigError(f"{where}.distribution = {kind!r}; expected one of {KINDS}")
        required, optional = _KEYS[kind]
        allowed = required + optional + _COMMON_KEYS
        kwargs = {}
        for key, value in data.items():
            if key == "distribution":
                continue
            if key not in allowed:
                raise ConfigError(f"{where}.{key}: unknown key for a {kind} distribution; expected "
                                  f"{sorted(allowed)}")
            if key in ("values", "probabilities"):
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                    raise ConfigError(f"{where}.{key} = {value!r}; expected a list")
                value = tuple(value)
            kwargs[key] = value
        return cls(kind=kind, where=where, **kwargs)

    def to_dict(self) -> dict:
        """JSON/TOML-safe table; `Distribution.from_dict` returns an equal distribution."""
        out: dict = {"distribution": self.kind}
        for f in ("value", "mean", "sd", "median", "sd_log", "low", "high"):
            v = getattr(self, f)
            if v is not None:
                out[f] = v
        if self.values is not None:
            out["values"] = list(self.values)
            out["probabilities"] = list(self.probabilities)
        out["unit"] = self.unit
        out["source"] = self.source
        return out

    # ------------------------------------------------------------------ properties
    @property
    def support(self) -> tuple[float, float]:
        """Closed hull [a, b] of the values this distribution can take (numeric kinds)."""
        if self.kind == "fixed":
            return float(self.value), float(self.value)
        if self.kind == "choice":
            return float(min(self.values)), float(max(self.values))
        if self.kind == "uniform":
            return self.low, self.high
        a = -math.inf if self.kind == "normal" else 0.0
        lo = a if self.low is None else max(a, self.low)
        hi = math.inf if self.high is None else self.high
        return lo, hi

    @property
    def mass(self) -> float:
        """Probability that an untruncated draw falls inside [low, high] (1 if no bounds)."""
        if self.kind not in ("normal", "lognormal") or (self.low is None and self.high is None):
            return 1.0
        if self.kind == "normal":
            cdf = lambda x: float(ndtr((x - self.mean) / self.sd))  # noqa: E731
        else:
            cdf = lambda x: 0.0 if x <= 0 else float(ndtr(math.log(x / self.median) / self.sd_log))  # noqa: E731
        lo = 0.0 if self.low is None else cdf(self.low)
        hi = 1.0 if self.high is None else cdf(self.high)
        return max(hi - lo, 0.0)

    def quantile(self, u: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Values from standard normals z (and u = Phi(z)), see the module docstring; a
        choice among strings returns an object array."""
        if self.kind == "normal":
            return self.mean + self.sd * z
        if self.kind == "lognormal":
            return self.median * np.exp(self.sd_log * z)
        if self.kind == "uniform":
            return self.low + (self.high - self.low) * u
        if self.kind == "choice":
            cum = np.cumsum(self.probabilities)
            idx = np.minimum(np.searchsorted(cum, u, side="right"), len(self.values) - 1)
            numeric = not any(isinstance(v, str) for v in self.values)
            return np.asarray(self.values, dtype=float if numeric else object)[idx]
        return np.full(np.shape(z), float(self.value))


# --------------------------------------------------------------------------- defaults
def default_covariates() -> dict[str, Distribution]:
    """The default distributions (sources in each `source` and in the module constants)."""
    ref = _reference_parameters()
    lo = {n: physical_range(n)[0] for n in _BOUNDED_BY_MODEL}
    hi = {n: physical_range(n)[1] for n in _BOUNDED_BY_MODEL}
    rden_median, rden_sd_log = lognormal_fit(LESION_RDEN_1_NMOL_L + LESION_RDEN_2_NMOL_L)
    vol_sd_log = math.log(LESION_VOLUME_RANGE_ML[1] / LESION_VOLUME_RANGE_ML[0]) / expected_normal_range(LESION_VOLUME_N)
    truncated = "truncated to the psma_model parameter bounds"
    return {
        "weight_kg": Distribution("normal", mean=WEIGHT_MEAN_KG, sd=WEIGHT_SD_KG, low=lo["weight_kg"],
                                  high=hi["weight_kg"], unit="kg", source=f"{_JNM_ADT}: {WEIGHT_MEAN_KG} +- {WEIGHT_SD_KG} kg; {truncated}"),
        "height_cm": Distribution(
            "normal", mean=ref["height_cm"].value, sd=HEIGHT_SD_CM, low=lo["height_cm"], high=hi["height_cm"],
            unit="cm", source=("mean: psma_model default (ICRP Publication 89 reference male); SD 2.85 in: NCHS "
                               f"Vital Health Stat Ser 11 No 8 (US men 18-79, 1960-62); {truncated}")),
        "haematocrit": Distribution(
            "normal", mean=ref["haematocrit"].value, sd=HAEMATOCRIT_SD, low=lo["haematocrit"],
            high=hi["haematocrit"], unit="1",
            source=("assumption: mean = psma_model default (PyCNO 0.4); SD from the healthy adult male reference "
                    "interval 40-52 % (GPnotebook) read as +-1.96 SD - mCRPC patients are often anaemic, no "
                    f"patient distribution was found; {truncated}")),
        "gfr_ml_min": Distribution("normal", mean=GFR_MEAN_ML_MIN, sd=GFR_SD_ML_MIN, low=lo["gfr_ml_min"],
                                   high=hi["gfr_ml_min"], unit="mL/min",
                                   source=f"{_JNM_ADT}: GFR {GFR_MEAN_ML_MIN} +- {GFR_SD_ML_MIN} mL/min; {truncated}"),
        "kidneys_rden_nmol_l": Distribution(
            "lognormal", median=ref["kidneys_rden_nmol_l"].value, sd_log=cv_to_sd_log(KIDNEY_DOSE_CV),
            unit="nmol/L",
            source=("assumption: median = psma_model default; inter-patient CV of the density taken equal to the "
                    "CV of kidney dose per activity, 0.25/0.82 (Kabasakal 2017 Mol Imaging Radionucl Ther 26:62; "
                    "Hardiansyah 2021 GSA: 31 %); sd_log = sqrt(ln(1 + CV^2))")),
        "salivary_glands_rden_nmol_l": Distribution(
            "lognormal", median=ref["salivary_glands_rden_nmol_l"].value, sd_log=cv_to_sd_log(SALIVARY_DOSE_CV),
            unit="nmol/L",
            source=("assumption: median = psma_model default; CV taken equal to the CV of parotid dose per "
                    "activity, 1.19/1.90 (Kabasakal 2017); sd_log = sqrt(ln(1 + CV^2))")),
        "tumour_rest_rden_nmol_l": Distribution(
            "lognormal", median=ref["tumour_rest_rden_nmol_l"].value, sd_log=rden_sd_log, unit="nmol/L",
            source=("assumption: median = psma_model default (1.4 x mean lesion density); sd_log = that of the "
                    f"26 per-lesion densities ({_RDEN_SOURCE})")),
        "n_lesions": Distribution("fixed", value=2, unit="1",
                                  source="Ulm model family: two lesions + tumour rest (Begum 2018, Rinscheid 2020)"),
        "lesion_volume_ml": Distribution(
            "lognormal", median=LESION_VOLUME_MEDIAN_ML, sd_log=vol_sd_log, low=LESION_VOLUME_RANGE_ML[0],
            high=LESION_VOLUME_RANGE_ML[1], unit="mL",
            source=("Rinscheid 2020 EJNMMI Phys (doi:10.1186/s40658-020-00311-0): median 12 mL, range 0.33-92 mL "
                    "over 26 lesions; sd_log = ln(92/0.33) / d2(26), d2 = expected range of 26 standard normals; "
                    "truncated to the observed range (choice: psma_model's rest-of-body plasma flow turns "
                    "negative above about 0.4 L of total lesion volume)")),
        "lesion_rden_nmol_l": Distribution(
            "lognormal", median=rden_median, sd_log=rden_sd_log, unit="nmol/L",
            source=f"log-normal fit (median = exp mean ln x, sd_log = sample sd of ln x) to the 26 values of {_RDEN_SOURCE}"),
    }


# --------------------------------------------------------------------------- Population
def _check_covariate(name: str, dist: Distribution, where: str) -> None:
    """Unit, numeric values, integer lesion counts and support inside the physical range."""
    if dist.unit and dist.unit != UNITS[name]:
        raise ConfigError(f"{where}.unit = {dist.unit!r}; {name} is in {UNITS[name]!r}")
    if dist.kind == "fixed" and isinstance(dist.value, str) or dist.kind == "choice" and any(
            isinstance(v, str) for v in dist.values):
        raise ConfigError(f"{where}: {name} takes numbers, not strings")
    if name == "n_lesions":
        if dist.kind not in ("fixed", "choice"):
            raise ConfigError(f"{where}.distribution = {dist.kind!r}; n_lesions must be 'fixed' or 'choice'")
        counts = (dist.value,) if dist.kind == "fixed" else dist.values
        for v in counts:
            if not float(v).is_integer() or not 0 <= v <= MAX_LESIONS:
                raise ConfigError(f"{where}: lesion count {v!r}; expected an integer 0..{MAX_LESIONS}")
        return
    lower, upper, lower_open = physical_range(name)
    a, b = dist.support
    inside = (a > lower if lower_open and dist.kind in ("fixed", "choice", "uniform") else a >= lower) and b <= upper
    if not inside:
        span = f"({lower}, {upper}]" if lower_open else f"[{lower}, {upper}]"
        hint = " (give low/high)" if dist.kind in ("normal", "lognormal") else ""
        raise ConfigError(f"{where}: {dist.kind} distribution reaches [{a}, {b}], outside the physical range "
                          f"{span} {UNITS[name]} of {name}{hint}")


def _parse_correlations(items, where: str) -> dict[tuple[str, str], float]:
    if isinstance(items, Mapping) or isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ConfigError(f"{where} = {items!r}; expected a list of tables {{between = [a, b], rho = r}}")
    out: dict[tuple[str, str], float] = {}
    for k, item in enumerate(items):
        w = f"{where}[{k}]"
        if not isinstance(item, Mapping) or set(item) != {"between", "rho"}:
            raise ConfigError(f"{w} = {item!r}; expected exactly the keys 'between' and 'rho'")
        pair = item["between"]
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2 or not all(
                isinstance(p, str) for p in pair):
            raise ConfigError(f"{w}.between = {pair!r}; expected two covariate names")
        out[(pair[0], pair[1])] = item["rho"]
    return out


@dataclass(frozen=True)
class Population:
    """Covariate distributions (every name in COVARIATES) and Gaussian-copula correlations
    {(a, b): rho} between continuous covariates, both per-patient or both per-lesion (the
    latter couple the two values of the same lesion)."""

    covariates: Mapping[str, Distribution]
    correlations: Mapping[tuple[str, str], float]
    where: InitVar[str] = "population"

    def __post_init__(self, where: str):
        if not isinstance(self.covariates, Mapping):
            raise ConfigError(f"{where}: covariates must be a mapping name -> Distribution")
        unknown = [n for n in self.covariates if n not in COVARIATES]
        if unknown:
            raise ConfigError(f"{where}: unknown covariate(s) {unknown}; known: {list(COVARIATES)}")
        missing = [n for n in COVARIATES if n not in self.covariates]
        if missing:
            raise ConfigError(f"{where}: missing covariate(s) {missing}")
        for name in COVARIATES:
            dist = self.covariates[name]
            if not isinstance(dist, Distribution):
                raise ConfigError(f"{where}.{name}: expected a Distribution, got {type(dist).__name__}")
            _check_covariate(name, dist, f"{where}.{name}")
        object.__setattr__(self, "covariates", MappingProxyType({n: self.covariates[n] for n in COVARIATES}))
        object.__setattr__(self, "correlations", MappingProxyType(self._checked_correlations(where)))
        self._check_acceptance(where)
        self._build_layout()

    # ------------------------------------------------------------------ validation
    def _checked_correlations(self, where: str) -> dict[tuple[str, str], float]:
        if not isinstance(self.correlations, Mapping):
            raise ConfigError(f"{where}.correlations: expected a mapping (a, b) -> rho")
        out: dict[tuple[str, str], float] = {}
        seen: set[frozenset] = set()
        for key, rho in self.correlations.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ConfigError(f"{where}.correlations: key {key!r}; expected a pair of covariate names")
            a, b = key
            w = f"{where}.correlations[{a}, {b}]"
            for n in (a, b):
                if n not in COVARIATES:
                    raise ConfigError(f"{w}: unknown covariate {n!r}; known: {list(COVARIATES)}")
                if self.covariates[n].kind not in CONTINUOUS_KINDS:
                    raise ConfigError(f"{w}: {n} is {self.covariates[n].kind!r}; only normal, lognormal and "
                                      "uniform covariates can be correlated")
            if a == b:
                raise ConfigError(f"{w}: a covariate cannot be correlated with itself")
            if (a in LESION_COVARIATES) != (b in LESION_COVARIATES):
                raise ConfigError(f"{w}: a per-lesion and a per-patient covariate cannot be correlated")
            if frozenset(key) in seen:
                raise ConfigError(f"{w}: pair given twice")
            seen.add(frozenset(key))
            rho = _number(rho, f"{w}.rho")
            if not -1.0 < rho < 1.0:
                raise ConfigError(f"{w}.rho = {rho}; expected -1 < rho < 1")
            out[(a, b)] = rho
        for group in (SCALAR_COVARIATES, LESION_COVARIATES):
            names = [n for n in group if self.covariates[n].kind in CONTINUOUS_KINDS]
            pairs = [k for k in out if k[0] in group]
            if pairs and not np.all(np.linalg.eigvalsh(self._correlation_matrix(names, out)) > 1e-12):
                raise ConfigError(f"{where}.correlations: the correlation matrix of the pairs {pairs} is not "
                                  "positive definite; reduce the correlations")
        return out

    def _check_acceptance(self, where: str) -> None:
        n_slots = self.max_lesions
        masses = {n: self.covariates[n].mass ** (n_slots if n in LESION_COVARIATES else 1) for n in COVARIATES}
        total = math.prod(masses.values())
        if total < MIN_ACCEPTANCE:
            low = {n: round(m, 6) for n, m in masses.items() if m < 1}
            raise ConfigError(f"{where}: truncation keeps a fraction {total:.3g} of the draws (< {MIN_ACCEPTANCE}); "
                              f"masses inside low/high: {low}; widen the bounds")

    @staticmethod
    def _correlation_matrix(names, correlations) -> np.ndarray:
        c = np.eye(len(names))
        index = {n: i for i, n in enumerate(names)}
        for (a, b), rho in correlations.items():
            if a in index and b in index:
                c[index[a], index[b]] = c[index[b], index[a]] = rho
        return c

    def _build_layout(self) -> None:
        """Column layout of a patient's standard-normal draw and the Cholesky factors."""
        random_scalars = [n for n in SCALAR_COVARIATES + ("n_lesions",) if self.covariates[n].kind != "fixed"]
        random_lesion = [n for n in LESION_COVARIATES if self.covariates[n].kind != "fixed"]
        cont_s = [n for n in SCALAR_COVARIATES if self.covariates[n].kind in CONTINUOUS_KINDS]
        cont_l = [n for n in LESION_COVARIATES if self.covariates[n].kind in CONTINUOUS_KINDS]
        layout = {
            "scalar_cols": {n: i for i, n in enumerate(random_scalars)},
            "lesion_cols": {(k, n): len(random_scalars) + k * len(random_lesion) + j
                            for k in range(self.max_lesions) for j, n in enumerate(random_lesion)},
            "cont_s": cont_s, "cont_l": cont_l,
            "chol_s": np.linalg.cholesky(self._correlation_matrix(cont_s, self.correlations)),
            "chol_l": np.linalg.cholesky(self._correlation_matrix(cont_l, self.correlations)),
        }
        layout["width"] = len(random_scalars) + self.max_lesions * len(random_lesion)
        object.__setattr__(self, "_layout", layout)

    # ------------------------------------------------------------------ construction
    @classmethod
    def default(cls) -> "Population":
        """Men with mCRPC: the defaults of `default_covariates` (each with its source), no
        correlations (no source giving a weight-height correlation for this population was found)."""
        return cls(default_covariates(), {})

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "population") -> "Population":
        """The [population] table of a trial config: any subset of COVARIATES, each a
        distribution table replacing the default, and optionally "correlations", a list of
        {between = [a, b], rho = r} replacing the default correlations."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} = {data!r}; expected a table")
        covariates = default_covariates()
        correlations: Mapping = {}
        for key, value in data.items():
            if key == "correlations":
                correlations = _parse_correlations(value, f"{where}.correlations")
            elif key in COVARIATES:
                dist = Distribution.from_dict(value, f"{where}.{key}")
                if not dist.unit:
                    dist = replace(dist, unit=UNITS[key], where=f"{where}.{key}")
                covariates[key] = dist
            else:
                raise ConfigError(f"{where}.{key}: unknown covariate {key!r}; known: {list(COVARIATES)} "
                                  "(and 'correlations')")
        return cls(covariates, correlations, where=where)

    def to_dict(self) -> dict:
        """JSON/TOML-safe table; `Population.from_dict` returns an equal population."""
        out = {name: dist.to_dict() for name, dist in self.covariates.items()}
        out["correlations"] = [{"between": [a, b], "rho": rho} for (a, b), rho in self.correlations.items()]
        return out

    @property
    def max_lesions(self) -> int:
        d = self.covariates["n_lesions"]
        return int(d.value) if d.kind == "fixed" else int(max(d.values))

    @property
    def columns(self) -> tuple[str, ...]:
        """Column order of `sample`."""
        lesion = tuple(f"lesion_{k + 1}_{suffix}" for k in range(self.max_lesions)
                       for suffix in ("volume_ml", "rden_nmol_l"))
        return ("patient_id",) + SCALAR_COVARIATES + ("n_lesions",) + lesion

    # ------------------------------------------------------------------ sampling
    def sample(self, seed: int, patient_ids: Sequence[int]) -> pd.DataFrame:
        """One row per patient (in the order of `patient_ids`), columns `columns`: patient i's
        values come only from default_rng(SeedSequence([seed, i])) (module docstring)."""
        if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)) or seed < 0:
            raise ConfigError(f"seed = {seed!r}; expected a non-negative integer")
        ids = list(patient_ids)
        for i in ids:
            if not (isinstance(i, numbers.Integral) and not isinstance(i, bool)) or i < 0:
                raise ConfigError(f"patient_ids: {i!r}; expected non-negative integers")
        lay = self._layout
        n = len(ids)
        z = np.zeros((n, lay["width"]))
        if lay["width"] and n:
            gens = [np.random.default_rng(np.random.SeedSequence([int(seed), int(i)])) for i in ids]
            pending = np.arange(n)
            n_col = lay["scalar_cols"].get("n_lesions")
            for attempt in range(MAX_ATTEMPTS):
                z[pending] = np.stack([gens[j].standard_normal(lay["width"]) for j in pending])
                if n_col is not None:   # the lesion count of the first attempt is kept
                    if attempt == 0:
                        first_count_z = z[:, n_col].copy()
                    z[pending, n_col] = first_count_z[pending]
                ok = self._within_bounds(self._values(z[pending]))
                pending = pending[~ok]
                if pending.size == 0:
                    break
            else:
                raise ConfigError(f"population: {pending.size} patient(s) not accepted within {MAX_ATTEMPTS} "
                                  "truncation attempts; widen low/high")
        values = self._values(z)
        data = {"patient_id": np.asarray(ids, dtype=np.int64)}
        for name in SCALAR_COVARIATES:
            data[name] = values[name]
        data["n_lesions"] = values["n_lesions"].astype(np.int64)
        for k in range(self.max_lesions):
            present = k < values["n_lesions"]
            for name, suffix in zip(LESION_COVARIATES, ("volume_ml", "rden_nmol_l")):
                data[f"lesion_{k + 1}_{suffix}"] = np.where(present, values[(k, name)], np.nan)
        return pd.DataFrame(data, columns=list(self.columns))

    def _values(self, z: np.ndarray) -> dict:
        """Covariate values of every row of z (copula, then marginals)."""
        lay, cov = self._layout, self.covariates
        rows = z.shape[0]
        cols = {}
        for name in SCALAR_COVARIATES + ("n_lesions",):
            cols[name] = z[:, lay["scalar_cols"][name]] if name in lay["scalar_cols"] else np.zeros(rows)
        if lay["cont_s"]:
            block = np.stack([cols[n] for n in lay["cont_s"]], axis=1) @ lay["chol_s"].T
            cols.update({n: block[:, j] for j, n in enumerate(lay["cont_s"])})
        for k in range(self.max_lesions):
            for name in LESION_COVARIATES:
                cols[(k, name)] = z[:, lay["lesion_cols"][(k, name)]] if (k, name) in lay["lesion_cols"] else np.zeros(rows)
            if lay["cont_l"]:
                block = np.stack([cols[(k, n)] for n in lay["cont_l"]], axis=1) @ lay["chol_l"].T
                cols.update({(k, n): block[:, j] for j, n in enumerate(lay["cont_l"])})
        out = {}
        for key, zz in cols.items():
            name = key if isinstance(key, str) else key[1]
            out[key] = cov[name].quantile(ndtr(zz), zz)
        return out

    def _within_bounds(self, values: dict) -> np.ndarray:
        """Rows whose scalars and present lesions lie inside their truncation bounds."""
        cov = self.covariates
        ok = np.ones(len(values["n_lesions"]), dtype=bool)
        for key, x in values.items():
            name = key if isinstance(key, str) else key[1]
            d = cov[name]
            if d.kind not in ("normal", "lognormal") or (d.low is None and d.high is None):
                continue
            inside = np.ones_like(ok)
            if d.low is not None:
                inside &= x >= d.low
            if d.high is not None:
                inside &= x <= d.high
            if not isinstance(key, str):
                inside |= key[0] >= values["n_lesions"]   # absent lesion: not checked
            ok &= inside
        return ok


def patient_parameters(row: Mapping) -> dict[str, float]:
    """One sampled row -> psma_model parameter overrides for the model built with
    ``psma_model(lesion_volumes_ml=(...) * row["n_lesions"])``: body_weight_kg, height_cm,
    haematocrit, gfr_ml_min, <region>_rden_nmol_l, and for k = 1..n_lesions
    lesion_k_volume_l (= lesion_k_volume_ml / 1000) and lesion_k_rden_nmol_l."""

    def get(column: str) -> float:
        try:
            value = row[column]
        except (KeyError, IndexError):
            raise ConfigError(f"patient row: missing column {column!r}") from None
        if not _is_number(value) or not math.isfinite(float(value)):
            raise ConfigError(f"patient row: {column} = {value!r}; expected a finite number")
        return float(value)

    n = get("n_lesions")
    if not n.is_integer() or not 0 <= n <= MAX_LESIONS:
        raise ConfigError(f"patient row: n_lesions = {n!r}; expected an integer 0..{MAX_LESIONS}")
    out = {_MODEL_NAME.get(name, name): get(name) for name in SCALAR_COVARIATES}
    for k in range(1, int(n) + 1):
        out[f"lesion_{k}_volume_l"] = get(f"lesion_{k}_volume_ml") / 1000.0
        out[f"lesion_{k}_rden_nmol_l"] = get(f"lesion_{k}_rden_nmol_l")
    return out
