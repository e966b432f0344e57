"""`train(config)`: the training loop, top to bottom.

`config.dataset` names one collection, or several joined by "+" (`sbmoe.training.data.collection_names`):
then every batch holds one collection's queries, the batches of all collections are interleaved, and
validation is each collection's own (the validation metric is their mean).

Output folder (DIR):
    config.json, model.safetensors, tokenizer files   the selected model (best validation nDCG@10, or last)
    training_config.json                                the resolved TrainingConfig and provenance
    training_summary.json                               epochs run, best epoch, validation history
    train_log.jsonl                                     one line per step and per validation (`log.py`)
    best/                                               the best model so far (selection "best")
    checkpoints/step-NNNNNNN/                           the last checkpoint (`checkpoint.py`)

Every write is atomic (a folder staged beside and renamed; files replaced in one step), so a run killed at
any moment leaves its last checkpoint loadable and `--resume` continues from it with the same batches,
noise and dropout it would have had. An epoch end writes a checkpoint when the last one is at least
`CHECKPOINT_INTERVAL_SECONDS` old, and the last epoch always does: a killed run loses at most about that
much work, and a frozen-encoder run, whose epochs take milliseconds, does not spend its time writing them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedTokenizerBase, get_scheduler

from sbmoe.distributed import DistributedInfo, barrier, init_distributed
from sbmoe.errors import SbmoeError
from sbmoe.io import provenance, write_json
from sbmoe.modeling import SBMoEModel, build_model, load_model
from sbmoe.modeling.block_init import init_prototypes, upcycle
from sbmoe.modeling.loading import is_sbmoe_folder
from sbmoe.modeling.model import SBMoEOutput
from sbmoe.modeling.moe import noise_weight as routing_noise_weight
from sbmoe.modeling.precision import encoder_autocast, resolve_dtype
from sbmoe.modeling.routing_stats import entropy_terms, expert_counts
from sbmoe.progress import progress_bar
from sbmoe.retrieval.encode import EmbeddingCache, default_device, encode_cached
from sbmoe.training.checkpoint import (
    Resumable,
    TrainerState,
    check_output,
    device_generator,
    load_checkpoint,
    remove_staging_leftovers,
    save_best_model,
    save_checkpoint,
    save_final_model,
)
from sbmoe.training.config import TrainingConfig
from sbmoe.training.data import (
    Batch,
    CollectionData,
    TrainingData,
    collection_names,
    load_training_data,
    shard,
    training_batches,
)
from sbmoe.training.distributed import (
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_values,
    gather_with_grad,
)
from sbmoe.training.log import TrainingLog
from sbmoe.training.losses import contrastive_loss, negative_mask
from sbmoe.training.tracking import check_trackers
from sbmoe.training.validation import validate

logger = logging.getLogger(__name__)

VALIDATION_METRIC = "ndcg@10"
CHECKPOINT_INTERVAL_SECONDS = 60.0  # an epoch end writes a checkpoint when the last one is this old


@dataclass
class ModelOnDevice:
    """The model being trained, its tokenizer, the device it runs on, the encoder's compute dtype
    (`config.dtype` resolved for that device) and the parameters that train (listed once: walking the
    encoder's parameters at every step took most of a second of a frozen SciFact run)."""

    model: SBMoEModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    trainable: list[torch.nn.Parameter] = field(default_factory=list)


@dataclass
class TrainingRun:
    """What this process trains, on what, and where the run writes: fixed from start to end."""

    config: TrainingConfig
    info: DistributedInfo  # this process among the run's processes
    data: TrainingData
    output: Path


def train(config: TrainingConfig, resume: bool = False) -> dict[str, Any]:
    """Train as `config` says; returns a summary. Raises SbmoeError on bad input before writing anything."""
    info = init_distributed()
    output = Path(config.output_dir)
    checkpoint = check_output(output, config, resume)
    if info.is_main:
        check_trackers(config.report_to)  # a missing package stops the run before it writes anything
    if resume and info.is_main:
        remove_staging_leftovers(output)

    run = TrainingRun(config, info, load_training_data(config, info), output)
    net = _model_on_device(config, info)
    if config.freeze_encoder:
        for collection in run.data.collections:
            collection.pool_everything(
                net.model, net.tokenizer, batch_size=config.encode_batch_size, device=net.device,
                progress=config.progress, dtype=net.dtype,
            )  # fmt: skip
    if checkpoint is None:  # a checkpoint holds the prototypes
        _init_prototypes(net, run.data, config)

    batches_per_epoch = len(training_batches(config, run.data, epoch=0, world_size=info.world_size))
    total_steps = batches_per_epoch * config.epochs
    optimizer, scheduler = _optimizer(net.model, config, total_steps=total_steps)
    resumable = Resumable(
        optimizer,
        scheduler,
        noise_generator=torch.Generator().manual_seed(config.seed),
        device_generator=device_generator(net.device),
    )
    if checkpoint is not None:
        load_checkpoint(checkpoint, net.model, resumable, info)
        logger.info(
            "Resuming from %s (epoch %d, step %d)",
            checkpoint, resumable.state.epoch + 1, resumable.state.step_in_epoch,
        )  # fmt: skip
    elif info.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / "training_config.json", {"config": config.to_dict(), "provenance": provenance()})
    barrier(info)
    log = TrainingLog(
        output / "train_log.jsonl",
        info.is_main,
        resumable.state.global_step,
        config.report_to,
        config.to_dict(),
    )
    # The trackers' runs end however training does.
    with log, _intra_op_threads(_loop_threads(config)):
        _train_epochs(run, net, resumable, total_steps, log)
        return _finish(run, net, resumable.state)


