"""`sbmoe train`: the gate in each variant, resume after SIGKILL, one vs two processes, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import make_synthetic_beir, make_tiny_encoder

from sbmoe.commands import main
from sbmoe.modeling import load_model
from sbmoe.training.config import TrainingConfig
from sbmoe.training.data import Example, epoch_batches
from sbmoe.training.trainer import train

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_beir(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def encoder_without_dropout(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("models") / "tiny-no-dropout", dropout=0.0)


def config_for(base, dataset, output, **overrides) -> TrainingConfig:
    settings = {
        "base": str(base),
        "dataset": str(dataset),
        "output_dir": str(output),
        "batch_size": 4,
        "epochs": 2,
        "num_experts": 3,
        "progress": False,
        "early_stopping_patience": None,
        "moe_lr": 1e-2,
        "encoder_lr": 1e-3,
    }
    settings.update(overrides)
    return TrainingConfig(**settings)


def logged_steps(folder: Path) -> list[int]:
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [record["global_step"] for record in log if record["type"] == "step"]


def block_state(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(folder / "model.safetensors").items() if k.startswith("moe.")}


def test_faithful_gate_moves_only_by_weight_decay(tiny_encoder, synthetic, tmp_path):
    config = config_for(
        tiny_encoder,
        synthetic,
        tmp_path / "run",
        variant="faithful",
        freeze_encoder=True,
        selection="last",
        weight_decay=0.05,
        schedule="constant",  # the decay below assumes one learning rate throughout
        warmup_ratio=0.0,
    )
    train(config)
    from sbmoe.modeling import build_model

    initial, _ = build_model(tiny_encoder, num_experts=3, variant="faithful", seed=config.seed)
    final = block_state(tmp_path / "run")
    steps = len(logged_steps(tmp_path / "run"))
    assert steps == 16  # 30 training queries (2 held out) in batches of 4 -> 8 steps, 2 epochs
    decay = (1 - config.moe_lr * config.weight_decay) ** steps  # AdamW's decoupled decay, nothing else
    for name, value in initial.moe.gate.state_dict().items():
        torch.testing.assert_close(final[f"moe.gate.{name}"], value * decay, atol=1e-7, rtol=1e-6)
    moved = (final["moe.experts.0.up.weight"] - initial.moe.experts[0].up.weight).abs().max()
    assert moved > 1e-3  # the experts did train
    for name, value in initial.moe.noise.state_dict().items():  # the noise network is frozen: untouched
        assert torch.equal(final[f"moe.noise.{name}"], value)


def test_learned_gate_changes_routing(tiny_encoder, synthetic, tmp_path):
    config = config_for(
        tiny_encoder,
        synthetic,
        tmp_path / "run",
        variant="learned",
        freeze_encoder=True,
        selection="last",
        epochs=4,
    )
    train(config)
    from sbmoe.modeling import build_model

    initial, _ = build_model(tiny_encoder, num_experts=3, variant="learned", seed=config.seed)
    trained, _ = load_model(tmp_path / "run")
    probe = torch.randn(200, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = initial.moe.gate(probe).softmax(-1)
        after = trained.moe.gate(probe).softmax(-1)
    assert (after - before).abs().max() > 0.05  # the gate's probabilities moved
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["type"] == "step"]
    assert len({tuple(r["expert_share"]) for r in steps}) > 1 and all("routing_entropy" in r for r in steps)


def test_batches_are_a_function_of_seed_and_epoch():
    examples = [Example(f"q{i}", (f"d{i}", f"e{i}")) for i in range(10)]
    first = epoch_batches(examples, 4, seed=1, epoch=3)
    assert first == epoch_batches(examples, 4, seed=1, epoch=3)
    assert first != epoch_batches(examples, 4, seed=1, epoch=4)
    assert [len(b.query_ids) for b in first] == [4, 4, 2]
    assert [len(b.query_ids) for b in epoch_batches(examples, 3, seed=1, epoch=3, world_size=2)] == [2, 2, 2]
    for batch in first:
        for query, doc, positives in zip(batch.query_ids, batch.doc_ids, batch.positives_of, strict=True):
            assert doc in positives and doc[1:] == query[1:]
    negatives = {f"q{i}": [f"n{i}a", f"n{i}b", f"n{i}c"] for i in range(9)} | {"q9": []}  # q9: topped up
    corpus = [f"x{i}" for i in range(50)]
    with_negatives = epoch_batches(
        examples, 4, 1, 0, negatives=negatives, num_negatives=2, all_doc_ids=corpus
    )
    for batch in with_negatives:
        size = len(batch.query_ids)
        assert len(batch.doc_ids) == size + 2 * size  # positives, then 2 negatives per query in query order
        for i, query in enumerate(batch.query_ids):
            drawn = batch.doc_ids[size + 2 * i : size + 2 * i + 2]
            pool = negatives[query] or corpus
            assert len(set(drawn)) == 2 and set(drawn) <= set(pool), (query, drawn)


def run_cli(
    args: list[str], env_extra: dict[str, str] | None = None, program: str | None = None, **kwargs
) -> subprocess.Popen:
    """`python -m sbmoe ARGS`, or `python -c PROGRAM ARGS` (a program that runs `sbmoe.commands.main`)."""
    env = {**os.environ, "PYTHONPATH": SRC, **(env_extra or {})}
    entry = ["-c", program] if program is not None else ["-m", "sbmoe"]
    return subprocess.Popen(
        [sys.executable, *entry, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def train_args(base, dataset, output, *extra) -> list[str]:
    return [
        "train",
        "--base",
        str(base),
        "--dataset",
        str(dataset),
        "--output-dir",
        str(output),
        "--batch-size",
        "4",
        "--num-experts",
        "3",
        "--no-progress",
        "--selection",
        "last",
        "--encoder-lr",
        "1e-3",
        *extra,
    ]


# `sbmoe train` that kills itself with SIGKILL when the loop asks for the checkpoint of step KILL_STEP,
# before it is written: the log already has that step, the last checkpoint is the step before. The kill
# point is exact, whatever the machine's speed.
KILL_STEP = 10  # mid-epoch: 8 steps an epoch
SIGKILLED_TRAIN = f"""
import os, signal, sys
import sbmoe.training.trainer as trainer
from sbmoe.commands import main

