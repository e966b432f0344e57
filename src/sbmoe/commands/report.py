"""`sbmoe report DIR`: tables, significance tests and the experts figure of an experiment folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from sbmoe.errors import SbmoeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sbmoe.analysis.formats import FIGURE_FORMATS
    from sbmoe.evaluation.significance import TESTS
    from sbmoe.experiments.tables import DEFAULT_METRICS, VIEW_METRIC

    parser.add_argument("dir", type=Path, metavar="DIR", help="experiment folder (holds results.jsonl)")
    parser.add_argument("--output", type=Path, help="where the report files go (default: DIR/report)")
    parser.add_argument(
        "--baseline",
        help="system (grid label) the others are compared with, e.g. finetune, adapter, zero-shot "
        "(default: the first present of finetune, adapter, zero-shot)",
    )
    parser.add_argument(
        "--test", choices=sorted(TESTS), default="t-test", help="paired test (default: t-test)"
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default: 0.05)")
    parser.add_argument(
        "--metrics",
        help=f"comma-separated metrics (default: {','.join(DEFAULT_METRICS)}, and {VIEW_METRIC} where "
        "the grid scored unseen documents)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="also compare two systems of the grid head to head, by their labels (e.g. sbmoe-learned "
        "sbmoe-faithful, or cluster gated-adapter) at every collection, N and mode: writes compare-A-vs-B.md",
    )
    parser.add_argument(
        "--figure-format",
        choices=FIGURE_FORMATS,
        default="png",
        help="file format of the experts figure: experts.png, .pdf or .svg (default: png)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build and write the report; print the Markdown and the written paths."""
    from sbmoe.experiments.report import build_report, compare_systems, write_report
    from sbmoe.io import atomic_write_text

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        report = build_report(
            args.dir,
            metrics=metrics,
            baseline=args.baseline,
            test=args.test,
            alpha=args.alpha,
            figure_format=args.figure_format,
        )
    except ValueError as error:
        raise SbmoeError(str(error)) from error
    metrics = report.metrics
    output = args.output if args.output is not None else Path(args.dir) / "report"
    paths = write_report(report, output)
    print(report.markdown)
    if args.compare:
        system_a, system_b = args.compare
        comparison = compare_systems(
            args.dir, system_a, system_b, metrics=metrics, test=args.test, alpha=args.alpha
        )
        paths["comparison"] = output / f"compare-{system_a}-vs-{system_b}.md"
        atomic_write_text(paths["comparison"], comparison)
        print(comparison)
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0
