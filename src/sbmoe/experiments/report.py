"""`sbmoe report DIR`: the command line of the report; the report itself lives in its own modules.

    sbmoe.experiments.results       reading results.jsonl, the metrics files and experiment.json
    sbmoe.experiments.comparisons   records grouped by table; the paired test with Bonferroni (`paired_tests`)
    sbmoe.experiments.tables        the tables against a baseline, with their tests (`build_report`)
    sbmoe.experiments.render        Markdown, CSV and LaTeX, and the files (`write_report`)
    sbmoe.experiments.compare       two systems head to head (`compare_systems`)
    sbmoe.analysis.plots            the figure of the metric against the number of experts

The public names of those modules that callers used to import from here are re-exported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sbmoe.analysis.plots import FIGURE_FORMATS, FigurePanel
from sbmoe.analysis.plots import metric_vs_experts_figure as render_figure
from sbmoe.errors import SbmoeError
from sbmoe.evaluation.metrics import metric_label
from sbmoe.evaluation.significance import TESTS
from sbmoe.experiments.compare import compare_systems
from sbmoe.experiments.render import render_csv, render_latex, render_markdown, write_report
from sbmoe.experiments.results import SystemRow, load_results
from sbmoe.experiments.tables import (
    DEFAULT_METRICS,
    Cell,
    GroupTable,
    Report,
    TableRow,
    ZeroShotRow,
    ZeroShotTable,
    build_report,
)
from sbmoe.io import atomic_write_text


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    """`sbmoe report DIR`: tables, significance tests and the experts figure of an experiment folder."""
    parser = commands.add_parser(
        "report", help="tables, significance tests and a figure from an experiment folder"
    )
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
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated metrics (default: {','.join(DEFAULT_METRICS)})",
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
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Build and write the report; print the Markdown and the written paths."""
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
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


__all__ = [
    "Cell", "FigurePanel", "GroupTable", "Report", "SystemRow", "TableRow", "ZeroShotRow", "ZeroShotTable",
    "add_report_parser", "build_report", "compare_systems", "load_results", "metric_label", "render_csv",
    "render_figure", "render_latex", "render_markdown", "run_report", "write_report",
]  # fmt: skip
