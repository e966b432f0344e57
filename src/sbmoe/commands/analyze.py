"""`sbmoe analyze`: expert usage of an SB-MoE model on a collection (`sbmoe.analysis.analyze`)."""

from __future__ import annotations

import argparse

from sbmoe.commands.common import build
from sbmoe.commands.flags import add_settings_arguments, flag_values

DESCRIPTION = (
    "Route the corpus and the split's judged queries; write routing.json, expert_shares.png and "
    "document_map.png."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sbmoe.analysis.analyze import AnalyzeSettings

    parser.description = DESCRIPTION
    add_settings_arguments(parser, AnalyzeSettings, exclude=("progress",))  # progress: --no-progress
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sbmoe.analysis.analyze import AnalyzeSettings, analyze, format_summary

    settings = build(AnalyzeSettings, **flag_values(args, AnalyzeSettings), progress=not args.no_progress)
    print(format_summary(analyze(settings)))
    return 0
