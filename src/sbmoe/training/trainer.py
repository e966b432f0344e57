"""`train(config)`: the training loop, top to bottom.

`config.dataset` names one collection, or several joined by "+" (`sbmoe.training.data.collection_names`):
then every batch holds one collection's queries, the batches of all collections are interleaved, and
validation is each collection's own (the validation metric is their mean).

Output folder (DIR):
    config.json, model.safetensors, tokenizer files   the selected model (best validation nDCG@10, or last)
    training_config.json                                the resolved TrainingConfig and provenance
    train_log.jsonl                                     one line per step and per validation
    best/                                               the best model so far (selection "best")
    checkpoints/step-NNNNNNN/                           the last checkpoint: model, optimizer, scheduler, RNG

Every write is atomic (a folder staged beside and renamed; files replaced in one step), so a run killed at
any moment leaves its last checkpoint loadable and `--resume` continues from it with the same batches,
noise and dropout it would have had.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase, get_scheduler

from sbmoe.data import BeirDataset, load_dataset
from sbmoe.distributed import DistributedInfo, barrier, init_distributed
from sbmoe.errors import SbmoeError
from sbmoe.evaluation.metrics import evaluate_run
from sbmoe.io import atomic_write_text, provenance, staged_folder, write_json
from sbmoe.modeling import SBMoEModel, build_model, load_model
from sbmoe.modeling.block_init import init_prototypes, upcycle
from sbmoe.modeling.loading import is_sbmoe_folder
from sbmoe.modeling.moe import noise_weight as routing_noise_weight
from sbmoe.modeling.precision import encoder_autocast, resolve_dtype
from sbmoe.progress import progress_bar
from sbmoe.retrieval.encode import (
    EmbeddingCache,
    apply_head,
    default_device,
    encode_cached,
    encode_pooled,
    text_routing_keys,
)
from sbmoe.retrieval.search import exact_search, to_run
from sbmoe.training.config import FIELD_NAMES, RESUMABLE_FIELDS, TrainingConfig, upgrade_legacy_settings
from sbmoe.training.data import (
    Batch,
    Example,
    collection_names,
    epoch_batches,
    hold_out,
    interleave,
    relabel,
    shard,
    training_examples,
)
from sbmoe.training.distributed import (
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_values,
    gather_with_grad,
)
from sbmoe.training.losses import contrastive_loss, negative_mask
from sbmoe.training.negatives import Negatives, load_negatives_run, mine_bm25_negatives

logger = logging.getLogger(__name__)

VALIDATION_METRIC = "ndcg@10"
DEFAULT_VALIDATION_DOCUMENTS = 1000  # distractors per validation when the encoder trains


@dataclass
class TrainerState:
    """Where training is; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # batches of `epoch` already done
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


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
    pooled: dict[str, tuple[dict[str, int], torch.Tensor]] | None = None  # kind -> (id -> row, [N, H])
    # RANDOM-GATE's routing keys of the validation texts, (documents, queries): fixed, so computed once
    validation_keys: tuple[np.ndarray, np.ndarray] | None = None


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


