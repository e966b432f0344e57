"""Hard negatives: from a run (in memory and on disk), mined with BM25, sampled reproducibly; errors."""

from __future__ import annotations

import pytest
import torch

from sbmoe.data import Corpus
from sbmoe.errors import DataError, SbmoeError
from sbmoe.training.negatives import (
    load_negatives_run,
    mine_bm25_negatives,
    negatives_from_run,
    sample_negatives,
)

RUN = {
    "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.7, "d5": 0.6, "d6": 0.5},
    "q2": {"d9": 1.0, "d8": 2.0},
    "q_unjudged": {"d1": 1.0},
}
QRELS = {
    "q1": {"d1": 1, "d3": 2, "d2": 0, "d6": -1},  # d2 and d6 judged non-relevant: good negatives
    "q2": {"d7": 1},
    "q3": {"d1": 1},  # judged, but the run has no hit for it
}


def test_negatives_from_run_excludes_relevant_keeps_judged_non_relevant():
    negatives = negatives_from_run(RUN, QRELS, depth=100)
    assert negatives == {"q1": ["d2", "d4", "d5", "d6"], "q2": ["d8", "d9"], "q3": []}


def test_negatives_from_run_depth_counts_negatives_kept():
    assert negatives_from_run(RUN, QRELS, depth=2)["q1"] == ["d2", "d4"]
    assert negatives_from_run(RUN, QRELS, depth=1) == {"q1": ["d2"], "q2": ["d8"], "q3": []}


def test_negatives_from_run_ties_by_doc_id_descending_whatever_the_dict_order():
    qrels = {"q": {"rel": 1}}
    forward = {"q": {"a": 0.5, "b": 0.5, "c": 0.5, "rel": 0.9, "z": 0.1}}
    backward = {"q": dict(reversed(list(forward["q"].items())))}
    expected = ["c", "b", "a", "z"]  # trec_eval's order, as sbmoe.retrieval.trec writes it
    assert negatives_from_run(forward, qrels)["q"] == expected
    assert negatives_from_run(backward, qrels)["q"] == expected
    assert negatives_from_run(backward, qrels, depth=2)["q"] == ["c", "b"]


def test_load_negatives_run_from_a_trec_file(tmp_path):
    path = tmp_path / "bm25.trec"
    # The rank column disagrees with the scores on purpose: the scores decide.
    path.write_text(
        "q1 Q0 d1 1 9.5 bm25\n"
        "q1 Q0 d2 2 3.0 bm25\n"
        "q1 Q0 d4 3 7.25 bm25\n"
        "\n"
        "q2 Q0 d7 1 1.0 bm25\n"
        "q2 Q0 d8 2 0.5 bm25\n"
        "qx Q0 d1 1 1.0 bm25\n"
    )
    assert load_negatives_run(path, QRELS, depth=10) == {"q1": ["d4", "d2"], "q2": ["d8"], "q3": []}
    assert load_negatives_run(str(path), QRELS, depth=1)["q1"] == ["d4"]


def test_load_negatives_run_errors(tmp_path):
    wrong = tmp_path / "other.trec"
    wrong.write_text("PLAIN-1 Q0 d1 1 1.0 x\n")
    with pytest.raises(SbmoeError, match=r"other\.trec has no query in common with the qrels"):
        load_negatives_run(wrong, QRELS)
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 1.0 x\nq1 Q0 d2 one 0.5 x\n")
    with pytest.raises(DataError, match=r"bad\.trec, line 2"):
        load_negatives_run(bad, QRELS)
    with pytest.raises(DataError, match="file not found"):
        load_negatives_run(tmp_path / "absent.trec", QRELS)


def test_run_without_common_query_and_bad_depth():
    with pytest.raises(SbmoeError, match="no query in common with the qrels"):
        negatives_from_run({"other": {"d1": 1.0}}, QRELS)
    with pytest.raises(SbmoeError, match="no query in common"):
        negatives_from_run({}, QRELS)
    for depth in (0, -3):
        with pytest.raises(ValueError, match="depth"):
            negatives_from_run(RUN, QRELS, depth=depth)


# ------------------------------------------------------------------------------------------------ BM25

