"""`sbmoe data list` and `sbmoe data validate`: the BEIR collections found, and one read fully."""

from __future__ import annotations

import argparse
import json

from sbmoe.commands.common import add_common, add_verbosity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="{list,validate}")
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