def _loop_threads(config: TrainingConfig) -> int | None:
    """torch's CPU threads in the loop: `config.cpu_threads`, else 1 for a frozen encoder, else as set.

    A frozen-encoder step multiplies [32, 384] vectors by a block of under a million parameters: each of
    its hundreds of operations is microseconds of arithmetic, and a second thread costs more to wake and
    join than it saves; when another job shares the cores, every operation also waits for the thread that
    was descheduled, and a frozen SciFact run took 3 to 11 times as long on 2 threads as on 1
    (benchmarks/frozen_train_speed.py, BENCHMARKS.md). The thread count can change the last bits of a
    product of a few rows (MKL's float32 products of 5-11 rows differ on 1 and 2 threads), and so a
    multi-expert run's weights: the count is a setting, saved with the run.
    """
    if config.cpu_threads is not None:
        return config.cpu_threads
    return 1 if config.freeze_encoder else None


@contextlib.contextmanager
def _intra_op_threads(count: int | None) -> Iterator[None]:
    """torch's CPU operations on `count` threads (None: as set) inside the block, restored afterwards."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_epochs(
    run: TrainingRun, net: ModelOnDevice, resumable: Resumable, total_steps: int, log: TrainingLog
) -> None:
    """The epochs left to train (all, or those after a checkpoint), each ending in validation and, when
    due (`_checkpoint_due`), a checkpoint; stops early when the selection says so."""
    config, info, output, state = run.config, run.info, run.output, resumable.state
    optimizer, scheduler = resumable.optimizer, resumable.scheduler
    trainable = net.trainable
    last_checkpoint = time.monotonic()
    logger.info(
        "Training %s on %s: %d queries (%d validation), %d steps per epoch, %s trainable parameters%s, %s",
        config.system, config.dataset, sum(len(c.train) for c in run.data.collections),
        sum(len(c.validation) for c in run.data.collections), total_steps // config.epochs,
        f"{sum(p.numel() for p in trainable):,}",
        " (frozen encoder: cached pooled vectors)" if config.freeze_encoder else "",
        f"process {info.rank} of {info.world_size} (collectives on {info.device})"
        if info.enabled else "1 process",
    )  # fmt: skip
    while state.epoch < config.epochs and not state.stopped_early:
        batches = training_batches(config, run.data, state.epoch, info.world_size)
        net.model.train()
        bar = progress_bar(
            total=len(batches), initial=state.step_in_epoch, desc=f"Epoch {state.epoch + 1}/{config.epochs}",
            unit="step", progress=config.progress and info.is_main,
        )  # fmt: skip
        for batch in batches[state.step_in_epoch :]:
            started = time.perf_counter()
            weight = _noise_weight(net.model, state.global_step, total_steps)
            parts, routing = _train_step(run, net, batch, resumable.noise_generator, noise_weight=weight)
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step_in_epoch += 1
            state.global_step += 1
            pairs_per_second = len(batch.query_ids) / (time.perf_counter() - started)
            learning_rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
            log.step(state, parts, learning_rates, routing, pairs_per_second)
            bar.set_postfix(loss=f"{parts['total']:.4f}", pairs_s=f"{pairs_per_second:.1f}", refresh=False)
            bar.update(1)
            if config.checkpoint_every_steps and state.global_step % config.checkpoint_every_steps == 0:
                save_checkpoint(output, net.model, net.tokenizer, resumable, info)
        bar.close()
        _end_of_epoch(run, net, state, log)
        state.epoch += 1
        state.step_in_epoch = 0
        if _checkpoint_due(run, state, time.monotonic() - last_checkpoint):
            save_checkpoint(output, net.model, net.tokenizer, resumable, info)
            last_checkpoint = time.monotonic()


def _checkpoint_due(run: TrainingRun, state: TrainerState, seconds_since_last: float) -> bool:
    """Whether this epoch end writes a checkpoint: after the last epoch (also an early stop), or when the
    last checkpoint is `CHECKPOINT_INTERVAL_SECONDS` old. The main process's clock decides for all."""
    last = state.epoch >= run.config.epochs or state.stopped_early
    due = last or seconds_since_last >= CHECKPOINT_INTERVAL_SECONDS
    (due,) = broadcast_values([float(due)], run.info)
    return bool(due)