def train(config: TrainingConfig, resume: bool = False) -> dict[str, Any]:
    """Train as `config` says; returns a summary. Raises SbmoeError on bad input before writing anything."""
    info = init_distributed()
    output = Path(config.output_dir)
    checkpoint = _check_output(output, config, resume)

    data = _training_data(config, info)
    torch.manual_seed(config.seed)
    model, tokenizer = build_model(
        config.base,
        use_moe=config.uses_moe,
        seed=config.seed,
        trust_remote_code=config.trust_remote_code,
        encoder_settings=config.encoder_settings(),
        **(config.model_settings() if config.uses_moe else {}),
    )
    _upcycle(model, config)
    device = default_device() if not torch.cuda.is_available() else torch.device("cuda", info.local_rank)
    model.to(device)
    if config.freeze_encoder:
        model.encoder.requires_grad_(False)
        for collection in data.collections:
            collection.pooled = _pool_everything(model, tokenizer, collection, config, device)
    if checkpoint is None:  # a checkpoint holds the prototypes
        _init_prototypes(model, tokenizer, data, config, device)

    batches_per_epoch = len(_batches(config, data, epoch=0, world_size=info.world_size))
    total_steps = batches_per_epoch * config.epochs
    optimizer, scheduler = _optimizer(model, config, total_steps=total_steps)
    noise_generator = torch.Generator().manual_seed(config.seed)
    state = TrainerState()
    if checkpoint is not None:
        state = _load_checkpoint(checkpoint, model, optimizer, scheduler, noise_generator)
        logger.info("Resuming from %s (epoch %d, step %d)", checkpoint, state.epoch + 1, state.step_in_epoch)
    elif info.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / "training_config.json", {"config": config.to_dict(), "provenance": provenance()})
    barrier(info)
    log = _Log(output / "train_log.jsonl", info.is_main, state.global_step, config.tensorboard)
    trainable = [p for p in model.parameters() if p.requires_grad]
    logger.info(
        "Training %s on %s: %d queries (%d validation), %d steps per epoch, %s trainable parameters%s",
        config.system, config.dataset, sum(len(c.train) for c in data.collections),
        sum(len(c.validation) for c in data.collections), batches_per_epoch,
        f"{sum(p.numel() for p in trainable):,}",
        " (frozen encoder: cached pooled vectors)" if config.freeze_encoder else "",
    )  # fmt: skip

    while state.epoch < config.epochs and not state.stopped_early:
        batches = _batches(config, data, state.epoch, info.world_size)
        model.train()
        bar = progress_bar(
            total=len(batches), initial=state.step_in_epoch, desc=f"Epoch {state.epoch + 1}/{config.epochs}",
            unit="step", progress=config.progress and info.is_main,
        )  # fmt: skip
        for batch in batches[state.step_in_epoch :]:
            started = time.perf_counter()
            weight = _noise_weight(model, state.global_step, total_steps)
            parts, routing = _train_step(
                model, tokenizer, batch, data, config, info, noise_generator, device, noise_weight=weight
            )
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step_in_epoch += 1
            state.global_step += 1
            pairs_per_second = len(batch.query_ids) / (time.perf_counter() - started)
            log.step(state, parts, optimizer, routing, pairs_per_second)
            bar.set_postfix(loss=f"{parts['total']:.4f}", pairs_s=f"{pairs_per_second:.1f}")
            bar.update(1)
            if config.checkpoint_every_steps and state.global_step % config.checkpoint_every_steps == 0:
                _save_checkpoint(output, model, tokenizer, optimizer, scheduler, noise_generator, state, info)
        bar.close()
        _end_of_epoch(model, tokenizer, data, config, state, output, info, device, log)
        state.epoch += 1
        state.step_in_epoch = 0
        _save_checkpoint(output, model, tokenizer, optimizer, scheduler, noise_generator, state, info)

    summary = _finish(model, tokenizer, config, state, output, info)
    log.close()
    return summary


# ---------------------------------------------------------------------------------------------- inputs


def _comparable(saved: dict[str, Any], where: Path) -> dict[str, Any]:
    """A saved training config as this version would resolve it: old key names upgraded, fields added
    since then at their defaults (which reproduce the old behaviour)."""
    saved = upgrade_legacy_settings(saved, str(where), warn=False)
    try:
        return TrainingConfig(**{key: value for key, value in saved.items() if key in FIELD_NAMES}).to_dict()
    except (TypeError, ValueError):
        return saved  # compared as written: whatever differs is reported


