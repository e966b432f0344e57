"""Paper-style tables, significance tests and the experts figure from an experiment folder.

`build_report(DIR)` reads DIR/results.jsonl (the line format is described in `sbmoe.experiments`) and
builds, for every (training collection, base encoder, evaluation collection), one table whose rows are
the systems evaluated there:

    System                       nDCG@10            Δ%       Recall@100       Δ%
    FINE-TUNED                   0.6400 ± 0.0100     —       0.9000 ± 0.0050   —
    SB-MoE learned N=6 TOP-1     0.6600 ± 0.0080†   +3.13%   0.9010 ± 0.0040  +0.11%

Each cell is the mean ± sample standard deviation over seeds of the collection-level metric, its change
relative to the baseline's mean, and a marker when the paired test of the per-query values (averaged
over seeds) against the baseline is significant after Bonferroni correction over every comparison of
that metric in the report. Zero-shot systems (no training collection) appear in every table of their
base encoder. A summary table averages the zero-shot collections, a section shows what each block design's
experts do (activated experts, balance, null share: `sbmoe.experiments.experts_table`), and a figure plots
the in-domain metric against the number of experts. `write_report` writes report.md, report.csv,
report.tex, experts.csv and experts.png.

Rows are the grid's system labels: the paper's systems first, in its order and under its names, then any
other label (`cluster`, `learned-st`, ...) alphabetically under its own name.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sbmoe.errors import DataError, SbmoeError
from sbmoe.evaluation.significance import TEST_NAMES, TESTS, bonferroni
from sbmoe.experiments import experts_table
from sbmoe.experiments.experts_table import ExpertUsage
from sbmoe.experiments.results import (
    MetricsFiles,
    SystemRow,
    deduplicate_results,
    load_results,
    row_of,
    system_label,
)
from sbmoe.io import atomic_write_text

logger = logging.getLogger(__name__)

DEFAULT_BASELINES = ("finetune", "adapter", "zero-shot")
DEFAULT_METRICS = ("ndcg@10", "recall@100")
FIGURE_METRICS = ("ndcg@10", "recall@100")
FIGURE_FILE = "experts.png"
EXPERTS_FILE = "experts.csv"
MARKER = "†"
METRIC_LABELS = {"ndcg": "nDCG", "recall": "Recall", "map": "MAP", "mrr": "MRR", "p": "P"}


def metric_label(metric: str) -> str:
    """ "ndcg@10" -> "nDCG@10", "recall@100" -> "Recall@100"; unknown names are returned unchanged."""
    name, at, cutoff = metric.partition("@")
    return METRIC_LABELS.get(name, name) + at + cutoff


@dataclass
class Cell:
    """One metric of one system row in one table."""

    values: list[float]  # the collection-level metric, one value per seed
    mean: float
    std: float  # sample standard deviation over seeds; 0 with one seed
    delta_pct: float | None = None  # 100 * (mean - baseline mean) / baseline mean; None for the baseline
    p_value: float | None = None  # the paired test against the baseline, before correction
    p_adjusted: float | None = None  # after Bonferroni over the whole report
    significant: bool = False  # p_adjusted < alpha

    @property
    def n_seeds(self) -> int:
        return len(self.values)


@dataclass
class TableRow:
    row: SystemRow
    seeds: list[int | None]
    cells: dict[str, Cell]
    is_baseline: bool = False

    @property
    def label(self) -> str:
        return self.row.label


@dataclass
class GroupTable:
    """The systems trained on `train_dataset` (None: zero-shot systems only) over `base`, tested on
    `eval_dataset`."""

    train_dataset: str | None
    base: str
    eval_dataset: str
    setting: str  # in-domain | zero-shot
    baseline: SystemRow | None
    rows: list[TableRow]

    @property
    def title(self) -> str:
        trained = f"trained on {self.train_dataset}" if self.train_dataset else "untrained"
        return f"{self.base}, {trained}, tested on {self.eval_dataset} ({self.setting})"

    def row(self, label: str) -> TableRow:
        """The row labelled `label` ("FINE-TUNED", "SB-MoE learned N=6 TOP-1", ...)."""
        for table_row in self.rows:
            if table_row.label == label:
                return table_row
        raise KeyError(f"no row {label!r} in table {self.title!r}; rows: {[r.label for r in self.rows]}")

    def cell(self, label: str, metric: str) -> Cell:
        return self.row(label).cells[metric]


@dataclass
class ZeroShotRow:
    row: SystemRow
    values: dict[str, float]  # collection -> mean over seeds
    mean: float | None  # mean over the collections; None when a collection is missing

    @property
    def label(self) -> str:
        return self.row.label


@dataclass
class ZeroShotTable:
    """One metric over the zero-shot collections of the models trained on `train_dataset` over `base`."""

    train_dataset: str | None
    base: str
    metric: str
    collections: list[str]
    rows: list[ZeroShotRow]

    def row(self, label: str) -> ZeroShotRow:
        for table_row in self.rows:
            if table_row.label == label:
                return table_row
        raise KeyError(f"no row {label!r}; rows: {[r.label for r in self.rows]}")


@dataclass
class FigurePanel:
    """Metric (mean over seeds and in-domain collections) against the number of experts."""

    train_dataset: str
    base: str
    metric: str
    lines: dict[str, list[tuple[int, float]]]  # line label -> [(num_experts, value)], sorted by N
    baseline_label: str | None
    baseline_value: float | None


@dataclass
class Report:
    """The structured tables of an experiment folder and their renderings."""

    folder: Path
    name: str
    metrics: list[str]
    test: str
    alpha: float
    baseline: str | None  # as requested; None = first present of finetune, adapter, zero-shot
    tables: list[GroupTable]
    zero_shot_tables: list[ZeroShotTable]
    figure: list[FigurePanel]  # empty: no system was run at more than one number of experts
    experts: list[ExpertUsage]  # the activated-experts rows; empty: no block of N > 1 with expert counts
    comparisons: dict[str, int]  # metric -> Bonferroni m (comparisons with a p-value)
    significant: dict[str, int]  # metric -> comparisons significant after correction
    command: str | None = None  # the command that ran the experiment, from experiment.json
    markdown: str = ""
    csv: str = ""
    latex: str = ""
    experts_csv: str = ""  # experts.csv; empty without activated-experts rows

    @property
    def num_comparisons(self) -> int:
        return sum(self.comparisons.values())

    @property
    def num_significant(self) -> int:
        return sum(self.significant.values())

    @property
    def summary_line(self) -> str:
        return (
            f"{self.num_significant} of {self.num_comparisons} comparisons significant "
            f"at alpha={self.alpha:g} after Bonferroni (test: {TEST_NAMES[self.test]})"
        )

    def table(self, eval_dataset: str, *, train_dataset: str | None = None, base: str | None = None):
        """The table of one evaluation collection (narrowed by training collection and base if needed)."""
        found = [
            t
            for t in self.tables
            if t.eval_dataset == eval_dataset
            and (train_dataset is None or t.train_dataset == train_dataset)
            and (base is None or t.base == base)
        ]
        if len(found) != 1:
            raise KeyError(f"{len(found)} tables match eval_dataset={eval_dataset!r}")
        return found[0]


# ---------------------------------------------------------------------------------------------- loading


class _PerQuery:
    """Per-query metric values from the metrics files named in results.jsonl."""

    def __init__(self, files: MetricsFiles):
        self.files = files

    def get(self, metrics_file: str, metric: str) -> dict[str, float]:
        per_query = self.files.get(metrics_file).get("per_query")
        if not isinstance(per_query, dict):
            raise DataError(
                self.files.path(metrics_file), "no per_query values: significance tests need them"
            )
        values = per_query.get(metric)
        if not isinstance(values, dict):
            raise DataError(self.files.path(metrics_file), f"per_query has no {metric!r} values")
        return values


def _per_query_mean(records: Sequence[dict], metric: str, per_query: _PerQuery) -> dict[str, float]:
    """query id -> the metric averaged over the seeds (records); queries present in every seed."""
    tables = [per_query.get(r["metrics_file"], metric) for r in records]
    common = set(tables[0]).intersection(*tables[1:])
    if any(len(t) != len(common) for t in tables):
        logger.warning(
            "the seeds of %s differ in their queries; using the %d shared", records[0]["run_id"], len(common)
        )
    return {qid: sum(float(t[qid]) for t in tables) / len(tables) for qid in common}


def _read_experiment(folder: Path) -> tuple[str | None, str | None]:
    """(experiment name, command) from DIR/experiment.json when present."""
    path = folder / "experiment.json"
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("%s is unreadable (%s); the report omits how the experiment was run", path, error)
        return None, None
    if not isinstance(data, dict):
        return None, None
    config = data.get("config")
    provenance = data.get("provenance")
    name = config.get("name") if isinstance(config, dict) else data.get("name")
    command = provenance.get("command") if isinstance(provenance, dict) else None
    return (str(name) if name is not None else None), (str(command) if command is not None else None)


# --------------------------------------------------------------------------------------------- building


def _choose_baseline(rows: Iterable[SystemRow], baseline: str | None) -> SystemRow | None:
    """The row of `baseline` (or of the first present of finetune, adapter, zero-shot); when the system
    has several rows, the first in table order."""
    rows = sorted(rows, key=SystemRow.sort_key)
    for name in (baseline,) if baseline else DEFAULT_BASELINES:
        matching = [row for row in rows if row.system == name]
        if matching:
            return matching[0]
    return None


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _metric_values(records: Sequence[dict], metric: str) -> list[float]:
    return [float(r["metrics"][metric]) for r in records if metric in r["metrics"]]


def _setting(records: Iterable[dict], train: str | None, eval_dataset: str) -> str:
    for record in records:
        if record["train_dataset"] is not None and record.get("setting"):
            return str(record["setting"])
    if train is None:
        return "zero-shot"
    return "in-domain" if train == eval_dataset else "zero-shot"


def _group(results: list[dict]) -> dict[tuple[str | None, str, str], dict[SystemRow, list[dict]]]:
    """(train_dataset, base, eval_dataset) -> system row -> its records (one per seed).

    Zero-shot records (train_dataset null) join every group of their base and collection."""
    groups: dict[tuple[str | None, str, str], dict[SystemRow, list[dict]]] = {}
    for record in results:
        if record["train_dataset"] is not None:
            key = (record["train_dataset"], record["base"], record["eval_dataset"])
            groups.setdefault(key, {}).setdefault(row_of(record), []).append(record)
    for record in results:
        if record["train_dataset"] is not None:
            continue
        keys = [k for k in groups if k[1] == record["base"] and k[2] == record["eval_dataset"]]
        for key in keys or [(None, record["base"], record["eval_dataset"])]:
            groups.setdefault(key, {}).setdefault(row_of(record), []).append(record)
    return groups


def _group_order(key: tuple[str | None, str, str], setting: str) -> tuple:
    train, base, eval_dataset = key
    return (train is None, train or "", base, setting != "in-domain", eval_dataset)


def build_report(
    folder: Path,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    baseline: str | None = None,
    test: str = "t-test",
    alpha: float = 0.05,
) -> Report:
    """Tables, significance tests and figure data of the experiment in `folder` (see the module docstring).

    baseline: a system name ("finetune", "adapter", "zero-shot", ...); default: in each table the first
    present of finetune, adapter, zero-shot. test: "t-test" or "randomization". Raises ValueError for a
    bad test or alpha, SbmoeError for a folder without results or a metric or baseline found nowhere.
    """
    folder = Path(folder)
    if test not in TESTS:
        raise ValueError(f"test must be one of {sorted(TESTS)}, got {test!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    metrics = list(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    results = deduplicate_results(load_results(folder))
    if not results:
        raise SbmoeError(f"{folder / 'results.jsonl'} holds no results yet")
    available = {name for record in results for name in record["metrics"]}
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise SbmoeError(f"metrics {unknown} are in no result; available: {sorted(available)}")
    systems = {record["system"] for record in results}
    if baseline is not None and baseline not in systems:
        raise SbmoeError(f"baseline {baseline!r} has no results; systems present: {sorted(systems)}")
    name, command = _read_experiment(folder)
    files = MetricsFiles(folder)
    per_query = _PerQuery(files)
    run_test = TESTS[test]

    tables = []
    groups = _group(results)
    for key in groups:
        rows = groups[key]
        train, base, eval_dataset = key
        setting = _setting((r for records in rows.values() for r in records), train, eval_dataset)
        chosen = _choose_baseline(rows, baseline)
        if chosen is None:
            logger.warning("no baseline in the table of %s: no comparisons there", key)
        table_rows = []
        for row in sorted(rows, key=SystemRow.sort_key):
            records = sorted(rows[row], key=lambda r: (r["seed"] is not None, r["seed"] or 0))
            cells = {}
            for metric in metrics:
                values = _metric_values(records, metric)
                if not values:
                    continue
                mean, std = _mean_std(values)
                cells[metric] = Cell(values=values, mean=mean, std=std)
            table_rows.append(TableRow(row, [r["seed"] for r in records], cells, is_baseline=row == chosen))
        tables.append(GroupTable(train, base, eval_dataset, setting, chosen, table_rows))
    tables.sort(key=lambda t: _group_order((t.train_dataset, t.base, t.eval_dataset), t.setting))

    # Relative changes and raw p-values against each table's baseline.
    for table in tables:
        if table.baseline is None:
            continue
        base_row = table.row(table.baseline.label)
        base_records = groups[(table.train_dataset, table.base, table.eval_dataset)][table.baseline]
        for table_row in table.rows:
            if table_row.is_baseline:
                continue
            records = groups[(table.train_dataset, table.base, table.eval_dataset)][table_row.row]
            for metric, cell in table_row.cells.items():
                base_cell = base_row.cells.get(metric)
                if base_cell is None:
                    continue
                cell.delta_pct = (
                    100.0 * (cell.mean - base_cell.mean) / base_cell.mean if base_cell.mean else None
                )
                system_q = _per_query_mean(records, metric, per_query)
                base_q = _per_query_mean(base_records, metric, per_query)
                shared = sorted(set(system_q) & set(base_q))
                if len(shared) < 2:
                    logger.warning(
                        "%s vs %s on %s: %d shared queries, no test",
                        table_row.label,
                        base_row.label,
                        table.eval_dataset,
                        len(shared),
                    )
                    continue
                cell.p_value = run_test([system_q[q] for q in shared], [base_q[q] for q in shared])

    # Bonferroni over every comparison of a metric in the whole report.
    comparisons, significant = {}, {}
    for metric in metrics:
        cells = [
            c
            for t in tables
            for r in t.rows
            if (c := r.cells.get(metric)) is not None and c.p_value is not None
        ]
        for cell, adjusted in zip(cells, bonferroni([c.p_value for c in cells]), strict=True):
            cell.p_adjusted = adjusted
            cell.significant = adjusted < alpha
        comparisons[metric] = len(cells)
        significant[metric] = sum(c.significant for c in cells)

    report = Report(
        folder=folder,
        name=name or folder.resolve().name,
        metrics=metrics,
        test=test,
        alpha=alpha,
        baseline=baseline,
        tables=tables,
        zero_shot_tables=_zero_shot_tables(results, metrics),
        figure=_figure_panels(results, baseline),
        experts=experts_table.build_expert_usage(results, files),
        comparisons=comparisons,
        significant=significant,
        command=command,
    )
    report.markdown = render_markdown(report)
    report.csv = render_csv(report)
    report.latex = render_latex(report)
    report.experts_csv = experts_table.render_csv(report.experts) if report.experts else ""
    logger.info("report of %s: %d tables; %s", folder, len(tables), report.summary_line)
    return report


def _settings_of(results: list[dict]) -> list[tuple[str | None, str]]:
    """(train_dataset, base) of every trained system, plus (None, base) for a base with none."""
    trained = sorted({(r["train_dataset"], r["base"]) for r in results if r["train_dataset"] is not None})
    bases = {base for _, base in trained}
    untrained = sorted({(None, r["base"]) for r in results if r["base"] not in bases})
    return trained + untrained


def _rows_on(
    results: list[dict], train: str | None, base: str, setting: str
) -> dict[SystemRow, dict[str, list]]:
    """system row -> collection -> records, for the trained systems of (train, base) in `setting` and the
    zero-shot systems of `base` on those collections."""
    own = [
        r for r in results if r["train_dataset"] == train and r["base"] == base and r["setting"] == setting
    ]
    collections = {r["eval_dataset"] for r in own}
    if train is not None:
        own += [
            r
            for r in results
            if r["train_dataset"] is None and r["base"] == base and r["eval_dataset"] in collections
        ]
    rows: dict[SystemRow, dict[str, list]] = {}
    for record in own:
        rows.setdefault(row_of(record), {}).setdefault(record["eval_dataset"], []).append(record)
    return rows


def _zero_shot_tables(results: list[dict], metrics: Sequence[str]) -> list[ZeroShotTable]:
    tables = []
    for train, base in _settings_of(results):
        rows = _rows_on(results, train, base, "zero-shot")
        collections = sorted({c for by_collection in rows.values() for c in by_collection})
        if not collections:
            continue
        for metric in metrics:
            table_rows = []
            for row in sorted(rows, key=SystemRow.sort_key):
                values = {}
                for collection, records in rows[row].items():
                    seed_values = _metric_values(records, metric)
                    if seed_values:
                        values[collection] = statistics.fmean(seed_values)
                complete = len(values) == len(collections)
                mean = statistics.fmean(values[c] for c in collections) if complete else None
                table_rows.append(ZeroShotRow(row, values, mean))
            tables.append(ZeroShotTable(train, base, metric, collections, table_rows))
    return tables


def _collection_mean(by_collection: dict[str, list[dict]], metric: str) -> float | None:
    """The metric averaged over seeds within each collection, then over the collections."""
    means = [
        statistics.fmean(v) for records in by_collection.values() if (v := _metric_values(records, metric))
    ]
    return statistics.fmean(means) if means else None


def _figure_panels(results: list[dict], baseline: str | None) -> list[FigurePanel]:
    """Panels of the experts figure, or none when no (system, mode) was run at two numbers of experts."""
    available = {name for record in results for name in record["metrics"]}
    panels = []
    for train, base in _settings_of(results):
        if train is None:
            continue
        rows = _rows_on(results, train, base, "in-domain")
        chosen = _choose_baseline(rows, baseline)
        for metric in (m for m in FIGURE_METRICS if m in available):
            lines: dict[str, list[tuple[int, float]]] = {}
            for row in sorted(rows, key=SystemRow.sort_key):
                if row.num_experts is None or (chosen is not None and row.system == chosen.system):
                    continue
                if (y := _collection_mean(rows[row], metric)) is not None:
                    lines.setdefault(row.line_label, []).append((row.num_experts, y))
            if lines:
                panel = FigurePanel(
                    train_dataset=train,
                    base=base,
                    metric=metric,
                    lines={label: sorted(points) for label, points in lines.items()},
                    baseline_label=chosen.label if chosen else None,
                    baseline_value=_collection_mean(rows[chosen], metric) if chosen else None,
                )
                panels.append(panel)
    if not any(len({n for n, _ in points}) > 1 for p in panels for points in p.lines.values()):
        return []
    return panels


# -------------------------------------------------------------------------------------------- rendering


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
            f"![metric vs number of experts]({FIGURE_FILE})",
        ]
    lines += ["", "## Significance", "", report.summary_line + "."]
    lines += ["", "## How this report was made", ""]
    if report.command:
        lines.append(f"- experiment: `{report.command}`")
    else:
        lines.append("- experiment: command unknown (no provenance in experiment.json)")
    lines.append(
        f"- report: `sbmoe report {report.folder} --metrics {','.join(report.metrics)} --test {report.test} "
        f"--alpha {report.alpha:g}" + (f" --baseline {report.baseline}" if report.baseline else "") + "`"
    )
    return "\n".join(lines) + "\n"


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


def render_figure(panels: Sequence[FigurePanel]):
    """A matplotlib Figure (Agg, no pyplot state): one row per (training collection, base), one column per
    metric; one line per (system, mode), the baseline dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys((p.train_dataset, p.base) for p in panels))
    metrics = list(dict.fromkeys(p.metric for p in panels))
    figure = Figure(figsize=(10, 4 * len(settings)), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(settings), len(metrics), squeeze=False)
    for panel in panels:
        ax = axes[settings.index((panel.train_dataset, panel.base))][metrics.index(panel.metric)]
        counts: set[int] = set()
        for label, points in panel.lines.items():
            xs, ys = zip(*points, strict=True)
            counts.update(xs)
            ax.plot(xs, ys, marker="o", label=label)
        if panel.baseline_value is not None:
            ax.axhline(
                panel.baseline_value,
                linestyle="--",
                color="black",
                label=f"{panel.baseline_label} (baseline)",
            )
        ax.set_xticks(sorted(counts))
        ax.set_xlabel("number of experts N")
        ax.set_ylabel(f"{metric_label(panel.metric)} (mean of seeds, collections)")
        ax.set_title(
            f"{metric_label(panel.metric)}: {panel.base}\ntrained on {panel.train_dataset}", fontsize="medium"
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle("In-domain effectiveness vs number of experts")
    return figure


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Report, output: Path) -> dict[str, Path]:
    """Write report.md, report.csv, report.tex, experts.csv (when there are activated-experts rows) and
    experts.png (when there is a figure) into the folder `output`, each atomically. Returns kind
    ("markdown", "csv", "latex", "experts", "figure") -> path."""
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
        buffer = io.BytesIO()
        render_figure(report.figure).savefig(buffer, format="png", dpi=150)
        paths["figure"] = output / FIGURE_FILE
        _atomic_write_bytes(paths["figure"], buffer.getvalue())
    for path in paths.values():
        logger.info("wrote %s", path)
    return paths


# ------------------------------------------------------------------------------------------------- CLI


def _compared_rows(
    rows: Iterable[SystemRow], system_a: str, system_b: str
) -> list[tuple[SystemRow, SystemRow]]:
    """The (A row, B row) pairs of one table: paired on N where the two systems share a number of experts,
    across N where they share none (cluster at N=6 against the one-expert gated adapter, or ZERO-SHOT);
    then likewise on the routing mode."""
    rows_a = [r for r in rows if r.system == system_a]
    rows_b = [r for r in rows if r.system == system_b]

    def matched(values_a: set, values_b: set) -> list[tuple]:
        shared = values_a & values_b
        return [(v, v) for v in shared] if shared else [(a, b) for a in values_a for b in values_b]

    pairs = []
    for n_a, n_b in matched({r.num_experts for r in rows_a}, {r.num_experts for r in rows_b}):
        modes_a = {r.mode for r in rows_a if r.num_experts == n_a}
        modes_b = {r.mode for r in rows_b if r.num_experts == n_b}
        for mode_a, mode_b in matched(modes_a, modes_b):
            pairs.append((SystemRow(system_a, n_a, mode_a), SystemRow(system_b, n_b, mode_b)))
    return sorted(pairs, key=lambda pair: (pair[0].sort_key(), pair[1].sort_key()))


