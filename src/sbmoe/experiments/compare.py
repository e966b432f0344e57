"""Head to head: two block designs of a grid, cell by cell (`sbmoe report DIR --compare A B`).

Where `sbmoe.experiments.tables` compares every system with a baseline, `compare_systems` compares two
chosen labels with each other, with the same paired test and Bonferroni correction
(`sbmoe.experiments.comparisons.paired_tests`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from sbmoe.errors import SbmoeError
from sbmoe.evaluation.metrics import metric_label
from sbmoe.evaluation.significance import TEST_NAMES
from sbmoe.experiments.comparisons import Pairing, group_order, group_results, metric_values, paired_tests
from sbmoe.experiments.render import MARKER
from sbmoe.experiments.results import (
    MetricsFiles,
    SystemRow,
    deduplicate_results,
    load_results,
    system_label,
)
from sbmoe.experiments.tables import DEFAULT_METRICS


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

    Raises SbmoeError when a system has no results, when the two never ran on the same collection, or when
    a cell has fewer than two queries both systems were evaluated on (no paired test).
    """
    folder = Path(folder)
    results = deduplicate_results(load_results(folder))
    present = sorted({record["system"] for record in results})
    missing = [name for name in (system_a, system_b) if name not in present]
    if missing:
        raise SbmoeError(f"{folder}: no results for {missing}; systems present: {present}")
    cells = []  # (table key, A row, B row, pairing)
    for key, rows in sorted(group_results(results).items(), key=lambda item: group_order(item[0], "")):
        for row_a, row_b in _compared_rows(rows, system_a, system_b):
            name = f"{row_a.label} vs {row_b.label} on {key[2]}"
            for metric in metrics:
                if metric_values(rows[row_a], metric) and metric_values(rows[row_b], metric):
                    cells.append((key, row_a, row_b, Pairing(metric, rows[row_a], rows[row_b], name)))
    if not cells:
        raise SbmoeError(f"{folder}: no test collection where both {system_a} and {system_b} ran")
    outcomes = paired_tests([pairing for *_, pairing in cells], MetricsFiles(folder), test, alpha)
    untested = [
        pairing.name
        for (*_, pairing), outcome in zip(cells, outcomes, strict=True)
        if outcome.p_value is None
    ]
    if untested:
        raise SbmoeError(f"{folder}: fewer than 2 shared queries, no paired test: {untested[0]}")

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
    wins: dict[str, tuple[list[bool], list[bool]]] = {metric: ([], []) for metric in metrics}
    for (key, row_a, row_b, pairing), outcome in zip(cells, outcomes, strict=True):
        mean_a = statistics.fmean(metric_values(pairing.records_a, pairing.metric))
        mean_b = statistics.fmean(metric_values(pairing.records_b, pairing.metric))
        mark = MARKER if outcome.significant else ""
        delta = 100 * (mean_a - mean_b) / mean_b if mean_b else float("nan")
        lines.append(
            f"| {key[0]} | {key[2]} | {row_a.label} | {row_b.label} | {metric_label(pairing.metric)} "
            f"| {mean_a:.4f} | {mean_b:.4f} | {delta:+.2f}%{mark} | {outcome.p_adjusted:.3g} |"
        )
        if mean_a > mean_b:
            wins[pairing.metric][0].append(outcome.significant)
        elif mean_b > mean_a:  # a tie is nobody's win
            wins[pairing.metric][1].append(outcome.significant)
    lines.append("")
    for metric in metrics:
        wins_a, wins_b = wins[metric]
        total = sum(1 for *_, pairing in cells if pairing.metric == metric)
        lines.append(
            f"- {metric_label(metric)}: {label_a} higher in {len(wins_a)} of {total} cells "
            f"({sum(wins_a)} significantly), {label_b} higher in {len(wins_b)} ({sum(wins_b)} significantly)."
        )
    return "\n".join(lines) + "\n"


__all__ = ["compare_systems"]
