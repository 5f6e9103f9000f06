"""Patient covariates of a twin: body size, renal function, haematocrit and imaged volumes.

`Covariates` holds what a study knows about the patient and turns it into the keyword
arguments of `pbpk.psma_model` (`model_kwargs`).  Defaults are the reference values that
`pbpk.psma_model` itself uses, so a study that gives nothing builds the reference model:

* weight 73 kg and height 176 cm: ICRP Publication 89 (2002) reference adult male (the
  sources `pbpk/psma.py` gives for its `body_weight_kg` / `height_cm` parameters);
* haematocrit 0.4 and GFR 88.7 mL/min: Fele-Paranj A et al. EJNMMI Radiopharm Chem
  2024;9:6 (public SBML qurit/PyCNO PSMA.sbml; GFR = TER/3 * 201/151 with a 99mTc-MAG3
  tubular extraction rate of 200 mL/min), as cited in `pbpk/psma.py`.

Units: kg, cm, mL/min (GFR), haematocrit as a fraction of blood volume, volumes in mL.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from .errors import StudyError

# Reference values of pbpk.psma_model (pbpk/psma.py, `psma_model` signature; sources in
# the module docstring above).
REFERENCE_WEIGHT_KG = 73.0       # ICRP Publication 89 reference adult male
REFERENCE_HEIGHT_CM = 176.0      # ICRP Publication 89 reference adult male
REFERENCE_HAEMATOCRIT = 0.4      # Fele-Paranj 2024 (PyCNO PSMA.sbml)
REFERENCE_GFR_ML_MIN = 88.7      # Fele-Paranj 2024 (PyCNO): 200/3 * 201/151 mL/min

#: Organs whose total volume `pbpk.psma_model(organ_volumes_ml=...)` applies: the tissue
#: table `pbpk.psma.TISSUES` plus brain, salivary glands and kidneys (the `organ_volume`
#: calls of pbpk/psma.py `_Builder`).  Other keys are ignored by psma_model, so
#: `model_kwargs` leaves them out.
MODEL_ORGANS = ("liver", "spleen", "gi", "prostate", "red_marrow", "muscle", "skin", "adipose", "bone", "heart",
                "lungs", "brain", "salivary_glands", "kidneys")
#: Organs whose volume a study measures from its label map when the study file does not
#: give it: the organs the psma_model docstring lists as "volumes from imaging" (whole
#: organs inside a head-and-trunk field of view; bone, muscle, skin and adipose are not,
#: so their partial volumes would be wrong), restricted to those psma_model applies.
IMAGED_ORGANS = ("kidneys", "salivary_glands", "liver", "spleen", "prostate", "red_marrow")

SEXES = ("M", "F")


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise StudyError(f"covariates: {name} = {value!r}; expected a positive finite number")
    return float(value)


@dataclass(frozen=True)
class Covariates:
    """What is known about the patient (see module docstring for defaults and sources).

    weight_kg, height_cm : body size; sex : "M", "F" or None (unknown; the PSMA model
    does not use it); gfr_ml_min : glomerular filtration rate; haematocrit : fraction in
    (0, 1); organ_volumes_ml : {organ: total volume in mL} (e.g. measured on CT);
    lesion_volumes_ml : one volume (mL) per lesion, in the order lesion_1, lesion_2, ...
    """

    weight_kg: float = REFERENCE_WEIGHT_KG
    height_cm: float = REFERENCE_HEIGHT_CM
    sex: str | None = None
    gfr_ml_min: float = REFERENCE_GFR_ML_MIN
    haematocrit: float = REFERENCE_HAEMATOCRIT
    organ_volumes_ml: Mapping[str, float] = field(default_factory=dict)
    lesion_volumes_ml: tuple[float, ...] = ()

    def __post_init__(self):
        for name in ("weight_kg", "height_cm", "gfr_ml_min", "haematocrit"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        if not self.haematocrit < 1.0:
            raise StudyError(f"covariates: haematocrit = {self.haematocrit!r}; expected a fraction in (0, 1)")
        if self.sex is not None and self.sex not in SEXES:
            raise StudyError(f"covariates: sex = {self.sex!r}; expected one of {SEXES} or None")
        if not isinstance(self.organ_volumes_ml, Mapping):
            raise StudyError(f"covariates: organ_volumes_ml is {type(self.organ_volumes_ml).__name__}; "
                             "expected a mapping {organ: volume in mL}")
        organs = {}
        for organ, volume in sorted(self.organ_volumes_ml.items()):
            if not isinstance(organ, str) or not organ:
                raise StudyError(f"covariates: organ_volumes_ml key {organ!r}; expected an organ name")
            organs[organ] = _positive(f"organ_volumes_ml[{organ!r}]", volume)
        object.__setattr__(self, "organ_volumes_ml", MappingProxyType(organs))
        if isinstance(self.lesion_volumes_ml, (str, bytes, Mapping)) or not hasattr(self.lesion_volumes_ml, "__iter__"):
            raise StudyError(f"covariates: lesion_volumes_ml = {self.lesion_volumes_ml!r}; "
                             "expected a sequence of volumes in mL")
        lesions = tuple(_positive(f"lesion_volumes_ml[{i}]", v) for i, v in enumerate(self.lesion_volumes_ml))
        object.__setattr__(self, "lesion_volumes_ml", lesions)

    def __hash__(self) -> int:
        return hash((self.weight_kg, self.height_cm, self.sex, self.gfr_ml_min, self.haematocrit,
                     tuple(self.organ_volumes_ml.items()), self.lesion_volumes_ml))

    def model_kwargs(self) -> dict:
        """Keyword arguments of `pbpk.psma_model`: body_weight_kg, height_cm, haematocrit,
        gfr_ml_min, organ_volumes_ml (only `MODEL_ORGANS`) and lesion_volumes_ml (one
        lesion region per entry; empty = a model without lesions)."""
        return {
            "body_weight_kg": self.weight_kg,
            "height_cm": self.height_cm,
            "haematocrit": self.haematocrit,
            "gfr_ml_min": self.gfr_ml_min,
            "organ_volumes_ml": {k: v for k, v in self.organ_volumes_ml.items() if k in MODEL_ORGANS},
            "lesion_volumes_ml": self.lesion_volumes_ml,
        }

    def to_dict(self) -> dict:
        """JSON-safe dict (floats, str/None, dict, list) that `from_dict` reads back."""
        return {
            "weight_kg": self.weight_kg, "height_cm": self.height_cm, "sex": self.sex,
            "gfr_ml_min": self.gfr_ml_min, "haematocrit": self.haematocrit,
            "organ_volumes_ml": dict(self.organ_volumes_ml), "lesion_volumes_ml": list(self.lesion_volumes_ml),
        }

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "covariates") -> "Covariates":
        """Covariates from a dict such as `to_dict` writes (missing keys take the defaults).
        Unknown keys raise StudyError naming the key and `where` (e.g. the study file)."""
        if not isinstance(data, Mapping):
            raise StudyError(f"{where}: covariates are {type(data).__name__}; expected a table of fields")
        known = tuple(f.name for f in fields(cls))
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise StudyError(f"{where}: unknown covariate key(s) {unknown}; expected some of {list(known)}")
        try:
            return cls(**dict(data))
        except StudyError as err:
            raise StudyError(f"{where}: {err}") from None
