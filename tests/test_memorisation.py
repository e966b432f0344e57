"""Learning or memorising: the splits' overlap, the unseen-documents view, NUDGE and the document prior."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sbmoe.data.splits import exclude_sharing, hold_out, linked_groups, relevant_documents
from sbmoe.evaluation.evaluate import evaluate
from sbmoe.evaluation.memorisation import fit_memorisation
from sbmoe.evaluation.metrics import evaluate_run
from sbmoe.evaluation.settings import EvaluateSettings
from sbmoe.evaluation.views import partition, unseen_qrels, view_summary
from sbmoe.retrieval.nudge import nudge, query_sums, with_prior
from sbmoe.retrieval.trec import read_trec_run

TRAIN = {"q1": {"d1": 1}, "q2": {"d2": 1, "d9": 0}, "q3": {"d3": 1}, "q4": {"d4": 1}}
TEST = {"q5": {"d5": 2, "d4": 1}, "q6": {"d6": 1}, "q7": {"d2": 1}}


def ndcg10(ranking: list[str], judgements: dict[str, int]) -> float:
    """nDCG@10 by hand: gain = grade, discount log2(rank + 1)."""
    dcg = sum(judgements.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:10]))
    ideal = sorted((g for g in judgements.values() if g > 0), reverse=True)[:10]
    return dcg / sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))


# ------------------------------------------------------------------------------------------------- splits


def test_relevant_documents_ignore_grade_zero():
    assert relevant_documents(TRAIN) == {"d1", "d2", "d3", "d4"}


def test_exclude_sharing_drops_the_queries_whose_positive_the_other_split_judges():
    kept, dropped = exclude_sharing(TRAIN, TEST)
    assert dropped == ["q2", "q4"] and set(kept) == {"q1", "q3"}


def test_linked_groups_are_the_connected_components():
    positives = {"a": {"x"}, "b": {"y"}, "c": {"x", "z"}, "d": {"z"}, "e": {"w"}}
    assert sorted(map(sorted, linked_groups(positives))) == [["a", "c", "d"], ["b"], ["e"]]


def test_document_hold_out_shares_no_positive_with_training():
    rng = np.random.default_rng(0)
    positives = {f"q{i}": {f"d{j}" for j in rng.integers(0, 300, size=2)} for i in range(200)}
    train, held = hold_out(positives, 0.1, seed=3, kind="documents")
    assert 10 <= len(held) <= 30 and len(train) + len(held) == 200
    seen = {doc for q in train for doc in positives[q]}
    assert not any(positives[q] & seen for q in held)
    assert hold_out(positives, 0.1, seed=3, kind="documents") == (train, held)  # reproducible


def test_document_hold_out_is_refused_when_one_group_holds_everything():
    positives = {f"q{i}": {"shared", f"d{i}"} for i in range(50)}
    assert hold_out(positives, 0.2, seed=1, kind="documents") is None
    train, held = hold_out(positives, 0.2, seed=1, kind="queries")
    assert len(held) == 10 and len(train) == 40


# -------------------------------------------------------------------------------------------------- views


def test_views_of_a_run_known_by_hand():
    seen = relevant_documents(TRAIN)
    assert partition(TEST, seen) == (["q5", "q7"], ["q6"])
    kept = unseen_qrels(TEST, seen)
    assert kept == {"q5": {"d5": 2}, "q6": {"d6": 1}}  # q7's only positive was seen: dropped
    run = {
        "q5": {"d4": 0.9, "d1": 0.8, "d5": 0.7, "d6": 0.1},
        "q6": {"d1": 0.9, "d7": 0.8, "d6": 0.7},
        "q7": {"d2": 0.9, "d5": 0.1},
    }
    result = evaluate_run(run, TEST, ("ndcg@10",))
    unseen_run = {q: {d: s for d, s in hits.items() if d not in seen} for q, hits in run.items()}
    unseen = evaluate_run(unseen_run, kept, ("ndcg@10",))
    summary, values = view_summary(result.per_query, TEST, seen, unseen, ("ndcg@10",))
    # unseen docs: q5 ranks d5 first (1.0); q6 ranks d6 second (1 / log2 3)
    assert summary["unseen-docs"] == {
        "num_queries": 2, "dropped_queries": 1, "ndcg@10": pytest.approx((1 + 1 / math.log2(3)) / 2)
    }  # fmt: skip
    q5 = (1 / math.log2(2) + 2 / math.log2(4)) / (2 + 1 / math.log2(3))  # d4 (1) first, d5 (2) third
    assert summary["seen-queries"]["ndcg@10"] == pytest.approx((q5 + 1.0) / 2)
    # other queries: q6 ranks d6 third when the seen d1 stays in the ranking
    assert summary["other-queries"] == {"num_queries": 1, "ndcg@10": pytest.approx(1 / math.log2(4))}
    assert set(values) == {"unseen-docs/ndcg@10", "seen-queries/ndcg@10", "other-queries/ndcg@10"}


def test_evaluate_adds_the_views_and_they_agree_with_the_run_file(tiny_encoder, tiny_beir, tmp_path, capsys):
    out = tmp_path / "eval"
    summary = evaluate(
        EvaluateSettings(
            model=str(tiny_encoder), dataset=str(tiny_beir), output_dir=str(out), progress=False,
            seen_split="train",
        )
    )[0]  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["views"]["seen_split"] == "train" and metrics["views"]["seen_documents"] == 4
    assert metrics["views"]["unseen-docs"]["num_queries"] == 2
    # Independently: the run file without the seen documents, scored by hand against the qrels without them.
    run = read_trec_run(out / "run.trec")
    seen = {"d1", "d2", "d3", "d4"}
    by_hand = []
    for query, judgements in {"q5": {"d5": 2}, "q6": {"d6": 1}}.items():
        ranking = [doc for doc, _ in sorted(run[query].items(), key=lambda hit: -hit[1]) if doc not in seen]
        by_hand.append(ndcg10(ranking, judgements))
    assert summary["unseen-docs/ndcg@10"] == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    assert metrics["per_query"]["seen-queries/ndcg@10"] == {"q5": metrics["per_query"]["ndcg@10"]["q5"]}


def test_views_default_to_the_train_split_and_can_be_turned_off(tiny_encoder, tiny_beir, tmp_path):
    def views(**settings):
        where = {"output_dir": str(tmp_path / str(len(settings))), "progress": False}
        model = {"model": str(tiny_encoder), "dataset": str(tiny_beir)}
        return evaluate(EvaluateSettings(**model, **where, **settings))[0]["views"]

    assert views()["seen_split"] == "train"  # an untrained model's row compares with a trained one's
    assert views(seen_split="none") is None
    assert views(split="train", seen_split="auto") is None  # the only other split is the evaluated one


def test_a_seen_split_that_is_the_evaluated_one_is_refused(tiny_encoder, tiny_beir, tmp_path):
    from sbmoe.errors import SbmoeError

    with pytest.raises(SbmoeError, match="evaluated split"):
        evaluate(
            EvaluateSettings(
                model=str(tiny_encoder), dataset=str(tiny_beir), output_dir=str(tmp_path / "e"),
                progress=False, seen_split="test",
            )
        )  # fmt: skip


# ------------------------------------------------------------------------------------------ NUDGE, prior


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_nudge_moves_only_judged_documents_and_keeps_their_norm():
    rng = np.random.default_rng(0)
    documents = rng.normal(size=(6, 8)).astype(np.float32) * 3  # not unit: each keeps its own norm
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    sums = query_sums(6, queries, [[0], [0, 2], [2]])
    for variant in ("n", "m"):
        moved = nudge(documents, sums, 0.3, variant)
        untouched = [1, 3, 4, 5]
        assert np.array_equal(moved[untouched], documents[untouched])  # bit for bit
        assert not np.allclose(moved[[0, 2]], documents[[0, 2]])
    moved = nudge(documents, sums, 0.3, "n")
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), np.linalg.norm(documents, axis=1), rtol=1e-5)


def test_nudge_n_is_the_best_unit_vector_within_the_step():
    rng = np.random.default_rng(1)
    d = _unit(rng.normal(size=(1, 5)))
    g = rng.normal(size=(1, 5))
    gamma = 0.2
    moved = nudge(d.astype(np.float32), g, gamma, "n").astype(np.float64)
    assert np.linalg.norm(moved) == pytest.approx(1, abs=1e-6)
    assert np.sum((moved - d) ** 2) <= gamma + 1e-6
    # No unit vector within the step is more similar to g (random candidates around d).
    candidates = _unit(d + rng.normal(scale=0.3, size=(20000, 5)))
    allowed = candidates[np.sum((candidates - d) ** 2, axis=1) <= gamma]
    assert len(allowed) > 100 and (allowed @ g.T).max() <= (moved @ g.T).item() + 1e-9
    # Within reach, g's own direction.
    np.testing.assert_allclose(nudge(d.astype(np.float32), g, 4.0, "n")[0], _unit(g)[0], atol=1e-6)


def test_nudge_m_moves_a_unit_document_by_gamma_towards_g():
    d = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    g = np.array([[0.0, 2.0, 0.0]])
    np.testing.assert_allclose(nudge(d, g, 0.5, "m"), [[1.0, 0.5, 0.0]])


def test_the_prior_adds_beta_to_boosted_documents_only():
    rng = np.random.default_rng(2)
    queries, documents = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
    boosted = np.array([True, False, False, True, False])
    q, d = with_prior(queries, documents, boosted, 0.25)
    np.testing.assert_allclose(
        q @ d.T - queries @ documents.T, np.outer(np.ones(4), 0.25 * boosted), atol=1e-6
    )


def test_fit_chooses_a_step_that_memorising_pays_for():
    """Training queries that share positives with the validation queries: moving those documents towards
    the queries pays, and the fit finds a step above zero; queries are never changed."""
    rng = np.random.default_rng(3)
    documents = _unit(rng.normal(size=(60, 16))).astype(np.float32)
    # 20 target documents, 10 queries each, far from their document (cosine ~0.3) but close to each other.
    centres = _unit(rng.normal(size=(20, 16)))
    queries = _unit(np.repeat(centres, 10, axis=0) + rng.normal(scale=0.2, size=(200, 16))).astype(np.float32)
    qrels = {f"q{i}": {f"d{i // 10}": 1} for i in range(200)}
    ids = list(qrels)
    doc_ids = [f"d{i}" for i in range(60)]
    for method in ("nudge", "prior"):
        fitted = fit_memorisation(method, "train", qrels, ids, queries, doc_ids, documents, seed=0)
        assert fitted.step > 0 and fitted.validation_queries == 20
        q, d = fitted.transform(queries, documents)
        if method == "nudge":
            assert q is queries and np.array_equal(d[20:], documents[20:])


# ---------------------------------------------------------------------------------- grids, command line


def test_nudge_and_prior_run_as_grid_systems_beside_the_views(tiny_encoder, tmp_path):
    from tiny import make_synthetic_beir

    from sbmoe.experiments.config import build_experiment_config
    from sbmoe.experiments.runner import plan_runs, run_experiment
    from sbmoe.experiments.tables import build_report

    make_synthetic_beir(tmp_path / "data" / "alpha", seed=1)
    make_synthetic_beir(tmp_path / "data" / "beta", seed=2)
    systems = {
        "zero-shot": {}, "nudge": {}, "prior": {}, "adapter": {},
        "adapter-nudge": {"system": "nudge", "model": "@adapter", "nudge_variant": "m"},
    }  # fmt: skip
    raw = {
        "name": "tiny", "bases": [str(tiny_encoder)], "train_datasets": ["alpha"],
        "zero_shot_datasets": ["beta"], "systems": systems, "seeds": [1], "data_dir": str(tmp_path / "data"),
        "training": {"freeze_encoder": True, "epochs": 1, "batch_size": 4},
    }  # fmt: skip
    config = build_experiment_config(raw, where="test")
    runs = {run.label: run for run in plan_runs(config)}
    assert (
        runs["adapter-nudge"].model_run == "alpha/tiny-bert/adapter-n1/seed1"
        and runs["nudge"].model_run is None
    )
    results = run_experiment(config, tmp_path / "exp", progress=False)
    by = {(line["system"], line["eval_dataset"]): line for line in results}
    # In-domain every system has the views, the untrained base included; zero-shot collections have none.
    assert all("unseen-docs/ndcg@10" in by[(s, "alpha")]["metrics"] for s in systems)
    assert "unseen-docs/ndcg@10" not in by[("nudge", "beta")]["metrics"]
    # NUDGE moves nothing of a collection it was not fitted on: zero-shot it is the base.
    assert by[("nudge", "beta")]["metrics"] == by[("zero-shot", "beta")]["metrics"]
    metrics = json.loads((tmp_path / "exp" / by[("adapter-nudge", "alpha")]["metrics_file"]).read_text())
    assert metrics["memorisation"]["method"] == "nudge-m" and metrics["memorisation"]["split"] == "train"
    adapter_model = tmp_path / "exp" / "runs" / "alpha" / "tiny-bert" / "adapter-n1" / "seed1" / "model"
    assert (adapter_model / "model.safetensors").is_file()  # kept: another system adjusts it
    report = build_report(tmp_path / "exp")
    assert "unseen-docs/ndcg@10" in report.metrics and "NUDGE" in report.markdown


@pytest.mark.parametrize(
    ("systems", "message"),
    [
        ({"nudge": {"epochs": 3}}, "trains nothing"),
        ({"nudge": {"nudge_variant": "x"}}, "nudge_variant"),
        ({"nudge": {"model": "@adapter"}, "adapter": {}}, "listed before"),
        ({"zero-shot": {}, "n": {"system": "prior", "model": "@zero-shot"}}, "trained system"),
    ],
)
def test_bad_memorising_systems_are_refused(tiny_encoder, tiny_beir, systems, message):
    from sbmoe.errors import SbmoeError
    from sbmoe.experiments.config import build_experiment_config

    raw = {"name": "t", "bases": [str(tiny_encoder)], "train_datasets": [str(tiny_beir)], "systems": systems}
    with pytest.raises(SbmoeError, match=message):
        build_experiment_config(raw, where="test", check_data=False)


def test_evaluate_command_with_nudge_and_prior(tiny_encoder, tiny_beir, tmp_path, capsys):
    from sbmoe.commands import main

    args = ["evaluate", "--model", str(tiny_encoder), "--dataset", str(tiny_beir), "--no-progress"]
    assert (
        main([*args, "--output-dir", str(tmp_path / "n"), "--nudge", "train", "--seen-split", "train"]) == 0
    )
    printed = capsys.readouterr().out
    assert "nudge-n fitted on" in printed and "unseen-docs/ndcg@10" in printed
    assert main([*args, "--output-dir", str(tmp_path / "p"), "--prior", "train"]) == 0
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["memorisation"]["method"] == "prior"
    # Fitted on the training queries that share no positive with test, as a clean-protocol model is trained.
    assert (
        main(
            [*args, "--output-dir", str(tmp_path / "c"), "--nudge", "train", "--exclude-positives-of", "test"]
        )
        == 0
    )
    fitted = json.loads((tmp_path / "c" / "metrics.json").read_text())["memorisation"]
    assert (
        fitted["fit_queries"] + fitted["validation_queries"] == 3 and fitted["exclude_positives_of"] == "test"
    )
    assert main([*args, "--output-dir", str(tmp_path / "x"), "--nudge", "test"]) == 2  # the evaluated split
    assert main([*args, "--output-dir", str(tmp_path / "y"), "--nudge", "dev"]) == 2  # no such split
    assert "dev" in capsys.readouterr().err


def test_index_with_nudge_moves_only_the_judged_documents(tiny_encoder, tiny_beir, tmp_path, capsys):
    from sbmoe.commands import main

    args = ["index", "--model", str(tiny_encoder), "--dataset", str(tiny_beir), "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "plain")]) == 0
    assert (
        main([*args, "--output", str(tmp_path / "nudged"), "--nudge", "train", "--nudge-variant", "m"]) == 0
    )
    assert "nudge-m" in capsys.readouterr().out
    info = json.loads((tmp_path / "nudged" / "index.json").read_text())
    assert info["nudge"]["split"] == "train" and info["nudge"]["fit_queries"] == 3
    plain = np.load(tmp_path / "plain" / "embeddings.npy")
    nudged = np.load(tmp_path / "nudged" / "embeddings.npy")
    ids = [
        json.loads(line)["_id"] for line in (tmp_path / "plain" / "documents.jsonl").read_text().splitlines()
    ]
    judged = [ids.index(d) for d in ("d1", "d2", "d3", "d4")]
    others = [row for row in range(len(ids)) if row not in judged]
    assert np.array_equal(plain[others], nudged[others])
    if info["nudge"]["step"] > 0:
        assert not np.allclose(plain[judged], nudged[judged])
    assert main(["search", "--index", str(tmp_path / "nudged"), "gene protein", "--top-k", "3"]) == 0
    assert main([*args[:3], "--corpus", str(tiny_beir / "corpus.jsonl"), "--output", str(tmp_path / "z"),
                 "--nudge", "train"]) == 2  # fmt: skip


@pytest.mark.slow
def test_scifact_unseen_view_agrees_with_pytrec_eval_on_the_run_file(tmp_path):
    """The real case (`make test-slow`): MiniLM-L6 on SciFact test, the view against the train split, checked
    independently of sbmoe's metrics: pytrec_eval on run.trec without the seen documents and the qrels
    without them (queries left without a relevant document dropped)."""
    import pytrec_eval
    from conftest import shared_datasets

    from sbmoe.commands import main
    from sbmoe.data import load_dataset

    out = tmp_path / "eval"
    data = str(shared_datasets())
    assert main(["evaluate", "--model", "minilm-l6", "--dataset", "scifact", "--data-dir", data,
                 "--output-dir", str(out), "--no-progress"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    dataset = load_dataset("scifact", data)
    seen = relevant_documents(dataset.qrels("train"))
    qrels = {
        q: {d: g for d, g in judged.items() if d not in seen} for q, judged in dataset.qrels("test").items()
    }
    qrels = {q: judged for q, judged in qrels.items() if any(g >= 1 for g in judged.values())}
    run = {
        q: {d: s for d, s in hits.items() if d not in seen}
        for q, hits in read_trec_run(out / "run.trec").items()
    }
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate({q: run[q] for q in qrels})
    independent = sum(v["ndcg_cut_10"] for v in per_query.values()) / len(qrels)
    assert metrics["views"]["unseen-docs"]["num_queries"] == len(qrels) == 107
    assert metrics["unseen-docs/ndcg@10"] == pytest.approx(independent, abs=1e-4)
    assert metrics["views"]["seen-queries"]["num_queries"] == 196
