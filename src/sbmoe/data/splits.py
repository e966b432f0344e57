"""What one split of judgements shares with another: the documents a split judged relevant, the queries that
share a relevant document with another split, and validation hold-outs that share none.

A test query whose relevant document was also a training query's positive can be answered by memorising that
document, not by retrieval that training improved (SciFact: 196 of its 300 test queries). These functions
let training leave such queries out (`exclude_sharing`), validate on queries whose documents training never
saw (`hold_out`, kind "documents") and evaluate on documents no training query judged
(`sbmoe.evaluation.views`).

Qrels are {query id: {document id: grade}}; a grade >= 1 is relevant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sbmoe.errors import SbmoeError

logger = logging.getLogger(__name__)

HOLDOUTS = ("documents", "queries")
"""documents: validation queries share no relevant document with the remaining training queries (whole
groups of queries linked by shared positives are held out); queries: a random sample of queries."""


def relevant(judgements: Mapping[str, int]) -> set[str]:
    """The documents judged relevant (grade >= 1) in one query's judgements."""
    return {doc for doc, grade in judgements.items() if grade >= 1}


def relevant_documents(qrels: Mapping[str, Mapping[str, int]]) -> set[str]:
    """Every document some query of `qrels` judges relevant."""
    return {doc for judgements in qrels.values() for doc in relevant(judgements)}


def sharing_queries(qrels: Mapping[str, Mapping[str, int]], documents: set[str]) -> list[str]:
    """The queries of `qrels` with a relevant document among `documents`, in qrels order."""
    return [query for query, judgements in qrels.items() if relevant(judgements) & documents]


