"""`sbmoe report`: tables, significance, baselines, zero-shot summary and files of a hand-made folder."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from scipy import stats
from tiny import figure_format_of

from sbmoe.commands import main
from sbmoe.errors import DataError, SbmoeError
from sbmoe.experiments.comparisons import PairedTest, Pairing, paired_tests
from sbmoe.experiments.report import (
    SystemRow,
    build_report,
    compare_systems,
    load_results,
    write_report,
)
from sbmoe.experiments.results import MetricsFiles

# Ten queries. Per-query nDCG@10 of a run = BASE[i] + collection offset + seed offset + the system's shift[i];
# Recall@100 = 0.5 * nDCG@10 + 0.45 (same differences, scaled: the same t statistics).
QUERIES = [f"q{i}" for i in range(10)]
BASE = [0.30 + 0.04 * i for i in range(10)]  # mean 0.48
NOISE = [0.01 * (-1) ** i for i in range(10)]  # mean 0, small: +0.10 + NOISE is clearly significant
SWING = [0.05 * (-1) ** i + 0.001 for i in range(10)]  # mean 0.001, large spread: clearly not significant
COLLECTION = {"scifact": 0.0, "arguana": -0.10, "nfcorpus": 0.05}
SEED = {1: 0.0, 2: 0.02, None: 0.0}
ZERO = [0.0] * 10


def shifted(values: list[float], by: float) -> list[float]:
    return [v + by for v in values]


# (system, num_experts, mode, seeds) -> collection -> per-query shift of nDCG@10
PLAN = {
    ("finetune", None, None, (1, 2)): {"scifact": ZERO, "arguana": ZERO, "nfcorpus": ZERO},
    ("sbmoe-learned", 6, "top1", (1, 2)): {
        "scifact": shifted(NOISE, 0.10),  # significant
        "arguana": SWING,
        "nfcorpus": SWING,
    },
    ("sbmoe-learned", 3, "top1", (1, 2)): {"scifact": SWING},  # not significant
    # Zero-shot: one run, no seed; compared with fine-tuning averaged over seeds 1 and 2 (+0.01).
    ("zero-shot", None, None, (None,)): {
        "scifact": shifted(NOISE, -0.20),  # significant
        "arguana": SWING,  # differences SWING - 0.01: not significant
        "nfcorpus": SWING,
    },
}


def result_line(
    run_id: str,
    system: str,
    num_experts: int | None,
    seed: int | None,
    collection: str,
    mode: str | None,
    metrics: dict[str, float],
    metrics_file: str,
) -> str:
    """One results.jsonl line of the hand-made folders: base "tiny", trained on scifact (in-domain there,
    zero-shot elsewhere), except the untrained "zero-shot" system."""
    trained = system != "zero-shot"
    line = {
        "run_id": run_id,
        "system": system,
        "base": "tiny",
        "train_dataset": "scifact" if trained else None,
        "num_experts": num_experts,
        "seed": seed,
        "eval_dataset": collection,
        "split": "test",
        "setting": "in-domain" if collection == "scifact" else "zero-shot",
        "mode": mode,
        "metrics": metrics,
        "metrics_file": metrics_file,
    }
    return json.dumps(line)


def make_experiment(folder: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """An experiment folder as `sbmoe experiment` writes it (results.jsonl + per-run metrics.json)."""
    folder.mkdir(parents=True)
    (folder / "experiment.json").write_text(
        json.dumps({"config": {"name": "toy"}, "provenance": {"command": "sbmoe experiment toy.yaml"}})
    )
    lines = []
    for (system, n, mode, seeds), by_collection in PLAN.items():
        if system in skip:
            continue
        for seed in seeds:
            trained = system != "zero-shot"
            label = f"{system}-n{n}" if n else system
            run_id = f"scifact/tiny/{label}/seed{seed}" if trained else "zero-shot/tiny"
            for collection, shift in by_collection.items():
                ndcg = [b + COLLECTION[collection] + SEED[seed] + s for b, s in zip(BASE, shift, strict=True)]
                recall = [0.5 * v + 0.45 for v in ndcg]
                per_query = {
                    "ndcg@10": dict(zip(QUERIES, ndcg, strict=True)),
                    "recall@100": dict(zip(QUERIES, recall, strict=True)),
                }
                aggregate = {m: sum(v.values()) / len(v) for m, v in per_query.items()}
                metrics_file = f"runs/{run_id}/eval/{collection}/{mode or 'none'}/metrics.json"
                (folder / metrics_file).parent.mkdir(parents=True, exist_ok=True)
                (folder / metrics_file).write_text(
                    json.dumps({**aggregate, "num_queries": 10, "per_query": per_query})
                )
                lines.append(result_line(run_id, system, n, seed, collection, mode, aggregate, metrics_file))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def experiment(tmp_path) -> Path:
    return make_experiment(tmp_path / "exp")


N6 = "SB-MoE learned N=6 TOP-1"
N3 = "SB-MoE learned N=3 TOP-1"


def test_labels():
    assert SystemRow("finetune", None, None).label == "FINE-TUNED"
    assert SystemRow("zero-shot", None, None).label == "ZERO-SHOT"
    assert SystemRow("adapter", 1, None).label == "ADAPTER"
    assert SystemRow("sbmoe-faithful", 6, "top1").label == "SB-MoE faithful N=6 TOP-1"
    assert SystemRow("sbmoe-learned", 6, "all").label == "SB-MoE learned N=6 ALL"
    assert SystemRow("sbmoe-learned", 9, "topk:2").label == "SB-MoE learned N=9 TOP-2"


def test_table_values(experiment):
    report = build_report(experiment)
    scifact = report.table("scifact")
    assert scifact.setting == "in-domain"
    assert [r.label for r in scifact.rows] == ["ZERO-SHOT", "FINE-TUNED", N3, N6]
    assert scifact.baseline == SystemRow("finetune", None, None)

    fine = scifact.cell("FINE-TUNED", "ndcg@10")
    assert fine.values == pytest.approx([0.48, 0.50])
    assert fine.mean == pytest.approx(0.49)
    assert fine.std == pytest.approx(0.0141421356)  # sample sd of (0.48, 0.50) = 0.02 / sqrt(2)
    assert fine.delta_pct is None and fine.p_value is None and not fine.significant

    n6 = scifact.cell(N6, "ndcg@10")
    assert n6.mean == pytest.approx(0.59)
    assert n6.delta_pct == pytest.approx(100 * 0.10 / 0.49)  # +20.41 %
    # The p-value is the paired t-test of the per-query values averaged over seeds.
    system = [b + 0.01 + 0.10 + e for b, e in zip(BASE, NOISE, strict=True)]
    baseline = [b + 0.01 for b in BASE]
    assert n6.p_value == pytest.approx(stats.ttest_rel(system, baseline).pvalue, rel=1e-6)
    assert n6.p_adjusted == pytest.approx(min(1.0, 7 * n6.p_value))  # m = 7 nDCG comparisons
    assert n6.significant

    n3 = scifact.cell(N3, "ndcg@10")
    assert n3.mean == pytest.approx(0.491)
    assert n3.delta_pct == pytest.approx(100 * 0.001 / 0.49)
    assert n3.p_value > 0.9 and not n3.significant

    zero = scifact.cell("ZERO-SHOT", "ndcg@10")
    assert zero.values == pytest.approx([0.28]) and zero.std == 0.0 and zero.n_seeds == 1
    assert zero.delta_pct == pytest.approx(100 * (0.28 - 0.49) / 0.49)
    assert zero.significant

    recall = scifact.cell(N6, "recall@100")
    assert recall.mean == pytest.approx(0.5 * 0.59 + 0.45)
    assert recall.significant

    # Zero-shot collections: nothing significant.
    arguana = report.table("arguana")
    assert arguana.setting == "zero-shot"
    assert arguana.cell("FINE-TUNED", "ndcg@10").mean == pytest.approx(0.39)
    assert not any(r.cells["ndcg@10"].significant for r in arguana.rows)

    assert report.comparisons == {"ndcg@10": 7, "recall@100": 7}
    assert report.significant == {"ndcg@10": 2, "recall@100": 2}
    assert report.summary_line == (
        "4 of 14 comparisons significant at alpha=0.05 after Bonferroni (test: paired t-test)"
    )


def test_randomization_test_option(experiment):
    report = build_report(experiment, test="randomization", metrics=["ndcg@10"])
    assert report.summary_line == (
        "2 of 7 comparisons significant at alpha=0.05 after Bonferroni (test: paired randomization test)"
    )


def test_explicit_and_default_baseline(experiment, tmp_path):
    report = build_report(experiment, baseline="zero-shot")
    scifact = report.table("scifact")
    assert scifact.baseline == SystemRow("zero-shot", None, None)
    assert scifact.row("ZERO-SHOT").is_baseline
    assert scifact.cell("FINE-TUNED", "ndcg@10").delta_pct == pytest.approx(100 * (0.49 - 0.28) / 0.28)
    assert scifact.cell("ZERO-SHOT", "ndcg@10").delta_pct is None

    without_finetune = make_experiment(tmp_path / "no-finetune", skip=("finetune",))
    assert build_report(without_finetune).table("scifact").baseline == SystemRow("zero-shot", None, None)

    with pytest.raises(SbmoeError, match="baseline 'adapter' has no results"):
        build_report(experiment, baseline="adapter")


def test_zero_shot_summary(experiment):
    report = build_report(experiment)
    (table,) = [t for t in report.zero_shot_tables if t.metric == "ndcg@10"]
    assert (table.train_dataset, table.base, table.collections) == (
        "scifact",
        "tiny",
        ["arguana", "nfcorpus"],
    )
    assert [r.label for r in table.rows] == ["ZERO-SHOT", "FINE-TUNED", N6]
    fine = table.row("FINE-TUNED")
    assert fine.values == pytest.approx({"arguana": 0.39, "nfcorpus": 0.54})
    assert fine.mean == pytest.approx((0.39 + 0.54) / 2)
    assert table.row("ZERO-SHOT").mean == pytest.approx((0.381 + 0.531) / 2)


def test_figure_data(experiment):
    report = build_report(experiment)
    panel = next(p for p in report.figure if p.metric == "ndcg@10")
    assert panel.lines == {"SB-MoE learned TOP-1": [(3, pytest.approx(0.491)), (6, pytest.approx(0.59))]}
    assert panel.baseline_label == "FINE-TUNED"
    assert panel.baseline_value == pytest.approx(0.49)


def test_files(experiment, tmp_path):
    report = build_report(experiment)
    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {"markdown", "csv", "latex", "figure"}

    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# SB-MoE report: toy")
    assert "| FINE-TUNED | 2 | 0.4900 ± 0.0141 | baseline |" in markdown
    assert f"| {N6} | 2 | 0.5900 ± 0.0141† | +20.41% |" in markdown
    assert f"| {N3} | 2 | 0.4910 ± 0.0141 | +0.20% |" in markdown
    assert "| ZERO-SHOT | 1 | 0.2800† | -42.86% |" in markdown
    assert "nDCG@10 (m = 7)" in markdown
    assert "4 of 14 comparisons significant at alpha=0.05 after Bonferroni (test: paired t-test)" in markdown
    assert "`sbmoe experiment toy.yaml`" in markdown
    assert "| ZERO-SHOT | 0.3810 | 0.5310 | 0.4560 |" in markdown
    assert "experts.png" in markdown

    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 2 * (4 + 3 + 3)  # metrics x (scifact rows + arguana rows + nfcorpus rows)
    (n6,) = [
        r for r in rows if r["eval_dataset"] == "scifact" and r["label"] == N6 and r["metric"] == "ndcg@10"
    ]
    assert n6["significant"] == "true" and n6["n_seeds"] == "2" and n6["baseline"] == "FINE-TUNED"
    assert float(n6["delta_pct"]) == pytest.approx(20.408163, rel=1e-6)
    p_value, p_adjusted = float(n6["p_value"]), float(n6["p_adjusted"])
    assert p_adjusted == pytest.approx(7 * p_value)  # Bonferroni, m = 7 nDCG@10 comparisons (7p < 1 here)
    assert 0.0 < p_value < p_adjusted < 0.05  # significant after correction, as the "true" above says

    latex = paths["latex"].read_text()
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "0.5900 $\\pm$ 0.0141$^\\dagger$ & +20.41\\%" in latex
    assert "\\begin{tabular}{lrrrrr}" in latex

    png = paths["figure"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.parametrize("figure_format", ["png", "pdf", "svg"])
def test_figure_formats(experiment, tmp_path, figure_format):
    report = build_report(experiment, metrics=["ndcg@10"], figure_format=figure_format)
    paths = write_report(report, tmp_path / "out")
    assert paths["figure"] == tmp_path / "out" / f"experts.{figure_format}"
    assert figure_format_of(paths["figure"].read_bytes()) == figure_format
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(["report.md", "report.csv", "report.tex", f"experts.{figure_format}"])
    assert f"(experts.{figure_format})" in report.markdown  # the Markdown names the file written
    assert ("--figure-format" in report.markdown) == (figure_format != "png")  # the png report is unchanged
    with pytest.raises(ValueError, match=r"figure_format must be one of \['png', 'pdf', 'svg'\]"):
        build_report(experiment, figure_format="jpg")


def test_cli_figure_format(experiment, capsys):
    assert main(["report", str(experiment), "--metrics", "ndcg@10", "--figure-format", "svg"]) == 0
    assert figure_format_of((experiment / "report" / "experts.svg").read_bytes()) == "svg"
    assert not (experiment / "report" / "experts.png").exists()
    assert str(experiment / "report" / "experts.svg") in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["report", str(experiment), "--figure-format", "jpg"])


def test_no_figure_without_several_expert_counts(tmp_path):
    folder = make_experiment(tmp_path / "exp")
    lines = [
        line
        for line in (folder / "results.jsonl").read_text().splitlines()
        if json.loads(line)["num_experts"] != 3
    ]
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    report = build_report(folder)
    assert report.figure == []
    assert "figure" not in write_report(report, tmp_path / "out")


def test_malformed_line_names_file_and_line(experiment):
    path = experiment / "results.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, '{"run_id": "broken"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"results\.jsonl, line 3: not valid JSON"):
        load_results(experiment)
    with pytest.raises(SbmoeError, match="line 3"):
        build_report(experiment)


def test_missing_keys_and_missing_file(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"run_id": "x", "system": "finetune"}\n')
    with pytest.raises(DataError, match=r"line 1: missing keys \['base'"):
        load_results(tmp_path)
    with pytest.raises(SbmoeError, match="results.jsonl not found"):
        load_results(tmp_path / "nowhere")


def test_bad_arguments(experiment):
    with pytest.raises(ValueError, match="test must be one of"):
        build_report(experiment, test="wilcoxon")
    with pytest.raises(ValueError, match="alpha"):
        build_report(experiment, alpha=1.5)
    with pytest.raises(SbmoeError, match="metrics \\['map@1000'\\] are in no result"):
        build_report(experiment, metrics=["map@1000"])


def test_cli_handler(experiment, capsys):
    assert main(["report", str(experiment), "--metrics", "ndcg@10", "--baseline", "finetune"]) == 0
    out = capsys.readouterr().out
    assert "2 of 7 comparisons significant" in out
    assert str(experiment / "report" / "report.md") in out
    assert (experiment / "report" / "experts.png").is_file()


def test_head_to_head_comparison(tmp_path, monkeypatch):
    faithful = {"scifact": ZERO, "arguana": SWING}  # learned: NOISE + 0.10 on scifact, SWING on arguana
    monkeypatch.setitem(PLAN, ("sbmoe-faithful", 6, "top1", (1, 2)), faithful)
    folder = make_experiment(tmp_path / "exp")
    text = compare_systems(folder, "sbmoe-learned", "sbmoe-faithful", metrics=["ndcg@10"])
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| scifact |")}
    assert set(rows) == {"scifact", "arguana"}  # N=3 has no faithful counterpart; nfcorpus neither
    learned = [b + s for b, s in zip(BASE, NOISE, strict=True)]
    expected = min(1.0, 2 * stats.ttest_rel([v + 0.10 for v in learned], BASE).pvalue)  # m = 2 cells
    assert f"| {expected:.3g} |" in rows["scifact"] and "†" in rows["scifact"]
    assert rows["arguana"].rstrip().endswith("| 1 |")  # identical per-query values
    assert "SB-MoE learned higher in 1 of 2 cells (1 significantly)" in text
    with pytest.raises(SbmoeError, match=r"no results for \['random-gate'\]; systems present"):
        compare_systems(folder, "sbmoe-learned", "random-gate")


# ------------------------------------------------------------------------------ activated experts

# A grid of block designs trained on scifact, tested in-domain on scifact and zero-shot on arguana and
# nfcorpus. (label, N, mode, seed) -> collection -> (query counts, document counts), None: no block.
# Queries + documents: the figures below are computed by hand from these sums.
GRID = {
    ("zero-shot", None, None, None): {"scifact": None, "arguana": None, "nfcorpus": None},
    ("adapter", 1, "top1", 1): {"scifact": ([10], [90]), "arguana": ([10], [90])},  # N = 1: no row
    ("adapter", 1, "top1", 2): {"scifact": ([10], [90]), "arguana": ([10], [90])},
    ("sbmoe-learned", 4, "top1", 1): {
        "scifact": ([5, 4, 1, 0], [45, 45, 0, 0]),  # [50, 49, 1, 0]: 1 of 100 is 1 %, so 3 activated
        "arguana": ([10, 0, 0, 0], [90, 0, 0, 0]),  # 1 activated
        "nfcorpus": ([5, 5, 5, 5], [20, 20, 20, 20]),  # 4 activated, balanced
    },
    ("sbmoe-learned", 4, "top1", 2): {
        "scifact": ([10, 0, 0, 0], [190, 0, 0, 0]),  # collapsed: 1 activated
        "arguana": ([5, 5, 0, 0], [45, 45, 0, 0]),  # 2 activated
        "nfcorpus": ([5, 5, 5, 5], [20, 20, 20, 20]),
    },
    # ALL routing: not counted (the section reads TOP-1).
    ("sbmoe-learned", 4, "all", 1): {"scifact": ([1, 1, 1, 1], [1, 1, 1, 1])},
    ("sbmoe-learned", 4, "all", 2): {"scifact": ([1, 1, 1, 1], [1, 1, 1, 1])},
    ("random-gate", 3, "random", 1): {"scifact": ([4, 3, 3], [30, 30, 30])},  # its only routing
    # Free labels. cluster: 10 of 1000 texts is exactly 1 % (activated), 9 is not.
    ("cluster", 4, "top1", 1): {"scifact": ([90, 1, 0, 0], [900, 9, 0, 0]), "arguana": ([1], [1])},
    ("cluster", 4, "top1", 2): {"scifact": ([91, 1, 0, 0], [900, 8, 0, 0]), "arguana": ([1], [1])},
    # cluster-null: a null expert, its texts in the last bin.
    ("cluster-null", 3, "top1", 1): {
        "scifact": ([1, 1, 0, 2], [49, 0, 47, 0]),  # [50, 1, 47, 2]
        "arguana": ([0, 0, 0, 10], [0, 0, 0, 90]),  # every text passes through
    },
    ("cluster-null", 3, "top1", 2): {
        "scifact": ([3, 3, 3, 1], [27, 27, 27, 9]),  # [30, 30, 30, 10]
        "arguana": ([0, 0, 0, 10], [0, 0, 0, 90]),
    },
}
SHIFT = {"zero-shot": -0.1, "adapter": 0.0, "sbmoe-learned": 0.02, "random-gate": -0.05, "cluster": 0.05}
WOBBLE = [0.01, -0.01, 0.01, -0.01]  # cluster's per-query values vary around cluster-null's by this


def make_grid(folder: Path) -> Path:
    """A grid folder with free system labels and known expert counts."""
    folder.mkdir(parents=True)
    lines = []
    for (system, n, mode, seed), by_collection in GRID.items():
        trained = system != "zero-shot"
        run_id = f"scifact/tiny/{system}-n{n}/seed{seed}" if trained else "zero-shot/tiny"
        for collection, counts in by_collection.items():
            if counts == ([1], [1]):  # only nDCG matters here: a block of N experts still needs N counts
                counts = ([1] * n, [1] * n)
            shift = SHIFT.get(system, 0.0)
            wobble = WOBBLE if system == "cluster" else [0.0] * 4
            ndcg = [0.2 * (i + 1) + shift + w for i, w in enumerate(wobble)]
            per_query = {"ndcg@10": dict(zip(QUERIES[:4], ndcg, strict=True))}
            per_query["recall@100"] = per_query["ndcg@10"]
            aggregate = {m: sum(v.values()) / 4 for m, v in per_query.items()}
            expert_counts = None if counts is None else {"queries": counts[0], "documents": counts[1]}
            metrics_file = f"runs/{run_id}/eval/{collection}/{mode or 'none'}/metrics.json"
            (folder / metrics_file).parent.mkdir(parents=True, exist_ok=True)
            metrics = {**aggregate, "expert_counts": expert_counts, "per_query": per_query}
            (folder / metrics_file).write_text(json.dumps(metrics))
            lines.append(result_line(run_id, system, n, seed, collection, mode, aggregate, metrics_file))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def entropy(counts: list[int]) -> float:
    """Normalised entropy of the shares of `counts`, written out: -sum p ln p / ln E."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c) / math.log(len(counts))


