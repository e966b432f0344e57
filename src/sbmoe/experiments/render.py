"""The report's renderings (Markdown, CSV, booktabs LaTeX) and the files `write_report` writes.

Every table of a `sbmoe.experiments.tables.Report` in each format: the cell mean ± sample standard
deviation over seeds (± only with more than one seed), the change relative to the table's baseline, and a
marker (`MARKER`) for a difference from the baseline that is significant after Bonferroni correction.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sbmoe.analysis.plots import plot_metric_vs_experts
from sbmoe.evaluation.metrics import metric_label
from sbmoe.evaluation.significance import TEST_NAMES
from sbmoe.experiments import experts_table
from sbmoe.io import atomic_write_text

if TYPE_CHECKING:
    from sbmoe.experiments.tables import Cell, GroupTable, Report

logger = logging.getLogger(__name__)

FIGURE_STEM = "experts"  # the figure is experts.png (or .pdf, .svg: Report.figure_format)
EXPERTS_FILE = "experts.csv"
MARKER = "†"


def _format_cell(cell: Cell | None, *, latex: bool = False) -> str:
    if cell is None:
        return "–" if not latex else "--"
    text = f"{cell.mean:.4f}"
    if cell.n_seeds > 1:
        text += (" $\\pm$ " if latex else " ± ") + f"{cell.std:.4f}"
    if cell.significant:
        text += "$^\\dagger$" if latex else MARKER
    return text


def _format_delta(cell: Cell | None, is_baseline: bool, *, latex: bool = False) -> str:
    if is_baseline:
        return "baseline"
    if cell is None or cell.delta_pct is None:
        return "--" if latex else "–"
    return f"{cell.delta_pct:+.2f}" + ("\\%" if latex else "%")


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table, first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "|".join("---:" for _ in header[1:]) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _group_rows(table: GroupTable, metrics: Sequence[str], *, latex: bool = False) -> list[list[str]]:
    out = []
    for table_row in table.rows:
        label = _latex_escape(table_row.label) if latex else table_row.label
        cells = [label, str(len(table_row.seeds))]
        for metric in metrics:
            cell = table_row.cells.get(metric)
            cells += [
                _format_cell(cell, latex=latex),
                _format_delta(cell, table_row.is_baseline, latex=latex),
            ]
        out.append(cells)
    return out


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def render_markdown(report: Report) -> str:
    """The report as Markdown: title, per-collection tables, zero-shot summary, significance, provenance."""
    metric_names = ", ".join(f"{metric_label(m)} (m = {report.comparisons[m]})" for m in report.metrics)
    lines = [
        f"# SB-MoE report: {report.name}",
        "",
        f"Mean ± sample standard deviation over seeds (± only with more than one seed); Δ% is the change "
        f"relative to the table's baseline. {MARKER} marks a difference from the baseline with Bonferroni-"
        f"corrected p < {report.alpha:g} ({TEST_NAMES[report.test]} on the per-query values averaged over "
        f"seeds; m = the number of comparisons of that metric in this report: {metric_names}).",
        "",
        "## Results by collection",
    ]
    for table in report.tables:
        header = ["System", "seeds"]
        for metric in report.metrics:
            header += [metric_label(metric), "Δ%"]
        baseline = table.baseline.label if table.baseline else "none (no comparisons)"
        lines += ["", f"### {table.title}", "", f"Baseline: {baseline}", ""]
        lines += _markdown_table(header, _group_rows(table, report.metrics))
    if report.zero_shot_tables:
        lines += ["", "## Zero-shot summary", ""]
        lines.append(
            "Mean over seeds per collection; `mean` averages the collections (– when one is missing)."
        )
        for zs in report.zero_shot_tables:
            trained = f"trained on {zs.train_dataset}" if zs.train_dataset else "untrained"
            lines += ["", f"### {metric_label(zs.metric)}: {zs.base}, {trained}", ""]
            rows = [
                [r.label] + [_fmt(r.values.get(c)) for c in zs.collections] + [_fmt(r.mean)] for r in zs.rows
            ]
            lines += _markdown_table(["System", *zs.collections, "mean"], rows)
    if report.experts:
        lines += ["", *experts_table.render_markdown(report.experts)]
    if report.figure:
        lines += [
            "",
            "## Metric vs number of experts (in-domain)",
            "",
            _figure_link(report.figure_format),
        ]
    lines += ["", "## Significance", "", report.summary_line + "."]
    lines += ["", "## How this report was made", ""]
    if report.command:
        lines.append(f"- experiment: `{report.command}`")
    else:
        lines.append("- experiment: command unknown (no provenance in experiment.json)")
    options = f"--metrics {','.join(report.metrics)} --test {report.test} --alpha {report.alpha:g}"
    if report.baseline:
        options += f" --baseline {report.baseline}"
    if report.figure_format != "png":
        options += f" --figure-format {report.figure_format}"
    lines.append(f"- report: `sbmoe report {report.folder} {options}`")
    return "\n".join(lines) + "\n"


def _figure_link(figure_format: str) -> str:
    """The figure in the Markdown: shown inline (PNG, SVG), or linked (a PDF is no Markdown image)."""
    file_name = f"{FIGURE_STEM}.{figure_format}"
    if figure_format == "pdf":
        return f"[metric vs number of experts (PDF)]({file_name})"
    return f"![metric vs number of experts]({file_name})"


CSV_FIELDS = (
    "train_dataset", "base", "eval_dataset", "setting", "system", "num_experts", "mode", "label", "baseline",
    "metric", "mean", "std", "n_seeds", "delta_pct", "p_value", "p_adjusted", "significant",
)  # fmt: skip


def render_csv(report: Report) -> str:
    """One line per table x system row x metric."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in report.tables:
        for table_row in table.rows:
            for metric in report.metrics:
                cell = table_row.cells.get(metric)
                if cell is None:
                    continue
                writer.writerow(
                    {
                        "train_dataset": table.train_dataset or "",
                        "base": table.base,
                        "eval_dataset": table.eval_dataset,
                        "setting": table.setting,
                        "system": table_row.row.system,
                        "num_experts": "" if table_row.row.num_experts is None else table_row.row.num_experts,
                        "mode": table_row.row.mode or "",
                        "label": table_row.label,
                        "baseline": table.baseline.label if table.baseline else "",
                        "metric": metric,
                        "mean": repr(cell.mean),
                        "std": repr(cell.std),
                        "n_seeds": cell.n_seeds,
                        "delta_pct": "" if cell.delta_pct is None else repr(cell.delta_pct),
                        "p_value": "" if cell.p_value is None else repr(cell.p_value),
                        "p_adjusted": "" if cell.p_adjusted is None else repr(cell.p_adjusted),
                        "significant": str(cell.significant).lower(),
                    }
                )
    return buffer.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_tabular(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
        *(" & ".join(row) + " \\\\" for row in rows),
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
        "",
    ]


