"""HU -> density (Schneider 2000 table) and tissue classes."""

import numpy as np
import pytest

from dose.density import class_density_thresholds, hu_to_density, tissue_classes
from dose.errors import InvalidDoseInputError


def test_table_nodes_and_linear_interpolation():
    # nodes of GATE's Schneider2000DensitiesTable.txt (Schneider, Bortfeld & Schlegel 2000)
    hu = np.array([-1000.0, -98.0, 14.0, 100.0, 101.0, 1600.0, 3000.0])
    rho = np.array([0.00121, 0.93, 1.03, 1.1199, 1.0762, 1.9642, 2.8])
    assert np.allclose(hu_to_density(hu), rho, rtol=1e-12)
    # water (0 HU) lies between (-97, 0.930486) and (14, 1.03): linear interpolation by hand
    assert hu_to_density(0.0) == pytest.approx(0.930486 + 97.0 / 111.0 * (1.03 - 0.930486), rel=1e-12)
    # clamped outside the table
    assert hu_to_density([-3000.0, 5000.0]).tolist() == [0.00121, 2.8]


def test_table_can_be_overridden_and_is_validated():
    table = [(-1000.0, 0.001), (0.0, 1.0), (1000.0, 2.0)]
    assert np.allclose(hu_to_density([-500.0, 0.0, 500.0], table), [0.5005, 1.0, 1.5])
    for bad in ([(0.0, 1.0)], [(0.0, 1.0), (0.0, 2.0)], [(0.0, 1.0), (10.0, -1.0)]):
        with pytest.raises(InvalidDoseInputError, match="table"):
            hu_to_density(0.0, bad)
    with pytest.raises(InvalidDoseInputError, match="ct_hu"):
        hu_to_density([0.0, np.nan])


def test_tissue_classes_follow_schneider_segmentation():
    lung_adipose, adipose_soft, soft_bone = class_density_thresholds()
    # the HU limits -120, -22, +120 of Schneider et al. 2000 mapped through the table
    assert lung_adipose == pytest.approx(0.00121 + (880.0 / 902.0) * (0.93 - 0.00121), rel=1e-12)
    assert adipose_soft == pytest.approx(0.930486 + 75.0 / 111.0 * (1.03 - 0.930486), rel=1e-12)
    assert soft_bone == pytest.approx(1.0762 + 19.0 / 1499.0 * (1.9642 - 1.0762), rel=1e-12)
    hu = np.array([-1000.0, -800.0, -100.0, -50.0, 0.0, 60.0, 300.0, 1500.0])
    classes = tissue_classes(hu_to_density(hu))
    assert classes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # water (1.0 g/cm^3) is soft tissue, ICRP adipose (0.95) adipose, inflated lung (0.26) lung
    assert tissue_classes([1.0, 0.95, 0.26, 1.92]).tolist() == [2, 1, 0, 3]
    with pytest.raises(InvalidDoseInputError, match="thresholds"):
        tissue_classes([1.0], thresholds=[1.0, 0.5, 2.0])
