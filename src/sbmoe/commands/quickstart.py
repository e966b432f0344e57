"""`sbmoe quickstart`: the paper's comparison on SciFact with the packaged MiniLM, in minutes on a CPU."""

from __future__ import annotations

import argparse

from sbmoe.commands.common import add_common, add_dtype_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs/quickstart", help="default: runs/quickstart")
    parser.add_argument("--base", default="minilm-l6")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--num-experts", type=int, default=6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=32)
    add_dtype_argument(parser, default="auto")
    add_common(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import time

    from sbmoe.experiments.quickstart import run_quickstart

    started = time.perf_counter()
    result = run_quickstart(
        args.output_dir,
        base=args.base,
        dataset=args.dataset,
        data_dir=args.data_dir,
        num_experts=args.num_experts,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        dtype=args.dtype,
    )
    print(result["report"].markdown)
    print(
        "Frozen encoder: the base's pooled vectors were computed once and each system trained only its block."
    )
    print("Report:   " + ", ".join(str(path) for path in result["report_paths"].values()))
    print("Analysis of cluster routing: " + ", ".join(result["analysis"]["outputs"].values()))
    split = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result["seconds"].items())
    print(f"Done in {time.perf_counter() - started:.0f} s ({split}).")
    return 0
