"""SBML export of the PSMA model, simulated by libroadrunner (CVODE), against our solve."""

import numpy as np
import pytest

import pbpk
from pbpk.sbml import to_sbml

from conftest import LU, TIMES_H, therapy

roadrunner = pytest.importorskip("roadrunner")


def test_exported_psma_model_agrees_with_libroadrunner(tmp_path, lu_model):
    path = to_sbml(lu_model, tmp_path / "psma.xml")
    rr = roadrunner.RoadRunner(str(path))
    hot = pbpk.tracer(LU).hot_nmol(7400.0)
    rr.setValue("init(venous__hot_lu_177_psma_617)", hot)
    rr.setValue("init(venous__cold_psma_617)", 90.0 - hot)
    rr.integrator.relative_tolerance = 1e-10
    rr.integrator.absolute_tolerance = 1e-14
    species = list(lu_model.species_names)
    rr.timeCourseSelections = ["time"] + species
    result = rr.simulate(times=[0.0] + list(TIMES_H))
    amounts = np.asarray(result)[1:, 1:]

    ours = pbpk.simulate(lu_model, therapy(), TIMES_H, tia=False, options=pbpk.SolverOptions(rtol=1e-9, atol=1e-12))
    mbq = pbpk.tracer(LU).mbq_per_nmol
    for k, region in enumerate(lu_model.regions):
        cols = [species.index(s) for s in region.species if s.endswith("hot_lu_177_psma_617")]
        rr_tac = amounts[:, cols].sum(axis=1) * mbq
        np.testing.assert_allclose(np.asarray(ours.region_activity_mbq[0, k]), rr_tac, rtol=1e-4,
                                   err_msg=f"region {region.name}")


def test_export_is_valid_sbml_with_units_and_annotations(tmp_path, lu_model):
    import libsbml

    path = to_sbml(lu_model, tmp_path / "psma.xml")
    doc = libsbml.readSBMLFromFile(str(path))
    assert doc.getNumErrors(libsbml.LIBSBML_SEV_ERROR) == 0
    m = doc.getModel()
    assert m.getNumSpecies() == len(lu_model.species)
    assert m.getNumReactions() == len(lu_model.reactions)
    assert m.getTimeUnits() == "hour" and m.getSubstanceUnits() == "nmol"
    annotation = m.getSpecies("venous__hot_lu_177_psma_617").getAnnotationString()
    assert 'nuclide="Lu-177"' in annotation and 'ligand="PSMA-617"' in annotation
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind
