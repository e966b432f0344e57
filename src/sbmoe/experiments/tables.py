"""The report's tables and significance tests, built from an experiment folder.

`build_report(DIR)` reads DIR/results.jsonl (the line format is described in `sbmoe.experiments`) and
builds, for every (training collection, base encoder, evaluation collection), one table whose rows are
the systems evaluated there:

    System                       nDCG@10            Δ%       Recall@100       Δ%
    FINE-TUNED                   0.6400 ± 0.0100     —       0.9000 ± 0.0050   —
    SB-MoE learned N=6 TOP-1     0.6600 ± 0.0080†   +3.13%   0.9010 ± 0.0040  +0.11%

Each cell is the mean ± sample standard deviation over seeds of the collection-level metric, its change
relative to the baseline's mean, and a marker when the paired test of the per-query values (averaged
over seeds) against the baseline is significant after Bonferroni correction over every comparison of
that metric in the report (`sbmoe.experiments.comparisons.paired_tests`). Zero-shot systems (no training
collection) appear in every table of their base encoder. A summary table averages the zero-shot
collections, a section shows what each block design's experts do (activated experts, balance, null share:
`sbmoe.experiments.experts_table`), and a figure plots the in-domain metric against the number of experts
(`sbmoe.analysis.plots.FigurePanel`). `build_report` fills in the renderings (`sbmoe.experiments.render`);
`write_report` writes them.

Rows are the grid's system labels: the paper's systems first, in its order and under its names, then any
other label (`cluster`, `learned-st`, ...) alphabetically under its own name.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sbmoe.analysis.plots import FIGURE_FORMATS, FigurePanel
from sbmoe.errors import SbmoeError
from sbmoe.evaluation.significance import TEST_NAMES, TESTS
from sbmoe.experiments import experts_table, render
from sbmoe.experiments.comparisons import (
    GroupKey,
    Pairing,
    group_order,
    group_results,
    metric_values,
    paired_tests,
)
from sbmoe.experiments.experts_table import ExpertUsage
from sbmoe.experiments.results import (
    MetricsFiles,
    SystemRow,
    deduplicate_results,
    load_results,
    read_experiment,
    row_of,
)

logger = logging.getLogger(__name__)

DEFAULT_BASELINES = ("finetune", "adapter", "zero-shot")
DEFAULT_METRICS = ("ndcg@10", "recall@100")
VIEW_METRIC = "unseen-docs/ndcg@10"  # a default column where the grid scored unseen documents
FIGURE_METRICS = ("ndcg@10", "recall@100")


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
    figure_format: str = "png"  # of the figure file: png, pdf or svg
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


# -------------------------------------------------------------------------------------------- building


def choose_baseline(rows: Iterable[SystemRow], baseline: str | None) -> SystemRow | None:
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


def _setting(records: Iterable[dict], train: str | None, eval_dataset: str) -> str:
    for record in records:
        if record["train_dataset"] is not None and record.get("setting"):
            return str(record["setting"])
    if train is None:
        return "zero-shot"
    return "in-domain" if train == eval_dataset else "zero-shot"


def build_report(
    folder: Path,
    *,
    metrics: Sequence[str] | None = None,
    baseline: str | None = None,
    test: str = "t-test",
    alpha: float = 0.05,
    figure_format: str = "png",
) -> Report:
    """Tables, significance tests and figure data of the experiment in `folder` (see the module docstring).

    metrics: default DEFAULT_METRICS, and nDCG@10 on unseen documents where the results have it
    (`VIEW_METRIC`).
    baseline: a system name ("finetune", "adapter", "zero-shot", ...); default: in each table the first
    present of finetune, adapter, zero-shot. test: "t-test" or "randomization". figure_format: the
    figure's file format, png, pdf or svg (the Markdown names that file). Raises ValueError for a bad test,
    alpha or figure format, SbmoeError for a folder without results or a metric or baseline found nowhere.
    """
    folder = Path(folder)
    if test not in TESTS:
        raise ValueError(f"test must be one of {sorted(TESTS)}, got {test!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if figure_format not in FIGURE_FORMATS:
        raise ValueError(f"figure_format must be one of {list(FIGURE_FORMATS)}, got {figure_format!r}")
    results = deduplicate_results(load_results(folder))
    if not results:
        raise SbmoeError(f"{folder / 'results.jsonl'} holds no results yet")
    available = {name for record in results for name in record["metrics"]}
    if metrics is None:
        metrics = [*DEFAULT_METRICS, *([VIEW_METRIC] if VIEW_METRIC in available else [])]
    metrics = list(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise SbmoeError(f"metrics {unknown} are in no result; available: {sorted(available)}")
    systems = {record["system"] for record in results}
    if baseline is not None and baseline not in systems:
        raise SbmoeError(f"baseline {baseline!r} has no results; systems present: {sorted(systems)}")
    name, command = read_experiment(folder)
    files = MetricsFiles(folder)

    groups = group_results(results)
    tables = [_group_table(key, rows, metrics, baseline) for key, rows in groups.items()]
    tables.sort(key=lambda t: group_order((t.train_dataset, t.base, t.eval_dataset), t.setting))

    # Relative changes against each table's baseline, and the pairings of the significance tests.
    tested: list[tuple[Cell, Pairing]] = []
    for table in tables:
        if table.baseline is None:
            continue
        base_row = table.row(table.baseline.label)
        records = groups[(table.train_dataset, table.base, table.eval_dataset)]
        for table_row in table.rows:
            if table_row.is_baseline:
                continue
            for metric, cell in table_row.cells.items():
                base_cell = base_row.cells.get(metric)
                if base_cell is None:
                    continue
                cell.delta_pct = (
                    100.0 * (cell.mean - base_cell.mean) / base_cell.mean if base_cell.mean else None
                )
                description = f"{table_row.label} vs {base_row.label} on {table.eval_dataset}"
                pairing = Pairing(metric, records[table_row.row], records[table.baseline], description)
                tested.append((cell, pairing))
    outcomes = paired_tests([pairing for _, pairing in tested], files, test, alpha)
    comparisons, significant = dict.fromkeys(metrics, 0), dict.fromkeys(metrics, 0)
    for (cell, pairing), outcome in zip(tested, outcomes, strict=True):
        cell.p_value, cell.p_adjusted = outcome.p_value, outcome.p_adjusted
        cell.significant = outcome.significant
        if outcome.p_value is not None:
            comparisons[pairing.metric] += 1
            significant[pairing.metric] += outcome.significant

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
        figure_format=figure_format,
    )
    report.markdown = render.render_markdown(report)
    report.csv = render.render_csv(report)
    report.latex = render.render_latex(report)
    report.experts_csv = experts_table.render_csv(report.experts) if report.experts else ""
    logger.info("report of %s: %d tables; %s", folder, len(tables), report.summary_line)
    return report


def _group_table(
    key: GroupKey, rows: dict[SystemRow, list[dict]], metrics: Sequence[str], baseline: str | None
) -> GroupTable:
    """One table's rows and cells (means and deviations over seeds), and its baseline row."""
    train, base, eval_dataset = key
    setting = _setting((r for records in rows.values() for r in records), train, eval_dataset)
    chosen = choose_baseline(rows, baseline)
    if chosen is None:
        logger.warning("no baseline in the table of %s: no comparisons there", key)
    table_rows = []
    for row in sorted(rows, key=SystemRow.sort_key):
        records = sorted(rows[row], key=lambda r: (r["seed"] is not None, r["seed"] or 0))
        cells = {}
        for metric in metrics:
            values = metric_values(records, metric)
            if not values:
                continue
            mean, std = _mean_std(values)
            cells[metric] = Cell(values=values, mean=mean, std=std)
        table_rows.append(TableRow(row, [r["seed"] for r in records], cells, is_baseline=row == chosen))
    return GroupTable(train, base, eval_dataset, setting, chosen, table_rows)


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
                    seed_values = metric_values(records, metric)
                    if seed_values:
                        values[collection] = statistics.fmean(seed_values)
                complete = len(values) == len(collections)
                mean = statistics.fmean(values[c] for c in collections) if complete else None
                table_rows.append(ZeroShotRow(row, values, mean))
            if any(table_row.values for table_row in table_rows):  # a view exists only in-domain
                tables.append(ZeroShotTable(train, base, metric, collections, table_rows))
    return tables


def _collection_mean(by_collection: dict[str, list[dict]], metric: str) -> float | None:
    """The metric averaged over seeds within each collection, then over the collections."""
    means = [
        statistics.fmean(v) for records in by_collection.values() if (v := metric_values(records, metric))
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
        chosen = choose_baseline(rows, baseline)
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


__all__ = [
    "DEFAULT_METRICS", "Cell", "FigurePanel", "GroupTable", "Report", "TableRow", "ZeroShotRow",
    "ZeroShotTable", "build_report", "choose_baseline",
]  # fmt: skip
