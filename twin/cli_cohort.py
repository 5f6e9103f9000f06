"""The cohort-scale commands of `twin` (see `twin.cli` for the others):

    twin trial CONFIG.toml --output DIR [--scheduler ADDRESS | --workers N] [--force]

runs (or resumes) the virtual trial of CONFIG (`twin.trial`) into DIR: in-process by
default; on the Dask scheduler at ADDRESS (e.g. tcp://head-node:8786); or on a local
cluster of N single-threaded worker processes.  Interrupted (Ctrl-C, a lost node), the
same command resumes: finished chunks are kept and skipped.
"""

from __future__ import annotations

import argparse
import sys

from . import runner
from .trial import load_trial_config, run_trial


def add_parsers(sub, positive_int) -> None:
    """Add the cohort commands to the `twin` subparsers."""
    p = sub.add_parser("trial", help="virtual trial: N virtual patients x schedules -> Parquet tables, summary")
    p.add_argument("config", help="trial TOML ([trial], [population], [[schedules]], [limits])")
    p.add_argument("--output", required=True, help="output folder (resumed when it holds the same trial)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    where.add_argument("--workers", type=positive_int, default=None,
                       help="run on a local Dask cluster of this many single-threaded worker processes")
    p.add_argument("--force", action="store_true", help="empty an existing output folder first")
    p.set_defaults(func=cmd_trial)


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
