"""Training examples from qrels, the validation split, and the batches of each epoch.

Every epoch's order, positives and hard negatives are a function of (seed, epoch) alone, so a run resumed
mid-epoch sees exactly the batches it would have seen, on any number of processes.

Several collections (a dataset named "scifact+nfcorpus-preproc", `collection_names`) train one model: each
collection's batches are built as for that collection alone, their ids prefixed with the collection's name
("scifact/123", `relabel`) so ids of different collections never clash, and the batches of all
collections are shuffled together (`interleave`): every batch holds the queries of one collection.
`load_training_data` reads every collection of a run (`CollectionData`: examples, validation queries and
documents, hard negatives) and `training_batches` gives an epoch's batches of them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sbmoe.data import BeirDataset, document_text, load_dataset
from sbmoe.data.splits import exclude_sharing, hold_out
from sbmoe.distributed import DistributedInfo
from sbmoe.errors import SbmoeError
from sbmoe.retrieval.encode import EmbeddingCache, Pooled, encode_cached
from sbmoe.training.config import TrainingConfig
from sbmoe.training.negatives import Negatives, load_negatives_run, mine_bm25_negatives, sample_negatives

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from sbmoe.modeling.model import SBMoEModel

logger = logging.getLogger(__name__)

COLLECTION_SEPARATOR = "+"  # "scifact+nfcorpus-preproc": one model trained on both collections
DEFAULT_VALIDATION_DOCUMENTS = 1000  # distractors per validation when the encoder trains


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


# ------------------------------------------------------------------------------------ training collections


@dataclass(frozen=True)
class PooledTable:
    """A frozen encoder's pooled texts of one kind ("query" or "document") of a collection, by id.

    `table` is `pooled.vectors` seen as a tensor (no copy): a step's vectors are one `index_select`."""

    rows: dict[str, int]  # id -> row
    pooled: Pooled
    table: torch.Tensor  # [N, H] float32, the memory of pooled.vectors

    @classmethod
    def of(cls, ids: list[str], pooled: Pooled) -> PooledTable:
        return cls(
            {text_id: row for row, text_id in enumerate(ids)}, pooled, torch.from_numpy(pooled.vectors)
        )

    def vectors(self, ids: list[str]) -> torch.Tensor:
        """The pooled vectors [len(ids), H] of these ids, in order (on the CPU)."""
        return self.table.index_select(0, torch.tensor([self.rows[i] for i in ids]))

    def take(self, ids: list[str]) -> Pooled:
        """The pooled texts of these ids, in order (with their routing keys); the table itself when they
        are all of its ids in its order (a frozen run's validation documents), without a copy."""
        rows = [self.rows[i] for i in ids]
        if rows == list(range(len(self.pooled))):
            return self.pooled
        return self.pooled.take(rows)


@dataclass
class CollectionData:
    """What the loop reads of one training collection, in its own ids: examples, texts, and (frozen
    encoder) the pooled vectors."""

    name: str
    prefix: str  # of its ids in batches: "" when it is the only collection, else "<name>/"
    dataset: BeirDataset
    train: list[Example]
    validation: list[Example]
    validation_qrels: dict[str, dict[str, int]]
    negatives: Negatives | None
    doc_rows: dict[str, int]  # corpus id -> row
    validation_doc_ids: list[str]  # the documents searched at validation (fixed for the whole run)
    pooled: dict[str, PooledTable] | None = None  # frozen encoder: "query" / "document" -> its table

    def pool_everything(self, model: SBMoEModel, tokenizer: PreTrainedTokenizerBase, **encoding: Any) -> None:
        """Frozen encoder: set `pooled` to the pooled vector of every document and every training or
        validation query, encoded once (and cached on disk under the collection's own ids: shared with
        evaluation). encoding: keyword arguments of `encode_cached` (batch_size, device, progress, dtype)."""
        corpus, queries = self.dataset.corpus, self.dataset.queries
        wanted = sorted({e.query_id for e in (*self.train, *self.validation)})
        self.pooled = {}
        for kind, ids, texts in (
            ("document", list(corpus.ids), corpus.document_texts()),
            ("query", wanted, [queries[q] for q in wanted]),
        ):
            pooled, _ = encode_cached(model, tokenizer, ids, texts, kind, cache=EmbeddingCache(), **encoding)
            self.pooled[kind] = PooledTable.of(ids, pooled)

    def document_texts(self, ids: list[str]) -> list[str]:
        """The texts to encode for these documents (`sbmoe.data.document_text`)."""
        corpus, rows = self.dataset.corpus, self.doc_rows
        return [document_text(corpus.titles[rows[i]], corpus.texts[rows[i]]) for i in ids]


