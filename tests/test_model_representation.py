"""The model IR and its compiler: symbolic rates, fast path vs reference path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

import pbpk
from toy_models import michaelis_menten_model
from pbpk.compile import compile_model


def test_builder_rejects_undefined_symbols():
    b = pbpk.ModelBuilder("bad")
    b.compartment("c", 1.0)
    b.species("x", "c")
    b.reaction("r", sp.Symbol("k_missing") * sp.Symbol("x"), {"x": -1})
    with pytest.raises(pbpk.ModelError, match="k_missing"):
        b.build()


def test_builder_rejects_duplicate_names():
    b = pbpk.ModelBuilder("dup")
    b.parameter("k", 1.0, "1/h")
    b.compartment("c", 1.0)
    with pytest.raises(pbpk.ModelError, match="'k'"):
        b.species("k", "c")
        b.build()


def test_parameter_default_outside_bounds():
    with pytest.raises(pbpk.ModelError, match="v_l"):
        pbpk.Parameter("v_l", -1.0, "L", lower=0.0)


def test_psma_fast_path_equals_symbolic_rates(lu_model):
    """A y + quadratic terms (fast path) == S r(y) from the symbolic rates, values and Jacobian."""
    c = compile_model(lu_model)
    p = c.parameter_vector()
    d = c.assignments(p)
    y = jnp.asarray(np.random.default_rng(1).uniform(0.0, 5.0, len(lu_model.species)))
    s = jnp.asarray(c.stoichiometry)
    reference = s @ c.rates(y, p, d)
    np.testing.assert_allclose(c.rhs(y, p, d), reference, rtol=1e-12, atol=1e-9)
    jac_fast = jax.jit(lambda y: jax.jacfwd(c.vector_field(p, d))(y))(y)
    jac_ref = jax.jit(jax.jacfwd(lambda y: s @ c.rates(y, p, d)))(y)
    np.testing.assert_allclose(jac_fast, jac_ref, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(c.kinetics(p, d).jacobian(y), jac_ref, rtol=1e-12, atol=1e-9)
    w = jnp.arange(y.size, dtype=float)
    g_fast = jax.jit(jax.grad(lambda p: w @ c.rhs(y, p, c.assignments(p))))(p)
    g_ref = jax.jit(jax.grad(lambda p: w @ (s @ c.rates(y, p, c.assignments(p)))))(p)
    np.testing.assert_allclose(g_fast, g_ref, rtol=1e-10, atol=1e-6)


def test_every_reaction_conserves_ligand_except_none(lu_model):
    """Each PSMA reaction moves amount: its stoichiometry sums to zero (mass conservation)."""
    c = compile_model(lu_model)
    np.testing.assert_allclose(c.stoichiometry.sum(axis=0), 0.0)


def test_parameter_table_has_sources(lu_model):
    table = lu_model.parameter_table()
    assert len(table) == len(lu_model.parameters)
    missing = table[table.source.str.len() == 0]
    assert missing.empty, f"parameters without a source: {list(missing.name)}"


def test_non_polynomial_rate_model_matches_analytic_solution():
    """A Michaelis-Menten + first-order model goes through the general (non-polynomial) path;
    compare with scipy on the same symbolic right-hand side."""
    from scipy.integrate import solve_ivp

    model = michaelis_menten_model()
    assert len(compile_model(model)._terms[3]) == 2  # the two Michaelis-Menten rates
    sched = pbpk.Schedule([pbpk.Administration(0.0, 727.0, 5.0, "Lu-177-PSMA-617")])
    times = np.linspace(0.5, 24.0, 6)
    traj = pbpk.simulate(model, sched, times, tia=False, options=pbpk.SolverOptions(rtol=1e-9, atol=1e-12))
    cm = compile_model(model)
    p = cm.parameter_vector()
    d = cm.assignments(p)
    s = np.asarray(cm.stoichiometry)
    f = jax.jit(lambda y: s @ cm.rates(y, p, d))
    y0 = np.zeros(4)
    hot = 727.0 / pbpk.tracer("Lu-177-PSMA-617").mbq_per_nmol
    y0[cm.species_index["x_hot"]] = hot
    y0[cm.species_index["x_cold"]] = 5.0 - hot
    ref = solve_ivp(lambda t, y: np.asarray(f(y)), (0, 24), y0, method="LSODA", t_eval=times, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(np.asarray(traj.amounts_nmol), ref.y.T, rtol=1e-6, atol=1e-10)


def test_sparse_jacobian_with_non_polynomial_rates_equals_autodiff():
    """Michaelis-Menten (non-polynomial) and bimolecular rates: the Jacobian assembled at
    the structural entries equals jax.jacfwd of the field, and the pattern covers it."""
    b = pbpk.ModelBuilder("mm")
    vmax, km, kon, k = (b.parameter(n, v, u) for n, v, u in
                        (("vmax", 2.0, "nmol/h"), ("km", 0.7, "nmol"), ("kon", 0.3, "1/(nmol*h)"), ("k", 0.05, "1/h")))
    b.compartment("c", 1.0)
    x, y, z = (b.species(n, "c") for n in ("x", "y", "z"))
    b.reaction("uptake", vmax * x / (km + x), {"x": -1, "y": 1})
    b.reaction("bind", kon * x * y, {"x": -1, "y": -1, "z": 1})
    b.reaction("loss", k * z, {"z": -1})
    c = compile_model(b.build())
    p = c.parameter_vector()
    kin = c.kinetics(p, c.assignments(p))
    y0 = jnp.asarray([1.3, 0.4, 2.0])
    jac = np.asarray(jax.jacfwd(kin.field)(y0))
    np.testing.assert_allclose(kin.jacobian(y0), jac, rtol=1e-12, atol=1e-14)
    assert not np.any((jac != 0) & ~c.jacobian_pattern)
    s = jnp.asarray(c.stoichiometry)
    np.testing.assert_allclose(kin.field(y0), s @ c.rates(y0, p, c.assignments(p)), rtol=1e-12)


def test_parameter_vectors_equal_one_parameter_vector_per_set(lu_model):
    """Many concrete sets at once (numpy) equal `parameter_vector` set by set; an unknown
    name is refused the same way."""
    c = compile_model(lu_model)
    names = [lu_model.parameters[0].name, lu_model.parameters[-1].name]
    defaults = np.array([c.default_parameters[c.parameter_index[n]] for n in names])
    values = np.stack([defaults * 1.1, defaults * 0.9])
    vectors = c.parameter_vectors(names, values)
    assert vectors.shape == (2, len(lu_model.parameters))
    for row, v in zip(vectors, values):
        np.testing.assert_array_equal(row, np.asarray(c.parameter_vector(dict(zip(names, v)))))
    with pytest.raises(pbpk.ParameterError, match="no parameters"):
        c.parameter_vectors(["not_a_parameter"], values[:, :1])
