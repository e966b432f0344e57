"""`sbmoe <command>`: parse arguments, build settings, call the library, print. No logic of its own.

One module per command (or group of commands); each has `add_arguments(parser)`, which declares its flags
and sets `handler`, and the handler `run(args) -> int`. Library imports happen inside these functions, so
that `sbmoe --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Collection, Sequence

from sbmoe.commands import (
    analyze,
    data,
    evaluate,
    experiment,
    export,
    init,
    quickstart,
    report,
    retrieval,
    train,
)
from sbmoe.commands.common import add_verbosity
from sbmoe.errors import SbmoeError

logger = logging.getLogger("sbmoe")

EXIT_USER_ERROR = 2

# name -> (function adding the command's arguments, one line for `sbmoe --help`), in --help's order
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {
    "init": (init.add_arguments, "build an untrained SB-MoE model on a base encoder"),
    "train": (
        train.add_arguments,
        "fine-tune a retriever (plain, SB-MoE, adapter or random gate) on a collection's training split",
    ),
    "evaluate": (evaluate.add_arguments, "evaluate a retriever on a BEIR collection"),
    "export": (export.add_arguments, "write a model in another tool's format"),
    "experiment": (experiment.add_arguments, "run (or resume) a grid of training and evaluation runs"),
    "report": (report.add_arguments, "tables, significance tests and a figure from an experiment folder"),
    "analyze": (
        analyze.add_arguments,
        "expert usage of an SB-MoE model on a collection: shares, entropy, maps",
    ),
    "encode": (
        retrieval.add_encode_arguments,
        "encode a corpus into an index folder: in one pass, in shards, or across torchrun processes",
    ),
    "index": (
        retrieval.add_index_arguments,
        "encode your own documents into a searchable index (no qrels needed)",
    ),
    "search": (
        retrieval.add_search_arguments,
        "search an index: one query printed, or a queries file written as a TREC run",
    ),
    "quickstart": (
        quickstart.add_arguments,
        "the paper's comparison on SciFact with the packaged MiniLM, in minutes on a CPU",
    ),
    "data": (data.add_arguments, "list, validate, download and split BEIR collections"),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `sbmoe` parser. commands: the subcommands to build whole (None: all); the others get only their
    name and help line, which is all `sbmoe --help` shows, so that parsing imports one command's settings."""
    from sbmoe import __version__

    parser = argparse.ArgumentParser(
        prog="sbmoe", description="Dense retrieval with a single-block mixture of experts."
    )
    parser.add_argument("--version", action="version", version=f"sbmoe {__version__}")
    add_verbosity(parser, default=logging.INFO)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, help) in COMMANDS.items():
        subcommand = subparsers.add_parser(name, help=help)
        if commands is None or name in commands:
            add_verbosity(subcommand)
            add_arguments(subcommand)
    return parser


def _configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports which CPU build it chose
    # The library's load reports and weight-loading bars are noise for a CLI user. Told through the
    # environment transformers reads when it is imported, so that a command that loads no model does not
    # pay for importing it.
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    else:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The first word that is not an option names the command: no option before it takes a value.
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(commands=[command] if command else []).parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return args.handler(args)
    except SbmoeError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
