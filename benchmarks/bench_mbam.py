"""MBAM on the receptor toy model (tests/toy_models.py): FIM spectrum, time per geodesic
and per refit, and the series of reduced models with their error against the full model.

    .venv/bin/python benchmarks/bench_mbam.py [max_steps]

Prints the reduction report; the PSMA-model benchmark of issue 7 is not done yet.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import pbpk  # noqa: E402
from pbpk.mbam import Predictions, fisher_information, reduce  # noqa: E402
from toy_models import TRACER, receptor_toy_model  # noqa: E402

TIMES_H = [1.0, 4.0, 24.0, 96.0]


def main(max_steps: int = 3) -> None:
    model = receptor_toy_model()
    schedule = pbpk.Schedule([pbpk.Administration(0.0, 7400.0, 90.0, TRACER)])
    t0 = time.perf_counter()
    pred = Predictions.build(model, schedule, TIMES_H, regions=["kidneys", "lesion_1", "blood"],
                             options=pbpk.SolverOptions(rtol=1e-6, atol=1e-9, adjoint="forward"))
    fim = fisher_information(pred)
    print(f"predictions + FIM (with compilation): {time.perf_counter() - t0:.1f} s")
    print(fim.summary())
    t0 = time.perf_counter()
    res = reduce(model, predictions=pred, max_steps=max_steps,
                 directions=((0, True), (0, False), (1, True), (1, False)))
    print(f"reduce: {time.perf_counter() - t0:.1f} s; {len(model.parameters)} -> {len(res.model.parameters)} parameters")
    for k, s in enumerate(res.steps, 1):
        print(f"step {k}: {s.limit.describe()}: RMS {s.rms_sigma:.3g} sigma, geodesics {s.geodesic_s:.1f} s, "
              f"refit {s.refit_s:.1f} s")
    a = np.asarray(pbpk.simulate(res.model, schedule, TIMES_H).region_tia_mbq_h)
    b = np.asarray(pbpk.simulate(model, schedule, TIMES_H).region_tia_mbq_h)
    for k, r in enumerate(model.region_names):
        print(f"TIA {r}: full {b[0, k]:.4g} MBq*h, reduced {a[0, k]:.4g} MBq*h ({100 * (a[0, k] / b[0, k] - 1):+.2f} %)")
    with tempfile.TemporaryDirectory() as d:
        res.report(Path(d) / "report.txt")
        print((Path(d) / "report.txt").read_text())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