def _check_output(output: Path, config: TrainingConfig, resume: bool) -> Path | None:
    """Refuse to overwrite; on resume, check the configuration and return the last checkpoint (or None)."""
    saved_config = output / "training_config.json"
    if not resume:
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise SbmoeError(
                f"{output} already exists and is not empty; use --resume to continue it, or another folder"
            )
        return None
    if not saved_config.is_file():
        if output.exists() and any(output.iterdir()):
            raise SbmoeError(
                f"{output} holds no training_config.json: not a training folder, refusing to resume"
            )
        return None
    saved = _comparable(json.loads(saved_config.read_text(encoding="utf-8"))["config"], saved_config)
    current = config.to_dict()
    differing = sorted(key for key in FIELD_NAMES - RESUMABLE_FIELDS if saved.get(key) != current.get(key))
    if differing:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in differing)
        raise SbmoeError(
            f"{output} was trained with a different configuration ({details}); refusing to resume"
        )
    checkpoints = sorted((output / "checkpoints").glob("step-*"))
    return checkpoints[-1] if checkpoints else None


def _training_data(config: TrainingConfig, info: DistributedInfo) -> TrainingData:
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
    query_ids, doc_ids = set(dataset.queries), set(dataset.corpus.ids)
    examples = training_examples(dataset.qrels(config.train_split), query_ids, doc_ids, config.train_split)
    validation_split = config.validation_split
    if validation_split is None and "dev" in dataset.splits() and config.train_split != "dev":
        validation_split = "dev"
    if validation_split is not None:
        validation = training_examples(dataset.qrels(validation_split), query_ids, doc_ids, validation_split)
        validation_qrels = dataset.qrels(validation_split)
        train_examples = examples
    else:
        train_examples, validation = hold_out(examples, config.validation_share, config.seed)
        train_qrels = dataset.qrels(config.train_split)
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


def _batches(config: TrainingConfig, data: TrainingData, epoch: int, world_size: int) -> list[Batch]:
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


def _pool_everything(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    collection: CollectionData,
    config: TrainingConfig,
    device,
) -> dict[str, tuple[dict[str, int], torch.Tensor]]:
    """Frozen encoder: the pooled vector of every query and document of a collection, encoded once (and
    cached on disk, under the collection's own ids: shared with evaluation)."""
    cache = EmbeddingCache()
    corpus, queries = collection.dataset.corpus, collection.dataset.queries
    wanted = sorted({e.query_id for e in (*collection.train, *collection.validation)})
    pooled = {}
    for kind, ids, texts in (
        ("document", corpus.ids, corpus.document_texts()),
        ("query", wanted, [queries[q] for q in wanted]),
    ):
        vectors, _ = encode_cached(
            model, tokenizer, ids, texts, kind,
            cache=cache, batch_size=config.encode_batch_size, device=device, progress=config.progress,
            dtype=resolve_dtype(config.dtype, device),
        )  # fmt: skip
        pooled[kind] = (
            {doc_id: row for row, doc_id in enumerate(ids)},
            torch.from_numpy(np.asarray(vectors)),
        )
    return pooled


def _upcycle(model: SBMoEModel, config: TrainingConfig) -> None:
    """Sparse upcycling (`init_from`): every expert starts as the trained single expert of another model.
    Problems are user errors, raised before training."""
    if config.init_from is None:
        return
    where = f"init_from {config.init_from}"
    if not is_sbmoe_folder(config.init_from):
        raise SbmoeError(
            f"{where}: not an SB-MoE model folder (no config.json with model_type 'sbmoe'); give a model "
            "with a 1-expert block, e.g. one trained with --system adapter"
        )
    source, _ = load_model(config.init_from, trust_remote_code=config.trust_remote_code)
    if source.moe is None:
        raise SbmoeError(
            f"{where}: the model has no MoE block; upcycling needs a block of 1 expert (an adapter)"
        )
    if source.config.hidden_size != model.config.hidden_size:
        raise SbmoeError(
            f"{where}: hidden size {source.config.hidden_size} differs from the base encoder's "
            f"{model.config.hidden_size}"
        )
    try:
        upcycle(model.moe, source.moe, torch.Generator().manual_seed(config.seed), config.upcycle_noise)
    except ValueError as error:
        raise SbmoeError(f"{where}: {error}") from error
    model.config.upcycled_from = str(config.init_from)
    logger.info("Upcycled %d experts from %s (noise %g)", model.moe.num_experts, where, config.upcycle_noise)


