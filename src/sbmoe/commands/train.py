"""`sbmoe train`: fine-tune a retriever; settings from --config, then the flags given."""

from __future__ import annotations

import argparse

from sbmoe.commands.common import add_block_arguments, add_common, add_dtype_argument, add_encoder_overrides

DESCRIPTION = (
    "Settings come from --config (YAML or JSON), then from the flags given here. "
    "--preset paper applies the authors' recipe first."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sbmoe.training.config import DEFAULT_RECIPE, SYSTEMS

    parser.description = DESCRIPTION
    parser.add_argument("--config", help="YAML or JSON file of training settings (unknown keys are an error)")
    parser.add_argument("--base", help="base encoder: folder, hub id, or minilm-l6")
    parser.add_argument(
        "--dataset",
        help="collection name (under --data-dir) or folder; several joined by + (scifact+nfcorpus)",
    )
    parser.add_argument("--output-dir", help="new folder for the model, log and checkpoints")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint"
    )
    parser.add_argument("--preset", choices=["paper"], help="the authors' recipe (batch 64, last epoch, ...)")
    parser.add_argument(
        "--system", metavar="{" + ",".join(SYSTEMS) + "}",
        help="what trains: finetune (no block), sbmoe, adapter (one expert), gated-adapter (one expert "
        "scaled by a learned sigmoid gate) or random-gate (default: sbmoe)",
    )  # fmt: skip
    parser.add_argument("--moe", help="deprecated: the block variant, now --variant")
    parser.add_argument(
        "--init-from", metavar="MODEL",
        help="sparse upcycling: an SB-MoE folder with a 1-expert block (e.g. a trained adapter) whose expert "
        "starts every expert; the router starts fresh",
    )  # fmt: skip
    parser.add_argument(
        "--upcycle-noise", type=float, help="noise added to each upcycled tensor, times its std (0.01)"
    )
    parser.add_argument("--train-split")
    parser.add_argument("--validation-split", help="default: dev if the collection has one, else held out")
    parser.add_argument("--validation-share", type=float, help="share of training queries held out (0.05)")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--symmetric", action="store_true", default=None, help="add the document->query term")
    parser.add_argument("--hard-negatives", help="bm25, or a TREC run file to take negatives from")
    parser.add_argument("--num-hard-negatives", type=int)
    parser.add_argument("--batch-size", type=int)
    recipe = DEFAULT_RECIPE  # the defaults of the two regimes: frozen encoder, or encoder training

    def default(name: str) -> str:
        return f"default: {recipe['frozen'][name]} with --freeze-encoder, else {recipe['full'][name]}"

    parser.add_argument("--epochs", type=int, help=default("epochs"))
    parser.add_argument("--encoder-lr", type=float, help=f"default {recipe['full']['encoder_lr']}")
    parser.add_argument("--moe-lr", type=float, help=f"the block's learning rate; {default('moe_lr')}")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--schedule", choices=["constant", "linear", "cosine"], help=default("schedule"))
    parser.add_argument("--warmup-ratio", type=float, help=default("warmup_ratio"))
    parser.add_argument("--max-grad-norm", type=float)
    add_dtype_argument(parser, default=None)
    parser.add_argument("--bf16", action="store_true", default=None, help="deprecated: --dtype bfloat16")
    parser.add_argument(
        "--freeze-encoder", action="store_true", default=None,
        help="train only the block on cached pooled vectors (fast on a CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--selection", choices=["best", "last"],
        help="model kept: last (default) or best validation nDCG@10 (with early stopping)",
    )  # fmt: skip
    parser.add_argument("--early-stopping-patience", type=int)
    parser.add_argument("--checkpoint-every-steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tensorboard", action="store_true", default=None)
    parser.add_argument("--trust-remote-code", action="store_true", default=None)
    add_encoder_overrides(parser)
    add_block_arguments(
        parser,
        variant={
            "metavar": "{faithful,learned}",
            "help": "the block variant: faithful (the authors' code: the gate gets no gradient) or learned "
            "(default: learned). A system name (finetune, sbmoe, adapter, ...) is still accepted here and "
            "means --system (deprecated)",
        },
    )
    add_common(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sbmoe.training.config import FIELD_NAMES, LEGACY_KEYS, read_config_file, resolve_config
    from sbmoe.training.trainer import train

    file_settings = read_config_file(args.config) if args.config else {}
    cli_settings = {key: value for key, value in vars(args).items() if key in FIELD_NAMES | LEGACY_KEYS}
    cli_settings["progress"] = False if args.no_progress else None
    config = resolve_config(file_settings, cli_settings)
    summary = train(config, resume=args.resume)
    best = summary["best_validation_ndcg@10"]
    print(
        f"trained {summary['epochs_run']} epoch(s); best validation nDCG@10 "
        f"{'n/a' if best is None else f'{best:.4f}'} at epoch {summary['best_epoch']} "
        f"(kept: {summary['selection']}); model in {summary['output_dir']}"
    )
    return 0
