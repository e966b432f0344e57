"""The report's "Activated experts" section: what each block design's experts do, from the expert counts
its evaluations wrote.

For every design (system label) trained on a collection with a block of N > 1 experts, each of its
in-domain test collections gives one row. A seed's figures come from the `expert_counts` of its metrics.json
under TOP-1 routing (RANDOM for RANDOM-GATE, which routes no other way): the queries and documents whose
top choice was each expert, both counted together, each text once (a last bin for the null expert when the
block has one). They are the statistics of `sbmoe.analysis.routing.usage_statistics`: activated experts
(at least 1 % of the texts), the largest expert's share, the normalised entropy of the experts' shares, the
null expert's share; each averaged over seeds, and for the zero-shot collections also over them.

    | System                   | tested on | activated per seed | activated | top share | entropy | null |
    | SB-MoE learned N=4 TOP-1 | scifact   | 3, 1               | 2.0       | 0.750     | 0.268   | –    |

(plus the zero-shot mean of activated experts; experts.csv also has the other zero-shot means).
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from sbmoe.analysis.routing import ACTIVE_SHARE, usage_statistics
from sbmoe.errors import DataError
from sbmoe.experiments.results import MetricsFiles, SystemRow, row_of

logger = logging.getLogger(__name__)

ROUTINGS = ("top1", "random")  # modes that send each text to one expert; top1 preferred when both ran
FIGURES = ("active_experts", "top_share", "normalized_entropy", "null_share")


@dataclass
class ExpertUsage:
    """Expert usage of one design at N experts trained on `train_dataset`, tested on `eval_dataset`."""

    train_dataset: str
    base: str
    row: SystemRow  # system label, N, and the routing the counts come from
    eval_dataset: str  # an in-domain test collection
    seeds: list[int | None]
    activated: list[int]  # activated experts, one per seed (in the order of `seeds`)
    top_share: float  # largest expert's share of the texts, mean over seeds
    entropy: float  # normalised entropy of the experts' shares, mean over seeds
    null_share: float | None  # null expert's share, mean over seeds; None: the block has none
    zero_shot_collections: list[str]
    zero_shot: dict[str, float | None]  # figure (FIGURES) -> mean over the zero-shot collections

    @property
    def activated_mean(self) -> float:
        return statistics.fmean(self.activated)


def build_expert_usage(results: Sequence[dict], files: MetricsFiles) -> list[ExpertUsage]:
    """One row per (training collection, base, design with N > 1, in-domain collection) whose metrics files
    hold expert counts, in table order. Raises DataError for counts that do not fit the line's N."""
    runs: dict[tuple[str, str, SystemRow], list[dict]] = {}
    for record in results:
        trained_block = record["train_dataset"] is not None and (record["num_experts"] or 0) > 1
        if not trained_block or record["mode"] not in ROUTINGS:
            continue
        key = (record["train_dataset"], record["base"], row_of(record))
        runs.setdefault(key, []).append(record)
    # RANDOM only where the design has no TOP-1 (RANDOM-GATE); a TOP-1 block evaluated at random is a control.
    chosen = [
        (train, base, row)
        for train, base, row in runs
        if row.mode == "top1" or (train, base, SystemRow(row.system, row.num_experts, "top1")) not in runs
    ]
    rows = []
    for train, base, row in sorted(chosen, key=lambda k: (k[0], k[1], k[2].sort_key())):
        figures: dict[str, dict[str, list[tuple[int | None, dict]]]] = {"in-domain": {}, "zero-shot": {}}
        for record in runs[(train, base, row)]:
            usage = _usage(record, files)
            if usage is not None and record["setting"] in figures:
                by_collection = figures[record["setting"]]
                by_collection.setdefault(record["eval_dataset"], []).append((record["seed"], usage))
        zero_shot = figures["zero-shot"]
        zero_shot_means = {
            figure: _mean_of_means([[u[figure] for _, u in seeds] for seeds in zero_shot.values()])
            for figure in FIGURES
        }
        for collection, seeds in sorted(figures["in-domain"].items()):
            seeds = sorted(seeds, key=lambda item: (item[0] is not None, item[0] or 0))
            usages = [u for _, u in seeds]
            null_shares = [u["null_share"] for u in usages]
            rows.append(
                ExpertUsage(
                    train_dataset=train,
                    base=base,
                    row=row,
                    eval_dataset=collection,
                    seeds=[seed for seed, _ in seeds],
                    activated=[u["active_experts"] for u in usages],
                    top_share=statistics.fmean(u["top_share"] for u in usages),
                    entropy=statistics.fmean(u["normalized_entropy"] for u in usages),
                    null_share=None if None in null_shares else statistics.fmean(null_shares),
                    zero_shot_collections=sorted(zero_shot),
                    zero_shot=zero_shot_means,
                )
            )
    return rows