def _init_prototypes(
    model: SBMoEModel, tokenizer, data: TrainingData, config: TrainingConfig, device
) -> None:
    """Cluster routing: prototypes from k-means of the documents' pooled vectors, those of every training
    collection together (the frozen encoder's tables, else each corpus encoded once and cached on disk)."""
    if model.moe is None or model.moe.router != "cluster":
        return
    tables = []
    for collection in data.collections:
        if collection.pooled is not None:
            tables.append(collection.pooled["document"][1])
            continue
        corpus = collection.dataset.corpus
        pooled, _ = encode_cached(
            model, tokenizer, corpus.ids, corpus.document_texts(), "document",
            cache=EmbeddingCache(), batch_size=config.encode_batch_size, device=device,
            progress=config.progress, dtype=resolve_dtype(config.dtype, device),
        )  # fmt: skip
        tables.append(torch.from_numpy(np.asarray(pooled)))
    vectors = torch.cat(tables)  # [documents of all collections, H]
    assignment = init_prototypes(
        model.moe, vectors, seed=config.seed, balanced=model.moe.settings.cluster_balanced
    )
    sizes = torch.bincount(assignment, minlength=model.moe.num_experts).tolist()
    logger.info(
        "Cluster routing: prototypes from k-means of %d documents, cluster sizes %s", len(vectors), sizes
    )


def _optimizer(model: SBMoEModel, config: TrainingConfig, total_steps: int):
    """AdamW with the encoder and the MoE block at their own learning rates (as the paper)."""
    groups = []
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    if encoder:
        groups.append({"params": encoder, "lr": config.encoder_lr, "name": "encoder"})
    if model.moe is not None:
        block = [p for p in model.moe.parameters() if p.requires_grad]  # the faithful noise net is frozen
        groups.append({"params": block, "lr": config.moe_lr, "name": "moe"})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[config.schedule]
    warmup = math.ceil(config.warmup_ratio * total_steps)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return optimizer, scheduler


# ------------------------------------------------------------------------------------------------ step