def test_activated_experts_by_hand(tmp_path):
    report = build_report(make_grid(tmp_path / "grid"))
    rows = {r.row.label: r for r in report.experts}
    # Known systems first, then free labels alphabetically; N = 1, ALL and the untrained base are left out.
    assert list(rows) == [
        "RANDOM-GATE N=3 RANDOM",
        "SB-MoE learned N=4 TOP-1",
        "cluster N=4 TOP-1",
        "cluster-null N=3 TOP-1",
    ]
    learned = rows["SB-MoE learned N=4 TOP-1"]
    assert (learned.train_dataset, learned.base, learned.eval_dataset) == ("scifact", "tiny", "scifact")
    assert learned.seeds == [1, 2] and learned.activated == [3, 1] and learned.activated_mean == 2.0
    assert learned.top_share == pytest.approx((0.50 + 1.0) / 2)
    h = -(0.5 * math.log(0.5) + 0.49 * math.log(0.49) + 0.01 * math.log(0.01)) / math.log(4)
    assert learned.entropy == pytest.approx((h + 0.0) / 2)
    assert learned.null_share is None
    assert learned.zero_shot_collections == ["arguana", "nfcorpus"]
    # arguana: 1 and 2 activated (mean 1.5); nfcorpus: 4 and 4. Then the mean over the two collections.
    assert learned.zero_shot["active_experts"] == pytest.approx((1.5 + 4) / 2)
    assert learned.zero_shot["top_share"] == pytest.approx(((1.0 + 0.5) / 2 + 0.25) / 2)
    assert learned.zero_shot["normalized_entropy"] == pytest.approx(((0 + 0.5) / 2 + 1.0) / 2)
    assert learned.zero_shot["null_share"] is None

    cluster = rows["cluster N=4 TOP-1"]
    assert cluster.activated == [2, 1]  # 10 of 1000 is 1 %: activated; 9 of 1000 is not
    assert cluster.top_share == pytest.approx((990 / 1000 + 991 / 1000) / 2)
    assert cluster.entropy == pytest.approx((entropy([990, 10, 0, 0]) + entropy([991, 9, 0, 0])) / 2)

    null = rows["cluster-null N=3 TOP-1"]
    assert null.activated == [3, 3]  # the null bin is not an expert; 1 text of 100 activates one
    assert null.null_share == pytest.approx((0.02 + 0.10) / 2)
    assert null.top_share == pytest.approx((0.50 + 0.30) / 2)  # shares of all texts, null ones included
    assert null.entropy == pytest.approx((entropy([50, 1, 47]) + 1.0) / 2)  # among texts routed to an expert
    assert null.zero_shot_collections == ["arguana"]
    assert null.zero_shot["active_experts"] == 0.0 and null.zero_shot["null_share"] == 1.0
    assert null.zero_shot["normalized_entropy"] == 0.0 and null.zero_shot["top_share"] == 0.0

    random_gate = rows["RANDOM-GATE N=3 RANDOM"]
    assert random_gate.activated == [3] and random_gate.top_share == pytest.approx(0.34)
    assert random_gate.entropy == pytest.approx(entropy([34, 33, 33]))
    assert random_gate.zero_shot["active_experts"] is None  # tested on no zero-shot collection


