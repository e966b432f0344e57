"""`sbmoe experiment`: run (or resume) a grid of training and evaluation runs from a YAML file."""

from __future__ import annotations

import argparse

from sbmoe.commands.common import add_common, add_dtype_argument
from sbmoe.errors import SbmoeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("--output-dir", required=True, help="experiment folder; re-running resumes it")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the config and list the runs, run nothing"
    )
    add_dtype_argument(parser, default=None)  # None: the grid file's dtype
    parser.add_argument(
        "--seeds",
        help="run only these of the grid's seeds now, comma-separated (e.g. 1,2,3; then 4,5 in another "
        "session): every system gets the same seeds first, and the folder fills up seed by seed",
    )
    add_common(parser)
    parser.set_defaults(handler=run)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise SbmoeError(f"{flag}: expected integers separated by commas, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from sbmoe.experiments.config import load_experiment_config
    from sbmoe.experiments.runner import plan_runs, run_experiment

    config = load_experiment_config(args.config, data_dir=args.data_dir)
    if args.dtype is not None:
        config.dtype = args.dtype
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else None
    runs = [run for run in plan_runs(config) if seeds is None or run.seed is None or run.seed in seeds]
    if args.dry_run:
        for planned in runs:
            print(planned.run_id)
        print(f"{len(runs)} runs; config {args.config} is valid")
        return 0
    lines = run_experiment(config, args.output_dir, progress=not args.no_progress, seeds=seeds)
    print(f"{len(runs)} runs finished, {len(lines)} results in {args.output_dir}/results.jsonl")
    print(f"tables and significance tests: sbmoe report {args.output_dir}")
    return 0
