"""Training examples from qrels, the validation split, and the batches of each epoch.

Every epoch's order, positives and hard negatives are a function of (seed, epoch) alone, so a run resumed
mid-epoch sees exactly the batches it would have seen, on any number of processes.

Several collections (a dataset named "scifact+nfcorpus-preproc", `collection_names`) train one model: each
collection's batches are built as for that collection alone, their ids prefixed with the collection's name
("scifact/123", `relabel`) so ids of different collections never clash, and the batches of all
collections are shuffled together (`interleave`): every batch holds the queries of one collection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from sbmoe.errors import SbmoeError
from sbmoe.training.negatives import Negatives, sample_negatives

logger = logging.getLogger(__name__)

COLLECTION_SEPARATOR = "+"  # "scifact+nfcorpus-preproc": one model trained on both collections


@dataclass(frozen=True)
class Example:
    """A training query and its relevant documents (grade >= 1) that exist in the corpus."""

    query_id: str
    positives: tuple[str, ...]


@dataclass(frozen=True)
class Batch:
    """One global batch: query i's positive is doc_ids[i]; hard negatives follow the B positives.

    positives_of[i] is the set of every relevant document of query i (for masking).
    """

    query_ids: list[str]
    doc_ids: list[str]
    positives_of: list[frozenset[str]]


def training_examples(
    qrels: dict[str, dict[str, int]], queries: Mapping[str, str], doc_ids: set[str], split: str
) -> list[Example]:
    """Examples for the judged queries that exist and have a relevant document in the corpus.

    Raises SbmoeError when a judged query has an empty text (it would train on nothing) or when no
    example is left."""
    empty = sorted(query_id for query_id in qrels if query_id in queries and not queries[query_id].strip())
    if empty:
        raise SbmoeError(
            f"split {split!r}: {len(empty)} judged queries have an empty text in queries.jsonl "
            f"(e.g. {', '.join(map(repr, empty[:3]))}); give them text or remove their judgements"
        )
    examples = []
    for query_id, judgements in qrels.items():
        positives = tuple(doc for doc, grade in judgements.items() if grade >= 1 and doc in doc_ids)
        if query_id in queries and positives:
            examples.append(Example(query_id, positives))
    if not examples:
        raise SbmoeError(
            f"split {split!r} has no query with a relevant document (grade >= 1) in the corpus: "
            "nothing to train on"
        )
    skipped = len(qrels) - len(examples)
    if skipped:
        logger.warning(
            "split %s: %d judged queries have no relevant document in the corpus; skipped", split, skipped
        )
    return examples


def hold_out(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off `share` of the examples (at least one) for validation, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=generator).tolist()
    count = max(1, round(share * len(examples)))
    held = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in held], [
        e for i, e in enumerate(examples) if i in held
    ]


def epoch_batches(
    examples: Sequence[Example],
    batch_size: int,
    seed: int,
    epoch: int,
    negatives: Negatives | None = None,
    num_negatives: int = 0,
    all_doc_ids: Sequence[str] = (),
    world_size: int = 1,
) -> list[Batch]:
    """The batches of one epoch: queries shuffled, one positive sampled per query, hard negatives drawn.

    The last batch is trimmed to a multiple of `world_size` so it splits evenly over processes, and
    dropped if that leaves fewer than two queries (no in-batch negative). A query with fewer hard
    negatives than `num_negatives` is topped up with random corpus documents so every batch has the
    same shape (masking takes care of any that happen to be relevant).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(examples), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = [examples[i] for i in order[start : start + batch_size]]
        chosen = chosen[: len(chosen) - len(chosen) % world_size]
        if len(chosen) < 2:
            break
        positives = [
            e.positives[int(torch.randint(len(e.positives), (1,), generator=generator))] for e in chosen
        ]
        hard: list[str] = []
        if num_negatives:
            drawn = sample_negatives(negatives or {}, [e.query_id for e in chosen], num_negatives, generator)
            for doc_ids in drawn:
                missing = num_negatives - len(doc_ids)
                # Random corpus documents, without replacement, for queries short of candidates.
                fill = (
                    torch.randperm(len(all_doc_ids), generator=generator)[:missing].tolist()
                    if missing
                    else []
                )
                hard.extend([*doc_ids, *(all_doc_ids[i] for i in fill)])
        batches.append(
            Batch(
                query_ids=[e.query_id for e in chosen],
                doc_ids=[*positives, *hard],
                positives_of=[frozenset(e.positives) for e in chosen],
            )
        )
    return batches


def shard(
    batch: Batch, rank: int, world_size: int, num_negatives: int
) -> tuple[list[str], list[str], list[str]]:
    """This process's part of a global batch: (query ids, positive doc ids, hard-negative doc ids).

    Queries and their positives are split evenly; each query's hard negatives go with it.
    """
    size = len(batch.query_ids)
    if size % world_size:
        raise SbmoeError(f"batch of {size} queries cannot be split evenly over {world_size} processes")
    per_rank = size // world_size
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    negatives = batch.doc_ids[size:]
    return (
        batch.query_ids[lo:hi],
        batch.doc_ids[lo:hi],
        negatives[lo * num_negatives : hi * num_negatives],
    )


def collection_names(dataset: str) -> list[str]:
    """The collections a dataset setting names: "scifact" -> ["scifact"]; "scifact+nfcorpus-preproc" ->
    ["scifact", "nfcorpus-preproc"]. Raises SbmoeError for an empty or repeated name."""
    names = [name.strip() for name in str(dataset).split(COLLECTION_SEPARATOR)]
    if not all(names):
        raise SbmoeError(
            f"dataset {dataset!r}: an empty collection name; join several collections with "
            f"{COLLECTION_SEPARATOR!r}, e.g. scifact{COLLECTION_SEPARATOR}nfcorpus-preproc"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SbmoeError(f"dataset {dataset!r} names {repeated} more than once")
    return names


def relabel(batch: Batch, rename: Callable[[str], str]) -> Batch:
    """The batch with every query and document id passed through `rename` (e.g. "123" -> "scifact/123")."""
    return Batch(
        query_ids=[rename(i) for i in batch.query_ids],
        doc_ids=[rename(i) for i in batch.doc_ids],
        positives_of=[frozenset(rename(i) for i in docs) for docs in batch.positives_of],
    )


def interleave(batches_of: Sequence[list[Batch]], seed: int, epoch: int) -> list[Batch]:
    """One epoch's batches of several collections (a list each) in one seeded random order; each batch
    stays whole, so it still holds one collection's queries. A single collection's list is returned as is.
    """
    if len(batches_of) == 1:
        return list(batches_of[0])
    everything = [batch for batches in batches_of for batch in batches]
    # A stream of its own: the collections' generators are seeded by seed * 1_000_003 + epoch.
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 2 + 1)
    return [everything[i] for i in torch.randperm(len(everything), generator=generator).tolist()]
