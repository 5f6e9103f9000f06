"""Parameter sensitivities through the PSMA solve: forward mode (jax.jacfwd; Rodas4 stage
solves differentiated by the implicit-function rule, reusing each step's factorisation)
vs reverse mode (jax.jacrev through diffrax's checkpointed adjoint) vs central finite
differences (2N + 1 solves).  This is the Jacobian that MBAM, Laplace and NUTS use.

Case: PSMA model (one ligand, 2 lesions), 7.4 GBq / 90 nmol 177Lu-PSMA-617, organ
activities at 4, 24, 96 h and TIA, N log-parameters (receptor densities, PS products,
release rates, GFR), rtol 1e-6.  Prints medians, ratios and the agreement of the methods.

    .venv/bin/python benchmarks/bench_sensitivities.py [--parameters 8] [--repeats 5]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import pbpk
from timing import median_time

NAMES = ["kidneys_rden_nmol_l", "lesion_1_rden_nmol_l", "salivary_glands_rden_nmol_l", "liver_kps_per_h",
         "kidneys_lambda_rel_per_h", "gfr_ml_min", "spleen_rden_nmol_l", "muscle_kps_per_h", "lesion_2_rden_nmol_l",
         "bone_kps_per_h", "liver_rden_nmol_l", "gi_kps_per_h"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parameters", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = pbpk.psma_model(tracers=["Lu-177-PSMA-617"], lesion_volumes_ml=[12, 50])
    sched = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, "Lu-177-PSMA-617")])
    names = NAMES[: args.parameters]
    theta = jnp.log(jnp.array([model.parameter(n).value for n in names]))

    def outputs(th, adjoint):
        p = {n: jnp.exp(th[i]) for i, n in enumerate(names)}
        tr = pbpk.simulate(model, sched, [4.0, 24.0, 96.0], p, options=pbpk.SolverOptions(adjoint=adjoint), check=False)
        return jnp.concatenate([tr.region_activity_mbq.ravel(), tr.region_tia_mbq_h.ravel()])

    primal = jax.jit(lambda th: outputs(th, "forward"))
    fwd = jax.jit(jax.jacfwd(lambda th: outputs(th, "forward")))
    rev = jax.jit(jax.jacrev(lambda th: outputs(th, "reverse")))
    h = 1e-4

    def central():
        cols = [(primal(theta + h * e) - primal(theta - h * e)) / (2 * h) for e in jnp.eye(len(names))]
        return jnp.stack(cols, axis=1)

    results = {}
    for label, fn in (("forward (jacfwd, implicit tangents)", lambda: fwd(theta)),
                      ("reverse (jacrev, checkpointed adjoint)", lambda: rev(theta)),
                      ("central differences", central)):
        value = np.asarray(fn())  # compile
        seconds = median_time(lambda: np.asarray(fn()), args.repeats)
        results[label] = (seconds, value)
        print(f"{label}: {1e3 * seconds:.0f} ms", flush=True)
    ref_s, ref = results["forward (jacfwd, implicit tangents)"]
    scale = np.abs(ref).max()
    for label, (seconds, value) in results.items():
        print(f"{label}: {seconds / ref_s:.1f}x the forward time; max |difference| from forward "
              f"{np.abs(value - ref).max() / scale:.1e} (relative to max |J|)")
    print(f"{len(names)} parameters, {ref.shape[0]} outputs; primal solve "
          f"{1e3 * median_time(lambda: np.asarray(primal(theta)), args.repeats):.0f} ms")


if __name__ == "__main__":
    main()
