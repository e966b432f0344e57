"""BEIR collections on disk: corpus, queries and qrels, read strictly and validated.

A collection is a folder::

    <name>/corpus.jsonl[.gz]   one JSON object a line: {"_id", "title" (optional), "text", ...}
    <name>/queries.jsonl       one JSON object a line: {"_id", "text", ...}
    <name>/qrels/<split>.tsv   header "query-id<TAB>corpus-id<TAB>score", one judgement a line

Malformed input raises `DataError` naming the file, the line (1-based) and the problem. Judgements that
point at documents or queries absent from the collection are not errors: they are counted (`dangling`)
and reported, and metrics treat such documents as never retrieved.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from sbmoe.errors import DataError, SbmoeError

logger = logging.getLogger(__name__)

CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz")
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
QRELS_HEADER = ("query-id", "corpus-id", "score")
DATA_ENV = "SBMOE_DATA"


@dataclass(frozen=True)
class Corpus:
    """The documents of a collection, in file order: parallel lists of ids, titles and texts."""

    ids: list[str]
    titles: list[str]  # "" when the document has no title
    texts: list[str]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.titles) == len(self.texts):
            raise ValueError(
                f"Corpus lists differ in length: {len(self.ids)} ids, {len(self.titles)} titles, "
                f"{len(self.texts)} texts"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def document_texts(self) -> list[str]:
        """The text to encode for each document, BEIR's way: (title + " " + text).strip()."""
        return [document_text(title, text) for title, text in zip(self.titles, self.texts, strict=True)]


# --------------------------------------------------------------------------------------------- reading


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its line ending) of a UTF-8 text file, gzip if *.gz.

    Lines are decoded one by one so that a decoding error can name its line.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        handle = opener(path, "rb")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a file") from None
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror or error})") from None
    line_number = 0
    with handle:
        try:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(path, f"not valid UTF-8 text ({error.reason})", line_number) from None
                if line_number == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark is not content
                yield line_number, line.rstrip("\r\n")
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise DataError(path, f"not a readable gzip file ({error})", line_number + 1) from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield (line number, id, object) for each non-blank line of a BEIR jsonl file.

    Checks that every line is a JSON object with an "_id" (string or integer, returned as a string),
    a string "text", an optional string "title", and that no id repeats.
    """
    first_line: dict[str, int] = {}
    for line_number, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                path, f"malformed JSON ({error.msg} at column {error.colno})", line_number
            ) from None
        if not isinstance(record, dict):
            raise DataError(path, f"expected a JSON object, found {_json_type(record)}", line_number)
        doc_id = _record_id(path, line_number, record)
        _check_string_fields(path, line_number, record)
        if doc_id in first_line:
            raise DataError(
                path, f"duplicate id {doc_id!r} (first seen on line {first_line[doc_id]})", line_number
            )
        first_line[doc_id] = line_number
        yield line_number, doc_id, record


def _record_id(path: Path, line_number: int, record: dict[str, Any]) -> str:
    """The record's "_id" as a string; integers are accepted and converted."""
    if "_id" not in record:
        raise DataError(path, 'missing field "_id"', line_number)
    value = record["_id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(
            path, f'field "_id" must be a string or an integer, found {_json_type(value)}', line_number
        )
    doc_id = str(value)
    if not doc_id:
        raise DataError(path, 'field "_id" is empty', line_number)
    return doc_id


