"""`sbmoe evaluate`: one retriever on one collection split (`sbmoe.evaluation.evaluate`)."""

from __future__ import annotations

import argparse

from sbmoe.commands.common import (
    add_common,
    add_dtype_argument,
    add_encoder_overrides,
    add_index_type_arguments,
    ann_overrides,
    build,
    encoder_overrides,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="SB-MoE folder, encoder folder, hub id, or minilm-l6")
    parser.add_argument("--dataset", required=True, help="collection name (under --data-dir) or folder")
    parser.add_argument("--split", default="test", help="qrels split (default: test)")
    parser.add_argument("--output-dir", help="where results go (default: runs/evaluate/DATASET-SPLIT-MODEL)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=1000, help="hits per query in the run (default: 1000)")
    parser.add_argument(
        "--drop-self-hits",
        choices=["auto", "yes", "no"],
        default="auto",
        help="drop hits whose doc id equals the query id; auto = only where queries are corpus documents",
    )
    parser.add_argument("--backend", choices=["torch", "faiss"], default="torch", help="exact search backend")
    add_index_type_arguments(parser)
    add_encoder_overrides(parser)
    parser.add_argument("--cache-dir", help="embedding cache (default: $SBMOE_CACHE or ~/.cache/sbmoe)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached embeddings")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code to run")
    add_dtype_argument(parser)
    parser.add_argument(
        "--mode",
        help="SB-MoE routing: top1, topk:K, all, random, or several separated by commas (encoded once; "
        "one result folder per mode). Default: the model's default_mode",
    )
    add_common(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sbmoe.evaluation.evaluate import EvaluateSettings, evaluate, format_table

    settings = build(
        EvaluateSettings,
        model=args.model,
        dataset=args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        top_k=args.top_k,
        drop_self_hits=args.drop_self_hits,
        backend=args.backend,
        **encoder_overrides(args),
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        progress=not args.no_progress,
        trust_remote_code=args.trust_remote_code,
        modes=tuple(mode.strip() for mode in args.mode.split(",")) if args.mode else None,
        index_type=args.index_type,
        index_settings=ann_overrides(args, args.index_type),
        dtype=args.dtype,
    )
    summaries = evaluate(settings)
    print(format_table(summaries))
    last = summaries[-1]
    print(
        f"corpus embeddings: {'reused from cache' if last['corpus_from_cache'] else 'encoded'}; "
        f"total {last['seconds']['total']:.1f} s; results in {', '.join(s['output_dir'] for s in summaries)}"
    )
    return 0
