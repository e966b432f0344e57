"""`sbmoe data list`, `validate`, `download` and `split`: the BEIR collections found, one read fully, one
fetched, one's judged queries split into train and test."""

from __future__ import annotations

import argparse
import json

from sbmoe.commands.common import add_common, add_verbosity
from sbmoe.errors import SbmoeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="{list,validate,download,split}")
    listing = actions.add_parser("list", help="collections found under --data-dir / $SBMOE_DATA")
    add_verbosity(listing)
    add_common(listing)
    listing.set_defaults(handler=run_list)
    validate = actions.add_parser("validate", help="read a collection fully and report counts and problems")
    add_verbosity(validate)
    validate.add_argument("dataset", help="collection name or folder")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common(validate)
    validate.set_defaults(handler=run_validate)
    download = actions.add_parser(
        "download",
        help="fetch a public BEIR collection into --data-dir (checksum checked, validated, atomic)",
    )
    add_verbosity(download)
    download.add_argument("dataset", nargs="?", help="collection name (see --list)")
    download.add_argument("--list", action="store_true", help="name the collections that can be downloaded")
    add_common(download)
    download.set_defaults(handler=run_download)
    split = actions.add_parser(
        "split",
        help="a new collection folder whose train and test qrels split one split's judged queries at random",
        description=(
            "Write a BEIR folder whose qrels/train.tsv and qrels/test.tsv split the judged queries of "
            "COLLECTION's --split at random; corpus and queries are linked, not copied; SOURCES.md and "
            "split.json record the split."
        ),
    )
    add_verbosity(split)
    split.add_argument("dataset", metavar="COLLECTION", help="collection name or folder")
    split.add_argument(
        "--output", required=True, help="the new collection folder (must not exist or be empty)"
    )
    split.add_argument(
        "--test-share", type=float, default=0.5, help="share of the queries in test (default: 0.5)"
    )
    split.add_argument("--seed", type=int, default=0, help="seed of the random split (default: 0)")
    split.add_argument(
        "--split", default="test", help="the qrels split whose queries are split (default: test)"
    )
    add_common(split)
    split.set_defaults(handler=run_split)


def run_download(args: argparse.Namespace) -> int:
    import os

    from sbmoe.data.download import download_collection, known_collections

    if args.list:
        for name, url in known_collections().items():
            print(f"{name:<20} {url}")
        return 0
    if not args.dataset:
        raise SbmoeError("name a collection to download (sbmoe data download --list names them)")
    data_dir = args.data_dir or os.environ.get("SBMOE_DATA")
    if not data_dir:
        raise SbmoeError("where to put it: give --data-dir or set SBMOE_DATA")
    folder = download_collection(args.dataset, data_dir, progress=not args.no_progress)
    print(f"{args.dataset}: downloaded and validated in {folder}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from sbmoe.data import list_datasets, load_dataset

    for path in list_datasets(args.data_dir):
        print(f"{path.name:<20} splits: {', '.join(load_dataset(path).splits()) or '-'}   {path}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from sbmoe.data import load_dataset, validate_dataset

    report = validate_dataset(load_dataset(args.dataset, args.data_dir))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    counts = f"{report['num_documents']:,} documents, {report['num_queries']:,} queries"
    print(f"{report['name']}: {counts} ({report['path']})")
    for split, counts in report["splits"].items():
        details = ", ".join(f"{key} {value:,}" for key, value in counts.items())
        print(f"  {split}: {details}")
    print(f"  queries are corpus documents: {report['queries_are_documents']}")
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    if not report["problems"]:
        print("  no problems found")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from sbmoe.data.splits import split_collection

    record = split_collection(
        args.dataset,
        args.output,
        test_share=args.test_share,
        seed=args.seed,
        split=args.split,
        data_dir=args.data_dir,
    )
    counts = record["counts"]
    print(
        f"{record['collection']}/{record['source_split']}: {counts['judged_queries']} judged queries split "
        f"into train {counts['train']['queries']} and test {counts['test']['queries']} "
        f"(seed {record['seed']}) in {args.output}"
    )
    for problem in record["problems"]:
        print(f"  problem: {problem}")
    return 0
