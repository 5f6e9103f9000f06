"""Decay chains, in-situ equilibrium energies and beta spectra from ICRP-107."""

import json
from importlib import resources

import numpy as np
import pytest
from scipy.integrate import trapezoid

from dose import nuclides
from dose.errors import UnknownNuclideError


def _raw(name):
    """Independent reading of the icrp107-database file (JSON encoded twice)."""
    path = resources.files("icrp107_database") / "icrp107" / f"{name}.json"
    return json.loads(json.loads(path.read_text()))["emissions"]


@pytest.mark.parametrize("name", ["Lu-177", "Y-90", "I-131", "Cu-64", "Ga-68", "Bi-213"])
def test_beta_spectrum_is_normalised_and_its_mean_is_the_icrp_mean(name):
    spec = nuclides.beta_spectrum(name)
    e, p = np.asarray(spec.energy_mev), np.asarray(spec.pdf_per_mev)
    assert trapezoid(p, e) == pytest.approx(1.0, abs=1e-12)
    raw = _raw(name)
    betas = (raw["beta-"] or []) + (raw["beta+"] or [])  # b-spectra holds beta- and beta+ together
    yield_icrp = sum(y for _, y in betas)
    energy_icrp = sum(x * y for x, y in betas)
    # spectrum area = beta branching, mean = ICRP mean beta energy per decay / beta yield
    assert spec.yield_per_decay == pytest.approx(yield_icrp, rel=5e-3)
    assert spec.mean_mev == pytest.approx(energy_icrp / yield_icrp, rel=5e-3)


def test_spectrum_endpoints():
    # ICRP-107 end-point energies: 177Lu 0.498 MeV, 90Y 2.280 MeV
    assert nuclides.beta_spectrum("Lu-177").max_energy_mev == pytest.approx(0.4978, abs=1e-3)
    assert nuclides.beta_spectrum("Y-90").max_energy_mev == pytest.approx(2.2801, abs=1e-3)
    assert nuclides.beta_spectrum("Ac-225") is None  # pure alpha emitter


def test_ac225_chain_members_and_branching():
    chain = {m.name: m.decays_per_parent_decay for m in nuclides.decay_chain("225Ac")}
    assert set(chain) == {"Ac-225", "Fr-221", "At-217", "Bi-213", "Po-213", "Tl-209", "Pb-209"}
    b_alpha = sum(y for _, y in _raw("Bi-213")["alpha"])  # 213Bi alpha branch, 2.09 % (ICRP-107)
    assert b_alpha == pytest.approx(0.0209, abs=2e-4)
    assert chain["Tl-209"] == pytest.approx(b_alpha, rel=1e-3)
    assert chain["Po-213"] == pytest.approx(1 - b_alpha, rel=1e-3)
    assert chain["Pb-209"] == pytest.approx(1.0, abs=1e-3)  # both branches end in 209Pb
    # decay order: every member after its parent(s)
    order = [m.name for m in nuclides.decay_chain("Ac-225")]
    assert order.index("Bi-213") < order.index("Tl-209") < order.index("Pb-209")
    assert order.index("Po-213") < order.index("Pb-209")


def test_ac225_equilibrium_energy_is_the_branching_weighted_sum():
    e = nuclides.energy_per_decay_mev
    b_alpha = sum(y for _, y in _raw("Bi-213")["alpha"])
    b_beta = sum(y for _, y in _raw("Bi-213")["beta-"])
    members = [("Ac-225", 1.0), ("Fr-221", 1.0), ("At-217", 1.0), ("Bi-213", 1.0),
               ("Po-213", b_beta), ("Tl-209", b_alpha), ("Pb-209", 1.0)]
    chain = nuclides.equilibrium_energy_per_decay_mev("Ac-225")
    for kind in ("alpha", "alpha recoil", "beta-", "IE", "gamma"):
        expected = sum(w * e(name).get(kind, 0.0) for name, w in members)
        assert chain[kind] == pytest.approx(expected, rel=2e-3), kind
    # ../shared/research/dose.md 6.1 [checked]: 27.48 MeV alpha, 0.51 recoil, 0.69 electrons, 0.22 photons
    assert chain["alpha"] == pytest.approx(27.48, abs=0.02)
    assert chain["alpha recoil"] == pytest.approx(0.51, abs=0.01)
    assert chain["beta-"] + chain["IE"] + chain["auger"] == pytest.approx(0.69, abs=0.01)
    assert chain["gamma"] + chain["X"] == pytest.approx(0.22, abs=0.01)
    rec = nuclides.nuclide("Ac-225", in_situ_equilibrium=True)
    assert rec.half_life_h == pytest.approx(240.0)
    assert rec.non_penetrating_mev == pytest.approx(sum(chain[k] for k in nuclides.NON_PENETRATING if k in chain))
    assert "Pb-209" in rec.chain and nuclides.nuclide("Ac-225").chain == ("Ac-225",)


def test_long_lived_members_can_be_excluded():
    # 209Pb (3.25 h) is the longest-lived daughter of 225Ac; a 1 h cut drops it only
    full = nuclides.equilibrium_energy_per_decay_mev("Ac-225")
    cut = nuclides.equilibrium_energy_per_decay_mev("Ac-225", max_half_life_h=1.0)
    assert full["beta-"] - cut["beta-"] == pytest.approx(nuclides.energy_per_decay_mev("Pb-209")["beta-"], rel=2e-3)
    assert cut["alpha"] == pytest.approx(full["alpha"])


def test_decay_modes_inferred_from_emissions():
    assert nuclides.daughters("Ga-68") == ()  # EC/beta+ to stable 68Zn
    assert nuclides.daughters("Tc-99m")[0][0] == "Tc-99"  # isomeric transition
    assert nuclides.daughters("Lu-177") == ()  # 177Hf stable
    ra = {m.name: m.decays_per_parent_decay for m in nuclides.decay_chain("Ra-223")}
    assert ra["Tl-207"] + ra["Po-211"] == pytest.approx(1.0, abs=2e-3)  # 211Bi branches
    with pytest.raises(UnknownNuclideError):
        nuclides.decay_chain("Xx-1")
