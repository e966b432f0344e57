"""`sbmoe encode`, `sbmoe index` and `sbmoe search`: a retriever over a user's own documents.

sbmoe index --model M --corpus docs.jsonl --output idx [--index-type hnsw]
sbmoe search --index idx "a question"                      # ranked ids, scores, titles, expert
sbmoe search --index idx --queries q.tsv --output run.trec
torchrun --nproc_per_node P -m sbmoe encode --model M --dataset D --output idx   # P processes
sbmoe encode ... --num-shards S --shard-index I; then sbmoe encode --merge idx  # S jobs anywhere
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from sbmoe.commands.common import add_dtype_argument, add_index_type_arguments, ann_overrides
from sbmoe.errors import SbmoeError

TITLE_WIDTH = 80  # characters of a title (or of the text's start) printed per hit


def _add_source(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--corpus", help="corpus file: one JSON object a line with _id, text, title (.gz ok)")
    source.add_argument("--dataset", help="a BEIR collection (name under --data-dir, or folder): its corpus")
    parser.add_argument("--data-dir", help="folder of BEIR collections (default: $SBMOE_DATA)")


def _add_encoding(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", help="SB-MoE routing of the documents (default: the model's default_mode)")
    add_dtype_argument(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=4096,
        help="documents read, sorted by length and written at a time; shards are whole chunks (default 4096)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _corpus_path(args: argparse.Namespace) -> Path:
    if args.corpus:
        path = Path(args.corpus)
        if not path.is_file():
            raise SbmoeError(f"{path}: corpus file not found")
        return path
    from sbmoe.data import load_dataset

    return load_dataset(args.dataset, args.data_dir).corpus_path


def _load(model_name: str):
    from sbmoe.modeling.loading import load_model
    from sbmoe.retrieval.encode import default_device

    model, tokenizer = load_model(model_name)
    model.to(default_device())
    return model, tokenizer


def _dtype(args: argparse.Namespace, model) -> Any:
    from sbmoe.modeling.precision import resolve_dtype

    return resolve_dtype(args.dtype, next(model.parameters()).device)


def _encode_shard(
    args: argparse.Namespace,
    output: str | Path,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: bool = True,
    loaded: tuple[Any, Any] | None = None,
) -> Path:
    """Load --model (unless `loaded`) and encode shard `shard_index` of --corpus or --dataset into `output`
    (`encode_shard`)."""
    from sbmoe.retrieval.index import encode_shard, model_reference

    corpus = _corpus_path(args)
    model, tokenizer = loaded or _load(args.model)
    return encode_shard(
        model,
        tokenizer,
        corpus,
        output,
        model_name=model_reference(args.model),
        num_shards=num_shards,
        shard_index=shard_index,
        mode=args.mode,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        progress=progress and not args.no_progress,
        dtype=_dtype(args, model),
    )


def _describe(info: dict[str, Any], output: str | Path) -> str:
    kind = info["type"] + (f" {info['settings']}" if info["settings"] else "")
    built = f", built in {info['build_seconds']:.1f} s" if "build_seconds" in info else ""
    mode = f", routing {info['mode']}" if info["mode"] else ""
    return f"{info['num_documents']:,} documents in {output} ({kind}{built}{mode})"


# ------------------------------------------------------------------------------------------------ encode


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Under torchrun (or accelerate launch) each process encodes one shard and the first merges them. "
        "With --num-shards/--shard-index, one shard per call; then --merge joins them."
    )
    parser.add_argument("--model", help="SB-MoE folder, encoder folder, hub id, or minilm-l6")
    _add_source(parser, required=False)
    parser.add_argument("--output", help="index folder (shards go to OUTPUT/shards/)")
    parser.add_argument("--num-shards", type=int, help="split the corpus into S shards (whole chunks)")
    parser.add_argument("--shard-index", type=int, help="which shard this call encodes, 0..S-1")
    parser.add_argument("--merge", metavar="OUTPUT", help="join the shards in OUTPUT/shards into OUTPUT")
    parser.add_argument("--keep-shards", action="store_true", help="keep the shard folders after merging")
    _add_encoding(parser)
    add_index_type_arguments(parser)
    parser.set_defaults(handler=run_encode)


def run_encode(args: argparse.Namespace) -> int:
    from sbmoe.distributed import barrier, init_distributed
    from sbmoe.retrieval.index import merge_shards, shard_folder

    overrides = ann_overrides(args, args.index_type)
    if args.merge:
        if args.model or args.output or args.corpus or args.dataset:
            raise SbmoeError("--merge OUTPUT takes no --model, --output, --corpus or --dataset")
        info = merge_shards(
            args.merge,
            index_type=args.index_type,
            ann_overrides=overrides,
            keep_shards=args.keep_shards,
            progress=not args.no_progress,
        )
        print(f"merged {info['num_shards']} shard(s): {_describe(info, args.merge)}")
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--output", args.output)) if not value]
    if missing or not (args.corpus or args.dataset):
        raise SbmoeError(f"encode needs {', '.join(missing + ['--corpus or --dataset'])} (or --merge OUTPUT)")
    if (Path(args.output) / "index.json").exists():
        raise SbmoeError(f"{args.output} already holds an index; choose another --output")
    dist = init_distributed()
    if dist.enabled:
        if args.num_shards is not None or args.shard_index is not None:
            raise SbmoeError(
                "under torchrun the shards are the processes; drop --num-shards and --shard-index"
            )
        num_shards, shard_index = dist.world_size, dist.rank
    else:
        num_shards = args.num_shards or 1
        if num_shards > 1 and args.shard_index is None:
            raise SbmoeError(f"--num-shards {num_shards} needs --shard-index (0..{num_shards - 1})")
        shard_index = args.shard_index or 0
    folder = _encode_shard(args, args.output, num_shards, shard_index, progress=dist.is_main)
    barrier(dist)
    if num_shards > 1 and not dist.enabled:
        written = sum(shard_folder(args.output, i, num_shards).is_dir() for i in range(num_shards))
        print(f"wrote shard {shard_index} of {num_shards} to {folder} ({written} of {num_shards} written)")
        print(f"when all are written: sbmoe encode --merge {args.output}")
        return 0
    if dist.is_main:
        info = merge_shards(args.output, index_type=args.index_type, ann_overrides=overrides, progress=False)
        print(f"encoded {_describe(info, args.output)} in {num_shards} shard(s)")
    barrier(dist)
    return 0


# ------------------------------------------------------------------------------------------------- index


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Encode a corpus file with a trained retriever and save an exact, HNSW or IVF-PQ index beside its "
        "settings. Then: sbmoe search --index OUTPUT 'your query'."
    )
    parser.add_argument("--model", required=True, help="SB-MoE folder, encoder folder, hub id, or minilm-l6")
    _add_source(parser, required=True)
    parser.add_argument("--output", required=True, help="new index folder (must not exist or be empty)")
    _add_encoding(parser)
    from sbmoe.retrieval.choices import NUDGE_VARIANTS

    parser.add_argument(
        "--nudge",
        metavar="SPLIT",
        help="with --dataset: move the vectors of the documents that SPLIT's queries judge relevant towards "
        "those queries (NUDGE, its step chosen on a tenth of them held out); queries are not changed",
    )
    parser.add_argument(
        "--nudge-variant", choices=NUDGE_VARIANTS, default="n", help="NUDGE-N or NUDGE-M (default: n)"
    )
    add_index_type_arguments(parser)
    parser.set_defaults(handler=run_index)


def run_index(args: argparse.Namespace) -> int:
    from sbmoe.io import check_new_folder
    from sbmoe.retrieval.index import merge_shards

    if args.nudge and not args.dataset:
        raise SbmoeError("--nudge SPLIT takes its queries from a collection's qrels: give --dataset")
    if args.nudge:  # a missing split is an error now, not after the corpus is encoded
        from sbmoe.data import load_dataset

        load_dataset(args.dataset, args.data_dir).qrels(args.nudge)
    output = check_new_folder(args.output)
    overrides = ann_overrides(args, args.index_type)
    created = not output.exists()
    try:
        loaded = _load(args.model)
        _encode_shard(args, output, loaded=loaded)
        adjust = _nudge_documents(args, *loaded) if args.nudge else None
        info = merge_shards(
            output, index_type=args.index_type, ann_overrides=overrides, progress=False, adjust=adjust
        )
    except BaseException:
        if created:  # the folder is ours and incomplete
            shutil.rmtree(output, ignore_errors=True)
        raise
    print(f"indexed {_describe(info, args.output)}")
    if "nudge" in info:
        fit = info["nudge"]
        moved = (
            f"{fit['documents']} document vectors moved towards {fit['fit_queries']} {fit['split']} queries"
        )
        print(f"{fit['method']}: {moved}, step {fit['step']:g} chosen on {fit['validation_queries']} others")
    print(f'search it: sbmoe search --index {args.output} "your query"')
    return 0


def _nudge_documents(args: argparse.Namespace, model, tokenizer):
    """The `adjust` of `merge_shards` for --nudge: NUDGE fitted on the judged queries of the collection's
    split, encoded as the index encodes queries; the index's embeddings.npy rewritten."""

    def adjust(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
        import json

        import numpy as np
        import torch

        from sbmoe.data import judged_queries, load_dataset
        from sbmoe.evaluation.memorisation import fit_memorisation
        from sbmoe.retrieval.encode import embed_chunk

        dataset = load_dataset(args.dataset, args.data_dir)
        qrels = dataset.qrels(args.nudge)
        query_ids = judged_queries(dataset.queries, qrels)
        texts = [dataset.queries[q] for q in query_ids]
        dtype = getattr(torch, info["dtype"])
        queries, _ = embed_chunk(
            model, tokenizer, texts, "query", info["mode"], batch_size=args.batch_size, dtype=dtype
        )
        documents = np.load(folder / "embeddings.npy", allow_pickle=False)
        with open(folder / "documents.jsonl", encoding="utf-8") as handle:
            document_ids = [json.loads(line)["_id"] for line in handle]
        fitted = fit_memorisation(
            "nudge",
            args.nudge,
            qrels,
            query_ids,
            queries,
            document_ids,
            documents,
            variant=args.nudge_variant,
        )
        _, moved = fitted.transform(queries, documents)
        np.save(folder / "embeddings.npy", moved, allow_pickle=False)
        return {"nudge": fitted.report()}

    return adjust


# ------------------------------------------------------------------------------------------------ search


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", help="the text to search for")
    parser.add_argument("--index", required=True, help="index folder (from sbmoe index or sbmoe encode)")
    parser.add_argument("--queries", help="queries file: BEIR .jsonl or .tsv (id<TAB>text)")
    parser.add_argument("--output", help="TREC run file to write (with --queries)")
    parser.add_argument("--top-k", type=int, help="hits per query (default: 10 printed, 100 in a run file)")
    parser.add_argument("--model", help="the index's model, if it moved since the index was built")
    parser.add_argument("--ef-search", type=int, help="hnsw: search-time beam")
    parser.add_argument("--nprobe", type=int, help="ivfpq: lists visited per query")
    parser.add_argument("--refine", type=int, help="ivfpq: candidates re-scored exactly, as a multiple of k")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace) -> int:
    from sbmoe.analysis.routing import expert_counts
    from sbmoe.data import load_query_file
    from sbmoe.retrieval.index import Index
    from sbmoe.retrieval.search import to_run
    from sbmoe.retrieval.trec import write_trec_run

    if (args.query is None) == (args.queries is None):
        raise SbmoeError("give either a query text or --queries FILE")
    if args.query is not None and not args.query.strip():
        raise SbmoeError("the query is empty; give some text to search for")
    if args.queries and not args.output:
        raise SbmoeError("--queries needs --output RUN_FILE (the TREC run to write)")
    if args.top_k is not None and args.top_k < 1:
        raise SbmoeError(f"--top-k must be at least 1, got {args.top_k}")
    queries = load_query_file(args.queries) if args.queries else {"query": args.query}
    overrides = {"ef_search": args.ef_search, "nprobe": args.nprobe, "refine": args.refine}
    index = Index.open(args.index, overrides)
    model, tokenizer = index.load_model(args.model)
    embeddings, experts = index.encode_queries(model, tokenizer, list(queries.values()), args.batch_size)
    k = min(args.top_k or (100 if args.queries else 10), len(index.ids))
    scores, rows = index.search(embeddings, k)
    if args.queries:
        run = to_run(list(queries), index.ids, scores, rows)
        write_trec_run(run, args.output, tag=Path(args.index).name or "sbmoe")
        routed = ""
        if experts is not None:
            null = model.moe.num_choices > model.moe.num_experts  # a last count for the null expert
            routed = f"; queries per expert: {expert_counts(experts, model.moe.num_experts, null)}"
        print(f"wrote {len(run)} queries x {k} hits to {args.output}{routed}")
        return 0
    routed = (
        f"routed to expert {experts[0]} of {index.info['num_experts']}, mode {index.info['mode']}"
        if experts is not None
        else "no MoE block"
    )
    if experts is not None and experts[0] == model.moe.num_experts:
        routed = f"passed through by the null expert, mode {index.info['mode']}"
    print(f"query: {args.query!r} ({routed}; {index.info['type']} index of {len(index.ids):,} documents)")
    print(f"{'rank':>4}  {'score':>7}  {'id':<20} title")
    for rank, (score, row) in enumerate(zip(scores[0], rows[0], strict=True), start=1):
        if row < 0:
            break
        label = index.titles[row] or index.previews[row]
        label = label if len(label) <= TITLE_WIDTH else label[: TITLE_WIDTH - 3].rstrip() + "..."
        print(f"{rank:>4}  {score:7.4f}  {index.ids[row]:<20} {label}")
    return 0
