from __future__ import annotations

import numpy as np
import torch

from sbmoe.modeling import build_model, load_model
from sbmoe.modeling.moe import routing_keys
from sbmoe.retrieval.encode import EmbeddingCache, Pooled, apply_head, encode_cached, head_batches

IDS = ["a", "b", "c"]
TEXTS = ["gene protein", "cancer drug trial", "virus blood"]


def test_corpus_cache_hit_returns_the_same_array(tiny_encoder, tmp_path):
    model, tokenizer = load_model(tiny_encoder)
    cache = EmbeddingCache(tmp_path / "cache")
    first, hit = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    assert hit is False
    second, hit = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    assert hit is True
    np.testing.assert_array_equal(first.vectors, second.vectors)
    np.testing.assert_array_equal(first.keys, second.keys)


def test_pooled_texts_carry_the_routing_keys_forward_derives(tiny_encoder, tmp_path):
    """The keys that travel with pooled vectors (encoded, and read back from the cache) are the ones
    SBMoEModel.forward derives from the token ids."""
    model, tokenizer = load_model(tiny_encoder)
    tokens = tokenizer(TEXTS, padding=True, truncation=True, max_length=model.config.document_max_length,
                       return_tensors="pt")  # fmt: skip
    expected = routing_keys(tokens["input_ids"], tokens["attention_mask"]).numpy()
    assert len(set(expected.tolist())) == len(TEXTS)  # the texts differ, so must their keys
    cache = EmbeddingCache(tmp_path)
    for _ in range(2):  # encoded, then from the cache
        pooled, _ = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
        np.testing.assert_array_equal(pooled.keys, expected)


def test_a_cache_entry_without_keys_gets_them_added(tiny_encoder, tmp_path):
    """Entries written before routing keys were cached still serve their vectors; the keys are computed
    from the texts once and added to the entry."""
    model, tokenizer = load_model(tiny_encoder)
    cache = EmbeddingCache(tmp_path)
    fresh, _ = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    folder = cache.folder(cache.key(model, "document", IDS, TEXTS))
    (folder / "keys.npy").unlink()
    old, hit = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    assert hit is True
    np.testing.assert_array_equal(old.vectors, fresh.vectors)
    np.testing.assert_array_equal(old.keys, fresh.keys)
    np.testing.assert_array_equal(np.load(folder / "keys.npy", allow_pickle=False), fresh.keys)


def test_apply_head_routes_random_gate_texts_as_forward_does(tiny_encoder, tmp_path):
    """A caller applies the head in the "random" mode without computing anything for it."""
    model, tokenizer = build_model(tiny_encoder, num_experts=3, variant="learned", random_gate=True)
    model.eval()
    words = "gene protein cancer virus brain heart blood drug trial mouse human sleep diet".split()
    many = [f"{words[i % 13]} {words[i // 13]} study" for i in range(40)]  # 40 different token sequences
    pooled, _ = encode_cached(model, tokenizer, [str(i) for i in range(40)], many,
                              cache=EmbeddingCache(tmp_path), progress=False)  # fmt: skip
    embeddings, experts = apply_head(model, pooled, "random")
    tokens = tokenizer(many, padding=True, truncation=True, max_length=model.config.document_max_length,
                       return_tensors="pt")  # fmt: skip
    with torch.inference_mode():
        out = model(tokens["input_ids"], tokens["attention_mask"], mode="random")
    assert experts.tolist() == out.selected_experts[:, 0].tolist()
    assert len(set(experts.tolist())) == 3
    np.testing.assert_allclose(embeddings, out.embeddings.numpy(), atol=1e-5)


def test_head_batches_leave_the_callers_grad_mode_and_training_flag(tiny_encoder):
    model, _ = build_model(tiny_encoder, num_experts=3, variant="learned")
    model.train()
    pooled = Pooled(np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32))
    for rows, out in head_batches(model, pooled, "top1", batch_size=2):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert out.embeddings.shape == (len(range(5)[rows]), 32)
    assert model.training


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
    np.testing.assert_allclose(again.vectors, expected.vectors, atol=1e-6)
    assert np.load(folder / "embeddings.npy", allow_pickle=False).shape == (3, 32)