def test_activated_experts_files(tmp_path):
    report = build_report(make_grid(tmp_path / "grid"))
    paths = write_report(report, tmp_path / "out")
    markdown = paths["markdown"].read_text()
    assert "## Activated experts" in markdown and "### tiny, trained on scifact" in markdown
    h = -(0.5 * math.log(0.5) + 0.49 * math.log(0.49) + 0.01 * math.log(0.01)) / math.log(4)
    assert f"| SB-MoE learned N=4 TOP-1 | scifact | 3, 1 | 2.0 | 0.750 | {h / 2:.3f} | – | 2.8 |" in markdown
    assert "| cluster-null N=3 TOP-1 | scifact | 3, 3 | 3.0 | 0.400 |" in markdown
    assert "| 0.060 | 0.0 |" in markdown
    assert "| RANDOM-GATE N=3 RANDOM | scifact | 3 | 3.0 | 0.340 |" in markdown and "| – | – |" in markdown
    assert markdown.index("## Activated experts") < markdown.index("## Significance")

    assert paths["experts"] == tmp_path / "out" / "experts.csv"
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(paths["experts"].read_text()))}
    assert set(rows) == {r.row.label for r in report.experts}
    null = rows["cluster-null N=3 TOP-1"]
    assert (null["system"], null["num_experts"], null["mode"]) == ("cluster-null", "3", "top1")
    assert null["seeds"] == "1;2" and null["activated"] == "3;3" and float(null["activated_mean"]) == 3.0
    assert float(null["null_share"]) == pytest.approx(0.06) and float(null["zero_shot_null_share"]) == 1.0
    learned = rows["SB-MoE learned N=4 TOP-1"]
    assert learned["null_share"] == "" and float(learned["zero_shot_activated"]) == pytest.approx(2.75)
    assert learned["zero_shot_collections"] == "arguana;nfcorpus"

    # A grid without expert counts (the older fixture) has no section and no experts.csv.
    plain = build_report(make_experiment(tmp_path / "plain"))
    assert plain.experts == [] and "Activated experts" not in plain.markdown
    assert "experts" not in write_report(plain, tmp_path / "plain-out")


