"""`sbmoe init`: an untrained SB-MoE model (or the plain baseline's shape) on a base encoder."""

from __future__ import annotations

import argparse

from sbmoe.commands.common import add_encoder_overrides, build, encoder_overrides
from sbmoe.commands.flags import add_settings_arguments, flag_values
from sbmoe.commands.train import BLOCK_GROUP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sbmoe.modeling.settings import BlockSettings

    parser.add_argument("--base", required=True, help="encoder folder, hub id, or minilm-l6")
    parser.add_argument("--output", required=True, help="new model folder (must not exist or be empty)")
    parser.add_argument("--no-moe", action="store_true", help="no MoE block: the FINE-TUNED baseline's shape")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the block")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code to run")
    add_encoder_overrides(parser)
    add_settings_arguments(
        parser.add_argument_group(BLOCK_GROUP),
        BlockSettings,
        not_given=True,  # the flags given, over the field's defaults
        check_choices=False,  # BlockSettings names the field and its choices
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sbmoe.io import check_new_folder
    from sbmoe.modeling import build_model, save_model
    from sbmoe.modeling.settings import BlockSettings

    check_new_folder(args.output)  # before the slow part
    model, tokenizer = build(
        build_model,
        base=args.base,
        use_moe=not args.no_moe,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
        encoder_settings=encoder_overrides(args),
        **{name: value for name, value in flag_values(args, BlockSettings).items() if value is not None},
    )
    save_model(model, tokenizer, args.output)
    block = sum(p.numel() for p in model.moe.parameters()) if model.moe is not None else 0
    print(
        f"wrote {args.output}: encoder {sum(p.numel() for p in model.encoder.parameters()):,} parameters, "
        f"MoE block {block:,}"
    )
    return 0
