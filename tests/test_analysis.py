"""Routing statistics (hand-computed), figures, and `analyze` end to end on a tiny model and collection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tiny import figure_format_of

from sbmoe.analysis.analyze import AnalyzeSettings, analyze
from sbmoe.analysis.plots import plot_embedding_map, plot_expert_shares
from sbmoe.analysis.routing import (
    active_experts,
    expert_counts,
    expert_shares,
    normalized_routing_entropy,
    routing_entropy,
    routing_summary,
    shared_expert_rate,
)
from sbmoe.commands import main
from sbmoe.errors import SbmoeError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ statistics


def test_expert_shares_count_each_text_once():
    experts = np.array([0, 0, 1, 2, 2, 2])
    assert expert_counts(experts, 4) == [2, 1, 3, 0]
    assert expert_shares(experts, 4) == pytest.approx([2 / 6, 1 / 6, 3 / 6, 0.0])
    assert sum(expert_shares(experts, 4)) == pytest.approx(1.0)  # not 2: no double counting
    assert expert_shares(np.array([], dtype=int), 3) == [0.0, 0.0, 0.0]


def test_expert_shares_reject_out_of_range_experts():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        expert_shares(np.array([0, 3]), 3)


def test_active_experts_use_the_one_percent_rule():
    assert active_experts([99, 1, 0]) == 2  # 1 of 100 is exactly 1 %: activated
    assert active_experts([199, 1]) == 1  # 1 of 200 is 0.5 %: not activated
    assert active_experts([0, 0]) == 0


def test_entropy_of_uniform_is_log_e_and_of_one_hot_is_zero():
    uniform = np.full((5, 4), 0.25)
    one_hot = np.eye(4)[[0, 1, 3]]
    assert routing_entropy(uniform) == pytest.approx(math.log(4))
    assert normalized_routing_entropy(uniform) == pytest.approx(1.0)
    assert routing_entropy(one_hot) == 0.0
    assert normalized_routing_entropy(one_hot) == 0.0
    mixed = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert routing_entropy(mixed) == pytest.approx((math.log(4) + 0 + math.log(2)) / 3)
    assert normalized_routing_entropy(np.ones((2, 1))) == 0.0  # one expert: no choice


def test_training_and_analysis_share_one_definition_of_the_statistics():
    import torch

    from sbmoe.modeling.routing_stats import entropy_terms

    mixed = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    summed = entropy_terms(torch.tensor(mixed, dtype=torch.float32)).sum()  # as the training log sums
    assert float(summed) / 3 == pytest.approx(routing_entropy(mixed), rel=1e-6)
    assert expert_counts(torch.tensor([0, 2, 2, 1]), 2, null_expert=True) == [1, 1, 2]  # tensors too


def test_shared_expert_rate_on_a_hand_example():
    query_experts = {"q1": 0, "q2": 1, "q3": 0}
    doc_experts = {"d1": 0, "d2": 0, "d3": 1, "d4": 2}
    qrels = {
        "q1": {"d1": 1, "d3": 2, "d4": 0},  # d4 has grade 0: not relevant
        "q2": {"d3": 1, "dx": 1},  # dx is not routed: skipped
        "q4": {"d1": 1},  # q4 is not routed: skipped
    }
    result = shared_expert_rate(query_experts, doc_experts, qrels)
    assert result["pairs"] == 3  # (q1,d1) same, (q1,d3) differ, (q2,d3) same
    assert result["same_expert"] == pytest.approx(2 / 3)
    # query shares (2/3, 1/3, 0), document shares (2/4, 1/4, 1/4)
    assert result["chance"] == pytest.approx(2 / 3 * 2 / 4 + 1 / 3 * 1 / 4)


def test_shared_expert_rate_without_pairs_is_none():
    assert shared_expert_rate({"q1": 0}, {"d1": 0}, {"q1": {"d2": 1}}) == {
        "pairs": 0,
        "same_expert": None,
        "chance": 1.0,
    }


def test_routing_summary_is_json_and_counts_each_text_once():
    query_probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])  # top-1: 0, 1
    doc_probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1], [1.0, 0.0, 0.0]])  # 0, 2, 0, 0
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}}
    summary = routing_summary(query_probs, doc_probs, ["q1", "q2"], ["d1", "d2", "d3", "d4"], qrels)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["num_experts"] == 3
    assert summary["queries"]["counts"] == [1, 1, 0] and summary["queries"]["count"] == 2
    assert summary["documents"]["counts"] == [3, 0, 1] and summary["documents"]["count"] == 4
    assert summary["documents"]["shares"] == pytest.approx([0.75, 0.0, 0.25])
    assert summary["queries"]["active_experts"] == 2 and summary["documents"]["active_experts"] == 2
    assert summary["documents"]["mean_top_probability"] == pytest.approx((0.6 + 0.6 + 0.5 + 1.0) / 4)
    entropy = -np.sum(query_probs * np.log(query_probs), axis=1).mean()
    assert summary["queries"]["entropy"] == pytest.approx(entropy)
    assert summary["queries"]["normalized_entropy"] == pytest.approx(entropy / math.log(3))
    # pairs (q1,d1) same 0, (q1,d2) 0 vs 2, (q2,d3) 1 vs 0
    assert summary["shared_expert"]["pairs"] == 3
    assert summary["shared_expert"]["same_expert"] == pytest.approx(1 / 3)
    assert summary["shared_expert"]["chance"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.0 + 0.0 * 0.25)


def test_routing_summary_takes_the_experts_actually_used():
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    summary = routing_summary(
        probs,
        probs,
        ["q1", "q2"],
        ["d1", "d2"],
        {},
        query_experts=np.array([1, 1]),
        doc_experts=np.array([0, 1]),
    )
    assert summary["queries"]["counts"] == [0, 2] and summary["documents"]["counts"] == [1, 1]


def test_routing_summary_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="query ids"):
        routing_summary(np.eye(2), np.eye(2), ["q1"], ["d1", "d2"], {})


# --------------------------------------------------------------------------------------------- figures


def assert_png(path, min_bytes: int = 5_000) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_plot_expert_shares_writes_a_png(tmp_path):
    path = plot_expert_shares(
        [0.5, 0.3, 0.2, 0.0], [0.4, 0.4, 0.195, 0.005], tmp_path / "shares.png", "Shares"
    )
    assert path == tmp_path / "shares.png"
    assert_png(path)


@pytest.mark.parametrize("figure_format", ["png", "pdf", "svg"])
def test_figures_are_written_in_the_format_of_their_suffix(tmp_path, figure_format):
    shares = plot_expert_shares([0.5, 0.5], [0.5, 0.5], tmp_path / f"shares.{figure_format}", "Shares")
    experts = np.arange(12) % 3
    map_path = plot_embedding_map(
        np.random.default_rng(0).normal(size=(12, 4)), experts, tmp_path / f"map.{figure_format}", "Map"
    )
    for path in (shares, map_path):
        data = path.read_bytes()
        assert figure_format_of(data) == figure_format
        assert b"CreationDate" not in data and b"<dc:date>" not in data  # same figure, same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"map.{figure_format}", f"shares.{figure_format}"]


def test_figures_refuse_an_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.pdf or \.svg"):
        plot_expert_shares([0.5, 0.5], [0.5, 0.5], tmp_path / "shares.jpg", "Shares")


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_plot_embedding_map_writes_a_png(tmp_path, method):
    rng = np.random.default_rng(0)
    experts = rng.integers(0, 3, size=60)
    vectors = rng.normal(size=(60, 16)) + 3 * np.eye(16)[experts]  # one cluster per expert
    path = plot_embedding_map(
        vectors, experts, tmp_path / f"{method}.png", "Map", method=method, max_points=50
    )
    assert_png(path)


def test_plot_embedding_map_rejects_an_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="method"):
        plot_embedding_map(np.zeros((4, 2)), np.zeros(4, dtype=int), tmp_path / "x.png", "Map", method="umap")


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture
def tiny_sbmoe(tiny_encoder, tmp_path):
    from sbmoe.modeling import build_model, save_model

    model, tokenizer = build_model(tiny_encoder, num_experts=3, variant="learned")
    return save_model(model, tokenizer, tmp_path / "tiny-sbmoe")


def test_analyze_writes_routing_and_figures(tiny_sbmoe, tiny_beir, tmp_path):
    out = tmp_path / "analysis"
    settings = AnalyzeSettings(
        model=str(tiny_sbmoe), dataset=str(tiny_beir), output_dir=str(out), progress=False
    )
    summary = analyze(settings)

    routing = json.loads((out / "routing.json").read_text())
    expected = {"num_experts", "queries", "documents", "shared_expert", "experts", "settings", "provenance"}
    assert expected <= set(routing)
    assert routing["num_experts"] == 3
    assert set(routing["experts"]["queries"]) == {"q5", "q6"}  # the test split's judged queries
    assert set(routing["experts"]["documents"]) == {f"d{i}" for i in range(1, 9)}
    assert sum(routing["queries"]["counts"]) == 2 and sum(routing["documents"]["counts"]) == 8
    assert sum(routing["documents"]["shares"]) == pytest.approx(1.0)
    per_text = np.bincount(list(routing["experts"]["documents"].values()), minlength=3).tolist()
    assert per_text == routing["documents"]["counts"]
    assert routing["shared_expert"]["pairs"] == 3  # q5-d5, q5-d4, q6-d6
    for name in ("expert_shares.png", "document_map.png"):
        assert_png(out / name)
    assert summary["outputs"]["routing"] == str(out / "routing.json")
    assert "experts" not in summary


def test_analyze_experts_are_the_ones_evaluation_uses(tiny_sbmoe, tiny_beir, tmp_path):
    from sbmoe.data import load_dataset
    from sbmoe.modeling import load_model
    from sbmoe.retrieval.encode import EmbeddingCache, apply_head, encode_cached

    out = tmp_path / "analysis"
    analyze(
        AnalyzeSettings(model=str(tiny_sbmoe), dataset=str(tiny_beir), output_dir=str(out), progress=False)
    )
    routing = json.loads((out / "routing.json").read_text())

    corpus = load_dataset(str(tiny_beir)).corpus
    model, tokenizer = load_model(tiny_sbmoe)
    pooled, from_cache = encode_cached(
        model, tokenizer, corpus.ids, corpus.document_texts(), cache=EmbeddingCache(), progress=False
    )
    assert from_cache  # analyze filled the same cache evaluate reads
    _, experts = apply_head(model, pooled, "top1")
    assert [routing["experts"]["documents"][i] for i in corpus.ids] == experts.tolist()


def test_analyze_random_gate_counts_the_random_experts(tiny_encoder, tiny_beir, tmp_path):
    import torch

    from sbmoe.data import load_dataset
    from sbmoe.modeling import build_model, load_model, save_model
    from sbmoe.modeling.moe import random_experts
    from sbmoe.retrieval.encode import text_routing_keys

    model, tokenizer = build_model(tiny_encoder, num_experts=3, variant="learned", random_gate=True)
    folder = save_model(model, tokenizer, tmp_path / "random-gate")
    out = tmp_path / "analysis"
    summary = analyze(
        AnalyzeSettings(model=str(folder), dataset=str(tiny_beir), output_dir=str(out), progress=False)
    )
    assert summary["expert_source"].startswith("random gate")

    texts = load_dataset(str(tiny_beir)).corpus.document_texts()
    model, tokenizer = load_model(folder)
    ids = load_dataset(str(tiny_beir)).corpus.ids
    keys = text_routing_keys(tokenizer, texts, model.config.document_max_length)
    experts = random_experts(torch.from_numpy(keys), 3, model.config.random_gate_seed)
    assert len(set(experts.tolist())) > 1
    routing = json.loads((out / "routing.json").read_text())
    assert [routing["experts"]["documents"][i] for i in ids] == experts.tolist()


def test_analyze_refuses_a_model_without_moe_block(tiny_encoder, tiny_beir, tmp_path):
    with pytest.raises(SbmoeError, match="no MoE block"):
        analyze(
            AnalyzeSettings(model=str(tiny_encoder), dataset=str(tiny_beir), output_dir=str(tmp_path / "o"))
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [("projection", "umap"), ("max_points", 1), ("batch_size", 0), ("model", ""), ("figure_format", "jpg")],
)
def test_analyze_settings_name_the_bad_field(field, value):
    arguments = {"model": "m", "dataset": "d", field: value}
    with pytest.raises(ValueError, match=field):
        AnalyzeSettings(**arguments)


def test_analyze_command_prints_a_summary(tiny_sbmoe, tiny_beir, tmp_path, capsys):
    out = tmp_path / "analysis"
    argv = ["analyze", "--model", str(tiny_sbmoe), "--dataset", str(tiny_beir), "--output-dir", str(out)]
    assert main([*argv, "--projection", "tsne", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "activated" in printed and "chance" in printed and str(out / "routing.json") in printed
    assert_png(out / "document_map.png")


@pytest.mark.parametrize("figure_format", ["pdf", "svg"])
def test_analyze_command_writes_figures_in_the_chosen_format(tiny_sbmoe, tiny_beir, tmp_path, figure_format):
    out = tmp_path / "analysis"
    argv = ["analyze", "--model", str(tiny_sbmoe), "--dataset", str(tiny_beir), "--output-dir", str(out)]
    assert main([*argv, "--figure-format", figure_format, "--no-progress"]) == 0
    figures = sorted(p.name for p in out.iterdir() if p.name != "routing.json")
    assert figures == [f"document_map.{figure_format}", f"expert_shares.{figure_format}"]
    assert all(figure_format_of((out / name).read_bytes()) == figure_format for name in figures)
    assert json.loads((out / "routing.json").read_text())["settings"]["figure_format"] == figure_format
