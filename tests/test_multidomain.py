"""Training on several collections ("alpha+beta"): batches within a collection, interleaved by seed;
validation per collection and their mean; resume; a grid with a joined entry and its report; bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_synthetic_beir

import sbmoe.training.trainer as trainer
from sbmoe.commands import main
from sbmoe.distributed import DistributedInfo
from sbmoe.errors import SbmoeError
from sbmoe.experiments.config import build_experiment_config
from sbmoe.experiments.report import build_report
from sbmoe.experiments.runner import run_experiment
from sbmoe.modeling import load_model
from sbmoe.training.config import TrainingConfig
from sbmoe.training.data import Batch, collection_names, interleave, load_training_data, training_batches


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """alpha: 32 training queries (30 after holding out 2), 80 documents; beta: 16 (15), 48 documents;
    gamma: a zero-shot collection; delta: no training split. Their ids overlap (q0, d0, ...) on purpose."""
    folder = tmp_path_factory.mktemp("collections")
    make_synthetic_beir(folder / "alpha", seed=1)
    make_synthetic_beir(folder / "beta", num_queries=24, seed=2)
    make_synthetic_beir(folder / "gamma", num_queries=16, seed=3)
    make_synthetic_beir(folder / "delta", num_queries=16, seed=4)
    (folder / "delta" / "qrels" / "train.tsv").unlink()
    return folder


def config_for(base, root, output, dataset="alpha+beta", **overrides) -> TrainingConfig:
    settings = {
        "base": str(base),
        "dataset": dataset,
        "data_dir": str(root),
        "output_dir": str(output),
        "batch_size": 4,
        "epochs": 2,
        "num_experts": 3,
        "freeze_encoder": True,
        "selection": "last",
        "early_stopping_patience": None,
        "moe_lr": 1e-2,
        "encoder_lr": 1e-3,
        "progress": False,
    }
    return TrainingConfig(**{**settings, **overrides})


def epoch(config: TrainingConfig, number: int, world_size: int = 1) -> list[Batch]:
    data = load_training_data(config, DistributedInfo())
    return training_batches(config, data, number, world_size)


def collection_of(batch: Batch) -> str:
    prefixes = {i.partition("/")[0] for i in [*batch.query_ids, *batch.doc_ids]}
    assert len(prefixes) == 1, batch
    return prefixes.pop()


def unprefixed(batch: Batch) -> Batch:
    cut = len(collection_of(batch)) + 1
    return Batch([i[cut:] for i in batch.query_ids], [i[cut:] for i in batch.doc_ids],
                 [frozenset(i[cut:] for i in docs) for docs in batch.positives_of])  # fmt: skip


def test_collection_names():
    assert collection_names("scifact") == ["scifact"]
    assert collection_names("scifact+nfcorpus-preproc") == ["scifact", "nfcorpus-preproc"]
    for bad, message in (("scifact+", "empty collection name"), ("a+b+a", "names ['a'] more than once")):
        with pytest.raises(SbmoeError, match=re.escape(message)):
            collection_names(bad)


def test_every_batch_holds_one_collection_and_each_collection_batches_as_alone(tiny_encoder, root, tmp_path):
    config = config_for(tiny_encoder, root, tmp_path / "o")
    batches = epoch(config, 0)
    names = [collection_of(batch) for batch in batches]
    assert names.count("alpha") == 8 and names.count("beta") == 4  # 30 and 15 queries in batches of 4
    assert names != sorted(names) and names != sorted(names, reverse=True)  # interleaved, not one then other
    for name in ("alpha", "beta"):  # each collection's batches are those of a run on it alone
        alone = epoch(config_for(tiny_encoder, root, tmp_path / "o", dataset=name), 0)
        mine = [unprefixed(b) for b in batches if collection_of(b) == name]
        assert sorted(mine, key=str) == sorted(alone, key=str)
    single = epoch(config_for(tiny_encoder, root, tmp_path / "o", dataset="alpha"), 0)
    assert all("/" not in i for b in single for i in b.query_ids)  # one collection: ids as they are
    # Two processes: every batch splits evenly.
    assert all(len(b.query_ids) % 2 == 0 for b in epoch(config, 0, world_size=2))


def test_interleaving_is_a_function_of_seed_and_epoch(tiny_encoder, root, tmp_path):
    config = config_for(tiny_encoder, root, tmp_path / "o")
    order = [collection_of(b) for b in epoch(config, 1)]
    assert epoch(config, 1) == epoch(config, 1)
    assert order != [collection_of(b) for b in epoch(config, 2)]
    other = config_for(tiny_encoder, root, tmp_path / "o", seed=7)
    assert order != [collection_of(b) for b in epoch(other, 1)]

    lists = [
        [Batch([f"{c}/q{i}", f"{c}/r{i}"], [f"{c}/d{i}", f"{c}/e{i}"], [frozenset()] * 2) for i in range(n)]
        for c, n in (("a", 5), ("b", 3))
    ]
    mixed = interleave(lists, seed=3, epoch=0)
    assert sorted(mixed, key=lambda b: b.query_ids) == sorted(lists[0] + lists[1], key=lambda b: b.query_ids)
    assert mixed == interleave(lists, seed=3, epoch=0) and mixed != interleave(lists, seed=4, epoch=0)
    assert interleave(lists[:1], seed=3, epoch=0) == lists[0]  # one collection: its order


def test_frozen_run_validates_each_collection_and_logs_their_mean(tiny_encoder, root, tmp_path, monkeypatch):
    seen = []
    real = trainer.init_prototypes

    def counted(block, vectors, **settings):
        seen.append(len(vectors))
        return real(block, vectors, **settings)

    monkeypatch.setattr(trainer, "init_prototypes", counted)
    config = config_for(tiny_encoder, root, tmp_path / "run", router="cluster")
    summary = trainer.train(config)
    assert seen == [80 + 48]  # prototypes from the documents of both collections
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len([r for r in log if r["type"] == "step"]) == 2 * 12
    validations = [r for r in log if r["type"] == "validation"]
    assert len(validations) == 2
    for record in validations:
        mean = (record["alpha/ndcg@10"] + record["beta/ndcg@10"]) / 2
        assert record["ndcg@10"] == pytest.approx(mean) and "alpha/recall@100" in record
    assert summary["history"][-1]["ndcg@10"] == pytest.approx(validations[-1]["ndcg@10"])
    model, _ = load_model(tmp_path / "run")
    assert model.moe.router == "cluster" and bool(model.moe.prototypes_initialized)
    saved = json.loads((tmp_path / "run" / "training_config.json").read_text())["config"]
    assert saved["dataset"] == "alpha+beta"


def test_resume_mid_epoch_equals_an_uninterrupted_run(tiny_encoder, root, tmp_path, monkeypatch):
    settings = {"epochs": 3, "checkpoint_every_steps": 1}
    trainer.train(config_for(tiny_encoder, root, tmp_path / "ref", **settings))

    real_step, calls = trainer._train_step, []

    def dies_at_step_17(*args, **kwargs):
        calls.append(1)
        if len(calls) == 17:  # epoch 2 (12 steps an epoch), mid-way
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_step", dies_at_step_17)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config_for(tiny_encoder, root, tmp_path / "run", **settings))
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000016"]
    monkeypatch.setattr(trainer, "_train_step", real_step)
    trainer.train(config_for(tiny_encoder, root, tmp_path / "run", **settings), resume=True)
    expected, actual = (load_file(tmp_path / name / "model.safetensors") for name in ("ref", "run"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log if r["type"] == "step"] == list(range(1, 37))


@pytest.mark.parametrize(
    ("dataset", "extra", "message"),
    [
        ("alpha+gamma+nowhere", [], "collection 'nowhere' of 'alpha+gamma+nowhere': dataset 'nowhere' not"),
        ("alpha+delta", [], "collection 'delta' of 'alpha+delta': dataset 'delta' has no split 'train'"),
        ("alpha+", [], "an empty collection name"),
        ("alpha+beta", ["--hard-negatives", "run.trec"], "a run file holds one collection's ids"),
    ],
)  # fmt: skip
def test_bad_collections_exit_2_naming_them(tiny_encoder, root, tmp_path, capsys, dataset, extra, message):
    output = tmp_path / "out"
    args = ["train", "--base", str(tiny_encoder), "--dataset", dataset, "--data-dir", str(root),
            "--output-dir", str(output), "--freeze-encoder", "--no-progress", *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not output.exists()


def grid(tiny_encoder, root, **overrides) -> dict:
    raw = {
        "name": "multi",
        "bases": [str(tiny_encoder)],
        "train_datasets": ["alpha", "alpha+beta"],
        "zero_shot_datasets": ["gamma"],
        "systems": {"zero-shot": {}, "sbmoe-learned": {"num_experts": [2]}},
        "modes": ["top1"],
        "seeds": [1],
        "training": {"freeze_encoder": True, "epochs": 1, "batch_size": 4},
        "data_dir": str(root),
    }
    return {**raw, **overrides}


def test_grid_with_a_joined_entry_tests_each_member_in_domain_and_reports(tiny_encoder, root, tmp_path):
    config = build_experiment_config(grid(tiny_encoder, root), where="test")
    lines = run_experiment(config, tmp_path / "exp", progress=False)
    joined = [r for r in lines if r["train_dataset"] == "alpha+beta"]
    assert {(r["eval_dataset"], r["setting"]) for r in joined} == {
        ("alpha", "in-domain"), ("beta", "in-domain"), ("gamma", "zero-shot"),
    }  # fmt: skip
    assert joined[0]["run_id"] == "alpha+beta/tiny-bert/sbmoe-learned-n2/seed1"
    assert (
        tmp_path / "exp" / "runs" / "alpha+beta" / "tiny-bert" / "sbmoe-learned-n2" / "seed1" / "done.json"
    ).is_file()
    zero_shot = {(r["eval_dataset"], r["setting"]) for r in lines if r["system"] == "zero-shot"}
    assert zero_shot == {("alpha", "in-domain"), ("beta", "in-domain"), ("gamma", "zero-shot")}

    report = build_report(tmp_path / "exp")
    for member in ("alpha", "beta"):
        table = report.table(member, train_dataset="alpha+beta")
        assert table.setting == "in-domain"
        assert [row.label for row in table.rows] == ["ZERO-SHOT", "SB-MoE learned N=2 TOP-1"]
    assert report.table("alpha", train_dataset="alpha").setting == "in-domain"
    assert "trained on alpha+beta, tested on beta (in-domain)" in report.markdown
    assert main(["report", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "report" / "report.md").stat().st_size > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train_datasets": ["alpha+nowhere"]}, "collection 'nowhere'"),
        ({"train_datasets": ["alpha+delta"]}, "collection 'delta' has no split(s) ['train']"),
        ({"train_datasets": ["alpha+"]}, "train_datasets: dataset 'alpha+': an empty collection name"),
        ({"zero_shot_datasets": ["beta+gamma"]}, "a zero-shot test is one collection"),
    ],
)
def test_bad_joined_entries_are_refused_with_the_grid(tiny_encoder, root, change, message):
    with pytest.raises(SbmoeError, match=re.escape(message)):
        build_experiment_config(grid(tiny_encoder, root, **change), where="test")


def test_collections_with_the_same_name_are_refused(tiny_encoder, root, tmp_path, capsys):
    shutil.copytree(root / "beta", tmp_path / "elsewhere" / "alpha")
    dataset = f"{root / 'alpha'}+{tmp_path / 'elsewhere' / 'alpha'}"
    args = ["train", "--base", str(tiny_encoder), "--dataset", dataset, "--output-dir", str(tmp_path / "o"),
            "--freeze-encoder", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert "two collections share the name ['alpha', 'alpha']" in capsys.readouterr().err
