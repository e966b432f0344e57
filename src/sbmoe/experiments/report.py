"""The report of an experiment folder; its parts live in their own modules (the command line in
`sbmoe.commands.report`).

    sbmoe.experiments.results       reading results.jsonl, the metrics files and experiment.json
    sbmoe.experiments.comparisons   records grouped by table; the paired test with Bonferroni (`paired_tests`)
    sbmoe.experiments.tables        the tables against a baseline, with their tests (`build_report`)
    sbmoe.experiments.render        Markdown, CSV and LaTeX, and the files (`write_report`)
    sbmoe.experiments.compare       two systems head to head (`compare_systems`)
    sbmoe.analysis.plots            the figure of the metric against the number of experts

The public names of those modules that callers used to import from here are re-exported.
"""

from __future__ import annotations

from sbmoe.analysis.plots import FigurePanel
from sbmoe.analysis.plots import metric_vs_experts_figure as render_figure
from sbmoe.evaluation.metrics import metric_label
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

__all__ = [
    "DEFAULT_METRICS", "Cell", "FigurePanel", "GroupTable", "Report", "SystemRow", "TableRow", "ZeroShotRow",
    "ZeroShotTable", "build_report", "compare_systems", "load_results", "metric_label", "render_csv",
    "render_figure", "render_latex", "render_markdown", "write_report",
]  # fmt: skip
