"""`validate_dataset`: read a BEIR collection fully, report counts and problems (`sbmoe data validate`)."""

from __future__ import annotations

from typing import Any

from sbmoe.data.beir import CORPUS_FILES, QRELS_DIR, BeirDataset


def validate_dataset(ds: BeirDataset) -> dict[str, Any]:
    """Read a collection fully and report counts and problems (a JSON-able dict).

    Malformed files raise `DataError`; everything else worth a warning is listed under "problems".
    """
    corpus, queries = ds.corpus, ds.queries
    problems: list[str] = []
    if all((ds.path / f).is_file() for f in CORPUS_FILES):
        problems.append(f"both {CORPUS_FILES[0]} and {CORPUS_FILES[1]} exist; {ds.corpus_path.name} is used")
    empty_documents = sum(not text for text in corpus.document_texts())
    if empty_documents:
        problems.append(f"{empty_documents} documents have no text (empty title and text)")
    empty_queries = sum(not text.strip() for text in queries.values())
    if empty_queries:
        problems.append(f"{empty_queries} queries have empty text")
    splits = {split: _split_report(ds, split) for split in ds.splits()}
    if not splits:
        problems.append(f"no qrels: {ds.path / QRELS_DIR}/<split>.tsv files are needed to evaluate")
    for split, counts in splits.items():
        problems.extend(_split_problems(split, counts))
    return {
        "name": ds.name,
        "path": str(ds.path),
        "num_documents": len(corpus),
        "num_queries": len(queries),
        "empty_documents": empty_documents,
        "splits": splits,
        "queries_are_documents": ds.queries_are_documents(),
        "problems": problems,
    }


def _split_report(ds: BeirDataset, split: str) -> dict[str, int]:
    qrels = ds.qrels(split)
    return {
        "rows": sum(len(docs) for docs in qrels.values()),
        "queries": len(qrels),
        "relevant_rows": sum(grade >= 1 for docs in qrels.values() for grade in docs.values()),
        **ds.dangling(split),
        "queries_without_relevant": sum(all(grade < 1 for grade in docs.values()) for docs in qrels.values()),
    }


def _split_problems(split: str, counts: dict[str, int]) -> list[str]:
    problems = []
    if counts["rows"] == 0:
        problems.append(f"{split}: the qrels file has no judgements")
    if counts["missing_documents"]:
        problems.append(
            f"{split}: {counts['missing_documents']} judgements point at documents not in the corpus"
        )
    if counts["missing_queries"]:
        problems.append(
            f"{split}: {counts['missing_queries']} judgements point at queries not in queries.jsonl"
        )
    if counts["empty_queries"]:
        problems.append(f"{split}: {counts['empty_queries']} judged queries have an empty text")
    if counts["queries_without_relevant"]:
        problems.append(
            f"{split}: {counts['queries_without_relevant']} judged queries have no relevant document"
        )
    return problems
