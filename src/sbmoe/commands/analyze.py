"""`sbmoe analyze`: expert usage of an SB-MoE model on a collection (`sbmoe.analysis.analyze`)."""

from __future__ import annotations

import argparse

from sbmoe.commands.common import add_dtype_argument
from sbmoe.errors import SbmoeError

DESCRIPTION = (
    "Route the corpus and the split's judged queries; write routing.json, expert_shares.png and "
    "document_map.png."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sbmoe.analysis.analyze import PROJECTION_CHOICES

    parser.description = DESCRIPTION
    parser.add_argument("--model", required=True, help="SB-MoE model folder")
    parser.add_argument("--dataset", required=True, help="collection name (under --data-dir) or folder")
    parser.add_argument(
        "--split", default="test", help="qrels split whose queries are routed (default: test)"
    )
    parser.add_argument("--data-dir", help="folder of BEIR collections (default: $SBMOE_DATA)")
    parser.add_argument("--output-dir", help="where results go (default: runs/analyze/DATASET-SPLIT-MODEL)")
    parser.add_argument(
        "--projection", choices=PROJECTION_CHOICES, default="pca", help="document map: pca or tsne (slower)"
    )
    parser.add_argument(
        "--max-points", type=int, default=2000, help="documents drawn on the map (default: 2000)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    add_dtype_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sbmoe.analysis.analyze import AnalyzeSettings, analyze, format_summary

    try:
        settings = AnalyzeSettings(
            model=args.model,
            dataset=args.dataset,
            split=args.split,
            data_dir=args.data_dir,
            output_dir=args.output_dir,
            projection=args.projection,
            max_points=args.max_points,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            dtype=args.dtype,
        )
    except ValueError as error:
        raise SbmoeError(str(error)) from error
    print(format_summary(analyze(settings)))
    return 0