def test_activated_experts_counts_must_fit_n(tmp_path):
    folder = make_grid(tmp_path / "grid")
    path = folder / "runs/scifact/tiny/cluster-null-n3/seed1/eval/scifact/top1/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["expert_counts"]["queries"].append(0)  # 5 bins for N = 3
    path.write_text(json.dumps(metrics))
    with pytest.raises(DataError, match="lists of 3 counts \\(or 4 with a null expert\\)"):
        build_report(folder)


def test_activated_experts_of_a_query_side_block_count_its_queries(tmp_path):
    """Documents skip a query-side block: metrics.json has no document counts, the queries are its texts."""
    folder = make_grid(tmp_path / "grid")
    path = folder / "runs/scifact/tiny/cluster-null-n3/seed1/eval/scifact/top1/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["expert_counts"] = {"queries": [10, 0, 0, 0], "documents": None}
    path.write_text(json.dumps(metrics))
    (row,) = [r for r in build_report(folder).experts if r.row.label == "cluster-null N=3 TOP-1"]
    assert row.activated[0] == 1


def test_free_labels_in_tables(tmp_path):
    report = build_report(make_grid(tmp_path / "grid"))
    scifact = report.table("scifact")
    assert [r.label for r in scifact.rows] == [
        "ZERO-SHOT",
        "ADAPTER",
        "RANDOM-GATE N=3 RANDOM",
        "SB-MoE learned N=4 TOP-1",
        "SB-MoE learned N=4 ALL",
        "cluster N=4 TOP-1",  # free labels after the known systems, named by themselves
        "cluster-null N=3 TOP-1",
    ]
    assert scifact.baseline == SystemRow("adapter", 1, "top1")
    assert scifact.cell("cluster N=4 TOP-1", "ndcg@10").delta_pct == pytest.approx(100 * 0.05 / 0.5)
    (zero_shot,) = [t for t in report.zero_shot_tables if t.metric == "ndcg@10"]
    assert [r.label for r in zero_shot.rows][-2:] == ["cluster N=4 TOP-1", "cluster-null N=3 TOP-1"]
    assert "| cluster-null N=3 TOP-1 | 2 | 0.5000 ± 0.0000 | +0.00% |" in report.markdown
    assert "cluster-null N=3 TOP-1 & 2 &" in report.latex
    rows = list(csv.DictReader(io.StringIO(report.csv)))
    assert {r["system"] for r in rows} >= {"cluster", "cluster-null"}
    # A free label can be the baseline.
    by_cluster = build_report(tmp_path / "grid", baseline="cluster")
    assert by_cluster.table("scifact").baseline == SystemRow("cluster", 4, "top1")


