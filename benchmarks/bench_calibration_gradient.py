"""Gradient of the calibration potential: the fit's chain-rule forward mode (tangents
through the ODE solve for the free parameters only) against forward mode over every
site (NumPyro's ``jacfwd`` of its potential, what `calibration.fit` used before), on a
PET + two-SPECT problem of the two-ligand PSMA model with 4 free receptor densities and
4 error-scale groups (the demo's design; ligands solved separately, as `twin calibrate`).

    .venv/bin/python benchmarks/bench_calibration_gradient.py [repeats]

Prints the median time per gradient of each, their ratio and the largest difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from numpyro.infer.util import initialize_model

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pbpk  # noqa: E402
from calibration.fit import _Potential, make_problem  # noqa: E402
from calibration.likelihood import numpyro_model  # noqa: E402
from timing import median_time  # noqa: E402

GA, LU = "Ga-68-PSMA-11", "Lu-177-PSMA-617"
REGIONS = ("kidneys", "liver", "spleen", "salivary_glands", "lesion_1", "lesion_2", "blood")
FREE = [f"{r}_rden_nmol_l" for r in ("kidneys", "salivary_glands", "lesion_1", "lesion_2")]


def problem():
    model = pbpk.psma_model(tracers=[GA, LU])
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 150.0, 1.6, GA), pbpk.Administration(168.0, 7400.0, 90.0, LU)])
    traj = pbpk.simulate(model, schedule, [1.0, 192.0, 264.0])
    rows = []
    for nuclide, modality, tracer, k, t0 in (("Ga-68", "PT", "68Ga-PSMA-11", [0], 0.0),
                                             ("Lu-177", "NM", "177Lu-PSMA-617", [1, 2], 168.0)):
        act = traj.activity_of(nuclide)
        for r in REGIONS:
            for i in k:
                rows.append(dict(patient="p", modality=modality, tracer=tracer, time_h=float(traj.times_h[i]) - t0,
                                 region=r, activity_mbq=float(np.asarray(act[r])[i]) * 1.1))
    options = pbpk.SolverOptions(rtol=1e-5, atol=1e-8, max_steps=4096, adjoint="forward")
    return make_problem(model, pd.DataFrame(rows), schedule, free=FREE, options=options, separate_ligands=True)


def main(repeats: int = 5) -> None:
    prob = problem()
    ours = _Potential(prob, seed=0)
    info = initialize_model(jax.random.PRNGKey(0), numpyro_model, model_args=(prob,), forward_mode_differentiation=True)
    every_site = jax.jit(jax.jacfwd(lambda v: info.potential_fn(ours.unravel(v))))
    x = jnp.asarray(ours.x0 + 0.1)
    g_ours = np.asarray(ours.value_and_grad(x)[1])  # compile both first
    g_all = np.asarray(every_site(x))
    t_ours = median_time(lambda: ours.value_and_grad(x)[1].block_until_ready(), repeats)
    t_all = median_time(lambda: every_site(x).block_until_ready(), repeats)
    print(f"{x.size} unconstrained coordinates, {len(FREE)} through the solve")
    print(f"gradient, forward mode over every site: {t_all:.3f} s (median of {repeats})")
    print(f"gradient, chain rule (fit):             {t_ours:.3f} s")
    print(f"speed-up: {t_all / t_ours:.2f}x; max |difference| {np.max(np.abs(g_ours - g_all)):.2e} "
          f"(max |gradient| {np.max(np.abs(g_all)):.2e})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
