"""`BlockSettings`: one declaration read by the config, the block, build_model, training, the CLI and grids;
old key names (`moe`, `variant` naming a system) keep working."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import fields
from pathlib import Path

import pytest
from tiny import make_synthetic_beir

from sbmoe.commands import build_parser, main
from sbmoe.errors import SbmoeError
from sbmoe.modeling import SBMoEConfig, build_model, load_model
from sbmoe.modeling.settings import BLOCK_FIELDS, BlockSettings
from sbmoe.training.config import TrainingConfig, read_config_file, resolve_config


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_beir(tmp_path_factory.mktemp("data") / "synthetic")


def subcommand(name: str):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return commands.choices[name]


@pytest.mark.parametrize("command", ["init", "train"])
def test_every_block_field_is_a_flag_of_init_and_train(command):
    flags = {option for action in subcommand(command)._actions for option in action.option_strings}
    for name in BLOCK_FIELDS:
        assert "--" + name.replace("_", "-") in flags, name
    assert {"--random-gate", "--no-random-gate"} <= flags  # booleans both ways


def test_cli_values_are_parsed_to_the_field_types():
    args = subcommand("init").parse_args(
        ["--base", "b", "--output", "o", "--num-experts", "3", "--router-aux-loss-coef", "0.5",
         "--expert-hidden-size", "8", "--no-random-gate"]
    )  # fmt: skip
    assert (args.num_experts, args.router_aux_loss_coef, args.expert_hidden_size) == (3, 0.5, 8)
    assert args.random_gate is False and args.variant is None  # not given: the field's default applies


def test_config_saves_every_block_field_flat_and_returns_them(tiny_encoder, tmp_path):
    model, tokenizer = build_model(tiny_encoder, num_experts=2, expert_activation="gelu")
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert set(BLOCK_FIELDS) <= set(saved)
    assert (saved["num_experts"], saved["expert_activation"], saved["variant"]) == (2, "gelu", "learned")
    settings = SBMoEConfig.from_pretrained(tmp_path / "m").block_settings()
    assert settings == BlockSettings(num_experts=2, expert_activation="gelu", default_mode="top1")


def test_unknown_block_setting_is_refused_by_build_model(tiny_encoder):
    with pytest.raises(ValueError, match=re.escape("unknown block setting(s) ['experts']")):
        build_model(tiny_encoder, experts=3)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_experts": 0}, "num_experts must be an integer >= 1"),
        ({"variant": "sbmoe"}, "variant must be one of ['faithful', 'learned']"),
        ({"expert_hidden_size": 0}, "expert_hidden_size must be a positive integer or null"),
        ({"router_aux_loss_coef": -0.1}, "router_aux_loss_coef must be >= 0"),
    ],
)
def test_block_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        BlockSettings(**settings)


def test_training_config_inherits_the_block_fields():
    block = {spec.name for spec in fields(BlockSettings)}
    assert block <= {spec.name for spec in fields(TrainingConfig)}
    config = TrainingConfig(base="b", dataset="d", output_dir="o", system="adapter", expert_activation="silu")
    assert (
        config.model_settings()["num_experts"] == 1 and config.model_settings()["expert_activation"] == "silu"
    )
    assert TrainingConfig(base="b", dataset="d", output_dir="o", system="random-gate").random_gate


def test_old_keys_in_a_config_file_still_work(tmp_path, caplog):
    path = tmp_path / "train.yaml"
    path.write_text("base: b\ndataset: d\nvariant: sbmoe\nmoe: faithful\nnum_experts: 3\n")
    with caplog.at_level(logging.WARNING):
        config = resolve_config(read_config_file(path), {"output_dir": "o"})
    assert (config.system, config.variant, config.num_experts) == ("sbmoe", "faithful", 3)
    assert "deprecated" in caplog.text and "train.yaml" in caplog.text


@pytest.mark.parametrize(
    ("cli", "expected"),
    [
        ({"variant": "finetune"}, ("finetune", "learned")),
        ({"variant": "adapter", "moe": "faithful"}, ("adapter", "faithful")),
        ({"variant": "faithful"}, ("sbmoe", "faithful")),
        ({"system": "random-gate", "variant": "learned"}, ("random-gate", "learned")),
    ],
)
def test_variant_accepts_a_system_or_a_block_variant(cli, expected):
    config = resolve_config({"base": "b", "dataset": "d", "output_dir": "o"}, cli)
    assert (config.system, config.variant) == expected


def test_contradicting_old_and_new_keys_are_refused():
    with pytest.raises(SbmoeError, match="moe 'faithful' contradicts variant 'learned'"):
        resolve_config(
            {"base": "b", "dataset": "d", "output_dir": "o"}, {"moe": "faithful", "variant": "learned"}
        )
    with pytest.raises(SbmoeError, match="random_gate is the system random-gate"):
        resolve_config({}, {"base": "b", "dataset": "d", "output_dir": "o", "random_gate": True})


def train_args(base, dataset, output, *extra) -> list[str]:
    return [
        "train", "--base", str(base), "--dataset", str(dataset), "--output-dir", str(output),
        "--batch-size", "4", "--epochs", "1", "--no-progress", "--selection", "last", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(("variant", "num_experts"), [("finetune", None), ("adapter", 1)])
def test_train_variant_finetune_and_adapter_work_as_before(
    tiny_encoder, synthetic, tmp_path, variant, num_experts
):
    extra = ["--freeze-encoder"] if variant == "adapter" else []
    assert main(train_args(tiny_encoder, synthetic, tmp_path / "run", "--variant", variant, *extra)) == 0
    saved = json.loads((tmp_path / "run" / "training_config.json").read_text())["config"]
    assert saved["system"] == variant
    model, _ = load_model(tmp_path / "run")
    assert (model.moe.num_experts if model.moe is not None else None) == num_experts


def test_resume_accepts_a_run_saved_with_the_old_key_names(tiny_encoder, synthetic, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_encoder, synthetic, run, "--freeze-encoder", "--num-experts", "2")) == 0
    record = json.loads((run / "training_config.json").read_text())
    config = record["config"]
    config["moe"] = config.pop("variant")  # as written before the rename
    config["variant"] = config.pop("system")
    for name in ("random_gate_seed", "default_mode"):  # fields a training config did not have
        del config[name]
    (run / "training_config.json").write_text(json.dumps(record))
    resumed = train_args(tiny_encoder, synthetic, run, "--freeze-encoder", "--num-experts", "2", "--resume")
    assert main(resumed) == 0, capsys.readouterr().err
    assert main([*resumed, "--variant", "faithful"]) == 2
    assert "different configuration (variant: 'learned' -> 'faithful')" in capsys.readouterr().err


def grid(systems) -> dict:
    return {"name": "g", "bases": ["b"], "train_datasets": ["d"], "systems": systems}


def test_grid_systems_take_any_block_field_but_not_what_the_system_fixes():
    from sbmoe.experiments.config import build_experiment_config
    from sbmoe.experiments.runner import plan_runs

    config = build_experiment_config(
        grid({"lb": {"system": "sbmoe-learned", "router_aux_loss_coef": 0.01, "expert_activation": "gelu"},
              "adapter": {"variant": "faithful"}}),
        where="grid", check_data=False,
    )  # fmt: skip
    runs = plan_runs(config)
    assert runs[0].training == {"router_aux_loss_coef": 0.01, "expert_activation": "gelu"}
    assert [run.num_experts for run in runs] == [6, 1]
    with pytest.raises(SbmoeError, match="system sbmoe-learned fixes variant to 'learned'"):
        build_experiment_config(grid({"sbmoe-learned": {"variant": "faithful"}}), where="g", check_data=False)
    with pytest.raises(SbmoeError, match=re.escape("['system'] are set by the grid itself")):
        build_experiment_config(
            {**grid(["adapter"]), "training": {"system": "sbmoe"}}, where="g", check_data=False
        )
