"""Bad input gets a specific error, never NaN output."""

import numpy as np
import pytest

import pbpk

from conftest import GA, LU, TIMES_H, therapy


def test_negative_activity():
    with pytest.raises(pbpk.ScheduleError, match="activity_mbq"):
        pbpk.Administration(0.0, -10.0, 90.0, LU)


def test_ligand_below_carrier_free_amount():
    with pytest.raises(pbpk.ScheduleError, match="carrier-free"):
        pbpk.Administration(0.0, 7400.0, 1.0, LU)  # 7.4 GBq needs >= 10.2 nmol of 177Lu ligand


def test_unknown_tracer():
    with pytest.raises(pbpk.UnknownTracerError, match="PSMA-999"):
        pbpk.tracer("Lu-177-PSMA-999")
    with pytest.raises(pbpk.UnknownTracerError, match="Zz-999"):
        pbpk.Administration(0.0, 100.0, 1.0, "Zz-999-PSMA-617")


def test_negative_volume_in_model_and_in_params(lu_model):
    with pytest.raises(pbpk.ModelError, match="lesion_volumes_ml"):
        pbpk.psma_model(lesion_volumes_ml=[-5.0])
    with pytest.raises(pbpk.ModelError, match="kidneys"):
        pbpk.psma_model(organ_volumes_ml={"kidneys": 0.0})
    with pytest.raises(pbpk.ParameterError, match="kidneys_volume_l"):
        pbpk.simulate(lu_model, therapy(), TIMES_H, params={"kidneys_volume_l": -0.3})


def test_balance_that_no_longer_closes(lu_model):
    """A tumour so large that the remaining body volume is negative is refused by name."""
    with pytest.raises(pbpk.ParameterError, match="rest"):
        pbpk.simulate(lu_model, therapy(), TIMES_H, params={"tumour_rest_volume_l": 80.0})


def test_unknown_parameter(lu_model):
    with pytest.raises(pbpk.ParameterError, match="no_such_parameter"):
        pbpk.simulate(lu_model, therapy(), TIMES_H, params={"no_such_parameter": 1.0})


def test_times_before_first_administration(lu_model):
    with pytest.raises(pbpk.ScheduleError, match="before the first administration"):
        pbpk.simulate(lu_model, therapy(time_h=10.0), [5.0, 20.0])


def test_tracer_not_in_model(lu_model):
    with pytest.raises(pbpk.ScheduleError, match="Ga-68-PSMA-11"):
        pbpk.simulate(lu_model, pbpk.Schedule([pbpk.Administration(0.0, 100.0, 1.0, GA)]), TIMES_H)


def test_solver_failure_is_an_error_not_nan(lu_model):
    with pytest.raises(pbpk.SolverError, match="max_steps"):
        pbpk.simulate(lu_model, therapy(), TIMES_H, options=pbpk.SolverOptions(max_steps=5))


def test_multi_nuclide_views_need_a_nuclide(pet_therapy_model):
    sched = pbpk.Schedule([pbpk.Administration(0.0, 115.0, 1.6, GA), pbpk.Administration(24.0, 7400.0, 90.0, LU)])
    traj = pbpk.simulate(pet_therapy_model, sched, TIMES_H)
    with pytest.raises(pbpk.PBPKError, match="several nuclides"):
        traj.tia_mbq_h
    frame = traj.to_frame()
    assert set(frame.nuclide) == {"Ga-68", "Lu-177"}
    assert np.isfinite(frame.activity_mbq).all()
