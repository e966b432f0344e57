"""`sbmoe <command>`: parse arguments, build settings, call the library. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence

from sbmoe.errors import SbmoeError
from sbmoe.retrieval.commands import add_dtype_argument, add_index_type_arguments, ann_overrides

logger = logging.getLogger("sbmoe")

EXIT_USER_ERROR = 2


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder of BEIR collections (default: $SBMOE_DATA)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", help="evaluate a retriever on a BEIR collection")
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
    _add_encoder_overrides(parser)
    parser.add_argument("--cache-dir", help="embedding cache (default: $SBMOE_CACHE or ~/.cache/sbmoe)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached embeddings")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code to run")
    add_dtype_argument(parser)
    parser.add_argument(
        "--mode",
        help="SB-MoE routing: top1, topk:K, all, random, or several separated by commas (encoded once; "
        "one result folder per mode). Default: the model's default_mode",
    )
    _add_common(parser)
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from sbmoe.evaluation.evaluate import EvaluateSettings, evaluate, format_table

    settings = _build(
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
        **_encoder_overrides(args),
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


def _add_encoder_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pooling", choices=["mean", "cls"], help="override the base's pooling")
    parser.add_argument("--normalize", type=_bool, metavar="{true,false}", help="override L2 normalisation")
    parser.add_argument("--query-max-length", type=int)
    parser.add_argument("--document-max-length", type=int)


def _encoder_overrides(args: argparse.Namespace) -> dict:
    return {
        "pooling": args.pooling,
        "normalize": args.normalize,
        "query_max_length": args.query_max_length,
        "document_max_length": args.document_max_length,
    }


def _add_block_arguments(parser: argparse.ArgumentParser, **overrides: dict) -> None:
    """One flag per `BlockSettings` field: help from its metadata with the default shown, allowed values as
    the metavar, booleans as --x/--no-x. Every flag defaults to None (not given), so the value comes from a
    config file or the field's default; values are checked by `BlockSettings`, which names the field.

    overrides: per field name, add_argument keywords to replace (e.g. a longer help).
    """
    from dataclasses import fields

    from sbmoe.modeling.settings import BlockSettings

    hints = typing.get_type_hints(BlockSettings)
    group = parser.add_argument_group("MoE block (saved in the model's config.json)")
    for spec in fields(BlockSettings):
        kind = next(
            t for t in (typing.get_args(hints[spec.name]) or (hints[spec.name],)) if t is not type(None)
        )
        choices = spec.metadata.get("choices")
        default = spec.metadata.get("null", "null") if spec.default is None else spec.default
        default = str(default).lower() if kind is bool else default
        options: dict = {"default": None, "help": f"{spec.metadata['help']} (default: {default})"}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            if choices:
                options["metavar"] = "{" + ",".join(choices) + "}"
        options.update(overrides.get(spec.name, {}))
        group.add_argument("--" + spec.name.replace("_", "-"), **options)


def _given_block_settings(args: argparse.Namespace) -> dict:
    """The block settings given on the command line (None = not given)."""
    from sbmoe.modeling.settings import BLOCK_FIELDS

    return {name: getattr(args, name) for name in BLOCK_FIELDS if getattr(args, name) is not None}


def _add_init(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("init", help="build an untrained SB-MoE model on a base encoder")
    parser.add_argument("--base", required=True, help="encoder folder, hub id, or minilm-l6")
    parser.add_argument("--output", required=True, help="new model folder (must not exist or be empty)")
    parser.add_argument("--no-moe", action="store_true", help="no MoE block: the FINE-TUNED baseline's shape")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the block")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model's own code to run")
    _add_encoder_overrides(parser)
    _add_block_arguments(parser)
    parser.set_defaults(handler=_run_init)


def _run_init(args: argparse.Namespace) -> int:
    from sbmoe.io import check_new_folder
    from sbmoe.modeling import build_model, save_model

    check_new_folder(args.output)  # before the slow part
    model, tokenizer = _build(
        build_model,
        base=args.base,
        use_moe=not args.no_moe,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
        encoder_settings=_encoder_overrides(args),
        **_given_block_settings(args),
    )
    save_model(model, tokenizer, args.output)
    block = sum(p.numel() for p in model.moe.parameters()) if model.moe is not None else 0
    print(
        f"wrote {args.output}: encoder {sum(p.numel() for p in model.encoder.parameters()):,} parameters, "
        f"MoE block {block:,}"
    )
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="write a model in another tool's format")
    parser.add_argument("--model", required=True, help="SB-MoE model folder")
    parser.add_argument("--format", choices=["sentence-transformers"], default="sentence-transformers")
    parser.add_argument("--output", required=True, help="new folder (must not exist or be empty)")
    parser.add_argument("--mode", help="routing of the exported model (default: the model's default_mode)")
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from sbmoe.integrations.sentence_transformers import export_sentence_transformers
    from sbmoe.io import check_new_folder
    from sbmoe.modeling import load_model

    check_new_folder(args.output)
    model, tokenizer = load_model(args.model)
    export_sentence_transformers(model, tokenizer, args.output, mode=args.mode)
    remote = ", trust_remote_code=True" if model.moe is not None else ""
    print(f"wrote {args.output}; load it with SentenceTransformer({str(args.output)!r}{remote})")
    return 0


def _add_train(commands: argparse._SubParsersAction) -> None:
    from sbmoe.training.config import DEFAULT_RECIPE, SYSTEMS

    parser = commands.add_parser(
        "train",
        help="fine-tune a retriever (plain, SB-MoE, adapter or random gate) on a collection's training split",
        description="Settings come from --config (YAML or JSON), then from the flags given here. "
        "--preset paper applies the authors' recipe first.",
    )
    parser.add_argument("--config", help="YAML or JSON file of training settings (unknown keys are an error)")
    parser.add_argument("--base", help="base encoder: folder, hub id, or minilm-l6")
    parser.add_argument(
        "--dataset",
        help="collection name (under --data-dir) or folder; several joined by + (scifact+nfcorpus)",
    )
    parser.add_argument("--output-dir", help="new folder for the model, log and checkpoints")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint"
    )
    parser.add_argument("--preset", choices=["paper"], help="the authors' recipe (batch 64, last epoch, ...)")
    parser.add_argument(
        "--system", metavar="{" + ",".join(SYSTEMS) + "}",
        help="what trains: finetune (no block), sbmoe, adapter (one expert), gated-adapter (one expert "
        "scaled by a learned sigmoid gate) or random-gate (default: sbmoe)",
    )  # fmt: skip
    parser.add_argument("--moe", help="deprecated: the block variant, now --variant")
    parser.add_argument(
        "--init-from", metavar="MODEL",
        help="sparse upcycling: an SB-MoE folder with a 1-expert block (e.g. a trained adapter) whose expert "
        "starts every expert; the router starts fresh",
    )  # fmt: skip
    parser.add_argument(
        "--upcycle-noise", type=float, help="noise added to each upcycled tensor, times its std (0.01)"
    )
    parser.add_argument("--train-split")
    parser.add_argument("--validation-split", help="default: dev if the collection has one, else held out")
    parser.add_argument("--validation-share", type=float, help="share of training queries held out (0.05)")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--symmetric", action="store_true", default=None, help="add the document->query term")
    parser.add_argument("--hard-negatives", help="bm25, or a TREC run file to take negatives from")
    parser.add_argument("--num-hard-negatives", type=int)
    parser.add_argument("--batch-size", type=int)
    recipe = DEFAULT_RECIPE  # the defaults of the two regimes: frozen encoder, or encoder training

    def default(name: str) -> str:
        return f"default: {recipe['frozen'][name]} with --freeze-encoder, else {recipe['full'][name]}"

    parser.add_argument("--epochs", type=int, help=default("epochs"))
    parser.add_argument("--encoder-lr", type=float, help=f"default {recipe['full']['encoder_lr']}")
    parser.add_argument("--moe-lr", type=float, help=f"the block's learning rate; {default('moe_lr')}")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--schedule", choices=["constant", "linear", "cosine"], help=default("schedule"))
    parser.add_argument("--warmup-ratio", type=float, help=default("warmup_ratio"))
    parser.add_argument("--max-grad-norm", type=float)
    add_dtype_argument(parser, default=None)
    parser.add_argument("--bf16", action="store_true", default=None, help="deprecated: --dtype bfloat16")
    parser.add_argument(
        "--freeze-encoder", action="store_true", default=None,
        help="train only the block on cached pooled vectors (fast on a CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--selection", choices=["best", "last"],
        help="model kept: last (default) or best validation nDCG@10 (with early stopping)",
    )  # fmt: skip
    parser.add_argument("--early-stopping-patience", type=int)
    parser.add_argument("--checkpoint-every-steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tensorboard", action="store_true", default=None)
    parser.add_argument("--trust-remote-code", action="store_true", default=None)
    _add_encoder_overrides(parser)
    _add_block_arguments(
        parser,
        variant={
            "metavar": "{faithful,learned}",
            "help": "the block variant: faithful (the authors' code: the gate gets no gradient) or learned "
            "(default: learned). A system name (finetune, sbmoe, adapter, ...) is still accepted here and "
            "means --system (deprecated)",
        },
    )
    _add_common(parser)
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from sbmoe.training.config import FIELD_NAMES, LEGACY_KEYS, read_config_file, resolve_config
    from sbmoe.training.trainer import train

    file_settings = read_config_file(args.config) if args.config else {}
    cli_settings = {key: value for key, value in vars(args).items() if key in FIELD_NAMES | LEGACY_KEYS}
    cli_settings["progress"] = False if args.no_progress else None
    config = resolve_config(file_settings, cli_settings)
    summary = train(config, resume=args.resume)
    best = summary["best_validation_ndcg@10"]
    print(
        f"trained {summary['epochs_run']} epoch(s); best validation nDCG@10 "
        f"{'n/a' if best is None else f'{best:.4f}'} at epoch {summary['best_epoch']} "
        f"(kept: {summary['selection']}); model in {summary['output_dir']}"
    )
    return 0


def _add_experiment(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("experiment", help="run (or resume) a grid of training and evaluation runs")
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("--output-dir", required=True, help="experiment folder; re-running resumes it")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the config and list the runs, run nothing"
    )
    add_dtype_argument(parser, default=None)  # None: the grid file's dtype
    parser.add_argument(
        "--seeds",
        help="run only these of the grid's seeds now, comma-separated (e.g. 1,2,3; then 4,5 in another "
        "session): every system gets the same seeds first, and the folder fills up seed by seed",
    )
    _add_common(parser)
    parser.set_defaults(handler=_run_experiment)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise SbmoeError(f"{flag}: expected integers separated by commas, got {text!r}") from None


def _run_experiment(args: argparse.Namespace) -> int:
    from sbmoe.experiments.config import load_experiment_config
    from sbmoe.experiments.runner import plan_runs, run_experiment

    config = load_experiment_config(args.config, data_dir=args.data_dir)
    if args.dtype is not None:
        config.dtype = args.dtype
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else None
    runs = [run for run in plan_runs(config) if seeds is None or run.seed is None or run.seed in seeds]
    if args.dry_run:
        for run in runs:
            print(run.run_id)
        print(f"{len(runs)} runs; config {args.config} is valid")
        return 0
    lines = run_experiment(config, args.output_dir, progress=not args.no_progress, seeds=seeds)
    print(f"{len(runs)} runs finished, {len(lines)} results in {args.output_dir}/results.jsonl")
    print(f"tables and significance tests: sbmoe report {args.output_dir}")
    return 0


def _add_quickstart(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quickstart", help="the paper's comparison on SciFact with the packaged MiniLM, in minutes on a CPU"
    )
    parser.add_argument("--output-dir", default="runs/quickstart", help="default: runs/quickstart")
    parser.add_argument("--base", default="minilm-l6")
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--num-experts", type=int, default=6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=32)
    add_dtype_argument(parser, default="auto")
    _add_common(parser)
    parser.set_defaults(handler=_run_quickstart)


def _run_quickstart(args: argparse.Namespace) -> int:
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
    print("Analysis of SB-MoE learned: " + ", ".join(result["analysis"]["outputs"].values()))
    print(f"Done in {time.perf_counter() - started:.0f} s.")
    return 0


def _add_data(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("data", help="list, validate and download BEIR collections")
    actions = parser.add_subparsers(dest="action", required=True, metavar="{list,validate,download}")
    listing = actions.add_parser("list", help="collections found under --data-dir / $SBMOE_DATA")
    _add_common(listing)
    listing.set_defaults(handler=_run_data_list)
    validate = actions.add_parser("validate", help="read a collection fully and report counts and problems")
    validate.add_argument("dataset", help="collection name or folder")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_common(validate)
    validate.set_defaults(handler=_run_data_validate)
    download = actions.add_parser(
        "download",
        help="fetch a public BEIR collection into --data-dir (checksum checked, validated, atomic)",
    )
    download.add_argument("dataset", nargs="?", help="collection name (see --list)")
    download.add_argument("--list", action="store_true", help="name the collections that can be downloaded")
    _add_common(download)
    download.set_defaults(handler=_run_data_download)


def _run_data_download(args: argparse.Namespace) -> int:
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


def _run_data_list(args: argparse.Namespace) -> int:
    from sbmoe.data import list_datasets, load_dataset

    for path in list_datasets(args.data_dir):
        print(f"{path.name:<20} splits: {', '.join(load_dataset(path).splits()) or '-'}   {path}")
    return 0


def _run_data_validate(args: argparse.Namespace) -> int:
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


def _build(factory: Callable, **kwargs):
    """Build a settings object; its validation errors are user errors."""
    try:
        return factory(**kwargs)
    except ValueError as error:
        raise SbmoeError(str(error)) from error


def build_parser() -> argparse.ArgumentParser:
    from sbmoe import __version__
    from sbmoe.analysis.analyze import add_analyze_parser
    from sbmoe.experiments.report import add_report_parser
    from sbmoe.retrieval.commands import add_encode_parser, add_index_parser, add_search_parser

    parser = argparse.ArgumentParser(
        prog="sbmoe", description="Dense retrieval with a single-block mixture of experts."
    )
    parser.add_argument("--version", action="version", version=f"sbmoe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_export(commands)
    _add_experiment(commands)
    add_report_parser(commands)
    add_analyze_parser(commands)
    add_encode_parser(commands)
    add_index_parser(commands)
    add_search_parser(commands)
    _add_quickstart(commands)
    _add_data(commands)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import transformers

    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports which CPU build it chose
    # The library's load reports and weight-loading bars are noise for a CLI user.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
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


if __name__ == "__main__":
    sys.exit(main())
