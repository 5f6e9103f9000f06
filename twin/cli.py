"""The `twin` command line.

    twin demo [--output DIR] [--seed N] [--force] [--quick]
    twin calibrate STUDY_DIR --output TWIN_DIR [--method laplace|nuts|svi] [--seed N] [--num-samples N] [--force]
    twin predict TWIN_DIR --config CFG.toml --output results.csv [--max-draws N] [--force]
    twin dose    TWIN_DIR --config CFG.toml --output dose.nii.gz [--method kernel|...] [--max-draws N] [--force]
    twin report  TWIN_DIR --config CFG.toml --output report.html [--max-draws N] [--force]
    twin trial   CONFIG.toml --output DIR [--scheduler ADDRESS | --workers N] [--force]   (twin.cli_cohort)
    twin calibrate-cohort STUDY_DIR --output DIR [--method M] [--scheduler ADDRESS | --workers N] [--force]

`twin demo` writes a synthetic PET + two-SPECT study (twin.synthetic) and its calibrated
twin into DIR: study/, twin/, results.csv (TIA, dose and BED of `demo_schedules`, the first
being the therapy, 4 x 7.4 GBq every 6 weeks), dose_gy.nii.gz (therapy dose map, Gy),
truth.csv (true versus predicted TIA and dose, `twin.reporting.truth_comparison`) and
report.html.  `--quick`: 8 mm voxels, 100 Laplace draws, 20 predictive draws.

Config file (TOML, read with `tomllib`)::

    [therapy]                      # required
    cycles = 4
    activity_mbq = 7400.0          # per cycle
    ligand_nmol = 90.0             # optional (carrier-free when absent)
    interval_h = 1008.0            # between cycles (needed when cycles > 1)
    tracer = "Lu-177-PSMA-617"     # optional, this default

    [[schedules]]                  # optional what-if schedules; keys not given are the therapy's
    name = "6 x 6 GBq"
    cycles = 6
    activity_mbq = 6000.0

    [optimise]                     # optional (report): twin.optimise.optimise_schedule
    activities_mbq = [2000.0, 12000.0]
    n_cycles = [4, 6]
    probability = 0.95             # optional, also ligand_nmol = [...], interval_h = [...]
                                   # (default: the therapy's tracer, ligand amount and interval)

Exit status: 0 on success; 2 on bad arguments, a bad study folder, twin folder or config,
an output that exists without --force, or any error of the packages (message
``twin: error: ...`` on stderr, no traceback).  Every input is checked (outputs, config)
before any long work, and every output is written atomically: nothing is left on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import calibration
import dose
import imaging
import pbpk

from calibration import CALIBRATION_SOLVER

from . import cli_cohort
from .configs import SCHEDULE_KEYS, integer as _integer, no_unknown as _unknown, number as _number
from .configs import read_toml, schedule as _schedule
from .errors import ConfigError, TwinError

DEMO_OUTPUT = "twin-demo-output"
THERAPY_NAME = "therapy"
_OPTIMISE_KEYS = ("activities_mbq", "n_cycles", "probability", "ligand_nmol", "interval_h")
_TOP_KEYS = ("therapy", "schedules", "optimise")
#: Errors reported as "twin: error: ..." with exit status 2 (bad input or a failed computation).
HANDLED_ERRORS = (TwinError, calibration.CalibrationError, imaging.ImagingError, pbpk.PBPKError, dose.DoseError)

# The demo therapy: 4 cycles of 7.4 GBq 177Lu-PSMA-617 every 6 weeks with ~90 nmol ligand,
# the VISION trial's regimen (Sartor O et al., N Engl J Med 2021;385:1091-1103: 7.4 GBq
# every 6 weeks, up to 6 cycles).
DEMO_ACTIVITY_MBQ, DEMO_LIGAND_NMOL, DEMO_INTERVAL_H, DEMO_CYCLES = 7400.0, 90.0, 1008.0, 4


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Config:
    """A parsed config: therapy schedule, named what-if schedules (may be empty) and the
    optimiser's keyword arguments (None when there is no [optimise] table)."""

    therapy: pbpk.Schedule
    schedules: dict
    optimise: dict | None


