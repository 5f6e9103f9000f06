"""Segmentation names -> region names of the PBPK model (`pbpk.psma_model`).

Model regions (those of pbpk.psma_model): blood, liver, spleen, gi, prostate, red_marrow,
muscle, skin, adipose, bone, heart, lungs, brain, salivary_glands, kidneys, urine, rest,
lesion_1, lesion_2, ..., tumour_rest.  TotalSegmentator (Wasserthal et al., Radiology: AI
2023; class names of its "total" and "head_glands_cavities" tasks) splits several of
them: both kidneys form `kidneys`, the parotid and submandibular glands
`salivary_glands`, the lung lobes `lungs`, the bowel and stomach `gi`, bones `bone`,
the urinary bladder (content) `urine`.  Unknown names are kept as they are (strict=False)
so studies may use their own regions.
"""

from __future__ import annotations

import re

from .errors import ImagingError

MODEL_REGIONS = ("blood", "liver", "spleen", "gi", "prostate", "red_marrow", "muscle", "skin", "adipose", "bone",
                 "heart", "lungs", "brain", "salivary_glands", "kidneys", "urine", "rest", "tumour_rest")

_EXACT = {
    "kidney_left": "kidneys", "kidney_right": "kidneys", "kidney": "kidneys",
    "parotid_gland_left": "salivary_glands", "parotid_gland_right": "salivary_glands",
    "submandibular_gland_left": "salivary_glands", "submandibular_gland_right": "salivary_glands",
    "lung_left": "lungs", "lung_right": "lungs", "lung": "lungs",
    "stomach": "gi", "small_bowel": "gi", "duodenum": "gi", "colon": "gi", "esophagus": "gi",
    "urinary_bladder": "urine", "bladder": "urine",
    "sacrum": "bone", "skull": "bone", "sternum": "bone", "costal_cartilages": "bone",
    "tumour": "tumour_rest", "tumor": "tumour_rest", "tumor_rest": "tumour_rest",
}
_PATTERNS = (
    (re.compile(r"^lung_(upper|middle|lower)_lobe_(left|right)$"), "lungs"),
    (re.compile(r"^(parotid|submandibular)_gland(_(left|right))?$"), "salivary_glands"),
    (re.compile(r"^(vertebrae_[ctls]\d+|rib_(left|right)_\d+|(hip|femur|humerus|scapula|clavicula)_(left|right))$"),
     "bone"),
    (re.compile(r"^(lesion|tumou?r)_?(\d+)$"), None),  # lesion_3, tumor3 -> lesion_3
)


def to_model_region(name: str, strict: bool = False) -> str:
    """Model region for a segmentation name (case and spaces forgiven); see module doc."""
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    if key in MODEL_REGIONS:
        return key
    if key in _EXACT:
        return _EXACT[key]
    for pattern, region in _PATTERNS:
        m = pattern.match(key)
        if m:
            return region if region is not None else f"lesion_{int(m.group(2))}"
    if strict:
        raise ImagingError(f"region name {name!r} has no model region; known: {MODEL_REGIONS} and lesion_N")
    return key


def label_names(names, strict: bool = False) -> dict[int, tuple[str, str]]:
    """{label value: (segmentation name, model region)} from a mapping {label: name} or a
    sequence of names (label value = position + 1)."""
    if isinstance(names, dict):
        items = names.items()
    elif isinstance(names, (list, tuple)):
        items = enumerate(names, start=1)
    else:
        raise ImagingError(f"names: {type(names).__name__}; expected a dict {{label: name}} or a list of names")
    out = {}
    for label, name in items:
        if not isinstance(label, int) or isinstance(label, bool) or label <= 0:
            raise ImagingError(f"names: label {label!r}; expected a positive integer (0 is background)")
        out[label] = (str(name), to_model_region(name, strict))
    return out
