"""`sbmoe data list`, `validate` and `download`: the BEIR collections found, one read fully, one fetched."""

from __future__ import annotations

import argparse
import json

from sbmoe.commands.common import add_common, add_verbosity
from sbmoe.errors import SbmoeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="{list,validate,download}")
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