# ----------------------------------------------------------------------------------------------- model


def _model_on_device(config: TrainingConfig, info: DistributedInfo) -> ModelOnDevice:
    """The model to train (upcycled if asked; its encoder frozen if asked) on this process's device."""
    model, tokenizer = _seeded_model(config)
    _upcycle(model, config)
    if config.freeze_encoder:
        model.encoder.requires_grad_(False)
    device = default_device() if not torch.cuda.is_available() else torch.device("cuda", info.local_rank)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return ModelOnDevice(model, tokenizer, device, resolve_dtype(config.dtype, device), trainable)


def _seeded_model(config: TrainingConfig) -> tuple[SBMoEModel, PreTrainedTokenizerBase]:
    """The model to train, with the run's one seeding: every draw below comes from `config.seed`.

    The global generator serves what cannot take a generator: weights transformers draws for a base that
    lacks them, then dropout. The block's initial weights come from a generator of their own, and the global
    generator then continues where that one stopped: the dropout stream runs have always had (the block was
    drawn from the global generator), so a seed gives the same run as before. The routing noise, upcycling
    and the validation sample take their own generators, seeded from `config.seed` where they are made.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model, tokenizer = build_model(
        config.base,
        use_moe=config.uses_moe,
        generator=generator,
        trust_remote_code=config.trust_remote_code,
        encoder_settings=config.encoder_settings(),
        **(config.model_settings() if config.uses_moe else {}),
    )
    torch.set_rng_state(generator.get_state())
    return model, tokenizer


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


def _init_prototypes(net: ModelOnDevice, data: TrainingData, config: TrainingConfig) -> None:
    """Cluster routing: prototypes from k-means of the documents' pooled vectors, those of every training
    collection together (the frozen encoder's tables, else each corpus encoded once and cached on disk)."""
    block = net.model.moe
    if block is None or block.router != "cluster":
        return
    tables = []
    for collection in data.collections:
        if collection.pooled is not None:
            tables.append(torch.from_numpy(collection.pooled["document"].pooled.vectors))
            continue
        corpus = collection.dataset.corpus
        pooled, _ = encode_cached(
            net.model, net.tokenizer, corpus.ids, corpus.document_texts(), "document",
            cache=EmbeddingCache(), batch_size=config.encode_batch_size, device=net.device,
            progress=config.progress, dtype=net.dtype,
        )  # fmt: skip
        tables.append(torch.from_numpy(pooled.vectors))
    vectors = torch.cat(tables)  # [documents of all collections, H]
    assignment = init_prototypes(block, vectors, seed=config.seed, balanced=block.settings.cluster_balanced)
    sizes = torch.bincount(assignment, minlength=block.num_experts).tolist()
    logger.info(
        "Cluster routing: prototypes from k-means of %d documents, cluster sizes %s", len(vectors), sizes
    )


def _optimizer(
    model: SBMoEModel, config: TrainingConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """AdamW with the encoder and the MoE block at their own learning rates (as the paper)."""
    groups = []
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    if encoder:
        groups.append({"params": encoder, "lr": config.encoder_lr, "name": "encoder"})
    if model.moe is not None:
        block = [p for p in model.moe.parameters() if p.requires_grad]  # the faithful noise net is frozen
        groups.append({"params": block, "lr": config.moe_lr, "name": "moe"})
    # foreach: the same arithmetic as the loop over tensors, bit for bit, one call per operation for all
    # of them (5-20 % faster on a frozen run's block); it holds a copy of the gradients more, so a
    # training encoder keeps torch's default.
    foreach = True if config.freeze_encoder else None
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay, foreach=foreach)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[config.schedule]
    warmup = math.ceil(config.warmup_ratio * total_steps)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return optimizer, scheduler


# ------------------------------------------------------------------------------------------------ step


def _train_step(
    run: TrainingRun,
    net: ModelOnDevice,
    batch: Batch,
    noise_generator: torch.Generator,
    noise_weight: float = 1.0,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Forward and backward of one global batch; this process handles its shard. Returns loss parts and
    routing statistics (summed over processes). noise_weight: the routing noise's factor at this step."""
    config, info, model = run.config, run.info, net.model
    collection, batch = run.data.resolve(batch)  # one collection's queries and documents, in its own ids
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

    w = noise_weight
    queries = _embed(net, collection, query_ids, "query", query_noise[lo:hi], w)
    positives = _embed(net, collection, positive_ids, "document", doc_noise[lo:hi], w)
    negatives = _embed(net, collection, negative_ids, "document", negative_noise, w) if negative_ids else None
    q = gather_with_grad(queries.embeddings.float(), info)  # [B, H]
    d = gather_with_grad(positives.embeddings.float(), info)  # [B, H]
    if negatives is not None:
        d = torch.cat([d, gather_with_grad(negatives.embeddings.float(), info)])  # [B + B * negatives, H]
    mask = negative_mask(batch.positives_of, batch.doc_ids) if config.mask_duplicate_positives else None
    aux = _local_aux_loss(queries, positives, negatives)
    result = contrastive_loss(q, d, mask, config.temperature, symmetric=config.symmetric, aux_loss=aux)
    # Every process computes the same global loss: backpropagate a 1/world share and sum the gradients.
    trainable = net.trainable
    loss = result.loss
    if not loss.requires_grad:  # every text of this shard took the null expert: no parameter was used
        loss = loss + 0.0 * sum(p.sum() for p in trainable)  # zero gradients, as any skipped block gets
    (loss / info.world_size).backward()
    all_reduce_gradients(trainable, info)
    return result.parts, _routing_stats(model, (queries, positives, negatives), info)


def _noise_weight(model: SBMoEModel, step: int, total_steps: int) -> float:
    """The routing noise's factor at `step` (`sbmoe.modeling.moe.noise_weight`); 1 without a block."""
    return 1.0 if model.moe is None else routing_noise_weight(model.moe.settings, step, total_steps)


def _embed(
    net: ModelOnDevice,
    collection: CollectionData,
    ids: list[str],
    kind: str,
    noise: torch.Tensor,
    noise_weight: float = 1.0,
) -> SBMoEOutput:
    """The head's output for `ids` ("query" or "document" ids of `collection`): pooled vectors from the
    frozen table or the encoder (run in `net.dtype`, autocast for bfloat16), then the block in float32.
    noise: [len(ids), N] routing noise."""
    model, device = net.model, net.device
    if collection.pooled is not None:
        pooled = collection.pooled[kind].vectors(ids).to(device)
    else:
        texts = (
            [collection.dataset.queries[i] for i in ids]
            if kind == "query"
            else collection.document_texts(ids)
        )
        tokens = net.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=model.config.max_length_for(kind),
            return_tensors="pt",
        ).to(device)
        with encoder_autocast(device, net.dtype):
            pooled = model.pool(tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids"))
        pooled = pooled.float()
    if not model.uses_block(kind):
        return model.head(pooled, kind=kind)
    return model.head(pooled, noise=noise.to(device), noise_weight=noise_weight, kind=kind)


def _local_aux_loss(*outputs: SBMoEOutput | None) -> torch.Tensor | None:
    """The weighted load-balancing term of this process's texts (always added, so a frozen gate still
    gets a zero gradient and weight decay, as in the authors' optimiser)."""
    terms = [o.aux_loss for o in outputs if o is not None and o.aux_loss is not None]
    return torch.stack(terms).mean() if terms else None


def _routing_stats(
    model: SBMoEModel, outputs: tuple[SBMoEOutput | None, ...], info: DistributedInfo
) -> dict[str, torch.Tensor]:
    """Texts per top expert (a last bin for the null expert, if any) and the mean routing entropy, over all
    processes (`sbmoe.modeling.routing_stats`)."""
    if model.moe is None:
        return {}
    block, n = model.moe, model.moe.num_choices
    counts = torch.zeros(n)
    entropy = torch.zeros(1)
    for output in outputs:
        if output is None or output.selected_experts is None:  # none, or documents of a query-side block
            continue
        top = expert_counts(output.selected_experts[:, 0], block.num_experts, block.has_null_expert)
        counts += torch.tensor(top, dtype=torch.float32)
        entropy += entropy_terms(block.probabilities(output.router_logits.detach().float()).cpu()).sum()
    total = all_reduce_sum(torch.cat([counts, entropy]), info)
    return {"counts": total[:n], "entropy": total[n] / total[:n].sum().clamp(min=1)}


# ----------------------------------------------------------------------------------------------- epochs


def _end_of_epoch(run: TrainingRun, net: ModelOnDevice, state: TrainerState, log: TrainingLog) -> None:
    """Validate (main process), keep the best model, decide early stopping (shared with every process);
    every `validate_every` epochs and after the last."""
    config, info = run.config, run.info
    epoch = state.epoch + 1
    if epoch % config.validate_every and epoch != config.epochs:
        return
    improved, metric = 0.0, float("nan")
    if info.is_main:
        metrics = validate(net.model, net.tokenizer, run.data, config, net.device)
        metric = metrics[VALIDATION_METRIC]
        improved = float(state.best_metric is None or metric > state.best_metric)
        log.validation(state, metrics, bool(improved))
        if improved:
            state.best_metric, state.best_epoch = metric, state.epoch
            if config.selection == "best":
                save_best_model(run.output, net.model, net.tokenizer)
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


def _card_training(config: TrainingConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """What the model card says of the run (`sbmoe.modeling.card`)."""
    return {
        "datasets": collection_names(config.dataset),
        "split": config.train_split,
        "training queries left out": (
            f"those sharing a relevant document with {config.exclude_positives_of}"
            if config.exclude_positives_of
            else "none"
        ),
        "validation hold-out": config.validation_split or config.validation_holdout,
        "system": config.system,
        "frozen encoder": config.freeze_encoder,
        "epochs": summary["epochs_run"],
        "selection": config.selection,
        "seed": config.seed,
        f"best validation {VALIDATION_METRIC}": summary[f"best_validation_{VALIDATION_METRIC}"],
        "command": "sbmoe train (its training_config.json is in this folder)",
    }


def _finish(run: TrainingRun, net: ModelOnDevice, state: TrainerState) -> dict[str, Any]:
    """Put the selected model at the top of the output folder and write the summary."""
    summary = {
        "output_dir": str(run.output),
        "selection": run.config.selection,
        "epochs_run": state.epoch,
        "best_epoch": None if state.best_epoch is None else state.best_epoch + 1,
        f"best_validation_{VALIDATION_METRIC}": state.best_metric,
        "stopped_early": state.stopped_early,
        "history": state.history,
    }
    if run.info.is_main:
        card = {"base_model": run.config.base, "training": _card_training(run.config, summary)}
        save_final_model(run.output, net.model, net.tokenizer, run.config.selection == "best", card)
        write_json(run.output / "training_summary.json", summary)
    barrier(run.info)
    return summary
