"""The cohort-scale commands of `twin` (see `twin.cli` for the others):

    twin trial CONFIG.toml --output DIR [--scheduler ADDRESS | --workers N] [--force]

runs (or resumes) the virtual trial of CONFIG (`twin.trial`) into DIR: in-process by
default; on the Dask scheduler at ADDRESS (e.g. tcp://head-node:8786); or on a local
cluster of N single-threaded worker processes.  Interrupted (Ctrl-C, a lost node), the
same command resumes: finished chunks are kept and skipped.

    twin calibrate-cohort STUDY_DIR --output DIR [--method laplace|nuts|svi] [--seed N]
                          [--num-samples N] [--scheduler ADDRESS | --workers N] [--force]

calibrates every study folder under STUDY_DIR (`twin.cohort`: sub-folders holding
study.toml) into DIR: status/ and posterior/ Parquet tables, one calibrated twin per
patient in DIR/twins/.  A patient whose study or fit fails is recorded as failed and the
others go on; the same command resumes an interrupted run.  Fits use separated ligands,
as `twin calibrate` does.  On a cluster, DIR must be on a filesystem the workers share.
"""

from __future__ import annotations

import argparse
import sys

from . import runner
from .cohort import calibrate_cohort, find_studies
from .trial import load_trial_config, run_trial


def add_parsers(sub, positive_int) -> None:
    """Add the cohort commands to the `twin` subparsers."""
    p = sub.add_parser("trial", help="virtual trial: N virtual patients x schedules -> Parquet tables, summary")
    p.add_argument("config", help="trial TOML ([trial], [population], [[schedules]], [limits])")
    p.add_argument("--output", required=True, help="output folder (resumed when it holds the same trial)")
    _where_and_force(p, positive_int)
    p.set_defaults(func=cmd_trial)

    p = sub.add_parser("calibrate-cohort", help="calibrate every study folder of a folder (Parquet tables, twins)")
    p.add_argument("studies", metavar="STUDY_DIR", help="folder of study folders (each holding study.toml)")
    p.add_argument("--output", required=True, help="output folder (resumed when it holds the same run)")
    p.add_argument("--method", choices=("laplace", "nuts", "svi"), default="laplace")
    p.add_argument("--seed", type=int, default=0, help="fit seed of every patient (default 0)")
    p.add_argument("--num-samples", type=positive_int, default=None, help="posterior draws (default: calibration's)")
    _where_and_force(p, positive_int)
    p.set_defaults(func=cmd_calibrate_cohort)


def _where_and_force(p, positive_int) -> None:
    """--scheduler | --workers, and --force, of the cohort-scale commands."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    where.add_argument("--workers", type=positive_int, default=None,
                       help="run on a local Dask cluster of this many single-threaded worker processes")
    p.add_argument("--force", action="store_true", help="empty an existing output folder first")


def cmd_trial(args: argparse.Namespace) -> int:
    config = load_trial_config(args.config)  # every check before any work
    print(f"trial: {config.n_patients} patients x {len(config.schedule_specs)} schedules in "
          f"{config.n_chunks} chunks of {config.chunk_size}", file=sys.stderr)
    try:
        with runner.connect(scheduler=args.scheduler, workers=args.workers) as client:
            run = run_trial(config, args.output, client=client, force=args.force,
                            progress=runner.print_progress("chunks"))
    except KeyboardInterrupt:
        print(f"twin: interrupted; finished chunks are kept in {args.output}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(f"trial: {len(run.stats.computed)} chunks computed, {len(run.stats.skipped)} already done; "
          f"tables in {run.folder}/patients and {run.folder}/outcomes, summary in {run.folder}/summary.csv",
          file=sys.stderr)
    return 0


def cmd_calibrate_cohort(args: argparse.Namespace) -> int:
    studies = find_studies(args.studies)  # checked before a cluster starts or anything is written
    fit_kwargs = {"separate_ligands": True}  # as `twin calibrate`
    if args.num_samples is not None:
        fit_kwargs["num_samples"] = args.num_samples
    print(f"calibrate-cohort: {len(studies)} patients ({args.method}, seed {args.seed})", file=sys.stderr)
    try:
        with runner.connect(scheduler=args.scheduler, workers=args.workers) as client:
            run = calibrate_cohort(studies, args.output, method=args.method, seed=args.seed, fit_kwargs=fit_kwargs,
                                   client=client, force=args.force, progress=runner.print_progress("patients"))
    except KeyboardInterrupt:
        print(f"twin: interrupted; finished patients are kept in {args.output}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    status = run.status()
    failed = status[status["status"] != "ok"]
    for row in failed.itertuples():
        print(f"twin: warning: patient {row.patient_id} failed: {row.error}", file=sys.stderr)
    for row in status[(status["status"] == "ok") & (status["warnings"] != "")].itertuples():
        print(f"twin: warning: patient {row.patient_id}: {row.warnings}", file=sys.stderr)
    print(f"calibrate-cohort: {len(status) - len(failed)} ok, {len(failed)} failed "
          f"({len(run.stats.computed)} computed now, {len(run.stats.skipped)} already done); tables in "
          f"{run.folder}/status and {run.folder}/posterior, twins in {run.folder}/twins", file=sys.stderr)
    return 0