def _train_step(
    model: SBMoEModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: Batch,
    data: TrainingData,
    config: TrainingConfig,
    info: DistributedInfo,
    noise_generator: torch.Generator,
    device: torch.device,
    noise_weight: float = 1.0,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Forward and backward of one global batch; this process handles its shard. Returns loss parts and
    routing statistics (summed over processes). noise_weight: the routing noise's factor at this step."""
    collection, batch = data.resolve(batch)  # one collection's queries and documents, in its own ids
    size, num_docs = len(batch.query_ids), len(batch.doc_ids)
    # Routing noise for every text of the global batch, drawn in one order whatever the process count.
    num_experts = model.config.num_experts if model.moe is not None else 1
    query_noise = torch.randn(size, num_experts, generator=noise_generator)
    doc_noise = torch.randn(num_docs, num_experts, generator=noise_generator)
    num_negatives = (num_docs - size) // size
    query_ids, positive_ids, negative_ids = shard(batch, info.rank, info.world_size, num_negatives)
    per_rank = size // info.world_size
    lo, hi = info.rank * per_rank, (info.rank + 1) * per_rank
    negative_noise = doc_noise[size:][lo * num_negatives : hi * num_negatives]

    w, dtype = noise_weight, resolve_dtype(config.dtype, device)
    queries = _embed(model, tokenizer, query_ids, "query", collection, query_noise[lo:hi], device, w, dtype)
    positives = _embed(
        model, tokenizer, positive_ids, "document", collection, doc_noise[lo:hi], device, w, dtype
    )
    negatives = (
        _embed(model, tokenizer, negative_ids, "document", collection, negative_noise, device, w, dtype)
        if negative_ids
        else None
    )
    q = gather_with_grad(queries.embeddings.float(), info)  # [B, H]
    d = gather_with_grad(positives.embeddings.float(), info)  # [B, H]
    if negatives is not None:
        d = torch.cat([d, gather_with_grad(negatives.embeddings.float(), info)])  # [B + B * negatives, H]
    mask = negative_mask(batch.positives_of, batch.doc_ids) if config.mask_duplicate_positives else None
    aux = _local_aux_loss(queries, positives, negatives)
    result = contrastive_loss(q, d, mask, config.temperature, symmetric=config.symmetric, aux_loss=aux)
    # Every process computes the same global loss: backpropagate a 1/world share and sum the gradients.
    (result.loss / info.world_size).backward()
    all_reduce_gradients([p for p in model.parameters() if p.requires_grad], info)
    return result.parts, _routing_stats(model, (queries, positives, negatives), info)


def _noise_weight(model: SBMoEModel, step: int, total_steps: int) -> float:
    """The routing noise's factor at `step` (`sbmoe.modeling.moe.noise_weight`); 1 without a block."""
    return 1.0 if model.moe is None else routing_noise_weight(model.moe.settings, step, total_steps)


def _embed(
    model, tokenizer, ids, kind, collection: CollectionData, noise, device, noise_weight=1.0, dtype=None
):
    """The head's output for `ids`: pooled vectors from the frozen table or the encoder (run in `dtype`,
    autocast for bfloat16), then the block in float32."""
    if collection.pooled is not None:
        rows, table = collection.pooled[kind]
        pooled = table[[rows[i] for i in ids]].to(device)
    else:
        texts = (
            [collection.dataset.queries[i] for i in ids]
            if kind == "query"
            else _document_texts(collection, ids)
        )
        tokens = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=model.config.max_length_for(kind),
            return_tensors="pt",
        ).to(device)
        with encoder_autocast(device, dtype or torch.float32):
            pooled = model.pool(tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids"))
        pooled = pooled.float()
    if model.moe is None:
        return model.head(pooled)
    return model.head(pooled, noise=noise.to(device), noise_weight=noise_weight)


def _document_texts(collection: CollectionData, ids: list[str]) -> list[str]:
    corpus, rows = collection.dataset.corpus, collection.doc_rows
    return [(corpus.titles[rows[i]] + " " + corpus.texts[rows[i]]).strip() for i in ids]


def _local_aux_loss(*outputs) -> torch.Tensor | None:
    """The weighted load-balancing term of this process's texts (always added, so a frozen gate still
    gets a zero gradient and weight decay, as in the authors' optimiser)."""
    terms = [o.aux_loss for o in outputs if o is not None and o.aux_loss is not None]
    return torch.stack(terms).mean() if terms else None


def _routing_stats(model: SBMoEModel, outputs, info: DistributedInfo) -> dict[str, torch.Tensor]:
    """Texts per top expert (a last bin for the null expert, if any) and the summed routing entropy, over
    all processes."""
    if model.moe is None:
        return {}
    n = model.moe.num_choices
    counts = torch.zeros(n)
    entropy = torch.zeros(1)
    for output in outputs:
        if output is None:
            continue
        counts += torch.bincount(output.selected_experts[:, 0].cpu(), minlength=n).float()
        probs = model.moe.probabilities(output.router_logits.detach().float()).cpu()
        entropy += -(probs * probs.clamp(min=1e-12).log()).sum()
    total = all_reduce_sum(torch.cat([counts, entropy]), info)
    return {"counts": total[:n], "entropy": total[n] / total[:n].sum().clamp(min=1)}


# ------------------------------------------------------------------------------------ epochs and saving


def _end_of_epoch(model, tokenizer, data, config, state, output, info, device, log) -> None:
    """Validate (main process), keep the best model, decide early stopping (shared with every process)."""
    improved, metric = 0.0, float("nan")
    if info.is_main:
        metrics = validate(model, tokenizer, data, config, device)
        metric = metrics[VALIDATION_METRIC]
        improved = float(state.best_metric is None or metric > state.best_metric)
        log.validation(state, metrics, bool(improved))
        if improved:
            state.best_metric, state.best_epoch = metric, state.epoch
            if config.selection == "best":
                _replace_folder(output / "best", lambda staging: _save_model(model, tokenizer, staging))
    improved, metric = broadcast_values([improved, metric], info)
    state.history.append({"epoch": state.epoch, VALIDATION_METRIC: metric})
    if improved:
        state.best_metric, state.best_epoch, state.epochs_without_improvement = metric, state.epoch, 0
    else:
        state.epochs_without_improvement += 1
    patience = config.early_stopping_patience
    if config.selection == "best" and patience and state.epochs_without_improvement >= patience:
        state.stopped_early = True
        logger.info("Stopping early: no %s improvement for %d epochs", VALIDATION_METRIC, patience)


def validate(model, tokenizer, data: TrainingData, config: TrainingConfig, device) -> dict[str, float]:
    """Metrics of the validation queries against their corpus. Several collections: each is validated on
    its own, and the result holds each metric's mean over the collections and every collection's own
    metrics as "<collection>/<metric>"."""
    per_collection = {
        collection.name: _validate_collection(model, tokenizer, collection, config, device)
        for collection in data.collections
    }
    model.train()
    if len(per_collection) == 1:
        return next(iter(per_collection.values()))
    names = list(next(iter(per_collection.values())))
    means = {name: statistics.fmean(metrics[name] for metrics in per_collection.values()) for name in names}
    return means | {
        f"{collection}/{name}": value
        for collection, metrics in per_collection.items()
        for name, value in metrics.items()
    }


def _validate_collection(
    model, tokenizer, collection: CollectionData, config: TrainingConfig, device
) -> dict[str, float]:
    """One collection's validation queries searched against its corpus (all of it, or positives + sampled
    distractors)."""
    queries = collection.dataset.queries
    query_ids = [e.query_id for e in collection.validation]
    doc_ids = collection.validation_doc_ids
    if collection.pooled is not None:
        rows, table = collection.pooled["document"]
        pooled_docs = table[[rows[i] for i in doc_ids]].numpy()
        rows, table = collection.pooled["query"]
        pooled_queries = table[[rows[i] for i in query_ids]].numpy()
    else:
        dtype = resolve_dtype(config.dtype, device)
        pooled_docs = encode_pooled(
            model, tokenizer, _document_texts(collection, doc_ids), "document",
            batch_size=config.encode_batch_size, device=device, progress=False, dtype=dtype,
        )  # fmt: skip
        pooled_queries = encode_pooled(
            model, tokenizer, [queries[q] for q in query_ids], "query",
            batch_size=config.encode_batch_size, device=device, progress=False, dtype=dtype,
        )  # fmt: skip
    doc_keys = query_keys = None
    if model.moe is not None and model.config.default_mode == "random":  # RANDOM-GATE routes by text
        if collection.validation_keys is None:  # tokenising the corpus at every epoch would dominate
            limits = model.config.document_max_length, model.config.query_max_length
            collection.validation_keys = (
                text_routing_keys(tokenizer, _document_texts(collection, doc_ids), limits[0]),
                text_routing_keys(tokenizer, [queries[q] for q in query_ids], limits[1]),
            )
        doc_keys, query_keys = collection.validation_keys
    doc_embeddings, _ = apply_head(model, pooled_docs, keys=doc_keys)
    query_embeddings, _ = apply_head(model, pooled_queries, keys=query_keys)
    scores, indices = exact_search(query_embeddings, doc_embeddings, k=100)
    run = to_run(query_ids, doc_ids, scores, indices)
    qrels = {q: collection.validation_qrels[q] for q in query_ids}
    return evaluate_run(run, qrels).aggregate


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


def _save_model(model: SBMoEModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _replace_folder(folder: Path, write) -> None:
    """Write a new version of `folder` beside it, then swap it in."""
    retired = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    staging = folder.with_name(f".{folder.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    with staged_folder(staging) as tmp:
        write(tmp)
    if folder.exists():
        os.replace(folder, retired)
    os.replace(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)


def _save_checkpoint(output, model, tokenizer, optimizer, scheduler, noise_generator, state, info) -> None:
    """The checkpoint of `state.global_step`; older checkpoints are removed once it is complete."""
    if info.is_main:
        folder = output / "checkpoints" / f"step-{state.global_step:07d}"
        if not folder.exists():
            with staged_folder(folder) as staging:
                _save_model(model, tokenizer, staging)
                torch.save(optimizer.state_dict(), staging / "optimizer.pt")
                (staging / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
                save_file(
                    {"noise": noise_generator.get_state(), "torch": torch.get_rng_state()},
                    staging / "rng.safetensors",
                )
                (staging / "state.json").write_text(json.dumps(state.__dict__, indent=2))
            for older in sorted((output / "checkpoints").glob("step-*")):
                if older != folder:
                    shutil.rmtree(older, ignore_errors=True)
    barrier(info)


def _load_checkpoint(folder: Path, model, optimizer, scheduler, noise_generator) -> TrainerState:
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    rng = load_file(folder / "rng.safetensors")
    noise_generator.set_state(rng["noise"])
    torch.set_rng_state(rng["torch"])
    return TrainerState(**json.loads((folder / "state.json").read_text()))


def _finish(model, tokenizer, config, state, output, info) -> dict[str, Any]:
    """Put the selected model at the top of the output folder."""
    summary = {
        "output_dir": str(output),
        "selection": config.selection,
        "epochs_run": state.epoch,
        "best_epoch": None if state.best_epoch is None else state.best_epoch + 1,
        f"best_validation_{VALIDATION_METRIC}": state.best_metric,
        "stopped_early": state.stopped_early,
        "history": state.history,
    }
    if info.is_main:
        source = output / "best"
        if config.selection == "best" and source.is_dir():
            files = sorted(p for p in source.iterdir() if p.is_file())
            for path in files:  # weights before config, each replaced in one step
                shutil.copy2(path, output / f".{path.name}.tmp")
            for path in sorted(files, key=lambda p: p.name == "config.json"):
                os.replace(output / f".{path.name}.tmp", output / path.name)
        else:
            with staged_folder(output / ".final") as staging:
                _save_model(model, tokenizer, staging)
            for path in sorted((output / ".final").iterdir(), key=lambda p: p.name == "config.json"):
                os.replace(path, output / path.name)
            shutil.rmtree(output / ".final", ignore_errors=True)
        write_json(output / "training_summary.json", summary)
    barrier(info)
    return summary


class _Log:
    """train_log.jsonl (main process only), and TensorBoard when asked for."""

    def __init__(self, path: Path, enabled: bool, resume_step: int, tensorboard: bool):
        self.path, self.enabled = path, enabled
        self.writer = None
        if not enabled:
            return
        if path.exists():  # drop lines past the checkpoint a resumed run continues from
            kept = [
                line for line in path.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line).get("global_step", 0) <= resume_step
            ]  # fmt: skip
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise SbmoeError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard"
                ) from error
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def step(self, state, parts, optimizer, routing, pairs_per_second) -> None:
        if not self.enabled:
            return
        record = {
            "type": "step",
            "epoch": state.epoch + 1,
            "global_step": state.global_step,
            **{f"loss/{name}": value for name, value in parts.items()},
            **{f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups},
            "pairs_per_second": round(pairs_per_second, 2),
            "time": round(time.time(), 3),
        }
        if routing:
            counts = routing["counts"]
            record["expert_share"] = [round(share, 4) for share in (counts / counts.sum()).tolist()]
            record["routing_entropy"] = round(float(routing["entropy"]), 4)
        self._write(record)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, state.global_step)

    def validation(self, state, metrics: dict[str, float], improved: bool) -> None:
        if not self.enabled:
            return
        self._write({"type": "validation", "epoch": state.epoch + 1, "global_step": state.global_step,
                     **metrics, "improved": improved})  # fmt: skip
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"validation/{key}", value, state.global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
