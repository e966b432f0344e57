"""`sbmoe train`: fine-tune a retriever; settings from --config, then the flags given."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from sbmoe.commands.flags import add_settings_arguments

if TYPE_CHECKING:
    from sbmoe.training.config import TrainingConfig

BLOCK_GROUP = "MoE block (saved in the model's config.json)"
VARIANT_HELP = (
    "the block variant: faithful (the authors' code: the gate gets no gradient) or learned (default: "
    "learned). A system name (finetune, sbmoe, adapter, ...) is still accepted here and means --system "
    "(deprecated)"
)
DESCRIPTION = (
    "Settings come from --config (YAML or JSON), then from the flags given here. "
    "--preset paper applies the authors' recipe first."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sbmoe.modeling.settings import BLOCK_FIELDS, BlockSettings
    from sbmoe.training.config import TrainingConfig

    parser.description = DESCRIPTION
    parser.add_argument("--config", help="YAML or JSON file of training settings (unknown keys are an error)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint"
    )
    # Every flag defaults to "not given", so that only the flags given override the config file.
    add_settings_arguments(
        parser,
        TrainingConfig,
        exclude=(*BLOCK_FIELDS, "progress"),  # the block: its own group below; progress: --no-progress
        not_given=True,
        overrides={"system": {"choices": None}},  # checked by TrainingConfig, which names the field
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--moe", help="deprecated: the block variant, now --variant")
    parser.add_argument("--bf16", action="store_true", default=None, help="deprecated: --dtype bfloat16")
    parser.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deprecated: --report-to tensorboard",
    )
    add_settings_arguments(
        parser.add_argument_group(BLOCK_GROUP),
        BlockSettings,
        not_given=True,
        check_choices=False,  # BlockSettings names the field and its choices
        overrides={"variant": {"help": VARIANT_HELP}},
    )
    parser.set_defaults(handler=run)


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The preset, then --config, then the flags given (a flag left out is None and overrides nothing)."""
    from sbmoe.training.config import FIELD_NAMES, LEGACY_KEYS, read_config_file, resolve_config

    file_settings = read_config_file(args.config) if args.config else {}
    cli_settings = {key: value for key, value in vars(args).items() if key in FIELD_NAMES | LEGACY_KEYS}
    cli_settings["progress"] = False if args.no_progress else None
    return resolve_config(file_settings, cli_settings)


def run(args: argparse.Namespace) -> int:
    from sbmoe.training.trainer import train

    summary = train(training_config(args), resume=args.resume)
    best = summary["best_validation_ndcg@10"]
    print(
        f"trained {summary['epochs_run']} epoch(s); best validation nDCG@10 "
        f"{'n/a' if best is None else f'{best:.4f}'} at epoch {summary['best_epoch']} "
        f"(kept: {summary['selection']}); model in {summary['output_dir']}"
    )
    return 0
