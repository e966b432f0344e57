"""Synthetic material for scale tests: BEIR collections of random texts, and clustered unit vectors.

Nothing is shipped or downloaded: texts are made of pseudo-words drawn from a seeded generator, so a
collection of any size can be produced here and the scale paths (sharded encoding, approximate indexes)
tested without real data. Both generators write as they go, so their memory does not grow with N.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from sbmoe.io import check_new_folder

SYLLABLES = [consonant + vowel for consonant in "bdklmnrst" for vowel in "aeiou"]


def pseudo_words(count: int, seed: int = 0) -> list[str]:
    """`count` distinct pronounceable pseudo-words of 2 to 4 syllables."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < count:
        words["".join(rng.choice(SYLLABLES, size=rng.integers(2, 5)))] = None
    return list(words)


def synthetic_documents(
    num_documents: int,
    *,
    seed: int = 0,
    vocabulary: Sequence[str] | None = None,
    min_words: int = 8,
    max_words: int = 64,
) -> Iterator[tuple[str, str, str]]:
    """Yield (id, title, text) of random documents; word frequencies follow a Zipf-like law.

    vocabulary: the words to draw from (default: 5,000 pseudo-words).
    """
    rng = np.random.default_rng(seed)
    vocabulary = np.array(vocabulary if vocabulary is not None else pseudo_words(5000, seed))
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    for i in range(num_documents):
        words = rng.choice(vocabulary, size=rng.integers(min_words, max_words + 1), p=weights)
        yield f"doc{i}", " ".join(words[:3]).title(), " ".join(words)


def write_synthetic_collection(
    folder: str | Path,
    num_documents: int,
    num_queries: int = 100,
    *,
    seed: int = 0,
    vocabulary: Sequence[str] | None = None,
) -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) of random documents.

    Each query is 4 words of one random document, which is its one relevant document.
    """
    if num_documents < 1 or num_queries < 0:
        raise ValueError(f"need at least 1 document and 0 queries, got {num_documents} and {num_queries}")
    folder = check_new_folder(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    targets = set(rng.choice(num_documents, size=min(num_queries, num_documents), replace=False).tolist())
    queries = []
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as corpus:
        for i, (doc_id, title, text) in enumerate(
            synthetic_documents(num_documents, seed=seed, vocabulary=vocabulary)
        ):
            corpus.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
            if i in targets:
                words = text.split()
                picked = rng.choice(len(words), size=min(4, len(words)), replace=False)
                queries.append((f"q{len(queries)}", " ".join(words[j] for j in sorted(picked)), doc_id))
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for query_id, text, _ in queries:
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for query_id, _, doc_id in queries:
            handle.write(f"{query_id}\t{doc_id}\t1\n")
    return folder


def synthetic_vectors(
    num_vectors: int,
    dim: int = 384,
    *,
    num_clusters: int = 1000,
    spread: float = 0.5,
    seed: int = 0,
    path: str | Path | None = None,
    block: int = 65_536,
) -> np.ndarray:
    """Unit vectors [N, dim] float32 around `num_clusters` random centres (embeddings have clusters too).

    Each vector is a centre plus Gaussian noise of norm about `spread`, normalised. With `path`, the
    array is written block by block into a .npy memory map there and returned as that map.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if path is None:
        out = np.empty((num_vectors, dim), dtype=np.float32)
    else:
        out = np.lib.format.open_memmap(Path(path), "w+", np.float32, (num_vectors, dim))
    for start in range(0, num_vectors, block):
        n = min(block, num_vectors - start)
        noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        vectors = centres[rng.integers(0, num_clusters, size=n)] + noise
        out[start : start + n] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    if path is not None:
        out.flush()
    return out
