"""Approximate inner-product indexes for large corpora: faiss HNSW and IVF-PQ.

Exact search (`sbmoe.retrieval.search.exact_search`) is the default and needs no index. For millions of
documents, `build_ann_index` builds one of these and `ann_search` queries it in batches of bounded memory.
Settings are plain JSON values, saved beside the index so that it can be rebuilt or compared.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from sbmoe.errors import SbmoeError

logger = logging.getLogger(__name__)

ANN_DEFAULTS: dict[str, dict[str, Any]] = {
    "hnsw": {"m": 32, "ef_construction": 100, "ef_search": 128},
    # nlist and pq_m depend on the corpus: None means "chosen from N and the dimension" (see below).
    # refine R: the top R x k by the compressed codes are re-scored exactly from the stored embeddings
    # (read from the memory map, so the index itself stays small); 0 turns it off.
    "ivfpq": {"nlist": None, "pq_m": None, "nbits": 8, "nprobe": 16, "train_size": None, "refine": 4},
}
ADD_BATCH = 65_536  # vectors added to a faiss index at a time: bounds the float32 copy of a memory map


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise SbmoeError("approximate indexes need faiss: pip install 'sbmoe[faiss]'") from error
    return faiss


def ann_settings(index_type: str, num_vectors: int, dim: int, **overrides: Any) -> dict[str, Any]:
    """The complete settings of an index type for N vectors of dimension `dim`: defaults, then overrides.

    Unknown setting names are an error; None in `overrides` keeps the default.
    """
    if index_type not in ANN_DEFAULTS:
        raise SbmoeError(f"approximate index type must be one of {list(ANN_DEFAULTS)}, got {index_type!r}")
    defaults = ANN_DEFAULTS[index_type]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise SbmoeError(f"{index_type} has no setting {', '.join(unknown)}; settings: {', '.join(defaults)}")
    settings = {**defaults, **{key: value for key, value in overrides.items() if value is not None}}
    if index_type == "ivfpq":
        # About sqrt(N) lists (a power of two), with at least 39 training vectors per list as faiss wants.
        if settings["nlist"] is None:
            settings["nlist"] = max(1, min(2 ** round(math.log2(max(num_vectors, 1)) / 2), num_vectors // 39))
        if settings["pq_m"] is None:  # sub-vectors of 8 dimensions
            settings["pq_m"] = dim // 8 if dim % 8 == 0 else dim
        if settings["train_size"] is None:
            settings["train_size"] = min(
                num_vectors, max(64 * settings["nlist"], 2 ** settings["nbits"] * 39)
            )
        _check_ivfpq(settings, num_vectors, dim)
    for key, value in settings.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "refine" else 1):
            raise SbmoeError(f"{index_type} setting {key} must be a positive integer, got {value!r}")
    return settings


def _check_ivfpq(settings: dict[str, Any], num_vectors: int, dim: int) -> None:
    if dim % settings["pq_m"]:
        raise SbmoeError(f"ivfpq: pq_m {settings['pq_m']} must divide the dimension {dim}")
    needed = max(settings["nlist"], 2 ** settings["nbits"])
    if num_vectors < needed:
        raise SbmoeError(
            f"ivfpq needs at least {needed} documents to train (nlist {settings['nlist']}, "
            f"{2 ** settings['nbits']} codes per sub-vector), the corpus has {num_vectors}; "
            "use --index-type exact or hnsw for a corpus this small"
        )


def build_ann_index(embeddings: np.ndarray, index_type: str, settings: dict[str, Any], *, seed: int = 0):
    """A faiss index over `embeddings` [N, H] (float32, may be a memory map) for inner-product search.

    `settings` come from `ann_settings`. IVF-PQ trains on `train_size` rows drawn with `seed`.
    """
    faiss = _faiss()
    num_vectors, dim = embeddings.shape
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings["ef_construction"]
    elif index_type == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(
            quantizer, dim, settings["nlist"], settings["pq_m"], settings["nbits"], faiss.METRIC_INNER_PRODUCT
        )
        rows = np.sort(np.random.default_rng(seed).choice(num_vectors, settings["train_size"], replace=False))
        index.train(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
    else:
        raise SbmoeError(f"approximate index type must be one of {list(ANN_DEFAULTS)}, got {index_type!r}")
    for start in range(0, num_vectors, ADD_BATCH):
        index.add(np.ascontiguousarray(embeddings[start : start + ADD_BATCH], dtype=np.float32))
    set_search_settings(index, index_type, settings)
    return index


def set_search_settings(index, index_type: str, settings: dict[str, Any]) -> None:
    """Apply the search-time settings (ef_search, nprobe), which faiss does not save with the index."""
    if index_type == "hnsw":
        index.hnsw.efSearch = settings["ef_search"]
    elif index_type == "ivfpq":
        index.nprobe = settings["nprobe"]


def ann_search(
    index,
    queries: np.ndarray,
    k: int,
    *,
    embeddings: np.ndarray | None = None,
    refine: int = 0,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows by (approximate) inner product: scores [Q, k] float32, rows [Q, k] int64, best first.

    With `refine` R > 0 and the corpus `embeddings` [N, H] (a memory map is fine), the index's top R x k
    are re-scored exactly and the best k kept. Queries go in batches, so memory is bounded by
    batch_size x R x k. Rows are -1 where the index found fewer than k hits (IVF with few probed lists).
    """
    k = min(k, index.ntotal)
    fetch = min(k * refine, index.ntotal) if refine and embeddings is not None else k
    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        batch = np.ascontiguousarray(queries[start : start + batch_size], dtype=np.float32)
        found_scores, found_rows = index.search(batch, fetch)
        if fetch > k:
            found_scores, found_rows = rescore(batch, found_rows, embeddings, k)
        scores[start : start + len(batch)], rows[start : start + len(batch)] = found_scores, found_rows
    return scores, rows


def rescore(
    queries: np.ndarray, candidates: np.ndarray, embeddings: np.ndarray, k: int, block: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidate rows [Q, C] (-1 = none) -> the best k: scores [Q, k], rows [Q, k]."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(queries), block):
        part = candidates[start : start + block]
        wanted = np.unique(part[part >= 0])  # sorted: the memory map is read in file order
        vectors = np.asarray(embeddings[wanted], dtype=np.float32)  # [u, H]
        position = np.searchsorted(wanted, np.maximum(part, 0))  # [b, C]
        exact = np.einsum("bch,bh->bc", vectors[position], queries[start : start + block])
        exact[part < 0] = -np.inf
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores[start : start + len(part)] = np.take_along_axis(exact, best, axis=1)
        rows[start : start + len(part)] = np.where(
            np.isfinite(scores[start : start + len(part)]), np.take_along_axis(part, best, axis=1), -1
        )
    return scores, rows


def save_ann_index(index, path: str | Path) -> None:
    """faiss's own binary format (no pickle)."""
    _faiss().write_index(index, str(path))


def load_ann_index(path: str | Path, index_type: str, settings: dict[str, Any]):
    index = _faiss().read_index(str(path))
    set_search_settings(index, index_type, settings)
    return index


def recall_against_exact(approximate_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k (the exact list's k)."""
    k = exact_rows.shape[1]
    if k == 0:
        return 1.0
    found = [
        len(set(approx[approx >= 0].tolist()) & set(exact.tolist()))
        for approx, exact in zip(approximate_rows[:, :k], exact_rows, strict=True)
    ]
    return float(np.mean(found) / k) if found else 1.0