save_checkpoint = trainer.save_checkpoint


def save_or_die(output, model, tokenizer, resumable, info):
    if resumable.state.global_step == {KILL_STEP}:
        os.kill(os.getpid(), signal.SIGKILL)
    save_checkpoint(output, model, tokenizer, resumable, info)


trainer.save_checkpoint = save_or_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_encoder, synthetic, tmp_path):
    """Full fine-tuning with dropout: batches, routing noise and dropout RNG must all resume exactly."""
    args = ["--epochs", "6", "--checkpoint-every-steps", "1"]
    reference = run_cli(train_args(tiny_encoder, synthetic, tmp_path / "ref", *args))
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    victim = run_cli(train_args(tiny_encoder, synthetic, tmp_path / "run", *args), program=SIGKILLED_TRAIN)
    assert victim.wait(timeout=300) == -signal.SIGKILL, victim.stderr.read()
    assert not (tmp_path / "run" / "training_summary.json").exists()
    checkpoints = [p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")]
    assert checkpoints == [f"step-{KILL_STEP - 1:07d}"]
    assert logged_steps(tmp_path / "run") == list(range(1, KILL_STEP + 1))  # one step past the checkpoint
    total_steps = len(logged_steps(tmp_path / "ref"))
    assert KILL_STEP < total_steps

    resumed = run_cli(train_args(tiny_encoder, synthetic, tmp_path / "run", *args, "--resume"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    expected, actual = (
        load_file(tmp_path / "ref" / "model.safetensors"),
        load_file(tmp_path / "run" / "model.safetensors"),
    )
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert logged_steps(tmp_path / "run") == list(range(1, total_steps + 1))  # each step logged once


TWO_PROCESS_ARGS = ["--epochs", "2", "--symmetric"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Two processes on this machine's CPUs. accelerate's --multi_gpu is its launcher of several processes (it
# starts them as torchrun does); with --cpu it would start a single process without mpirun.
LAUNCHERS = {
    "torchrun": ["torch.distributed.run", "--nproc_per_node", "2", "--master_port"],
    "accelerate": [
        "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def one_process_model(encoder_without_dropout, synthetic, tmp_path_factory) -> dict[str, torch.Tensor]:
    output = tmp_path_factory.mktemp("one-process") / "run"
    single = run_cli(train_args(encoder_without_dropout, synthetic, output, *TWO_PROCESS_ARGS))
    assert single.wait(timeout=300) == 0, single.stderr.read()
    return load_file(output / "model.safetensors")


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_gloo_processes_match_one_process(
    launcher, one_process_model, encoder_without_dropout, synthetic, tmp_path
):
    """A global batch split over two processes gives the same model (dropout off: it is per process)."""
    env = {**os.environ, "PYTHONPATH": SRC, "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPUs on any machine
    launch = [
        sys.executable,
        "-m",
        *LAUNCHERS[launcher],
        str(free_port()),
        "-m",
        "sbmoe",
        *train_args(encoder_without_dropout, synthetic, tmp_path / "two", *TWO_PROCESS_ARGS),
    ]
    double = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    for rank in (0, 1):
        assert f"process {rank} of 2 (collectives on cpu)" in double.stderr, double.stderr[-3000:]
    two = load_file(tmp_path / "two" / "model.safetensors")
    worst = max((one_process_model[name] - two[name]).abs().max().item() for name in one_process_model)
    assert worst < 1e-5  # float summation order differs; the stated tolerance


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-split", "dev"], "has no split 'dev'"),
        (["--batch-size", "64"], "batch_size 64 is larger than the"),
        (["--variant", "finetune", "--freeze-encoder"], "leaves nothing to train"),
        (["--temperature", "0"], "temperature must be > 0"),
    ],
)
def test_bad_training_input_exits_2_before_writing(tiny_encoder, synthetic, tmp_path, capsys, extra, message):
    output = tmp_path / "out"
    assert main(train_args(tiny_encoder, synthetic, output, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not output.exists()


def test_split_without_positives_is_refused(tiny_encoder, synthetic, tmp_path, capsys):
    (synthetic / "qrels" / "zero.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t0\n")
    try:
        assert main(train_args(tiny_encoder, synthetic, tmp_path / "o", "--train-split", "zero")) == 2
    finally:
        (synthetic / "qrels" / "zero.tsv").unlink()
    assert "no query with a relevant document" in capsys.readouterr().err


def test_existing_output_and_mismatched_resume_are_refused(tiny_encoder, synthetic, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    assert main(train_args(tiny_encoder, synthetic, output)) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "mine"

    run = tmp_path / "run"
    assert main(train_args(tiny_encoder, synthetic, run, "--epochs", "1", "--freeze-encoder")) == 0
    weights = (run / "model.safetensors").read_bytes()
    assert (
        main(
            train_args(
                tiny_encoder,
                synthetic,
                run,
                "--epochs",
                "1",
                "--freeze-encoder",
                "--num-experts",
                "2",
                "--resume",
            )
        )
        == 2
    )
    assert "different configuration (num_experts: 3 -> 2)" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == weights


def test_config_file_unknown_key_is_refused(tiny_encoder, synthetic, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(f"base: {tiny_encoder}\ndataset: {synthetic}\nbatch_sise: 8\n")
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train.yaml" in err and "batch_sise" in err


def test_paper_preset_sets_the_authors_recipe_and_flags_override_it(tmp_path):
    from sbmoe.training.config import resolve_config

    config = resolve_config(
        {
            "preset": "paper",
            "base": "huawei-noah/TinyBERT_General_4L_312D",
            "dataset": "d",
            "output_dir": "o",
        },
        {"batch_size": 16},
    )
    assert (config.temperature, config.epochs, config.selection, config.variant) == (
        1.0,
        30,
        "last",
        "faithful",
    )
    assert (config.mask_duplicate_positives, config.normalize, config.batch_size) == (False, False, 16)


@pytest.mark.parametrize("source", ["bm25", "run"])
def test_training_with_hard_negatives(tiny_encoder, synthetic, tmp_path, source, monkeypatch):
    import sbmoe.training.data as training_data
    import sbmoe.training.trainer as trainer
    from sbmoe.data import load_dataset
    from sbmoe.training.negatives import mine_bm25_negatives

    dataset = load_dataset(str(synthetic))
    hard = "bm25"
    if source == "run":  # a TREC run whose top hit for every query is document d0 (or d1 for q0)
        lines = [f"q{i} Q0 d{0 if i else 1} 1 9.0 bm25\nq{i} Q0 d{i} 2 8.0 bm25" for i in range(32)]
        (tmp_path / "run.trec").write_text("\n".join(lines) + "\n")
        hard = str(tmp_path / "run.trec")
        # d{i} is q{i}'s positive, so each query's only candidate is the run's other hit.
        candidates = {f"q{i}": ["d0" if i else "d1"] for i in range(32)}
    else:  # the same mining, run here on its own
        candidates = mine_bm25_negatives(
            dataset.corpus, dataset.queries, dataset.qrels("train"), progress=False
        )
    assert any(candidates.values())

    batches, widths = [], []  # the batches the loop trains on; the (queries, documents) the loss scores

    def spy_batches(*args, **kwargs):
        batches.extend(made := real_batches(*args, **kwargs))
        return made

    def spy_loss(q, d, *args, **kwargs):
        widths.append((len(q), len(d)))
        return real_loss(q, d, *args, **kwargs)

    real_batches, real_loss = training_data.epoch_batches, trainer.contrastive_loss
    monkeypatch.setattr(training_data, "epoch_batches", spy_batches)  # training_batches calls it
    monkeypatch.setattr(trainer, "contrastive_loss", spy_loss)
    output = tmp_path / "out"
    assert main(train_args(tiny_encoder, synthetic, output, "--freeze-encoder", "--epochs", "1",
                           "--hard-negatives", hard, "--num-hard-negatives", "2")) == 0  # fmt: skip
    assert len(logged_steps(output)) == 8
    config = json.loads((output / "training_config.json").read_text())["config"]
    assert (config["hard_negatives"], config["num_hard_negatives"]) == (hard, 2)

    # Every step scores each query against its positive and 2 hard negatives (B + 2B documents) ...
    assert len(widths) == 8 and all(documents == 3 * queries for queries, documents in widths)
    # ... and those negatives are the query's candidates (topped up at random only when it has fewer than 2).
    with_hard_negative = set()
    for batch in batches:
        size = len(batch.query_ids)
        assert len(batch.doc_ids) == 3 * size
        for j, query_id in enumerate(batch.query_ids):
            negatives = batch.doc_ids[size + 2 * j : size + 2 * j + 2]
            drawn = [doc_id for doc_id in negatives if doc_id in candidates[query_id]]
            assert len(drawn) == min(2, len(candidates[query_id])), (query_id, negatives)
            if drawn:
                with_hard_negative.add(query_id)
    assert (
        len(with_hard_negative) == 30
    )  # every training query (32, 2 held out) has candidates in both sources


def test_random_gate_trains_and_validates_with_per_text_routing(
    tiny_encoder, synthetic, tmp_path, monkeypatch
):
    import sbmoe.evaluation.pipeline as pipeline  # validation's embed-and-search path
    from sbmoe.modeling.moe import random_experts

    routed = []  # each validation's (routing keys, experts) of the documents, then of the queries

    def spy_apply_head(model, pooled, *args, **kwargs):
        embeddings, experts = real_apply_head(model, pooled, *args, **kwargs)
        routed.append((pooled.keys, experts))
        return embeddings, experts

    real_apply_head = pipeline.apply_head
    monkeypatch.setattr(pipeline, "apply_head", spy_apply_head)
    config = config_for(tiny_encoder, synthetic, tmp_path / "run", system="random-gate", freeze_encoder=True)
    summary = train(config)
    model, _ = load_model(tmp_path / "run")
    assert model.config.random_gate and model.config.default_mode == "random"

    # Validation ran after each of the 2 epochs and its nDCG@10 is the summary's.
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    validations = [record["ndcg@10"] for record in log if record["type"] == "validation"]
    assert len(validations) == 2 and all(0.0 <= value <= 1.0 for value in validations)
    assert summary["best_validation_ndcg@10"] == max(validations)
    assert len(routed) == 4  # documents and queries, twice

    # Per text: each text's expert is a function of its own tokens' key and the gate's seed, ...
    for keys, experts in routed:
        assert keys is not None and len(keys) == len(experts)
        expected = random_experts(torch.from_numpy(keys), 3, model.config.random_gate_seed).numpy()
        assert experts.tolist() == expected.tolist()
    # ... so the same text gets the same expert at every validation, though the block trained in between;
    (doc_keys, doc_experts), (query_keys, query_experts) = routed[0], routed[1]
    assert (routed[2][0].tolist(), routed[2][1].tolist()) == (doc_keys.tolist(), doc_experts.tolist())
    assert (routed[3][0].tolist(), routed[3][1].tolist()) == (query_keys.tolist(), query_experts.tolist())
    # and different texts spread over the experts: the 80 documents reach all 3, none takes most of them.
    counts = np.bincount(doc_experts, minlength=3)
    assert len(doc_experts) == 80 and len(set(doc_keys.tolist())) == 80
    assert (counts > 0).all() and counts.max() < 0.6 * len(doc_experts)


def test_default_recipe_depends_on_the_regime_and_explicit_values_win():
    from sbmoe.training.config import resolve_config

    frozen = resolve_config({}, {"base": "b", "dataset": "d", "output_dir": "o", "freeze_encoder": True})
    assert (frozen.epochs, frozen.moe_lr, frozen.schedule, frozen.warmup_ratio, frozen.selection) == (
        10, 3e-3, "cosine", 0.05, "last",
    )  # fmt: skip
    full = resolve_config({}, {"base": "b", "dataset": "d", "output_dir": "o", "system": "finetune"})
    assert (full.epochs, full.encoder_lr, full.schedule, full.warmup_ratio, full.selection) == (
        3, 5e-5, "linear", 0.1, "last",
    )  # fmt: skip
    mine = resolve_config({"epochs": 7}, {"base": "b", "dataset": "d", "output_dir": "o", "moe_lr": 5e-4})
    assert (mine.epochs, mine.moe_lr) == (7, 5e-4)
    paper = resolve_config({}, {"preset": "paper", "base": "b", "dataset": "d", "output_dir": "o"})
    assert (paper.encoder_lr, paper.moe_lr, paper.schedule, paper.warmup_ratio) == (
        1e-6,
        1e-4,
        "constant",
        0.0,
    )


def test_a_frozen_encoders_checkpoint_holds_the_block_only_and_restores_it(tiny_encoder, tmp_path):
    """With the encoder frozen, a checkpoint leaves the encoder out (it is the base's, rebuilt on resume)
    and restores every other weight; a model whose encoder trains refuses such a checkpoint."""
    from sbmoe.distributed import DistributedInfo
    from sbmoe.errors import SbmoeError
    from sbmoe.modeling import build_model
    from sbmoe.training.checkpoint import Resumable, load_checkpoint, save_checkpoint

    def resumable(model):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return Resumable(optimizer, scheduler, noise_generator=torch.Generator().manual_seed(0))

    model, tokenizer = build_model(tiny_encoder, num_experts=3, seed=1)
    model.encoder.requires_grad_(False)
    save_checkpoint(tmp_path, model, tokenizer, resumable(model), DistributedInfo())
    (folder,) = (tmp_path / "checkpoints").glob("step-*")
    saved = load_file(folder / "model.safetensors")
    assert saved and not any(name.startswith("encoder.") for name in saved)
    assert set(saved) == {name for name in model.state_dict() if not name.startswith("encoder.")}

    other, _ = build_model(tiny_encoder, num_experts=3, seed=2)  # another block, the same base encoder
    other.encoder.requires_grad_(False)
    assert not torch.equal(other.moe.experts[0].up.weight, model.moe.experts[0].up.weight)
    load_checkpoint(folder, other, resumable(other), DistributedInfo())
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name

    training_encoder, _ = build_model(tiny_encoder, num_experts=3, seed=2)
    with pytest.raises(SbmoeError, match="do not fit the model"):
        load_checkpoint(folder, training_encoder, resumable(training_encoder), DistributedInfo())


def test_a_folder_made_by_init_is_a_base_for_train(tiny_encoder, synthetic, tmp_path):
    """`sbmoe train --base` takes an `sbmoe init` folder: its encoder is the base's, the block is trained."""
    folder = tmp_path / "init"
    assert main(["init", "--base", str(tiny_encoder), "--num-experts", "3", "--output", str(folder)]) == 0
    assert main(train_args(folder, synthetic, tmp_path / "run", "--epochs", "1", "--freeze-encoder")) == 0
    trained, _ = load_model(tmp_path / "run")
    initial, _ = load_model(folder)
    assert trained.moe is not None and trained.moe.num_experts == 3
    for name, tensor in initial.encoder.state_dict().items():
        assert torch.equal(trained.encoder.state_dict()[name], tensor), name  # frozen: the init folder's


def test_validate_every_validates_every_n_epochs_and_after_the_last(tiny_encoder, synthetic, tmp_path):
    args = ["--epochs", "5", "--validate-every", "2", "--freeze-encoder"]
    assert main(train_args(tiny_encoder, synthetic, tmp_path / "run", *args)) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log if record["type"] == "validation"] == [2, 4, 5]
    assert len([record for record in log if record["type"] == "step"]) == 5 * len(
        [record for record in log if record["type"] == "step" and record["epoch"] == 1]
    )  # every epoch trained


@pytest.mark.parametrize(("interval", "epochs_checkpointed"), [(0.0, [1, 2, 3]), (3600.0, [3])])
def test_an_epoch_end_checkpoints_when_the_last_checkpoint_is_old_and_after_the_last_epoch(
    tiny_encoder, synthetic, tmp_path, monkeypatch, interval, epochs_checkpointed
):
    """An interval of 0 checkpoints every epoch (as sbmoe did before); a long one only the last epoch, which
    a resumed run then finds complete. A frozen run's loop also leaves torch's thread count as it was."""
    from sbmoe.training import trainer

    real_save, checkpointed = trainer.save_checkpoint, []

    def recording(output, model, tokenizer, resumable, info):
        checkpointed.append(resumable.state.epoch)
        real_save(output, model, tokenizer, resumable, info)

    monkeypatch.setattr(trainer, "CHECKPOINT_INTERVAL_SECONDS", interval)
    monkeypatch.setattr(trainer, "save_checkpoint", recording)
    threads = torch.get_num_threads()
    settings = {"epochs": 3, "freeze_encoder": True}
    train(config_for(tiny_encoder, synthetic, tmp_path / "run", **settings))
    assert checkpointed == epochs_checkpointed
    assert torch.get_num_threads() == threads
    steps = len(logged_steps(tmp_path / "run"))
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == [f"step-{steps:07d}"]
    summary = train(config_for(tiny_encoder, synthetic, tmp_path / "run", **settings), resume=True)
    assert checkpointed == epochs_checkpointed and summary["epochs_run"] == 3  # nothing left to train