def exclude_sharing(
    qrels: Mapping[str, Mapping[str, int]], other: Mapping[str, Mapping[str, int]]
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """`qrels` without the queries that share a relevant document with a query of `other`; and those queries.

    The training option `exclude_positives_of`: trained on what is left, a model cannot score on `other` by
    recalling a document it was trained to find."""
    dropped = sharing_queries(qrels, relevant_documents(other))
    dropped_set = set(dropped)
    kept = {query: dict(judgements) for query, judgements in qrels.items() if query not in dropped_set}
    return kept, dropped


def linked_groups(positives: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The queries grouped so that two queries sharing a positive are in one group (the connected components
    of the query-document graph), each group in the order of `positives`, groups by their first query."""
    parent = {query: query for query in positives}

    def root(query: str) -> str:
        while parent[query] != query:
            parent[query] = parent[parent[query]]
            query = parent[query]
        return query

    first_query: dict[str, str] = {}
    for query, docs in positives.items():
        for doc in docs:
            if doc in first_query:
                parent[root(query)] = root(first_query[doc])
            else:
                first_query[doc] = query
    groups: dict[str, list[str]] = {}
    for query in positives:
        groups.setdefault(root(query), []).append(query)
    return list(groups.values())


def hold_out(
    positives: Mapping[str, Iterable[str]], share: float, seed: int, kind: str = "documents"
) -> tuple[list[str], list[str]] | None:
    """Split the queries (query id -> its positives) into (training, validation) ids, reproducibly for a seed,
    with about `share` of them (at least one) in validation.

    kind "queries": a random sample. kind "documents": whole groups of queries linked by shared positives
    (`linked_groups`), drawn at random until the share is reached, skipping a group that would overshoot it
    by more than half; then no validation query shares a positive with a training query. Returns None when
    no such split reaches half the share (one group holds nearly every query, as in NFCorpus)."""
    import torch  # here, so that reading data never loads torch

    if kind not in HOLDOUTS:
        raise ValueError(f"hold-out kind must be one of {HOLDOUTS}, got {kind!r}")
    queries = list(positives)
    target = max(1, round(share * len(queries)))
    generator = torch.Generator().manual_seed(seed)
    if kind == "queries":
        held = {queries[i] for i in torch.randperm(len(queries), generator=generator)[:target].tolist()}
    else:
        groups = linked_groups(positives)
        held = set()
        for group in (groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()):
            if len(held) >= target:
                break
            if len(held) + len(group) <= target * 1.5:
                held.update(group)
        if len(held) < target / 2 or len(held) == len(queries):
            return None
    return [q for q in queries if q not in held], [q for q in queries if q in held]


SPLIT_FILE = "split.json"
SPLIT_SOURCES = "SOURCES.md"


def split_collection(
    collection: str | Path,
    output: str | Path,
    *,
    test_share: float = 0.5,
    seed: int = 0,
    split: str = "test",
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write a BEIR folder at `output` whose qrels/train.tsv and qrels/test.tsv split the judged queries of
    `collection`'s `split` at random (`hold_out`, kind "queries"), about `test_share` of them in test,
    reproducibly for `seed`; return what split.json records.

    A judged query is one with judgements and a text (`judged_queries`); each keeps all its judgement rows,
    in the source's order. The corpus and queries.jsonl are symbolic links to the source's files (absolute
    paths), not copies. SOURCES.md (for people) and split.json (for programs) record the source, the share,
    the seed, the counts and the sbmoe version and commit. The folder is written beside `output` and renamed
    into place once `validate_dataset` has read it fully (its problems, inherited from the source, are
    logged as warnings and recorded).

    Raises SbmoeError, before anything is written, for a share outside (0, 1), a collection or split
    without judged queries, a share that leaves either side empty, and an `output` that exists and is not
    an empty folder.
    """
    from sbmoe.data.beir import QRELS_DIR, QRELS_HEADER, QUERIES_FILE, judged_queries, load_dataset
    from sbmoe.data.validate import validate_dataset
    from sbmoe.io import (
        atomic_write_text,
        check_new_folder,
        provenance,
        staged_folder,
        write_json,
    )

    if not 0 < test_share < 1:
        raise SbmoeError(f"the test share must be between 0 and 1 (exclusive), got {test_share}")
    check_new_folder(output)
    dataset = load_dataset(collection, data_dir)
    if split not in dataset.splits():
        raise SbmoeError(
            f"collection {dataset.name!r} has no judgements in a split {split!r} to split; its splits: "
            f"{', '.join(dataset.splits()) or 'none (no qrels/*.tsv files)'}"
        )
    qrels = dataset.qrels(split)
    judged = judged_queries(dataset.queries, qrels)
    if not judged:
        raise SbmoeError(
            f"collection {dataset.name!r}, split {split!r}: no judged query with a text, nothing to split"
        )
    test_count = round(test_share * len(judged))
    if not 0 < test_count < len(judged):
        raise SbmoeError(
            f"a test share of {test_share} of the {len(judged)} judged queries of {dataset.name}/{split} "
            f"puts {test_count} in test and {len(judged) - test_count} in train: both sides need a query"
        )
    positives = {query: relevant(qrels[query]) for query in judged}
    split_ids = hold_out(positives, test_share, seed, kind="queries")
    assert split_ids is not None  # kind "queries" always splits
    train_ids, test_ids = split_ids
    parts = {"train": train_ids, "test": test_ids}
    train_documents = relevant_documents({query: qrels[query] for query in train_ids})
    record: dict[str, Any] = {
        "collection": dataset.name,
        "collection_path": str(dataset.path.resolve()),
        "source_split": split,
        "test_share": test_share,
        "seed": seed,
        "method": "a random sample of the judged queries (sbmoe.data.splits.hold_out, kind 'queries')",
        "counts": {
            "judged_queries": len(judged),
            "rows_of_queries_without_text": sum(len(qrels[query]) for query in set(qrels) - set(judged)),
            **{
                name: {
                    "queries": len(ids),
                    "rows": sum(len(qrels[query]) for query in ids),
                    "relevant_rows": sum(len(relevant(qrels[query])) for query in ids),
                }
                for name, ids in parts.items()
            },
            "test_queries_with_a_relevant_document_no_training_query_judged": sum(
                bool(relevant(qrels[query]) - train_documents) for query in test_ids
            ),
        },
        "provenance": provenance(),
    }
    record["sbmoe_version"] = record["provenance"]["packages"]["sbmoe"]
    record["git_commit"] = record["provenance"]["git_commit"]
    with staged_folder(output) as staging:
        for name in (dataset.corpus_path.name, QUERIES_FILE):
            (staging / name).symlink_to((dataset.path / name).resolve())
        for name, ids in parts.items():
            rows = "".join(
                f"{query}\t{doc}\t{grade}\n" for query in ids for doc, grade in qrels[query].items()
            )
            atomic_write_text(staging / QRELS_DIR / f"{name}.tsv", "\t".join(QRELS_HEADER) + "\n" + rows)
        report = validate_dataset(load_dataset(staging))
        for problem in report["problems"]:
            logger.warning("%s: %s", output, problem)
        record["problems"] = report["problems"]
        write_json(staging / SPLIT_FILE, record)
        atomic_write_text(staging / SPLIT_SOURCES, _split_sources(record))
    return record


def _split_sources(record: Mapping[str, Any]) -> str:
    """SOURCES.md of a split folder: what split.json records, for a person."""
    counts = record["counts"]
    lines = [
        f"# {record['collection']}, {record['source_split']} judgements split into train and test — sources",
        f"Source: the collection {record['collection']} ({record['collection_path']}), its qrels/"
        f"{record['source_split']}.tsv. corpus and queries.jsonl are links to its files, not copies.",
        f"Split: {record['method']}; test share {record['test_share']}, seed {record['seed']}.",
        f"Counts: {counts['judged_queries']} judged queries; train {counts['train']['queries']} queries "
        f"({counts['train']['rows']} qrels rows), test {counts['test']['queries']} queries "
        f"({counts['test']['rows']} rows); {counts['rows_of_queries_without_text']} rows of queries "
        "without a text left out.",
        f"Test queries with a relevant document that no training query judged: "
        f"{counts['test_queries_with_a_relevant_document_no_training_query_judged']}.",
        f"Made by: sbmoe {record['sbmoe_version']}, commit {record['git_commit'] or 'unknown'}: "
        f"`{record['provenance']['command']}`.",
        f"Validation: {'; '.join(record['problems']) or 'no problems found'}.",
        "Machine-readable: split.json.",
    ]
    return "\n".join(lines) + "\n"