@dataclass
class TrainingData:
    """Everything the loop reads: one `CollectionData` per training collection. Batches carry ids prefixed
    with their collection's name ("scifact/123") when there are several."""

    collections: list[CollectionData]

    def resolve(self, batch: Batch) -> tuple[CollectionData, Batch]:
        """The collection a batch comes from, and the batch in that collection's own ids."""
        if len(self.collections) == 1:
            return self.collections[0], batch
        name = batch.query_ids[0].partition("/")[0]
        collection = next(c for c in self.collections if c.name == name)
        ids = [*batch.query_ids, *batch.doc_ids]
        if not all(i.startswith(collection.prefix) for i in ids):
            raise AssertionError(f"a batch mixes collections: {ids}")  # interleave keeps batches whole
        return collection, relabel(batch, lambda i: i.removeprefix(collection.prefix))


def load_training_data(config: TrainingConfig, info: DistributedInfo) -> TrainingData:
    """Every training collection of `config.dataset`, checked (each exists and has the training split)
    before any is read further."""
    names = collection_names(config.dataset)
    several = len(names) > 1
    if several and config.hard_negatives not in (None, "bm25"):
        raise SbmoeError(
            f"hard_negatives {config.hard_negatives!r}: a run file holds one collection's ids; with several "
            f"collections ({config.dataset}) use hard_negatives: bm25 (mined per collection)"
        )
    if config.batch_size % info.world_size:
        raise SbmoeError(
            f"batch_size {config.batch_size} must be divisible by the {info.world_size} processes"
        )
    datasets = []
    for name in names:
        try:
            dataset = load_dataset(name, config.data_dir)
            dataset.qrels(config.train_split)  # a missing split is an error now, not after the others
        except SbmoeError as error:
            if not several:
                raise
            raise SbmoeError(f"training collection {name!r} of {config.dataset!r}: {error}") from error
        datasets.append(dataset)
    # Several: each collection is known by its name as given (a folder's last part), also in the logs.
    short = [Path(name).name for name in names] if several else [datasets[0].name]
    if len(set(short)) < len(short):
        raise SbmoeError(
            f"dataset {config.dataset!r}: two collections share the name {short}; their ids are told apart "
            "by it"
        )
    return TrainingData(
        [
            _collection_data(config, dataset, name, f"{name}/" if several else "", info)
            for name, dataset in zip(short, datasets, strict=True)
        ]
    )


def _collection_data(
    config: TrainingConfig, dataset: BeirDataset, name: str, prefix: str, info: DistributedInfo
) -> CollectionData:
    """One collection's examples and validation (its dev split if any, else held-out training queries),
    hard negatives and validation documents."""
    queries, doc_ids = dataset.queries, set(dataset.corpus.ids)
    train_qrels = _training_qrels(config, dataset)
    examples = training_examples(train_qrels, queries, doc_ids, config.train_split)
    validation_split = config.validation_split
    if validation_split is None and "dev" in dataset.splits() and config.train_split != "dev":
        validation_split = "dev"
    if validation_split is not None:
        validation = training_examples(dataset.qrels(validation_split), queries, doc_ids, validation_split)
        validation_qrels = dataset.qrels(validation_split)
        train_examples = examples
        _log_overlap(dataset.name, validation_split, validation, train_examples)
    else:
        train_examples, validation = _hold_out(examples, config, dataset.name)
        validation_qrels = {e.query_id: train_qrels[e.query_id] for e in validation}
    if len(train_examples) < config.batch_size:
        raise SbmoeError(
            f"batch_size {config.batch_size} is larger than the {len(train_examples)} training queries of "
            f"{dataset.name}/{config.train_split} (after holding out validation); lower --batch-size"
        )
    negatives = None
    if config.num_hard_negatives and config.hard_negatives:
        qrels = dataset.qrels(config.train_split)
        if config.hard_negatives == "bm25":
            negatives = mine_bm25_negatives(
                dataset.corpus, dataset.queries, qrels, depth=config.hard_negative_depth,
                progress=config.progress and info.is_main,
            )  # fmt: skip
        else:
            negatives = load_negatives_run(config.hard_negatives, qrels, depth=config.hard_negative_depth)
    doc_rows = {doc_id: row for row, doc_id in enumerate(dataset.corpus.ids)}
    validation_doc_ids = _validation_documents(dataset.corpus.ids, validation, config)
    return CollectionData(
        name, prefix, dataset, train_examples, validation, validation_qrels, negatives, doc_rows,
        validation_doc_ids,
    )  # fmt: skip


