"""The command-line layer: flags generated from the settings dataclasses, a config file under the flags."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from sbmoe.analysis.analyze import AnalyzeSettings
from sbmoe.commands import build_parser
from sbmoe.commands.train import training_config
from sbmoe.evaluation.evaluate import EvaluateSettings
from sbmoe.progress import progress_bar
from sbmoe.training.config import TrainingConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Fields with a flag of another name (or none): every other field is --field-name.
OTHER_FLAGS = {
    "train": {"progress": "--no-progress"},
    "evaluate": {
        "progress": "--no-progress",
        "use_cache": "--no-cache",
        "modes": "--mode",
        "index_settings": None,
    },
    "analyze": {"progress": "--no-progress"},
}
SETTINGS = {"train": TrainingConfig, "evaluate": EvaluateSettings, "analyze": AnalyzeSettings}


def subcommand(name: str):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return commands.choices[name]


@pytest.mark.parametrize("command", ["train", "evaluate", "analyze"])
def test_every_settings_field_is_a_flag_with_help_and_default(command):
    actions = {option: action for action in subcommand(command)._actions for option in action.option_strings}
    for spec in fields(SETTINGS[command]):
        flag = OTHER_FLAGS[command].get(spec.name, "--" + spec.name.replace("_", "-"))
        if flag is None:
            continue
        assert flag in actions, (command, spec.name)
        assert actions[flag].help, (command, flag)
        if spec.name not in OTHER_FLAGS[command] and spec.default is not MISSING:
            assert "(default: " in actions[flag].help, (command, flag)


def test_booleans_are_both_ways_and_defaults_are_shown():
    parser = subcommand("evaluate")
    options = {option for action in parser._actions for option in action.option_strings}
    assert {"--trust-remote-code", "--no-trust-remote-code", "--normalize", "--no-normalize"} <= options
    base = ["--model", "m", "--dataset", "d"]
    args = parser.parse_args(base)
    assert (args.batch_size, args.split, args.trust_remote_code, args.normalize) == (32, "test", False, None)
    assert parser.parse_args([*base, "--normalize"]).normalize is True
    assert parser.parse_args([*base, "--normalize", "false"]).normalize is False
    assert parser.parse_args([*base, "--no-normalize"]).normalize is False
    assert "texts per forward pass (default: 32)" in parser.format_help()


def test_train_flags_override_the_config_file_only_where_given(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "base: b\ndataset: d\noutput_dir: o\nsymmetric: true\nfreeze_encoder: true\nbatch_size: 8\n"
        "num_experts: 3\nrandom_gate_seed: 5\n"
    )
    parser = subcommand("train")
    args = parser.parse_args(["--config", str(config)])
    assert all(getattr(args, spec.name, None) is None for spec in fields(TrainingConfig))  # all left out
    resolved = training_config(args)
    assert (resolved.symmetric, resolved.freeze_encoder, resolved.batch_size) == (True, True, 8)
    assert (resolved.num_experts, resolved.random_gate_seed) == (3, 5)
    flags = ["--config", str(config), "--no-symmetric", "--batch-size", "4", "--num-experts", "2"]
    resolved = training_config(parser.parse_args(flags))
    assert (resolved.symmetric, resolved.freeze_encoder, resolved.batch_size) == (False, True, 4)
    assert (resolved.num_experts, resolved.random_gate_seed) == (2, 5)
    assert resolved.epochs == 10  # the frozen regime's default: the file's freeze_encoder still applies


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["data", "list"], logging.INFO),
        (["-v", "data", "list"], logging.DEBUG),
        (["data", "list", "-v"], logging.DEBUG),
        (["data", "list", "--quiet"], logging.WARNING),
        (["-q", "evaluate", "--model", "m", "--dataset", "d"], logging.WARNING),
        (["evaluate", "--model", "m", "--dataset", "d", "--verbose"], logging.DEBUG),
        (["train", "-q"], logging.WARNING),
    ],
)
def test_verbose_and_quiet_before_or_after_the_subcommand(argv, level):
    assert build_parser().parse_args(argv).log_level == level


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal_and_never_when_switched_off(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_bar(range(3), file=io.StringIO()).disable  # not a terminal
    assert not progress_bar(range(3), file=Terminal()).disable
    assert progress_bar(range(3), file=Terminal(), progress=False).disable


def test_tqdm_disable_hides_progress_bars_even_on_a_terminal():
    code = (
        "import io\n"
        "from sbmoe.progress import progress_bar\n"
        "class Terminal(io.StringIO):\n"
        "    isatty = lambda self: True\n"
        "print(progress_bar(range(3), file=Terminal()).disable)\n"
    )  # tqdm reads TQDM_DISABLE when it is imported: a new process
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["evaluate", "--help"], ["analyze", "--help"], ["train", "--help"], ["init", "--help"],
     ["data", "list"]],
)  # fmt: skip
def test_help_and_light_commands_import_no_heavy_library(argv, tmp_path):
    """`sbmoe --help` and `sbmoe evaluate --help` stay fast: no torch, transformers or numpy (nor does
    `import sbmoe`); the library is imported by the handler that needs it."""
    code = (
        "import sys\n"
        "import sbmoe\n"
        "from sbmoe.commands import main\n"
        "try:\n"
        f"    main({[*argv, '--data-dir', str(tmp_path)] if argv[0] == 'data' else argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'numpy'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
