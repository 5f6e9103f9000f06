"""Defaults against published 177Lu-PSMA-617 patient data (7.4 GBq, ~90 nmol).

Doses are self-doses from local deposition of the electron energy (ICRP-107, 0.1479 MeV
per decay for 177Lu) in ICRP-89 reference-male organ masses, the approximation behind
most organ-level clinical numbers for 177Lu.  Bounds are the spread of verified clinical
series, with the sources named next to each.
"""

import numpy as np
import pytest

from dose import nuclides

from conftest import TIMES_H

MEV_TO_J = 1.602176634e-13
ORGAN_MASS_KG = {"kidneys": 0.310, "salivary_glands": 0.085, "red_marrow": 1.17}  # ICRP 89


def gy_per_gbq(traj, region):
    tia_mbq_s = float(traj.tia_mbq_h[region]) * 3600.0
    energy_j = tia_mbq_s * 1e6 * nuclides.non_penetrating_energy_mev("Lu-177") * MEV_TO_J
    return energy_j / ORGAN_MASS_KG[region] / 7.4


@pytest.mark.parametrize(
    "region, low, high",
    [
        # Hohberg 2016: 0.53; Fendler 2017: 0.5/0.6; Kabasakal 2017: 0.82 +- 0.25 Gy/GBq
        ("kidneys", 0.4, 0.9),
        # Hohberg 2016: 0.72; Fendler 2017: 1.0; Kabasakal 2017 (parotid): 1.90 +- 1.19 Gy/GBq
        ("salivary_glands", 0.5, 2.0),
        # Kabasakal 2017: 0.030 +- 0.008 Gy/GBq (mean +- 2 SD: 0.014-0.046)
        ("red_marrow", 0.01, 0.05),
    ],
)
def test_dose_per_activity_in_clinical_range(therapy_trajectory, region, low, high):
    assert low <= gy_per_gbq(therapy_trajectory, region) <= high


def test_urinary_excretion_at_24h(therapy_trajectory):
    # Kabasakal 2017: 56.5 +- 8.8 % (41.5-65.4 %) excreted by 24 h
    i = list(TIMES_H).index(24.0)
    assert 0.415 <= float(therapy_trajectory.urine_ligand_fraction[0, i]) <= 0.654


def _effective_half_life_h(traj, region, t1, t2):
    a = np.asarray(traj.activity_mbq[region])
    i, j = list(TIMES_H).index(t1), list(TIMES_H).index(t2)
    return (t2 - t1) * np.log(2) / np.log(a[i] / a[j])


def test_blood_elimination_half_life(therapy_trajectory):
    # Kabasakal 2017: blood elimination half-life 10.8 +- 2.5 h (physical decay negligible)
    assert 5.8 <= _effective_half_life_h(therapy_trajectory, "blood", 24.0, 48.0) <= 15.8


def test_kidney_effective_half_life(therapy_trajectory):
    # SPECT series of 20 patients (AAPM 2026 abstract): median 35.5 h, range 8.5-152 h
    assert 20.0 <= _effective_half_life_h(therapy_trajectory, "kidneys", 24.0, 96.0) <= 60.0