def _values(value, where: str, integer: bool = False) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: {value!r}; expected a non-empty array")
    return [_integer(v, where) if integer else _number(v, where) for v in value]


def parse_config(doc: Mapping, where: str) -> Config:
    """Validate a config mapping (the parsed TOML of `where`; see module doc)."""
    _unknown(doc, _TOP_KEYS, f"{where} (top level)")
    if "therapy" not in doc:
        raise ConfigError(f"{where}: [therapy] missing; expected cycles, activity_mbq, interval_h, ...")
    therapy_spec = doc["therapy"]
    if not isinstance(therapy_spec, dict):
        raise ConfigError(f"{where} [therapy]: expected a table")
    _unknown(therapy_spec, SCHEDULE_KEYS, f"{where} [therapy]")
    therapy = _schedule(therapy_spec, f"{where} [therapy]")

    schedules = {}
    raw = doc.get("schedules", [])
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise ConfigError(f"{where} [[schedules]]: expected an array of tables")
    for k, s in enumerate(raw, start=1):
        sw = f"{where} [[schedules]] #{k}"
        _unknown(s, ("name",) + SCHEDULE_KEYS, sw)
        name = s.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{sw} key 'name': {name!r}; expected a non-empty string")
        if name in schedules or name == THERAPY_NAME:
            raise ConfigError(f"{sw} key 'name': {name!r} is used twice (or is the reserved name "
                              f"{THERAPY_NAME!r}); expected unique names")
        merged = {**{k: v for k, v in therapy_spec.items()}, **{k: v for k, v in s.items() if k != "name"}}
        schedules[name] = _schedule(merged, sw)

    optimise = None
    if "optimise" in doc:
        o = doc["optimise"]
        ow = f"{where} [optimise]"
        if not isinstance(o, dict):
            raise ConfigError(f"{ow}: expected a table")
        _unknown(o, _OPTIMISE_KEYS, ow)
        optimise = {}
        if "activities_mbq" in o:
            a = _values(o["activities_mbq"], f"{ow} key 'activities_mbq'")
            if len(a) != 2 or not a[0] < a[1]:
                raise ConfigError(f"{ow} key 'activities_mbq': {o['activities_mbq']!r}; expected [lo, hi] with "
                                  "0 < lo < hi (MBq)")
            optimise["activities_mbq"] = tuple(a)
        if "n_cycles" in o:
            optimise["n_cycles"] = tuple(_values(o["n_cycles"], f"{ow} key 'n_cycles'", integer=True))
        for key in ("ligand_nmol", "interval_h"):
            if key in o:
                optimise[key] = tuple(_values(o[key], f"{ow} key {key!r}"))
        if "probability" in o:
            p = _number(o["probability"], f"{ow} key 'probability'")
            if not p < 1:
                raise ConfigError(f"{ow} key 'probability': {p!r}; expected 0 < p < 1")
            optimise["probability"] = p
        # schedules like the therapy: its tracer, and its ligand amount and interval unless given here
        optimise["tracer"] = therapy.administrations[0].tracer.name
        if "ligand_nmol" not in optimise and therapy.administrations[0].ligand_nmol is not None:
            optimise["ligand_nmol"] = (therapy.administrations[0].ligand_nmol,)
        if "interval_h" not in optimise and "interval_h" in therapy_spec:
            optimise["interval_h"] = (float(therapy_spec["interval_h"]),)
    return Config(therapy, schedules, optimise)


def load_config(path) -> Config:
    """Read and validate a TOML config (ConfigError naming the file and key)."""
    return parse_config(read_toml(path), str(path))