CORPUS = Corpus(
    ids=["gold", "decoy", "half", "far1", "far2", "far3"],
    titles=["Zebrafish regeneration", "", "", "", "Cooking", ""],
    texts=[
        "Fin regrowth after amputation relies on blastema cells in zebrafish.",
        "Zebrafish blastema regeneration of the fin: a blastema forms within days of zebrafish amputation.",
        "Regeneration of the liver in mammals.",
        "Stock markets fell sharply on Monday.",
        "A recipe for bread with flour and water.",
        "The weather is sunny and warm today.",
    ],
)
QUERIES = {
    "q1": "zebrafish fin blastema regeneration",
    "q2": "the of and",  # only stop words: no BM25 signal
    "q3": "bread recipe",
    "q4": "not judged",
}
BM25_QRELS = {
    "q1": {"gold": 1, "far1": 0},
    "q2": {"gold": 1},
    "q3": {"far2": 2},
    "q_missing_text": {"gold": 1},
}


def test_mine_bm25_negatives_ranks_the_decoy_first_and_drops_the_relevant():
    negatives = mine_bm25_negatives(CORPUS, QUERIES, BM25_QRELS, depth=10, progress=False)
    assert set(negatives) == {"q1", "q2", "q3"}  # q_missing_text has no text; q4 no judgements
    # The decoy shares every rare query word (several times); the relevant doc is excluded although it
    # matches too; "half" shares one word; documents sharing no word never become negatives.
    assert negatives["q1"] == ["decoy", "half"]
    assert negatives["q2"] == []
    assert negatives["q3"] == []  # the only matching document is the relevant one
    assert mine_bm25_negatives(CORPUS, QUERIES, BM25_QRELS, depth=1, progress=False)["q1"] == ["decoy"]


def test_mine_bm25_negatives_is_deterministic_with_ties_by_doc_id():
    corpus = Corpus(ids=["a", "c", "b", "rel"], titles=[""] * 4, texts=["apple pie"] * 3 + ["apple tart"])
    qrels = {"q": {"rel": 1}}
    first = mine_bm25_negatives(corpus, {"q": "apple"}, qrels, depth=2, progress=False)
    assert first == {"q": ["c", "b"]}  # all three tie: doc id descending, as for runs
    assert mine_bm25_negatives(corpus, {"q": "apple"}, qrels, depth=2, progress=False) == first


def test_mine_bm25_negatives_errors():
    with pytest.raises(ValueError, match="depth"):
        mine_bm25_negatives(CORPUS, QUERIES, BM25_QRELS, depth=0, progress=False)
    with pytest.raises(SbmoeError, match="empty corpus"):
        mine_bm25_negatives(Corpus([], [], []), QUERIES, BM25_QRELS, progress=False)


# ---------------------------------------------------------------------------------------------- sampling

POOL = {"q1": [f"d{i}" for i in range(50)], "q2": ["x", "y", "z"], "q3": ["only"], "q4": []}


def _draw(seed: int, query_ids=("q1", "q2", "q1"), count: int = 5) -> list[list[str]]:
    return sample_negatives(POOL, list(query_ids), count, torch.Generator().manual_seed(seed))


def test_sample_negatives_is_reproducible_and_depends_on_the_seed():
    assert _draw(0) == _draw(0)
    assert _draw(0) != _draw(1)
    # Same generator, consecutive calls: the state moves on, so the draws differ.
    generator = torch.Generator().manual_seed(0)
    first = sample_negatives(POOL, ["q1"], 5, generator)
    second = sample_negatives(POOL, ["q1"], 5, generator)
    assert first != second
    assert first == _draw(0, ["q1"])


def test_sample_negatives_draws_without_replacement_from_the_candidates():
    for seed in range(20):
        for query_id, draw in zip(["q1", "q2", "q1"], _draw(seed, count=3), strict=True):
            assert len(draw) == 3
            assert len(set(draw)) == 3
            assert set(draw) <= set(POOL[query_id])
    # All 50 drawn: a permutation of the candidates.
    assert sorted(_draw(3, ["q1"], count=50)[0]) == sorted(POOL["q1"])


def test_sample_negatives_is_roughly_uniform():
    generator = torch.Generator().manual_seed(7)
    counts = dict.fromkeys(POOL["q1"], 0)
    for draw in sample_negatives(POOL, ["q1"] * 2000, 1, generator):
        counts[draw[0]] += 1
    assert min(counts.values()) > 15 and max(counts.values()) < 70  # expected 40 each


def test_sample_negatives_with_fewer_candidates_than_count():
    draws = _draw(0, ["q2", "q3", "q4"], count=5)
    assert sorted(draws[0]) == ["x", "y", "z"]
    assert draws[1:] == [["only"], []]
    assert _draw(0, ["q1", "q2"], count=0) == [[], []]
    assert _draw(0, [], count=3) == []


def test_sample_negatives_errors():
    with pytest.raises(ValueError, match="count"):
        _draw(0, ["q1"], count=-1)
    with pytest.raises(SbmoeError, match="'nope' has no hard-negative entry"):
        _draw(0, ["q1", "nope"])