def _check_string_fields(path: Path, line_number: int, record: dict[str, Any]) -> None:
    """Require a string "text"; allow "title" to be absent or null, else require a string."""
    if "text" not in record:
        raise DataError(path, 'missing field "text"', line_number)
    if not isinstance(record["text"], str):
        raise DataError(
            path, f'field "text" must be a string, found {_json_type(record["text"])}', line_number
        )
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise DataError(path, f'field "title" must be a string, found {_json_type(title)}', line_number)


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def iter_documents(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Stream a BEIR corpus file as (id, title, text), in file order, checked as `load_corpus` does.

    Only the ids seen so far are held (to refuse a repeated id), so a corpus larger than memory streams.
    """
    for _, doc_id, record in _read_jsonl(Path(path)):
        yield doc_id, record.get("title") or "", record["text"]


def document_text(title: str, text: str) -> str:
    """The text to encode for a document, BEIR's way: (title + " " + text).strip()."""
    return f"{title} {text}".strip()


def load_corpus(path: str | Path) -> Corpus:
    """Read a BEIR corpus (.jsonl, or .jsonl.gz when the name ends in .gz), keeping file order."""
    path = Path(path)
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    for doc_id, title, text in iter_documents(path):
        ids.append(doc_id)
        titles.append(title)
        texts.append(text)
    if not ids:
        raise DataError(path, "the corpus has no documents")
    logger.debug("read %d documents from %s", len(ids), path)
    return Corpus(ids=ids, titles=titles, texts=texts)


def load_queries(path: str | Path) -> dict[str, str]:
    """Read BEIR queries as {query id: text}, in file order."""
    path = Path(path)
    queries = {query_id: record["text"] for _, query_id, record in _read_jsonl(path)}
    if not queries:
        raise DataError(path, "the file has no queries")
    logger.debug("read %d queries from %s", len(queries), path)
    return queries


def load_query_file(path: str | Path) -> dict[str, str]:
    """Queries to search for: BEIR .jsonl, or .tsv lines "id<TAB>text" (no header). Empty texts are errors."""
    path = Path(path)
    if path.suffix != ".tsv":
        queries = load_queries(path)
        empty = next((query_id for query_id, text in queries.items() if not text.strip()), None)
        if empty is not None:
            raise DataError(path, f"query {empty!r} has an empty text")
        return queries
    queries = {}
    for line_number, line in _read_lines(path):
        if not line.strip():
            continue
        query_id, tab, text = line.partition("\t")
        if not tab or not query_id:
            raise DataError(path, f"expected id<TAB>text, found {line!r}", line_number)
        if not text.strip():
            raise DataError(path, f"query {query_id!r} has an empty text", line_number)
        if query_id in queries:
            raise DataError(path, f"duplicate query id {query_id!r}", line_number)
        queries[query_id] = text
    if not queries:
        raise DataError(path, "the file has no queries")
    return queries


def judged_queries(queries: Mapping[str, str], qrels: Mapping[str, object]) -> list[str]:
    """The ids of the judged queries that have a text, in the order of the judgements."""
    return [query_id for query_id in qrels if query_id in queries]


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels file as {query id: {document id: grade}}.

    The first line must be the header "query-id<TAB>corpus-id<TAB>score"; blank lines are skipped;
    fields after the third are ignored, as BEIR does. A repeated (query, document) pair is an error.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    lines = _read_lines(path)
    _check_qrels_header(path, next(lines, None))
    for line_number, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise DataError(
                path,
                f"expected 3 tab-separated fields (query-id, corpus-id, score), "
                f"found {len(fields)}: {line!r}",
                line_number,
            )
        query_id, doc_id, score = fields[0], fields[1], fields[2]
        try:
            grade = int(score)
        except ValueError:
            raise DataError(path, f"score must be an integer, found {score!r}", line_number) from None
        pair = (query_id, doc_id)
        if pair in first_line:
            raise DataError(
                path,
                f"duplicate judgement for query {query_id!r} and document {doc_id!r} "
                f"(first seen on line {first_line[pair]})",
                line_number,
            )
        first_line[pair] = line_number
        qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def _check_qrels_header(path: Path, first: tuple[int, str] | None) -> None:
    expected = "\t".join(QRELS_HEADER)
    if first is None:
        raise DataError(path, f"empty file, expected the header {expected!r}")
    line_number, line = first
    if tuple(line.split("\t")[:3]) != QRELS_HEADER:
        raise DataError(path, f"expected the header {expected!r}, found {line!r}", line_number)


# -------------------------------------------------------------------------------------------- datasets


class BeirDataset:
    """One BEIR collection folder. The corpus and queries are read on first use and kept."""

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.resolve().name
        self._qrels: dict[str, dict[str, dict[str, int]]] = {}

    def __repr__(self) -> str:
        return f"BeirDataset(name={self.name!r}, path={str(self.path)!r})"

    @property
    def corpus_path(self) -> Path:
        """corpus.jsonl if present, else corpus.jsonl.gz (which may not exist: reading then says so)."""
        plain = self.path / CORPUS_FILES[0]
        return plain if plain.is_file() else self.path / CORPUS_FILES[1]

    @cached_property
    def corpus(self) -> Corpus:
        return load_corpus(self.corpus_path)

    @cached_property
    def queries(self) -> dict[str, str]:
        return load_queries(self.path / QUERIES_FILE)

    @cached_property
    def _document_ids(self) -> frozenset[str]:
        return frozenset(self.corpus.ids)

    def splits(self) -> list[str]:
        """Sorted names of the qrels files (qrels/<split>.tsv)."""
        return sorted(p.stem for p in (self.path / QRELS_DIR).glob("*.tsv") if p.is_file())

    def qrels(self, split: str) -> dict[str, dict[str, int]]:
        """The judgements of `split` as {query id: {document id: grade}} (a fresh copy).

        The first call for a split logs one warning if judgements point at absent documents or queries.
        """
        if split not in self._qrels:
            available = self.splits()
            if split not in available:
                raise SbmoeError(
                    f"dataset {self.name!r} has no split {split!r}; available splits: "
                    f"{', '.join(available) or 'none (no qrels/*.tsv files)'}"
                )
            self._qrels[split] = load_qrels(self.path / QRELS_DIR / f"{split}.tsv")
            counts = self.dangling(split)
            if counts["missing_documents"] or counts["missing_queries"]:
                logger.warning(
                    "%s/%s: %d judgements point at documents not in the corpus (they count as never "
                    "retrieved) and %d at queries not in queries.jsonl (those queries are not evaluated)",
                    self.name,
                    split,
                    counts["missing_documents"],
                    counts["missing_queries"],
                )
            if counts["empty_queries"]:
                logger.warning(
                    "%s/%s: %d judged queries have an empty text in queries.jsonl",
                    self.name,
                    split,
                    counts["empty_queries"],
                )
        return {query_id: dict(docs) for query_id, docs in self._qrels[split].items()}

    def dangling(self, split: str) -> dict[str, int]:
        """Count judgement rows of `split` whose document or query is absent from the collection, and the
        judged queries whose text is empty."""
        qrels = self._qrels[split] if split in self._qrels else self.qrels(split)
        documents, queries = self._document_ids, self.queries
        missing_documents = sum(doc_id not in documents for docs in qrels.values() for doc_id in docs)
        missing_queries = sum(len(docs) for query_id, docs in qrels.items() if query_id not in queries)
        empty_queries = sum(query_id in queries and not queries[query_id].strip() for query_id in qrels)
        return {
            "missing_documents": missing_documents,
            "missing_queries": missing_queries,
            "empty_queries": empty_queries,
        }

    def queries_are_documents(self) -> bool:
        """Whether the queries are themselves corpus documents under the same id (as in ArguAna).

        True when, among queries whose id is also a document id, at least half have the same text
        (after strip) as that document. In collections with separate numberings (cranfield: query 1
        and document 1 are unrelated) the shared ids carry different texts, so this is False.
        """
        corpus = self.corpus
        position = {doc_id: i for i, doc_id in enumerate(corpus.ids)}
        shared = [query_id for query_id in self.queries if query_id in position]
        if not shared:
            return False
        same = 0
        for query_id in shared:
            i = position[query_id]
            query = self.queries[query_id].strip()
            same += (
                query == corpus.texts[i].strip() or query == f"{corpus.titles[i]} {corpus.texts[i]}".strip()
            )
        return 2 * same >= len(shared)


# ----------------------------------------------------------------------------------------- resolution


def _looks_like_collection(folder: Path) -> bool:
    return (
        folder.is_dir()
        and any((folder / f).is_file() for f in CORPUS_FILES)
        and (folder / QUERIES_FILE).is_file()
    )


def _data_dir(data_dir: str | Path | None) -> tuple[Path | None, str]:
    """The folder of collections: `data_dir` if given, else $SBMOE_DATA; and where it came from."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser(), f"${DATA_ENV}"
    return None, ""


def _check_collection_files(folder: Path) -> None:
    if not any((folder / f).is_file() for f in CORPUS_FILES):
        raise DataError(
            folder / CORPUS_FILES[0], f"file not found (nor {CORPUS_FILES[1]}): not a BEIR collection"
        )
    if not (folder / QUERIES_FILE).is_file():
        raise DataError(folder / QUERIES_FILE, "file not found: not a BEIR collection")


def resolve_dataset(name_or_path: str | Path, data_dir: str | Path | None = None) -> Path:
    """The folder of a collection given as a folder path or as a name under the data folder.

    An existing directory is taken as is. Otherwise the name is looked up under `data_dir` if given,
    else under $SBMOE_DATA. The folder must hold corpus.jsonl[.gz] and queries.jsonl.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        folder = candidate
    else:
        root, source = _data_dir(data_dir)
        if root is None:
            raise SbmoeError(
                f"dataset {str(name_or_path)!r} is not a folder, and no data folder is set to look it up by "
                f"name: pass --data-dir or set {DATA_ENV} to the folder holding the BEIR collections"
            )
        folder = root / str(name_or_path)
        if not folder.is_dir():
            raise SbmoeError(_not_found_message(str(name_or_path), root, source))
    _check_collection_files(folder)
    return folder


def _not_found_message(name: str, root: Path, source: str) -> str:
    message = (
        f"dataset {name!r} not found: it is not a folder, and {root} (from {source}) has no folder {name!r}"
    )
    if root.is_dir():
        names = [p.name for p in list_datasets(root)]
        message += f"; available collections there: {', '.join(names) or 'none'}"
    else:
        message += f"; {root} does not exist"
    return message + f". Pass --data-dir or set {DATA_ENV} to the folder holding the BEIR collections."


def list_datasets(data_dir: str | Path | None = None) -> list[Path]:
    """The subfolders of the data folder (`data_dir`, else $SBMOE_DATA) that look like BEIR collections."""
    root, source = _data_dir(data_dir)
    if root is None:
        raise SbmoeError(
            f"no data folder: pass --data-dir or set {DATA_ENV} to the folder holding the BEIR collections"
        )
    if not root.is_dir():
        raise SbmoeError(f"data folder {root} (from {source}) does not exist")
    return sorted((p for p in root.iterdir() if _looks_like_collection(p)), key=lambda p: p.name)


def load_dataset(name_or_path: str | Path, data_dir: str | Path | None = None) -> BeirDataset:
    """The collection named or located by `name_or_path` (see `resolve_dataset`); files are read lazily."""
    return BeirDataset(resolve_dataset(name_or_path, data_dir))


# ----------------------------------------------------------------------------------------- validation
