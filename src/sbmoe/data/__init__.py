"""Data: BEIR collections (corpus, queries, qrels) read strictly, located by name or folder, validated."""

from __future__ import annotations

from sbmoe.data.beir import (
    BeirDataset,
    Corpus,
    document_text,
    iter_documents,
    judged_queries,
    list_datasets,
    load_corpus,
    load_dataset,
    load_qrels,
    load_queries,
    load_query_file,
    resolve_dataset,
)
from sbmoe.data.validate import validate_dataset

__all__ = [
    "BeirDataset",
    "Corpus",
    "document_text",
    "iter_documents",
    "judged_queries",
    "list_datasets",
    "load_corpus",
    "load_dataset",
    "load_qrels",
    "load_queries",
    "load_query_file",
    "resolve_dataset",
    "validate_dataset",
]