def _usage(record: dict, files: MetricsFiles) -> dict | None:
    """`usage_statistics` of a line's queries + documents; None (logged) when its file has no counts."""
    counts = files.get(record["metrics_file"]).get("expert_counts")
    if counts is None:
        logger.warning("%s: no expert_counts; left out of the activated experts", record["metrics_file"])
        return None
    n = record["num_experts"]
    sides = [counts.get(side) if isinstance(counts, dict) else None for side in ("queries", "documents")]
    if isinstance(counts, dict) and "documents" in counts and counts["documents"] is None:
        sides = sides[:1]  # a query-side block: documents skip it, its texts are the queries
    lengths = {len(side) if isinstance(side, list) else None for side in sides}
    integers = all(isinstance(c, int) for side in sides if isinstance(side, list) for c in side)
    if len(lengths) != 1 or lengths - {n, n + 1} or not integers:
        raise DataError(
            files.path(record["metrics_file"]),
            f"expert_counts must hold 'queries' and 'documents' lists of {n} counts (or {n + 1} with a null "
            f"expert), as the line's num_experts says (documents null for a query-side block)",
        )
    return usage_statistics([sum(per_expert) for per_expert in zip(*sides, strict=True)], n)


def _mean_of_means(groups: list[list[float | None]]) -> float | None:
    """The mean over groups (collections) of each group's mean (over seeds); None when any value is."""
    if not groups or any(value is None for group in groups for value in group):
        return None
    return statistics.fmean(statistics.fmean(group) for group in groups)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(rows: Sequence[ExpertUsage]) -> list[str]:
    """The section's Markdown lines (none without rows): one table per (training collection, base)."""
    if not rows:
        return []
    lines = [
        "## Activated experts",
        "",
        "Where each design sends texts: the queries and documents of a test collection counted together,"
        " each text once, by the expert TOP-1 routing chose (RANDOM for RANDOM-GATE). *activated*: experts"
        f" with at least {ACTIVE_SHARE:.0%} of the texts, per seed and their mean; *top share*: the largest"
        " expert's share of the texts; *entropy*: of the experts' shares, normalised (1 = balanced, 0 = one"
        " expert takes every text); *null*: the null expert's share; means over seeds. *zero-shot*: the"
        " activated experts' mean over seeds, averaged over the zero-shot collections. The query-document"
        " agreement needs each text's expert, which evaluations do not keep: `sbmoe analyze` measures it.",
    ]
    header = ["System", "tested on", "activated per seed", "activated", "top share", "entropy", "null"]
    header.append("zero-shot activated")
    for setting in dict.fromkeys((r.train_dataset, r.base) for r in rows):
        lines += ["", f"### {setting[1]}, trained on {setting[0]}", ""]
        lines += ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
        for r in (r for r in rows if (r.train_dataset, r.base) == setting):
            cells = [
                r.row.label,
                r.eval_dataset,
                ", ".join(map(str, r.activated)),
                f"{r.activated_mean:.1f}",
                f"{r.top_share:.3f}",
                f"{r.entropy:.3f}",
                _fmt(r.null_share, 3),
                _fmt(r.zero_shot["active_experts"], 1),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


CSV_FIELDS = (
    "train_dataset", "base", "system", "num_experts", "mode", "label", "eval_dataset", "seeds",
    "activated", "activated_mean", "top_share", "entropy", "null_share", "zero_shot_collections",
    "zero_shot_activated", "zero_shot_top_share", "zero_shot_entropy", "zero_shot_null_share",
)  # fmt: skip


def render_csv(rows: Sequence[ExpertUsage]) -> str:
    """One line per row; per-seed values joined by ";", empty cells for what does not apply."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()

    def number(value: float | None) -> str:
        return "" if value is None else repr(value)

    for r in rows:
        writer.writerow(
            {
                "train_dataset": r.train_dataset,
                "base": r.base,
                "system": r.row.system,
                "num_experts": r.row.num_experts,
                "mode": r.row.mode,
                "label": r.row.label,
                "eval_dataset": r.eval_dataset,
                "seeds": ";".join("" if seed is None else str(seed) for seed in r.seeds),
                "activated": ";".join(map(str, r.activated)),
                "activated_mean": repr(r.activated_mean),
                "top_share": repr(r.top_share),
                "entropy": repr(r.entropy),
                "null_share": number(r.null_share),
                "zero_shot_collections": ";".join(r.zero_shot_collections),
                "zero_shot_activated": number(r.zero_shot["active_experts"]),
                "zero_shot_top_share": number(r.zero_shot["top_share"]),
                "zero_shot_entropy": number(r.zero_shot["normalized_entropy"]),
                "zero_shot_null_share": number(r.zero_shot["null_share"]),
            }
        )
    return buffer.getvalue()


__all__ = ["CSV_FIELDS", "ExpertUsage", "build_expert_usage", "render_csv", "render_markdown"]