# ----------------------------------------------------------------------------- progress and output
class Progress:
    """Prints "[k/n] step ..." and "[k/n] step done in x s" lines to `stream` (stderr)."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.stream = total, 0, stream

    @contextlib.contextmanager
    def step(self, label: str):
        self.done += 1
        stream = self.stream or sys.stderr
        prefix = f"[{self.done}/{self.total}] {label}"
        print(f"{prefix} ...", file=stream, flush=True)
        start = time.perf_counter()
        yield
        print(f"{prefix} done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)


def check_output(path, force: bool) -> Path:
    """Refuse an existing output unless `force` (TwinError)."""
    path = Path(path)
    if path.exists() and not force:
        raise TwinError(f"{path}: output exists; pass --force to overwrite it")
    return path


def write_csv(df, path) -> Path:
    """Write a DataFrame as CSV atomically."""
    from imaging.atomic import atomic_file

    with atomic_file(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def write_image(image, path) -> Path:
    """Write a SimpleITK image (compressed when the name ends in .gz) atomically."""
    import SimpleITK as sitk
    from imaging.atomic import atomic_file

    with atomic_file(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return Path(path)


# ----------------------------------------------------------------------------- commands
def _load_twin(folder):
    from .patient import PatientTwin

    folder = Path(folder)
    if not folder.is_dir():
        raise TwinError(f"{folder}: not a twin folder (expected the folder `twin calibrate` writes)")
    return PatientTwin.load(folder)


def _all_schedules(config: Config) -> dict:
    return {THERAPY_NAME: config.therapy, **config.schedules}


def cmd_calibrate(args) -> int:
    from .patient import PatientTwin
    from .study import load_study

    out = check_output(args.output, args.force)
    progress = Progress(3)
    with progress.step(f"reading study {args.study}"):
        twin = PatientTwin.from_study(load_study(args.study))
    with progress.step(f"calibrating ({args.method})"):
        kwargs = {} if args.num_samples is None else {"num_samples": args.num_samples}
        post = twin.calibrate(args.method, seed=args.seed, separate_ligands=True, **kwargs)
    for line in post.problems():
        print(f"twin: warning: {line}", file=sys.stderr)
    with progress.step(f"saving twin to {out}"):
        twin.save(out, overwrite=args.force)
    return 0


def cmd_predict(args) -> int:
    out = check_output(args.output, args.force)
    config = load_config(args.config)
    progress = Progress(3)
    with progress.step(f"loading twin {args.twin}"):
        twin = _load_twin(args.twin)
    with progress.step(f"predicting {len(config.schedules) + 1} schedule(s)"):
        table = twin.what_if(_all_schedules(config), max_draws=args.max_draws)
    with progress.step(f"writing {out}"):
        write_csv(table, out)
    return 0


def cmd_dose(args) -> int:
    if (args.method == "corrected") != (args.corrector is not None):
        raise ConfigError("--method corrected and --corrector WEIGHTS go together (a trained dose.corrector)")
    out = check_output(args.output, args.force)
    config = load_config(args.config)
    progress = Progress(3)
    with progress.step(f"loading twin {args.twin}"):
        twin = _load_twin(args.twin)
    with progress.step(f"dose map ({args.method or twin.dose_method})"):
        image = twin.dose_map(config.therapy, method=args.method, max_draws=args.max_draws, corrector=args.corrector)
    with progress.step(f"writing {out}"):
        write_image(image, out)
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .reporting import report_content

    out = check_output(args.output, args.force)
    config = load_config(args.config)
    progress = Progress(4 if config.optimise is not None else 3)
    with progress.step(f"loading twin {args.twin}"):
        twin = _load_twin(args.twin)
    result = None
    if config.optimise is not None:
        with progress.step("optimising the schedule"):
            result = twin.optimise(max_draws=args.max_draws, **config.optimise)
    with progress.step("computing the report content"):
        content = report_content(twin, config.therapy, schedules=_all_schedules(config) if config.schedules else None,
                                 optimisation=result, max_draws=args.max_draws)
    with progress.step(f"writing {out}"):
        write_report(out, content, overwrite=args.force)
    return 0


def demo_schedules() -> dict:
    """The demo's therapy (first) and what-if schedules (activity, cycles, interval)."""
    def cycles(n, a, t):
        return pbpk.Schedule.cycles(n, activity_mbq=a, ligand_nmol=DEMO_LIGAND_NMOL, interval_h=t)

    return {
        "4 x 7.4 GBq / 6 wk": cycles(DEMO_CYCLES, DEMO_ACTIVITY_MBQ, DEMO_INTERVAL_H),
        "6 x 7.4 GBq / 6 wk": cycles(6, DEMO_ACTIVITY_MBQ, DEMO_INTERVAL_H),
        "4 x 9.0 GBq / 6 wk": cycles(DEMO_CYCLES, 9000.0, DEMO_INTERVAL_H),
        "4 x 7.4 GBq / 8 wk": cycles(DEMO_CYCLES, DEMO_ACTIVITY_MBQ, 1344.0),
        "4 x 6.0 GBq / 6 wk": cycles(DEMO_CYCLES, 6000.0, DEMO_INTERVAL_H),
    }


