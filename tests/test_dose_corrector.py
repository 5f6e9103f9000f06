"""CNN dose corrector (issue 8): physics constraints, training, safe round trip, errors."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dose.corrector import Corrector, load
from twin.corrector_data import phantom_pairs as make_pairs
from dose.corrector.network import DoseUNet3D
from dose.corrector.train import train
from dose.errors import DoseError, GeometryError, InvalidDoseInputError


def _random_model(seed=0):
    """Untrained net with a non-zero output layer so the residual is not trivially 0."""
    torch.manual_seed(seed)
    m = DoseUNet3D(base=4)
    with torch.no_grad():
        m.out.weight.normal_(0, 5.0)
        m.out.bias.fill_(3.0)
    return m


def _inputs(shape=(20, 24, 28), seed=1):
    rng = np.random.default_rng(seed)
    dose = rng.gamma(2.0, 1.0, shape)
    rho = np.ones(shape)
    rho[:, :10] = 0.3   # lung slab
    rho[:, 18:] = 1.6   # bone slab
    return dose, rho


def test_zero_dose_gives_exact_zero():
    c = Corrector(_random_model(), patch=16, overlap=4)
    dose, rho = _inputs()
    assert np.array_equal(c(np.zeros_like(dose), rho), np.zeros_like(dose))
    # and inside the network (scale 0) as well, not only the early return
    z = torch.zeros(1, 1, 8, 8, 8)
    out = c.model(z, torch.full_like(z, 1.6), torch.zeros(1, 1, 1, 1, 1))
    assert torch.count_nonzero(out) == 0


def test_homogeneous_water_residual_is_zero_by_construction():
    c = Corrector(_random_model(), patch=16, overlap=4)
    dose, _ = _inputs()
    out = c(dose, np.ones_like(dose))
    np.testing.assert_allclose(out, dose, rtol=1e-6, atol=0)
    # the same net does change a heterogeneous dose (so the check above can fail)
    _, rho = _inputs()
    assert np.max(np.abs(c(dose, rho) - dose)) > 1e-3 * dose.max()


def test_dose_is_linear_in_activity():
    c = Corrector(_random_model(), patch=16, overlap=4)
    dose, rho = _inputs()
    base = c(dose, rho)
    for a in (1e-3, 7.5, 2e4):
        np.testing.assert_allclose(c(a * dose, rho), a * base, rtol=2e-5, atol=1e-12 * a * dose.max())


def test_sliding_window_matches_single_patch_where_windows_do_not_matter():
    # homogeneous-gate-free check of blending: one patch covering everything vs many overlapping
    m = _random_model()
    dose, rho = _inputs((16, 16, 16))
    one = Corrector(m, patch=16, overlap=0)(dose, rho)
    many = Corrector(m, patch=8, overlap=4)(dose, rho)
    assert one.shape == many.shape == dose.shape and np.all(np.isfinite(many))
    # blended output stays close to the single-window output in the interior
    assert np.mean(np.abs(one - many)) < 0.5 * np.mean(np.abs(one - dose)) + 1e-12


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pairs = make_pairs([1, 2, 3])
    path = str(tmp_path_factory.mktemp("w") / "corrector.pt")
    model, hist = train(pairs, epochs=4, lr=1e-3, seed=0, base=8, checkpoint=path)
    return pairs, model, hist, path


def test_training_beats_uncorrected_physics_dose_on_validation(trained):
    _, _, hist, _ = trained
    assert hist["best_val"] < hist["baseline_val"]
    assert len(hist["val"]) >= 1 and np.isfinite(hist["val"]).all()


def test_save_load_round_trip_identical(trained, monkeypatch):
    pairs, model, _, path = trained
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (seen.append(k.get("weights_only")), real(*a, **k))[1])
    c2 = load(path, device="cpu", patch=32, overlap=8)
    assert seen == [True]
    c1 = Corrector(model, device="cpu", patch=32, overlap=8)
    p = pairs[0]
    np.testing.assert_array_equal(c1(p["physics_gy"], p["density_g_cm3"]), c2(p["physics_gy"], p["density_g_cm3"]))


def test_bad_inputs_raise_specific_errors(tmp_path):
    c = Corrector(_random_model(), patch=16, overlap=4)
    dose, rho = _inputs()
    with pytest.raises(GeometryError, match="density_g_cm3"):
        c(dose, rho[:-1])
    with pytest.raises(GeometryError, match="3-D"):
        c(dose[0], rho[0])
    bad = dose.copy(); bad[3, 3, 3] = np.nan
    with pytest.raises(InvalidDoseInputError, match="non-finite"):
        c(bad, rho)
    bad = rho.copy(); bad[0, 0, 0] = np.inf
    with pytest.raises(InvalidDoseInputError, match="density"):
        c(dose, bad)
    with pytest.raises(InvalidDoseInputError, match="negative"):
        c(-dose, rho)
    with pytest.raises(DoseError, match="cannot load"):
        load(str(tmp_path / "missing.pt"))
    with pytest.raises(InvalidDoseInputError):
        train([], epochs=1)


def test_absorbed_dose_corrected_method_records_its_weights(trained):
    """method="corrected" = the corrector applied to the density-scaled kernel dose; an
    image output records the method and the weights' provenance in its metadata."""
    import json

    import SimpleITK as sitk

    import dose

    pairs, _, _, path = trained
    p = pairs[0]
    vox = (12.0, 12.0, 12.0)  # twin.corrector_data.SMALL_VOXEL_MM
    c = load(path, device="cpu", patch=32, overlap=8)
    density = dose.absorbed_dose(p["tia_mbq_s"], vox, "Lu-177", method="density", density_g_cm3=p["density_g_cm3"])
    corrected = dose.absorbed_dose(p["tia_mbq_s"], vox, "Lu-177", method="corrected",
                                   density_g_cm3=p["density_g_cm3"], corrector=c)
    np.testing.assert_allclose(corrected, c(density, p["density_g_cm3"]), rtol=1e-6, atol=1e-9)
    assert not np.allclose(corrected, density)
    image = sitk.GetImageFromArray(p["tia_mbq_s"])
    image.SetSpacing(vox)
    rho = sitk.GetImageFromArray(p["density_g_cm3"])
    rho.CopyInformation(image)
    out = dose.absorbed_dose(image, None, "Lu-177", method="corrected", density_g_cm3=p["density_g_cm3"],
                             corrector=path)  # a weights path is loaded
    assert out.GetMetaData("rpt_twin:dose_method") == "corrected"
    record = json.loads(out.GetMetaData("rpt_twin:corrector"))
    assert record["weights"].endswith("corrector.pt") and record["config"]["base"] == 8
    with pytest.raises(InvalidDoseInputError, match="corrector"):
        dose.absorbed_dose(p["tia_mbq_s"], vox, "Lu-177", method="corrected", density_g_cm3=p["density_g_cm3"])
    with pytest.raises(InvalidDoseInputError, match="corrector"):
        dose.absorbed_dose(p["tia_mbq_s"], vox, "Lu-177", method="kernel", corrector=c)
