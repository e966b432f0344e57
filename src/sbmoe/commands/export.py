"""`sbmoe export`: a model in another tool's format (sentence-transformers)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="SB-MoE model folder")
    parser.add_argument("--format", choices=["sentence-transformers"], default="sentence-transformers")
    parser.add_argument("--output", required=True, help="new folder (must not exist or be empty)")
    parser.add_argument("--mode", help="routing of the exported model (default: the model's default_mode)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from sbmoe.integrations.sentence_transformers import export_sentence_transformers
    from sbmoe.io import check_new_folder
    from sbmoe.modeling import load_model

    check_new_folder(args.output)
    model, tokenizer = load_model(args.model)
    export_sentence_transformers(model, tokenizer, args.output, mode=args.mode)
    remote = ", trust_remote_code=True" if model.moe is not None else ""
    print(f"wrote {args.output}; load it with SentenceTransformer({str(args.output)!r}{remote})")
    return 0
