import math

import pytest

import pbpk


@pytest.mark.parametrize("name, nuclide, ligand", [
    ("Lu-177-PSMA-617", "Lu-177", "PSMA-617"), ("Ga-68-PSMA-11", "Ga-68", "PSMA-11"),
    ("Lu-177-PSMA-I&T", "Lu-177", "PSMA-I&T"), ("F-18-DCFPyL", "F-18", "DCFPyL"),
    ("Ac-225-PSMA-617", "Ac-225", "PSMA-617"), ("177Lu-PSMA-617", "Lu-177", "PSMA-617"),
])
def test_tracer_names(name, nuclide, ligand):
    t = pbpk.tracer(name)
    assert (t.nuclide, t.ligand.name) == (nuclide, ligand)
    assert t.ligand.source  # every ligand parameter set is sourced


def test_hot_and_cold_amounts():
    a = pbpk.Administration(0.0, 7400.0, 90.0, "Lu-177-PSMA-617")
    lam_per_s = math.log(2) / (6.647 * 86400)
    hot = 7400e6 / lam_per_s / 6.02214076e23 * 1e9
    assert a.hot_nmol == pytest.approx(hot, rel=1e-9)
    assert a.cold_nmol == pytest.approx(90.0 - hot, rel=1e-9)
    assert pbpk.Administration(0.0, 7400.0, None, "Lu-177-PSMA-617").cold_nmol == 0.0  # carrier free


def test_schedule_cycles_are_sorted_and_combined():
    pet = pbpk.Schedule([pbpk.Administration(0.0, 115.0, 1.6, "Ga-68-PSMA-11")])
    tx = pbpk.Schedule.cycles(3, 7400.0, 90.0, interval_h=1008.0, start_h=336.0)
    both = tx + pet
    assert [a.time_h for a in both] == [0.0, 336.0, 1344.0, 2352.0]
    assert [t.name for t in both.tracers] == ["Ga-68-PSMA-11", "Lu-177-PSMA-617"]
    with pytest.raises(pbpk.ScheduleError):
        pbpk.Schedule([])
    with pytest.raises(pbpk.ScheduleError):
        pbpk.Schedule.cycles(0, 7400.0, 90.0, interval_h=1008.0)
