"""`sbmoe report`: tables, significance, baselines, zero-shot summary and files of a hand-made folder."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest
from scipy import stats

from sbmoe.errors import DataError, SbmoeError
from sbmoe.experiments.report import (
    SystemRow,
    add_report_parser,
    build_report,
    compare_systems,
    load_results,
    write_report,
)

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
                setting = "in-domain" if collection == "scifact" else "zero-shot"
                line = {
                    "run_id": run_id,
                    "system": system,
                    "base": "tiny",
                    "train_dataset": "scifact" if trained else None,
                    "num_experts": n,
                    "seed": seed,
                    "eval_dataset": collection,
                    "split": "test",
                    "setting": setting,
                    "mode": mode,
                    "metrics": aggregate,
                    "metrics_file": metrics_file,
                }
                lines.append(json.dumps(line))
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
    assert float(n6["p_adjusted"]) < 0.05 <= 1.0

    latex = paths["latex"].read_text()
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "0.5900 $\\pm$ 0.0141$^\\dagger$ & +20.41\\%" in latex
    assert "\\begin{tabular}{lrrrrr}" in latex

    png = paths["figure"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


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
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(experiment), "--metrics", "ndcg@10", "--baseline", "finetune"])
    assert args.handler(args) == 0
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
    with pytest.raises(SbmoeError, match="no collection, N and mode where both"):
        compare_systems(folder, "sbmoe-learned", "random-gate")
