from __future__ import annotations

import numpy as np

from sbmoe.modeling import load_model
from sbmoe.retrieval.encode import EmbeddingCache, encode_cached

IDS = ["a", "b", "c"]
TEXTS = ["gene protein", "cancer drug trial", "virus blood"]


def test_corpus_cache_hit_returns_the_same_array(tiny_encoder, tmp_path):
    model, tokenizer = load_model(tiny_encoder)
    cache = EmbeddingCache(tmp_path / "cache")
    first, hit = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    assert hit is False
    second, hit = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    assert hit is True
    np.testing.assert_array_equal(first, second)


def test_cache_key_covers_texts_weights_and_max_length(tiny_encoder, tmp_path):
    model, _ = load_model(tiny_encoder)
    cache = EmbeddingCache(tmp_path)
    key = cache.key(model, "document", IDS, TEXTS)
    assert cache.key(model, "document", IDS, [*TEXTS[:2], "virus"]) != key
    assert cache.key(model, "document", ["a", "b", "x"], TEXTS) != key
    short, _ = load_model(tiny_encoder, document_max_length=8)
    assert cache.key(short, "document", IDS, TEXTS) != key
    with_head_change, _ = load_model(tiny_encoder, normalize=True)  # the head is applied after the cache
    assert cache.key(with_head_change, "document", IDS, TEXTS) == key
    with_other_weights, _ = load_model(tiny_encoder)
    with_other_weights.encoder.embeddings.word_embeddings.weight.data[0, 0] += 1.0
    assert cache.key(with_other_weights, "document", IDS, TEXTS) != key


def test_a_broken_cache_entry_is_ignored_and_rewritten(tiny_encoder, tmp_path):
    model, tokenizer = load_model(tiny_encoder)
    cache = EmbeddingCache(tmp_path)
    expected, _ = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    folder = cache.folder(cache.key(model, "document", IDS, TEXTS))
    (folder / "embeddings.npy").write_bytes(b"not an array")
    again, hit = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    assert hit is False
    np.testing.assert_allclose(again, expected, atol=1e-6)
    assert np.load(folder / "embeddings.npy", allow_pickle=False).shape == (3, 32)
