"""Data: BEIR collections (corpus, queries, qrels) read strictly, located by name or folder, validated."""

from __future__ import annotations

from sbmoe.data.beir import (
    BeirDataset,
    Corpus,
    list_datasets,
    load_corpus,
    load_dataset,
    load_qrels,
    load_queries,
    resolve_dataset,
    validate_dataset,
)

__all__ = [
    "BeirDataset",
    "Corpus",
    "list_datasets",
    "load_corpus",
    "load_dataset",
    "load_qrels",
    "load_queries",
    "resolve_dataset",
    "validate_dataset",
]