def demo_outputs(twin, truth: Mapping[str, float], folder: Path, *, max_draws: int, progress: Progress,
                 note: str = ""):
    """The demo's outputs of a calibrated twin into `folder`: twin/, results.csv (what-if
    of `demo_schedules`, the therapy first), dose_gy.nii.gz (therapy), truth.csv
    (`reporting.truth_comparison` with the true parameters `truth`) and report.html.
    Returns the truth table."""
    from .report import write_report
    from .reporting import report_content, truth_comparison

    folder = Path(folder)
    schedules = demo_schedules()
    therapy_name, therapy = next(iter(schedules.items()))
    with progress.step("saving the twin"):
        twin.save(folder / "twin")
    with progress.step(f"predicting {len(schedules)} schedules"):
        results = twin.what_if(schedules, max_draws=max_draws)
        write_csv(results, folder / "results.csv")
        predictions = results[results["schedule"] == therapy_name].drop(columns="schedule").reset_index(drop=True)
    with progress.step("dose map"):
        dose_map = twin.dose_map(therapy, max_draws=max_draws)
        write_image(dose_map, folder / "dose_gy.nii.gz")
    with progress.step("truth comparison"):
        truth_table = truth_comparison(twin, truth, therapy, predictions)
        write_csv(truth_table, folder / "truth.csv")
    with progress.step("report"):
        content = report_content(twin, therapy, schedules=schedules, max_draws=max_draws, predictions=predictions,
                                 what_if=results, dose_map=dose_map,
                                 extra_provenance={"data": f"{note}therapy {therapy_name}"})
        write_report(folder / "report.html", content)
    return truth_table


