import math

import pytest

from dose import nuclides
from dose.errors import UnknownNuclideError


@pytest.mark.parametrize(
    "name, half_life_h",
    [  # ICRP-107 half-lives: Lu-177 6.647 d, Ga-68 67.71 min, F-18 109.77 min, Ac-225 10.0 d
        ("Lu-177", 6.647 * 24), ("177Lu", 6.647 * 24), ("Ga-68", 67.71 / 60), ("F18", 109.77 / 60),
        ("ac-225", 240.0),
    ],
)
def test_half_lives_from_icrp107(name, half_life_h):
    assert nuclides.half_life_h(name) == pytest.approx(half_life_h, rel=1e-6)


def test_specific_activity_is_lambda_times_avogadro():
    lam_per_s = math.log(2) / (6.647 * 86400)
    assert nuclides.mbq_per_nmol("Lu-177") == pytest.approx(lam_per_s * 6.02214076e23 * 1e-9 / 1e6, rel=1e-12)
    # carrier-free 177Lu: about 727 MBq/nmol (4.1 TBq/mg at 177 g/mol)
    assert 720 < nuclides.mbq_per_nmol("Lu-177") < 735


def test_lu177_energy_budget():
    e = nuclides.energy_per_decay_mev("Lu-177")
    # ICRP-107: mean beta energy 0.1333 MeV, total electron energy 0.1479 MeV per decay
    assert e["beta-"] == pytest.approx(0.1333, abs=5e-4)
    assert nuclides.non_penetrating_energy_mev("Lu-177") == pytest.approx(0.1479, abs=5e-4)


@pytest.mark.parametrize("bad", ["Xx-999", "Lu", "", "177"])
def test_unknown_nuclide(bad):
    with pytest.raises(UnknownNuclideError):
        nuclides.half_life_h(bad)


def test_nuclide_record():
    import dose

    lu = dose.nuclide("177Lu")
    assert lu.name == "Lu-177"
    assert lu.half_life_h == pytest.approx(6.647 * 24)
    assert lu.mbq_per_nmol == pytest.approx(nuclides.mbq_per_nmol("Lu-177"), rel=1e-12)
    # ICRP-107 177Lu: electrons 0.1479 MeV, photons (gamma + X) about 0.035 MeV per decay
    assert lu.non_penetrating_mev == pytest.approx(0.1479, abs=5e-4)
    assert lu.penetrating_mev == pytest.approx(0.0351, abs=1e-3)
    # 68Ga: positrons (mean 0.836 MeV x 0.889) and 2 x 0.511 MeV annihilation photons per positron
    ga = dose.nuclide("Ga-68")
    assert ga.energy_per_decay_mev["beta+"] == pytest.approx(0.74, abs=0.02)
    with pytest.raises(dose.UnknownNuclideError):
        dose.nuclide("Qq-1")
