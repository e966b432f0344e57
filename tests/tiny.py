"""Builders of tiny offline test material: a random BERT encoder folder and a BEIR collection folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

WORDS = (
    "the a of and in to is for on with cells gene protein cancer virus brain heart blood drug trial "
    "mouse human effect risk study patients treatment increase decrease vitamin sleep diet exercise "
    "apple river music planet ocean stone light"
).split()

DOCUMENTS = {
    "d1": ("Gene study", "the gene protein in human cells"),
    "d2": ("Cancer", "cancer risk and drug trial in patients"),
    "d3": ("Virus", "virus in blood of mouse"),
    "d4": ("Brain", "brain and sleep study"),
    "d5": ("Heart", "heart risk with diet and exercise"),
    "d6": ("Vitamin", "vitamin effect on treatment"),
    "d7": ("", "apple river music"),
    "d8": ("Planet", "planet ocean stone light"),
}
QUERIES = {
    "q1": "gene protein",
    "q2": "cancer drug",
    "q3": "virus blood",
    "q4": "sleep brain",
    "q5": "heart diet",
    "q6": "vitamin treatment",
}
QRELS = {
    "train": {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}},
    "test": {"q5": {"d5": 2, "d4": 1}, "q6": {"d6": 1}},
}


def make_tokenizer() -> BertTokenizerFast:
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


def make_tiny_encoder(folder: Path, seed: int = 0, dropout: float = 0.1, hidden_size: int = 32) -> Path:
    """A random 2-layer BERT (hidden 32 unless given) with its tokenizer, saved as a Hugging Face folder."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_beir(folder: Path, gzip_corpus: bool = False) -> Path:
    """A BEIR folder with DOCUMENTS, QUERIES and QRELS (splits train and test)."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in DOCUMENTS.items())
    if gzip_corpus:
        with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        (folder / "corpus.jsonl").write_text(lines, encoding="utf-8")
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()), encoding="utf-8"
    )
    (folder / "qrels").mkdir(exist_ok=True)
    for split, judgements in QRELS.items():
        rows = [f"{q}\t{d}\t{g}" for q, docs in judgements.items() for d, g in docs.items()]
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n"
        )
    return folder


def make_synthetic_beir(folder: Path, num_queries: int = 40, seed: int = 0) -> Path:
    """A BEIR folder of random word strings: query i shares words with document i (its positive).

    Splits: train (all queries but the last 8) and test (the last 8). Documents outnumber queries 2:1.
    """
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = {f"d{i}": " ".join(rng.choices(WORDS, k=8)) for i in range(2 * num_queries)}
    queries = {f"q{i}": " ".join(docs[f"d{i}"].split()[:3]) for i in range(num_queries)}
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs.items()),
        encoding="utf-8",
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()), encoding="utf-8"
    )
    (folder / "qrels").mkdir(exist_ok=True)
    header = "query-id\tcorpus-id\tscore\n"
    ids = list(queries)
    for split, chosen in (("train", ids[:-8]), ("test", ids[-8:])):
        rows = "".join(f"{q}\td{q[1:]}\t1\n" for q in chosen)
        (folder / "qrels" / f"{split}.tsv").write_text(header + rows, encoding="utf-8")
    return folder


def figure_format_of(data: bytes) -> str | None:
    """The format of a figure file's bytes, by signature: "png", "pdf", "svg", or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"%PDF"):
        return "pdf"
    if data.lstrip().startswith(b"<?xml") and b"<svg" in data:
        return "svg"
    return None
