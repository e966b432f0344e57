"""`sbmoe evaluate`: one retriever on one collection split (`sbmoe.evaluation.evaluate`)."""

from __future__ import annotations

import argparse

from sbmoe.commands.common import add_index_type_arguments, ann_overrides, build
from sbmoe.commands.flags import add_settings_arguments, flag_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sbmoe.evaluation.settings import EvaluateSettings

    add_settings_arguments(
        parser,
        EvaluateSettings,
        exclude=(
            "use_cache",  # --no-cache
            "progress",  # --no-progress
            "modes",  # --mode, comma-separated
            "index_type",  # --index-type and the index's settings: add_index_type_arguments
            "index_settings",
        ),
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached embeddings")
    parser.add_argument(
        "--mode",
        help="SB-MoE routing: top1, topk:K, all, random, or several separated by commas (encoded once; "
        "one result folder per mode). Default: the model's default_mode",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_index_type_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sbmoe.evaluation.evaluate import evaluate, format_table
    from sbmoe.evaluation.settings import EvaluateSettings

    settings = build(
        EvaluateSettings,
        **flag_values(args, EvaluateSettings),
        use_cache=not args.no_cache,
        progress=not args.no_progress,
        modes=tuple(mode.strip() for mode in args.mode.split(",")) if args.mode else None,
        index_settings=ann_overrides(args, args.index_type),
    )
    summaries = evaluate(settings)
    print(format_table(summaries))
    last = summaries[-1]
    print(
        f"corpus embeddings: {'reused from cache' if last['corpus_from_cache'] else 'encoded'}; "
        f"total {last['seconds']['total']:.1f} s; results in {', '.join(s['output_dir'] for s in summaries)}"
    )
    return 0