def render_latex(report: Report) -> str:
    """Booktabs tables (needs \\usepackage{booktabs}); significant cells carry $^\\dagger$."""
    lines = [
        f"% SB-MoE report: {report.name}. Requires \\usepackage{{booktabs}}.",
        f"% $^\\dagger$: Bonferroni-corrected p < {report.alpha:g}, {TEST_NAMES[report.test]}.",
        f"% {report.summary_line}",
        "",
    ]
    for table in report.tables:
        header = ["System", "Seeds"]
        for metric in report.metrics:
            header += [_latex_escape(metric_label(metric)), "$\\Delta$\\%"]
        baseline = table.baseline.label if table.baseline else "none"
        caption = _latex_escape(f"{table.title}; baseline: {baseline}.")
        lines += _latex_tabular(caption, header, _group_rows(table, report.metrics, latex=True))
    for zs in report.zero_shot_tables:
        trained = f"trained on {zs.train_dataset}" if zs.train_dataset else "untrained"
        caption = _latex_escape(f"{metric_label(zs.metric)} zero-shot: {zs.base}, {trained}.")
        header = ["System", *(_latex_escape(c) for c in zs.collections), "Mean"]
        rows = [
            [_latex_escape(r.label)] + [_fmt(r.values.get(c)).replace("–", "--") for c in zs.collections]
            + [_fmt(r.mean).replace("–", "--")]
            for r in zs.rows
        ]  # fmt: skip
        lines += _latex_tabular(caption, header, rows)
    return "\n".join(lines)


def write_report(report: Report, output: Path) -> dict[str, Path]:
    """Write report.md, report.csv, report.tex, experts.csv (when there are activated-experts rows) and
    experts.png (when there is a figure; .pdf or .svg after `report.figure_format`) into the folder
    `output`, each atomically. Returns kind ("markdown", "csv", "latex", "experts", "figure") -> path."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": output / "report.md", "csv": output / "report.csv", "latex": output / "report.tex"}
    atomic_write_text(paths["markdown"], report.markdown)
    atomic_write_text(paths["csv"], report.csv)
    atomic_write_text(paths["latex"], report.latex)
    if report.experts:
        paths["experts"] = output / EXPERTS_FILE
        atomic_write_text(paths["experts"], report.experts_csv)
    if report.figure:
        figure_file = output / f"{FIGURE_STEM}.{report.figure_format}"
        paths["figure"] = plot_metric_vs_experts(report.figure, figure_file)
    for path in paths.values():
        logger.info("wrote %s", path)
    return paths


__all__ = ["MARKER", "render_csv", "render_latex", "render_markdown", "write_report"]
