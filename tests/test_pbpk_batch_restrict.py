"""pbpk.batch (many schedules of one structure in one vmapped solve) against separate
`simulate` calls, and pbpk.restrict (a model restricted to some ligands) against the full
model: exact for schedules of the kept ligand, and a small, bounded difference when a
tracer-level PET of another ligand precedes the therapy."""

import numpy as np
import pytest

import pbpk
from conftest import GA, LU, TIMES_H
from pbpk.batch import schedule_structure, simulate_schedules
from pbpk.restrict import restrict_ligands
from toy_models import TRACER, receptor_toy_model


def cycles(n, activity, ligand, interval):
    return pbpk.Schedule.cycles(n, activity_mbq=activity, ligand_nmol=ligand, interval_h=interval, tracer=TRACER)


def test_batch_equals_separate_simulations():
    model = receptor_toy_model()
    schedules = [cycles(2, 7400.0, 90.0, 1008.0), cycles(2, 5000.0, 150.0, 672.0), cycles(2, 9000.0, 60.0, 1344.0)]
    times = np.array([[1.0, 24.0, s.last_time_h + 48.0] for s in schedules])
    batch = simulate_schedules(model, schedules, times, {"kidneys_rden_nmol_l": 55.0})
    assert np.asarray(batch.solver_ok).all()
    for k, s in enumerate(schedules):
        alone = pbpk.simulate(model, s, times[k], {"kidneys_rden_nmol_l": 55.0})
        np.testing.assert_allclose(batch.region_tia_mbq_h[k], alone.region_tia_mbq_h, rtol=1e-9)
        np.testing.assert_allclose(batch.region_activity_mbq[k], alone.region_activity_mbq, rtol=1e-9, atol=1e-12)
    with pytest.raises(pbpk.ScheduleError, match="structure"):
        simulate_schedules(model, [cycles(2, 7400.0, 90.0, 1008.0), cycles(3, 7400.0, 90.0, 1008.0)], [1.0])
    with pytest.raises(pbpk.ScheduleError, match="sorted"):
        simulate_schedules(model, schedules, [5.0, 1.0])
    assert schedule_structure(schedules[0]) == ((0, TRACER), (1, TRACER))


def test_restricted_model_is_exact_for_its_own_ligand(pet_therapy_model, lu_model):
    lu_only = restrict_ligands(pet_therapy_model, ["PSMA-617"])
    assert len(lu_only.species) == len(lu_model.species) < len(pet_therapy_model.species)
    assert lu_only.region_names == pet_therapy_model.region_names
    sched = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, LU)])
    full = pbpk.simulate(pet_therapy_model, sched, TIMES_H)
    part = pbpk.simulate(lu_only, sched, TIMES_H)
    np.testing.assert_allclose(part.activity_of("Lu-177")["kidneys"], full.activity_of("Lu-177")["kidneys"],
                               rtol=1e-4)
    np.testing.assert_allclose(part.tia_of("Lu-177")["lesion_1"], full.tia_of("Lu-177")["lesion_1"], rtol=1e-4)
    with pytest.raises(pbpk.ModelError, match="no ligand"):
        restrict_ligands(pet_therapy_model, ["DOTATATE"])
    # cached on the model: the same object again, so its compiled solves are reused
    assert restrict_ligands(pet_therapy_model, ("PSMA-617",)) is lu_only


def test_separate_ligands_neglect_little_competition(pet_therapy_model):
    """A 1.6 nmol 68Ga-PSMA-11 PET a day before 7.4 GBq / 90 nmol 177Lu-PSMA-617 (the
    schedule of test_physics, so the joint solve compiles once): solving each ligand alone
    changes the therapy's kidney, lesion and salivary activity by < 1 % (the PET ligand's
    receptor occupancy is small) and leaves the PET before the therapy unchanged."""
    sched = pbpk.Schedule([pbpk.Administration(0.0, 115.0, 1.6, GA), pbpk.Administration(24.0, 7400.0, 90.0, LU)])
    joint = pbpk.simulate(pet_therapy_model, sched, TIMES_H)
    after = TIMES_H >= 48.0
    lu = pbpk.simulate(restrict_ligands(pet_therapy_model, ["PSMA-617"]), pbpk.Schedule([list(sched)[1]]),
                       TIMES_H[after])
    ga = pbpk.simulate(restrict_ligands(pet_therapy_model, ["PSMA-11"]), pbpk.Schedule([list(sched)[0]]),
                       TIMES_H[~after])
    for region in ("kidneys", "lesion_1", "salivary_glands"):
        np.testing.assert_allclose(lu.activity_of("Lu-177")[region], joint.activity_of("Lu-177")[region][after],
                                   rtol=1e-2)
        np.testing.assert_allclose(lu.tia_of("Lu-177")[region], joint.tia_of("Lu-177")[region], rtol=1e-2)
        before = TIMES_H < 24.0
        np.testing.assert_allclose(ga.activity_of("Ga-68")[region][before[~after]],
                                   joint.activity_of("Ga-68")[region][before], rtol=1e-4)