def cmd_demo(args) -> int:
    from imaging.atomic import atomic_folder

    from .patient import PatientTwin
    from .synthetic import PERTURBED, make_study

    out = check_output(args.output, args.force)
    max_draws = 20 if args.quick else 50
    num_samples = 100 if args.quick else 400
    voxel_mm = 8.0 if args.quick else 6.0
    progress = Progress(8)
    with atomic_folder(out, overwrite=args.force) as tmp:
        with progress.step(f"synthetic study (seed {args.seed})"):
            study = make_study(tmp / "study", seed=args.seed, voxel_mm=voxel_mm)
        with progress.step("building the twin"):
            twin = PatientTwin.from_study(study.folder, free=[f"{r}_rden_nmol_l" for r in PERTURBED])
        with progress.step(f"calibrating (laplace, {num_samples} draws)"):
            options = dataclasses.replace(CALIBRATION_SOLVER, rtol=1e-4) if args.quick else CALIBRATION_SOLVER
            post = twin.calibrate("laplace", seed=args.seed, separate_ligands=True, num_samples=num_samples,
                                  options=options)
        for line in post.problems():
            print(f"twin: warning: {line}", file=sys.stderr)
        truth = demo_outputs(twin, study.truth, tmp, max_draws=max_draws, progress=progress,
                             note=f"synthetic patient (twin.synthetic, seed {args.seed}); ")
    inside = truth["dose_in_90"].to_numpy(bool)
    print(f"twin demo: wrote {out}; true dose inside the 90 % interval for {int(inside.sum())}/{inside.size} "
          f"regions", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- parser and main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twin", description="Patient digital twins for radiopharmaceutical "
                                     "therapy dosimetry: calibrate, predict, dose and report.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic patient end to end: study, calibration, prediction, dose, report")
    p.add_argument("--output", default=DEMO_OUTPUT, help=f"output folder (default {DEMO_OUTPUT})")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic patient and the fit (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quick", action="store_true", help="fewer voxels, draws and samples (for tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("calibrate", help="calibrate a twin on a study folder and save it")
    p.add_argument("study", help="study folder (study.toml, images)")
    p.add_argument("--output", required=True, help="twin folder to write")
    p.add_argument("--method", choices=("laplace", "nuts", "svi"), default="laplace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=_positive_int, default=None, help="posterior draws (default: calibration's)")
    p.add_argument("--force", action="store_true", help="replace an existing twin folder")
    p.set_defaults(func=cmd_calibrate)

    for name, helptext in (("predict", "TIA, dose and BED of the config's schedules (CSV)"),
                           ("dose", "voxel dose map of the config's therapy (NIfTI)"),
                           ("report", "self-contained HTML report")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("twin", help="twin folder written by `twin calibrate`")
        p.add_argument("--config", required=True, help="TOML config with [therapy] (and [[schedules]], [optimise])")
        p.add_argument("--output", required=True, help="output file")
        p.add_argument("--max-draws", type=_positive_int, default=50, help="posterior draws (default 50)")
        p.add_argument("--force", action="store_true", help="overwrite an existing output")
        if name == "dose":
            p.add_argument("--method", choices=dose.absorbed.METHODS, default=None,
                           help="dose method (default: the twin's)")
            p.add_argument("--corrector", default=None,
                           help="weights of a trained dose corrector (dose.corrector.save), for --method corrected")
        p.set_defaults(func={"predict": cmd_predict, "dose": cmd_dose, "report": cmd_report}[name])
    cli_cohort.add_parsers(sub, _positive_int)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


class Terminated(BaseException):
    """SIGTERM received: raised in the main thread so that atomic outputs are cleaned up."""


def _on_sigterm(signum, frame):
    raise Terminated()


_REDELIVERED_SIGNALS = {Terminated: signal.SIGTERM, KeyboardInterrupt: signal.SIGINT}


def _redeliver_swallowed_signal(unraisable) -> None:
    """`sys.unraisablehook` while a command runs.

    Python runs a signal handler in whatever the main thread executes next; when that is a
    garbage-collector callback (JAX registers one) or a ``__del__``, the `Terminated` or
    `KeyboardInterrupt` it raises cannot propagate and is only printed ("Exception ignored
    in ...").  The command would then run on after `timeout` or Ctrl-C.  This hook sends the
    signal again from a helper thread, so the handler runs once more, in ordinary code, and
    the exception reaches `main` (which removes the temporary outputs).  Other unraisable
    exceptions go to the previous hook."""
    for kind, signum in _REDELIVERED_SIGNALS.items():
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, kind):
            threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
            return
    _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.__unraisablehook__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 2 error, 130 interrupted, 143
    terminated).  While a command runs, SIGTERM (e.g. `timeout`) raises `Terminated`, so
    the temporary outputs are removed as on Ctrl-C; a signal whose exception was swallowed
    (see `_redeliver_swallowed_signal`) is delivered again."""
    global _previous_unraisablehook
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return int(exc.code or 0)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _redeliver_swallowed_signal
    try:
        return args.func(args)
    except HANDLED_ERRORS as err:
        print(f"twin: error: {err}", file=sys.stderr)
        return 2
    except FileExistsError as err:  # atomic_folder refusing an existing folder
        print(f"twin: error: {err}; pass --force to overwrite it", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("twin: interrupted; nothing written", file=sys.stderr)
        return 130
    except Terminated:
        print("twin: terminated; nothing written", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)
            sys.unraisablehook = _previous_unraisablehook


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
