"""Experiment grids: config checks before any run, resume after a crash, the shipped configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny import make_synthetic_beir

import sbmoe.experiments.runner as runner
from sbmoe.errors import SbmoeError
from sbmoe.experiments.config import build_experiment_config, load_experiment_config
from sbmoe.experiments.runner import plan_runs, run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collections")
    make_synthetic_beir(root / "alpha", seed=1)
    make_synthetic_beir(root / "beta", seed=2)
    return root


def grid(tiny_encoder, collections, **overrides) -> dict:
    raw = {
        "name": "tiny",
        "bases": [str(tiny_encoder)],
        "train_datasets": ["alpha"],
        "zero_shot_datasets": ["beta"],
        "systems": {"zero-shot": {}, "adapter": {}, "sbmoe-learned": {"num_experts": [2, 3]}},
        "modes": ["top1", "all"],
        "seeds": [1, 2],
        "training": {"freeze_encoder": True, "epochs": 2, "batch_size": 4},
        "data_dir": str(collections),
    }
    raw.update(overrides)
    return raw


def test_plan_covers_the_grid(tiny_encoder, collections):
    config = build_experiment_config(grid(tiny_encoder, collections), where="test")
    ids = [run.run_id for run in plan_runs(config)]
    assert ids[0] == "zero-shot/tiny-bert"
    assert len(ids) == 1 + 2 + 2 * 2  # zero-shot, adapter x 2 seeds, learned x 2 expert counts x 2 seeds
    assert "alpha/tiny-bert/sbmoe-learned-n3/seed2" in ids


def test_grid_runs_writes_results_and_resumes_after_a_crash(tiny_encoder, collections, tmp_path, monkeypatch):
    config = build_experiment_config(grid(tiny_encoder, collections), where="test")
    executed = []
    real_execute = runner._execute

    def crash_on_fourth(run, *args):  # args: config, folder, output, progress
        executed.append(run.run_id)
        if len(executed) == 4:
            real_execute(run, *args)  # finishes its training and evaluation ...
            (args[1] / "done.json").unlink()  # ... but dies before marking itself done
            raise KeyboardInterrupt
        return real_execute(run, *args)

    monkeypatch.setattr(runner, "_execute", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "exp", progress=False)
    results = [json.loads(line) for line in (tmp_path / "exp" / "results.jsonl").read_text().splitlines()]
    assert {r["run_id"] for r in results} == set(executed[:3])  # the broken run is not reported

    executed.clear()
    monkeypatch.setattr(runner, "_execute", real_execute)
    lines = run_experiment(config, tmp_path / "exp", progress=False)
    plan = [run.run_id for run in plan_runs(config)]
    done = [p for p in plan if (tmp_path / "exp" / "runs" / p / "done.json").is_file()]
    assert done == plan
    # zero-shot: 2 collections; adapter (top1 only): 2 seeds x 2; learned: 2 N x 2 seeds x 2 coll. x 2 modes
    assert len(lines) == 2 + 4 + 16
    zero_shot = [r for r in lines if r["system"] == "zero-shot"]
    assert {(r["eval_dataset"], r["setting"], r["mode"]) for r in zero_shot} == {
        ("alpha", "in-domain", None),
        ("beta", "zero-shot", None),
    }
    for line in lines:
        metrics = json.loads((tmp_path / "exp" / line["metrics_file"]).read_text())
        assert metrics["ndcg@10"] == line["metrics"]["ndcg@10"] and "per_query" in metrics
    assert not list((tmp_path / "exp" / "runs").rglob("model.safetensors"))  # models not kept


def test_resuming_with_another_grid_is_refused(tiny_encoder, collections, tmp_path):
    config = build_experiment_config(grid(tiny_encoder, collections, systems=["zero-shot"]), where="t")
    run_experiment(config, tmp_path / "exp", progress=False)
    other = build_experiment_config(
        grid(tiny_encoder, collections, systems=["zero-shot"], seeds=[7]), where="t"
    )
    with pytest.raises(SbmoeError, match="different configuration"):
        run_experiment(other, tmp_path / "exp", progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch": 3}, "unknown key(s) ['batch']"),
        ({"zero_shot_datasets": ["gamma"]}, "collection 'gamma'"),
        ({"systems": ["sbmoe-fancy"]}, "'sbmoe-fancy' is not a known system"),
        ({"seeds": 3}, "seeds must be a non-empty list of ints"),
        ({"modes": ["top1", "best"]}, "modes: mode must be one of"),
        ({"training": {"batch_sise": 8}}, "unknown training setting(s) ['batch_sise']"),
        ({"training": {"seed": 1}}, "['seed'] are set by the grid itself"),
        ({"test_split": "dev"}, "has no split(s) ['dev']"),
    ],
)
def test_bad_grid_is_refused_before_any_run(tiny_encoder, collections, tmp_path, change, message):
    path = tmp_path / "grid.yaml"
    import yaml

    path.write_text(yaml.safe_dump(grid(tiny_encoder, collections, **change)))
    with pytest.raises(SbmoeError, match=re.escape(message)) as error:
        load_experiment_config(path)
    assert str(path) in str(error.value)


def test_experiment_cli_dry_run_and_bad_config_exit_codes(tiny_encoder, collections, tmp_path, capsys):
    import yaml

    from sbmoe.commands import main

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid(tiny_encoder, collections)))
    assert main(["experiment", str(path), "--output-dir", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "7 runs; config" in capsys.readouterr().out
    path.write_text(yaml.safe_dump(grid(tiny_encoder, collections, zero_shot_datasets=["nowhere"])))
    assert main(["experiment", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    config = load_experiment_config(CONFIGS / name, check_data=False)
    assert plan_runs(config)


def test_quickstart_end_to_end_on_a_tiny_model(tiny_encoder, collections, tmp_path, capsys):
    from sbmoe.commands import main

    out = tmp_path / "quick"
    argv = ["quickstart", "--base", str(tiny_encoder), "--dataset", "alpha", "--data-dir", str(collections)]
    assert (
        main([*argv, "--output-dir", str(out), "--num-experts", "3", "--batch-size", "8", "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    for label in (
        "ZERO-SHOT",
        "PRIOR",
        "NUDGE",
        "nDCG@10 unseen docs",
        "ADAPTER",
        "GATED ADAPTER",
        "SB-MoE faithful N=3 TOP-1",
        "SB-MoE learned N=3 ALL",
        "cluster N=3 TOP-1",
    ):
        assert label in printed, label
    assert "comparisons significant" in printed and "Frozen encoder" in printed
    split = re.search(r"Done in \d+ s \(encoding (\d+) s, training (\d+) s, evaluation (\d+) s", printed)
    assert split is not None, printed[-300:]
    for name in ("report.md", "report.csv", "report.tex"):
        assert (out / "report" / name).stat().st_size > 0
    for name in ("routing.json", "expert_shares.png", "document_map.png"):
        assert (out / "analysis" / name).stat().st_size > 0
    assert (out / "analysis" / "expert_shares.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_system_upcycles_from_another_systems_model_of_the_same_seed(tiny_encoder, collections, tmp_path):
    systems = {"adapter": {}, "up": {"system": "sbmoe-learned", "init_from": "@adapter", "num_experts": [2]}}
    raw = grid(tiny_encoder, collections, systems=systems, seeds=[1], modes=["top1"])
    del raw["zero_shot_datasets"]
    config = build_experiment_config({**raw, "training": {**raw["training"], "epochs": 1}}, where="test")
    runs = plan_runs(config)
    assert [run.init_from_run for run in runs] == [None, "alpha/tiny-bert/adapter-n1/seed1"]
    run_experiment(config, tmp_path / "exp", progress=False)
    folders = tmp_path / "exp" / "runs" / "alpha" / "tiny-bert"
    upcycled = json.loads((folders / "up-n2" / "seed1" / "model" / "config.json").read_text())
    assert upcycled["upcycled_from"] == str(folders / "adapter-n1" / "seed1" / "model")
    assert (folders / "adapter-n1" / "seed1" / "model" / "model.safetensors").is_file()  # kept: a source
    assert not (folders / "up-n2" / "seed1" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("systems", "training", "message"),
    [
        (
            {"up": {"system": "sbmoe-learned", "init_from": "@adapter"}, "adapter": {}},
            {},
            "listed before 'up'",
        ),
        (
            {"sbmoe-learned": {}, "up": {"system": "sbmoe-learned", "init_from": "@sbmoe-learned"}},
            {},
            "1 expert",
        ),
        ({"adapter": {}}, {"init_from": "@adapter"}, "belongs in a system's entry"),
    ],
)
def test_init_from_a_label_is_checked_with_the_grid(tiny_encoder, collections, systems, training, message):
    raw = grid(tiny_encoder, collections, systems=systems)
    with pytest.raises(SbmoeError, match=re.escape(message)):
        build_experiment_config(
            {**raw, "training": {**raw["training"], **training}}, where="t", check_data=False
        )


def test_a_grid_is_completed_seed_by_seed(tiny_encoder, collections, tmp_path, capsys):
    import yaml

    from sbmoe.commands import main

    raw = grid(tiny_encoder, collections, systems={"zero-shot": {}, "adapter": {}})
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "exp"

    def finished() -> set[str]:
        return {p.parent.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("done.json")}

    assert main(["experiment", str(path), "--output-dir", str(out), "--seeds", "2", "--no-progress"]) == 0
    assert finished() == {"zero-shot/tiny-bert", "alpha/tiny-bert/adapter-n1/seed2"}
    lines = (out / "results.jsonl").read_text().splitlines()
    assert {json.loads(line)["seed"] for line in lines} == {None, 2}
    assert main(["experiment", str(path), "--output-dir", str(out), "--no-progress"]) == 0  # the rest
    assert finished() == {run.run_id for run in plan_runs(build_experiment_config(raw, where="t"))}
    assert main(["experiment", str(path), "--output-dir", str(out), "--seeds", "3"]) == 2
    assert "seeds [3] are not in the grid's [1, 2]" in capsys.readouterr().err
    assert main(["experiment", str(path), "--output-dir", str(out), "--seeds", "one"]) == 2