def test_compare_free_labels(tmp_path, capsys):
    folder = make_grid(tmp_path / "grid")
    argv = ["report", str(folder), "--metrics", "ndcg@10", "--compare", "cluster", "cluster-null"]
    assert main(argv) == 0
    text = (folder / "report" / "compare-cluster-vs-cluster-null.md").read_text()
    assert text.startswith("# cluster vs cluster-null") and text in capsys.readouterr().out
    # No shared N (4 vs 3): paired across N, on the mode both have; scifact and arguana.
    differences = [0.05 + w for w in WOBBLE]  # cluster minus cluster-null, per query
    p_value = stats.ttest_1samp(differences, 0.0).pvalue
    cells = "| scifact | scifact | cluster N=4 TOP-1 | cluster-null N=3 TOP-1 | nDCG@10 | 0.5500 | 0.5000 |"
    assert cells + " +10.00%" in text
    assert f"| {min(1.0, 2 * p_value):.3g} |" in text  # m = 2 cells
    assert "| scifact | arguana | cluster N=4 TOP-1 | cluster-null N=3 TOP-1 |" in text
    assert "cluster higher in 2 of 2 cells" in text

    # A multi-expert design against the one-expert adapter: each N's TOP-1 (the mode both have).
    text = compare_systems(folder, "sbmoe-learned", "adapter", metrics=["ndcg@10"])
    compared = [line.split("|")[3:5] for line in text.splitlines() if line.startswith("| scifact |")]
    assert compared == [[" SB-MoE learned N=4 TOP-1 ", " ADAPTER "]] * 2  # scifact, arguana
    # Against ZERO-SHOT (no N, no mode): every row.
    text = compare_systems(folder, "sbmoe-learned", "zero-shot", metrics=["ndcg@10"])
    compared = [line.split("|")[2:4] for line in text.splitlines() if line.startswith("| scifact |")]
    assert [" scifact ", " SB-MoE learned N=4 TOP-1 "] in compared
    assert [" scifact ", " SB-MoE learned N=4 ALL "] in compared
    with pytest.raises(SbmoeError, match="no results for \\['clustr'\\]"):
        compare_systems(folder, "clustr", "adapter")


