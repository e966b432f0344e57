from __future__ import annotations

import numpy as np
import pytest

from sbmoe.errors import SbmoeError
from sbmoe.retrieval.search import exact_search, faiss_search, search, to_run


def brute_force(queries, corpus, k):
    scores = queries @ corpus.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("max_score_bytes", [4 * 7 * 13, 4 * 50, 256 * 2**20])
def test_blocked_search_equals_brute_force(max_score_bytes):
    """Tiny budgets force many query and document blocks; results must not change."""
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((23, 8), dtype=np.float32)
    corpus = rng.standard_normal((101, 8), dtype=np.float32)
    scores, indices = exact_search(queries, corpus, k=10, max_score_bytes=max_score_bytes)
    expected_scores, expected_indices = brute_force(queries, corpus, 10)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_k_larger_than_corpus_returns_every_document():
    rng = np.random.default_rng(1)
    scores, indices = exact_search(
        rng.standard_normal((2, 4), dtype=np.float32), rng.standard_normal((5, 4), dtype=np.float32), k=1000
    )
    assert indices.shape == (2, 5) and sorted(indices[0]) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_faiss_backend_agrees():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    queries, corpus = (
        rng.standard_normal((17, 16), dtype=np.float32),
        rng.standard_normal((300, 16), dtype=np.float32),
    )
    _, ours = exact_search(queries, corpus, k=20)
    _, theirs = faiss_search(queries, corpus, k=20)
    np.testing.assert_array_equal(ours, theirs)


def test_unknown_backend_is_a_user_error():
    with pytest.raises(SbmoeError, match="backend must be one of"):
        search(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), backend="annoy")


def test_to_run_maps_rows_to_ids():
    run = to_run(["q1"], ["a", "b", "c"], np.array([[3.0, 1.0]]), np.array([[2, 0]]))
    assert run == {"q1": {"c": 3.0, "a": 1.0}}
