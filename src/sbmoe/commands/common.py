"""Flags and helpers shared by several commands."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from sbmoe.errors import SbmoeError

ANN_FLAGS = {  # flag destination -> (index type, setting name)
    "hnsw_m": ("hnsw", "m"),
    "ef_construction": ("hnsw", "ef_construction"),
    "ef_search": ("hnsw", "ef_search"),
    "nlist": ("ivfpq", "nlist"),
    "pq_m": ("ivfpq", "pq_m"),
    "nbits": ("ivfpq", "nbits"),
    "nprobe": ("ivfpq", "nprobe"),
    "refine": ("ivfpq", "refine"),
}


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_verbosity(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """-v/--verbose (debug logging) and -q/--quiet (warnings and errors only), into `log_level`.

    default: the level when neither is given. A subcommand's flags default to SUPPRESS (not set), so that
    `sbmoe -v evaluate` keeps the -v given before the subcommand."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG, default=default,
        help="debug logging",
    )  # fmt: skip
    group.add_argument(
        "-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING, default=default,
        help="warnings and errors only",
    )  # fmt: skip


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder of BEIR collections (default: $SBMOE_DATA)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_dtype_argument(parser: argparse.ArgumentParser, default: str | None = "float32") -> None:
    """--dtype: the encoder's compute precision (`sbmoe.modeling.precision`). default None: not given
    (a config file or the settings' own default decides, float32)."""
    from sbmoe.modeling.precision import DTYPE_HELP, DTYPES

    parser.add_argument(
        "--dtype", choices=DTYPES, default=default, help=f"{DTYPE_HELP} (default: {default or 'float32'})"
    )


def add_index_type_arguments(parser: argparse.ArgumentParser) -> None:
    """--index-type and the settings of the approximate types (see `ann_overrides`)."""
    from sbmoe.retrieval.choices import INDEX_TYPES

    group = parser.add_argument_group("index type")
    group.add_argument(
        "--index-type",
        choices=INDEX_TYPES,
        default="exact",
        help="exact search, or an approximate faiss index (default: exact)",
    )
    group.add_argument("--hnsw-m", type=int, help="hnsw: links per node (default 32)")
    group.add_argument("--ef-construction", type=int, help="hnsw: build-time beam (default 100)")
    group.add_argument("--ef-search", type=int, help="hnsw: search-time beam (default 128)")
    group.add_argument("--nlist", type=int, help="ivfpq: inverted lists (default ~sqrt(N))")
    group.add_argument(
        "--pq-m", type=int, help="ivfpq: sub-quantizers, must divide the dimension (default H/8)"
    )
    group.add_argument("--nbits", type=int, help="ivfpq: bits per sub-quantizer code (default 8)")
    group.add_argument("--nprobe", type=int, help="ivfpq: lists visited per query (default 16)")
    group.add_argument(
        "--refine",
        type=int,
        help="ivfpq: re-score the top R x k exactly from the embeddings (default 4; 0: off)",
    )


def ann_overrides(args: argparse.Namespace, index_type: str) -> dict[str, Any]:
    """The index-type flags given, as settings of `index_type`; a flag of another type is an error."""
    overrides = {}
    for dest, (flag_type, setting) in ANN_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if flag_type != index_type:
            raise SbmoeError(f"{flag} applies to --index-type {flag_type}, not {index_type}")
        if value < (0 if setting == "refine" else 1):
            raise SbmoeError(f"{flag} must be a positive integer, got {value}")
        overrides[setting] = value
    return overrides


def add_encoder_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pooling", choices=["mean", "cls"], help="override the base's pooling")
    parser.add_argument(
        "--normalize", type=parse_bool, metavar="{true,false}", help="override L2 normalisation"
    )
    parser.add_argument("--query-max-length", type=int)
    parser.add_argument("--document-max-length", type=int)


def encoder_overrides(args: argparse.Namespace) -> dict:
    return {
        "pooling": args.pooling,
        "normalize": args.normalize,
        "query_max_length": args.query_max_length,
        "document_max_length": args.document_max_length,
    }


def build(factory: Callable, **kwargs):
    """Build a settings object; its validation errors are user errors."""
    try:
        return factory(**kwargs)
    except ValueError as error:
        raise SbmoeError(str(error)) from error