# ------------------------------------------------------------------------------ the paired-test helper


def test_paired_tests_average_seeds_and_correct_per_metric(tmp_path):
    """One helper tests the tables and --compare: seeds averaged per query, Bonferroni m counted per metric
    over the pairings that could be tested."""
    queries = QUERIES[:6]
    values = {
        "a1": [0.2 + 0.1 * i for i in range(6)],
        "a2": [0.3 + 0.1 * i + 0.02 * (-1) ** i for i in range(6)],
        "b": [0.1 + 0.1 * i + 0.01 * i * i for i in range(6)],
    }
    for name, ndcg in values.items():
        per_query = {"ndcg@10": dict(zip(queries, ndcg, strict=True))}
        per_query["recall@100"] = {q: 1 - v for q, v in per_query["ndcg@10"].items()}
        (tmp_path / f"{name}.json").write_text(json.dumps({"per_query": per_query}))
    one_query = {"ndcg@10": {"q0": 0.5}, "recall@100": {"q0": 0.5}}
    (tmp_path / "c.json").write_text(json.dumps({"per_query": one_query}))
    a, b, c = [[{"run_id": n, "metrics_file": f"{n}.json"}] for n in ("a1", "b", "c")]
    a = [*a, {"run_id": "a2", "metrics_file": "a2.json"}]  # two seeds

    pairings = [
        Pairing("ndcg@10", a, b, "A vs B"),
        Pairing("ndcg@10", a, c, "A vs C"),  # one shared query: no test
        Pairing("recall@100", a, b, "A vs B"),
        Pairing("ndcg@10", b, a, "B vs A"),
    ]
    outcomes = paired_tests(pairings, MetricsFiles(tmp_path), "t-test", alpha=0.05)

    mean_a = [(x + y) / 2 for x, y in zip(values["a1"], values["a2"], strict=True)]
    p_ndcg = stats.ttest_rel(mean_a, values["b"]).pvalue
    p_recall = stats.ttest_rel([1 - v for v in mean_a], [1 - v for v in values["b"]]).pvalue
    assert outcomes[0].p_value == pytest.approx(p_ndcg, rel=1e-9)
    assert outcomes[0].p_adjusted == pytest.approx(min(1.0, 2 * p_ndcg), rel=1e-9)  # m = 2: A vs C untested
    assert outcomes[0].significant == (min(1.0, 2 * p_ndcg) < 0.05)
    assert outcomes[1] == PairedTest(None, None, False)
    assert outcomes[2].p_value == pytest.approx(p_recall, rel=1e-9)
    assert outcomes[2].p_adjusted == pytest.approx(p_recall, rel=1e-9)  # m = 1 for recall@100
    assert outcomes[3].p_adjusted == pytest.approx(outcomes[0].p_adjusted, rel=1e-9)  # the test is symmetric


def test_compare_refuses_a_cell_without_two_shared_queries(tmp_path):
    folder = make_grid(tmp_path / "grid")
    path = folder / "runs/scifact/tiny/cluster-null-n3/seed1/eval/scifact/top1/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["per_query"]["ndcg@10"] = {"q0": 0.2}
    path.write_text(json.dumps(metrics))
    cell = "cluster N=4 TOP-1 vs cluster-null N=3 TOP-1 on scifact"
    with pytest.raises(SbmoeError, match=f"fewer than 2 shared queries, no paired test: {cell}"):
        compare_systems(folder, "cluster", "cluster-null", metrics=["ndcg@10"])