def compare_systems(
    folder: Path,
    system_a: str,
    system_b: str,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    test: str = "t-test",
    alpha: float = 0.05,
) -> str:
    """Head to head: the design labelled `system_a` against `system_b` (any two labels of the grid) on every
    test collection where both ran with the same training collection. Rows are paired on N and mode, or
    across them where the two share none (`_compared_rows`: `cluster` at N=6 TOP-1 against the one-expert
    `gated-adapter`). Markdown: one line per such cell and metric (means over seeds, the paired test on
    per-query values averaged over seeds, Bonferroni-corrected over the cells of that metric), then per
    metric how many cells each system wins and how many significantly.
    """
    folder = Path(folder)
    results = deduplicate_results(load_results(folder))
    present = sorted({record["system"] for record in results})
    missing = [name for name in (system_a, system_b) if name not in present]
    if missing:
        raise SbmoeError(f"{folder}: no results for {missing}; systems present: {present}")
    per_query = _PerQuery(MetricsFiles(folder))
    cells = []
    for key, rows in sorted(_group(results).items(), key=lambda item: _group_order(item[0], "")):
        for row_a, row_b in _compared_rows(rows, system_a, system_b):
            for metric in metrics:
                values_a = _per_query_mean(rows[row_a], metric, per_query)
                values_b = _per_query_mean(rows[row_b], metric, per_query)
                shared = sorted(set(values_a) & set(values_b))
                p_value = TESTS[test]([values_a[q] for q in shared], [values_b[q] for q in shared])
                mean_a = statistics.fmean(_metric_values(rows[row_a], metric))
                mean_b = statistics.fmean(_metric_values(rows[row_b], metric))
                cells.append((key, row_a, row_b, metric, mean_a, mean_b, p_value))
    if not cells:
        raise SbmoeError(f"{folder}: no test collection where both {system_a} and {system_b} ran")
    adjusted = {}
    for metric in metrics:
        indices = [i for i, cell in enumerate(cells) if cell[3] == metric]
        adjusted.update(zip(indices, bonferroni([cells[i][6] for i in indices]), strict=True))
    label_a, label_b = system_label(system_a), system_label(system_b)
    lines = [
        f"# {label_a} vs {label_b}",
        "",
        f"Means over seeds; Δ% = ({label_a} - {label_b}) / {label_b}; {MARKER} = Bonferroni-corrected "
        f"p < {alpha:g} ({TEST_NAMES[test]} on per-query values averaged over seeds; m = the cells of "
        "each metric).",
        "",
        f"| trained on | tested on | {label_a} row | {label_b} row | metric | {label_a} | {label_b} | Δ% "
        "| p (corrected) |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for i, (key, row_a, row_b, metric, mean_a, mean_b, _) in enumerate(cells):
        mark = MARKER if adjusted[i] < alpha else ""
        delta = 100 * (mean_a - mean_b) / mean_b if mean_b else float("nan")
        lines.append(
            f"| {key[0]} | {key[2]} | {row_a.label} | {row_b.label} | {metric_label(metric)} | {mean_a:.4f} "
            f"| {mean_b:.4f} | {delta:+.2f}%{mark} | {adjusted[i]:.3g} |"
        )
    lines.append("")
    for metric in metrics:
        mine = [(c, adjusted[i]) for i, c in enumerate(cells) if c[3] == metric]
        wins_a = [p for c, p in mine if c[4] > c[5]]
        wins_b = [p for c, p in mine if c[5] > c[4]]
        lines.append(
            f"- {metric_label(metric)}: {label_a} higher in {len(wins_a)} of {len(mine)} cells "
            f"({sum(p < alpha for p in wins_a)} significantly), {label_b} higher in {len(wins_b)} "
            f"({sum(p < alpha for p in wins_b)} significantly)."
        )
    return "\n".join(lines) + "\n"


__all__ = [
    "Cell", "FigurePanel", "GroupTable", "Report", "SystemRow", "TableRow", "ZeroShotRow", "ZeroShotTable",
    "build_report", "compare_systems", "load_results", "metric_label", "render_figure", "write_report",
]  # fmt: skip