def _training_qrels(config: TrainingConfig, dataset: BeirDataset) -> dict[str, dict[str, int]]:
    """The training split's judgements, without the queries that share a relevant document with the split
    `exclude_positives_of` names (if any)."""
    qrels = dataset.qrels(config.train_split)
    if config.exclude_positives_of is None:
        return qrels
    if config.exclude_positives_of == config.train_split:
        raise SbmoeError(f"exclude_positives_of {config.exclude_positives_of!r} is the training split itself")
    kept, dropped = exclude_sharing(qrels, dataset.qrels(config.exclude_positives_of))
    logger.info(
        "%s: %d of %d %s queries share a relevant document with %s and are left out (%d remain)",
        dataset.name, len(dropped), len(qrels), config.train_split, config.exclude_positives_of, len(kept),
    )  # fmt: skip
    if not kept:
        raise SbmoeError(
            f"{dataset.name}: every {config.train_split} query shares a relevant document with "
            f"{config.exclude_positives_of}; exclude_positives_of leaves nothing to train on"
        )
    return kept


def _hold_out(
    examples: list[Example], config: TrainingConfig, name: str
) -> tuple[list[Example], list[Example]]:
    """(training, validation) examples: `config.validation_share` of the queries held out as
    `config.validation_holdout` says; a "documents" hold-out the collection cannot give falls back to
    "queries", with a warning."""
    positives = {e.query_id: e.positives for e in examples}
    kind = config.validation_holdout
    split = hold_out(positives, config.validation_share, config.seed, kind)
    if split is None:
        logger.warning(
            "%s: no document-disjoint validation hold-out of %.0f %% exists (queries linked by shared "
            "positives form one large group); holding out random queries, whose positives training may see",
            name, 100 * config.validation_share,
        )  # fmt: skip
        kind = "queries"
        split = hold_out(positives, config.validation_share, config.seed, kind)
    by_id = {e.query_id: e for e in examples}
    train, held = ([by_id[q] for q in ids] for ids in split)
    logger.info("%s: %d validation queries held out (%s hold-out)", name, len(held), kind)
    return train, held


def _log_overlap(name: str, split: str, validation: list[Example], train: list[Example]) -> None:
    """Say how many validation queries share a relevant document with a training query (they reward
    memorising the training positives)."""
    seen = {doc for e in train for doc in e.positives}
    sharing = sum(1 for e in validation if seen & set(e.positives))
    if sharing:
        logger.info(
            "%s: %d of %d %s queries share a relevant document with a training query",
            name, sharing, len(validation), split,
        )  # fmt: skip


def training_batches(config: TrainingConfig, data: TrainingData, epoch: int, world_size: int) -> list[Batch]:
    """The epoch's batches: each collection's as if it were alone, then (several) interleaved."""
    hard = config.num_hard_negatives if config.hard_negatives else 0
    batches_of = []
    for collection in data.collections:
        batches = epoch_batches(
            collection.train, config.batch_size, config.seed, epoch, negatives=collection.negatives,
            num_negatives=hard, all_doc_ids=collection.dataset.corpus.ids, world_size=world_size,
        )  # fmt: skip
        if collection.prefix:  # "alpha/q1", "beta/q1": ids of different collections never clash
            batches = [relabel(batch, collection.prefix.__add__) for batch in batches]
        batches_of.append(batches)
    return interleave(batches_of, config.seed, epoch)


def _validation_documents(all_ids: list[str], validation: list[Example], config: TrainingConfig) -> list[str]:
    """All documents (frozen encoder: they cost nothing), or the validation positives plus a fixed random
    sample of distractors (the encoder must re-encode them at every validation)."""
    limit = config.validation_documents
    if limit is None and config.freeze_encoder:
        return list(all_ids)
    limit = DEFAULT_VALIDATION_DOCUMENTS if limit is None else limit
    positives = {doc for e in validation for doc in e.positives}
    generator = torch.Generator().manual_seed(config.seed + 1)
    sample = [all_ids[i] for i in torch.randperm(len(all_ids), generator=generator)[:limit].tolist()]
    return sorted(positives | set(sample))
