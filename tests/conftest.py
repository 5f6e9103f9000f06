"""Shared fixtures.  Compilation dominates test time, so tests share models, schedule
shapes and output-time arrays (a new shape means a new XLA compilation).

The suite runs on two pytest-xdist workers (`make test`); each worker keeps XLA and
OpenMP to one thread so the two do not oversubscribe a 2-core machine (set before JAX
or torch start their thread pools)."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

import pbpk

# One set of output times (h) for most tests: 12 points over a week.
TIMES_H = np.array([0.25, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 48.0, 72.0, 96.0, 120.0, 168.0])
LU = "Lu-177-PSMA-617"
GA = "Ga-68-PSMA-11"


@pytest.fixture(scope="session")
def lu_model():
    return pbpk.psma_model(tracers=[LU])


@pytest.fixture(scope="session")
def pet_therapy_model():
    return pbpk.psma_model(tracers=[GA, LU])


def therapy(activity_mbq=7400.0, ligand_nmol=90.0, time_h=0.0):
    return pbpk.Schedule([pbpk.Administration(time_h, activity_mbq, ligand_nmol, LU)])


@pytest.fixture(scope="session")
def therapy_trajectory(lu_model):
    return pbpk.simulate(lu_model, therapy(), TIMES_H)
