"""BEIR reading: round trips, one test per kind of bad input, dataset lookup, validation, real collections."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pytest
from tiny import DOCUMENTS, QRELS, QUERIES, make_tiny_beir

from sbmoe.data import (
    BeirDataset,
    Corpus,
    list_datasets,
    load_corpus,
    load_dataset,
    load_qrels,
    load_queries,
    resolve_dataset,
    validate_dataset,
)
from sbmoe.errors import DataError, SbmoeError

HEADER = "query-id\tcorpus-id\tscore\n"


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_collection(
    folder: Path, documents: list[dict], queries: list[dict], qrels: dict[str, str] | None = None
) -> Path:
    """A BEIR folder from records; `qrels` maps split -> rows (without header)."""
    write(folder / "corpus.jsonl", jsonl(*documents))
    write(folder / "queries.jsonl", jsonl(*queries))
    for split, rows in (qrels or {}).items():
        write(folder / "qrels" / f"{split}.tsv", HEADER + rows)
    return folder


def raises_data_error(path: Path, loader, *words: str, line: int | None = None) -> DataError:
    """Call loader(path); check the DataError names the file, the line and the problem words."""
    with pytest.raises(DataError) as caught:
        loader(path)
    message = str(caught.value)
    assert path.name in message
    assert caught.value.line == line
    if line is not None:
        assert f"line {line}:" in message
    for word in words:
        assert word in message, message
    return caught.value


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("gzip_corpus", [False, True], ids=["plain", "gz"])
def test_round_trip(tmp_path, gzip_corpus):
    ds = load_dataset(make_tiny_beir(tmp_path / "tiny", gzip_corpus=gzip_corpus))
    assert ds.name == "tiny"
    assert ds.corpus.ids == list(DOCUMENTS)
    assert ds.corpus.titles == [title for title, _ in DOCUMENTS.values()]
    assert ds.corpus.texts == [text for _, text in DOCUMENTS.values()]
    assert len(ds.corpus) == len(DOCUMENTS)
    assert ds.queries == QUERIES
    assert list(ds.queries) == list(QUERIES)
    assert ds.splits() == ["test", "train"]
    for split, expected in QRELS.items():
        assert ds.qrels(split) == expected


def test_qrels_returns_a_fresh_copy(tiny_beir):
    ds = load_dataset(tiny_beir)
    ds.qrels("test")["q5"]["d5"] = 0
    assert ds.qrels("test")["q5"]["d5"] == 2


def test_gz_decided_by_suffix(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(jsonl({"_id": "a", "text": "alpha"}))
    assert load_corpus(path).ids == ["a"]


def test_document_texts_with_and_without_title():
    corpus = Corpus(ids=["a", "b", "c"], titles=["Title", "", " "], texts=["body", "only body", "x "])
    assert corpus.document_texts() == ["Title body", "only body", "x"]


def test_corpus_lists_must_match():
    with pytest.raises(ValueError, match="differ in length"):
        Corpus(ids=["a"], titles=[], texts=["x"])


def test_missing_or_null_title_is_empty_and_extra_fields_ignored(tmp_path):
    path = write(
        tmp_path / "corpus.jsonl",
        jsonl({"_id": "a", "text": "x", "metadata": {"k": 1}}, {"_id": "b", "title": None, "text": "y"}),
    )
    corpus = load_corpus(path)
    assert corpus.titles == ["", ""]
    assert corpus.document_texts() == ["x", "y"]


def test_integer_ids_become_strings(tmp_path):
    path = write(
        tmp_path / "queries.jsonl", jsonl({"_id": 7, "text": "seven"}, {"_id": "8", "text": "eight"})
    )
    assert load_queries(path) == {"7": "seven", "8": "eight"}


def test_blank_lines_skipped_but_counted(tmp_path):
    path = write(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "x"}\n\n   \n{"_id": "b"}\n')
    raises_data_error(path, load_corpus, '"text"', line=4)
    write(path, '\n{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": "y"}\n\n')
    assert load_corpus(path).ids == ["a", "b"]


def test_crlf_and_byte_order_mark_accepted(tmp_path):
    corpus = write(
        tmp_path / "corpus.jsonl", b'\xef\xbb\xbf{"_id": "a", "text": "x"}\r\n{"_id": "b", "text": "y"}\r\n'
    )
    assert load_corpus(corpus).ids == ["a", "b"]
    qrels = write(tmp_path / "test.tsv", b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\r\nq\ta\t1\r\n")
    assert load_qrels(qrels) == {"q": {"a": 1}}


def test_qrels_extra_fields_ignored_and_negative_grades_kept(tmp_path):
    path = write(tmp_path / "test.tsv", HEADER + "q1\td1\t-1\textra\nq1\td2\t2\n\n")
    assert load_qrels(path) == {"q1": {"d1": -1, "d2": 2}}


# ------------------------------------------------------------------------------------------ bad input


def test_malformed_json(tmp_path):
    path = write(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n')
    raises_data_error(path, load_corpus, "malformed JSON", line=2)


def test_line_not_an_object(tmp_path):
    path = write(tmp_path / "corpus.jsonl", '["a", "x"]\n')
    raises_data_error(path, load_corpus, "expected a JSON object", "array", line=1)


@pytest.mark.parametrize("field", ["_id", "text"])
def test_missing_field(tmp_path, field):
    record = {"_id": "a", "text": "x"}
    del record[field]
    path = write(tmp_path / "queries.jsonl", jsonl({"_id": "z", "text": "ok"}, record))
    raises_data_error(path, load_queries, f'missing field "{field}"', line=2)


@pytest.mark.parametrize("value", [1.5, True, None, ["a"]])
def test_id_of_wrong_type(tmp_path, value):
    path = write(tmp_path / "corpus.jsonl", jsonl({"_id": value, "text": "x"}))
    raises_data_error(path, load_corpus, '"_id" must be a string or an integer', line=1)


def test_empty_id(tmp_path):
    path = write(tmp_path / "corpus.jsonl", jsonl({"_id": "", "text": "x"}))
    raises_data_error(path, load_corpus, '"_id" is empty', line=1)


@pytest.mark.parametrize(
    ("field", "value", "found"), [("text", 3, "number"), ("text", None, "null"), ("title", ["t"], "array")]
)
def test_text_or_title_not_a_string(tmp_path, field, value, found):
    record = {"_id": "a", "text": "x", field: value}
    path = write(tmp_path / "corpus.jsonl", jsonl(record))
    raises_data_error(path, load_corpus, f'field "{field}" must be a string', found, line=1)


def test_duplicate_id(tmp_path):
    path = write(
        tmp_path / "corpus.jsonl",
        jsonl({"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}),
    )
    raises_data_error(path, load_corpus, "duplicate id 'a'", "first seen on line 1", line=3)


def test_duplicate_id_across_int_and_string(tmp_path):
    path = write(tmp_path / "queries.jsonl", jsonl({"_id": 1, "text": "x"}, {"_id": "1", "text": "y"}))
    raises_data_error(path, load_queries, "duplicate id '1'", line=2)


def test_qrels_wrong_header(tmp_path):
    path = write(tmp_path / "test.tsv", "q1\td1\t1\n")
    error = raises_data_error(
        path, load_qrels, "expected the header", "query-id\\tcorpus-id\\tscore", "found 'q1\\td1\\t1'", line=1
    )
    assert "found" in error.problem


def test_qrels_empty_file(tmp_path):
    path = write(tmp_path / "test.tsv", "")
    raises_data_error(path, load_qrels, "empty file", "expected the header")


def test_qrels_short_row(tmp_path):
    path = write(tmp_path / "test.tsv", HEADER + "q1\td1\t1\nq1 d2 1\n")
    raises_data_error(path, load_qrels, "expected 3 tab-separated fields", "found 1", line=3)


@pytest.mark.parametrize("score", ["1.0", "high", ""])
def test_qrels_non_integer_score(tmp_path, score):
    path = write(tmp_path / "test.tsv", HEADER + f"q1\td1\t{score}\n")
    raises_data_error(path, load_qrels, "score must be an integer", repr(score), line=2)


def test_qrels_duplicate_pair(tmp_path):
    path = write(tmp_path / "test.tsv", HEADER + "q1\td1\t1\nq1\td2\t1\nq1\td1\t2\n")
    raises_data_error(path, load_qrels, "duplicate judgement", "'q1'", "'d1'", "first seen on line 2", line=4)


def test_not_utf8_jsonl(tmp_path):
    path = write(tmp_path / "corpus.jsonl", b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "caf\xe9"}\n')
    raises_data_error(path, load_corpus, "not valid UTF-8", line=2)


def test_not_utf8_gz(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b'{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": "\xff"}\n')
    raises_data_error(path, load_corpus, "not valid UTF-8", line=3)


def test_not_utf8_qrels(tmp_path):
    path = write(tmp_path / "test.tsv", HEADER.encode() + b"q\xe91\td1\t1\n")
    raises_data_error(path, load_qrels, "not valid UTF-8", line=2)


def test_not_a_gzip_file(tmp_path):
    path = write(tmp_path / "corpus.jsonl.gz", jsonl({"_id": "a", "text": "x"}))
    raises_data_error(path, load_corpus, "not a readable gzip file", line=1)


@pytest.mark.parametrize("loader", [load_corpus, load_queries, load_qrels])
def test_missing_file(tmp_path, loader):
    raises_data_error(tmp_path / "absent.jsonl", loader, "file not found")


def test_empty_corpus(tmp_path):
    path = write(tmp_path / "corpus.jsonl", "\n\n")
    raises_data_error(path, load_corpus, "no documents")


def test_empty_queries(tmp_path):
    path = write(tmp_path / "queries.jsonl", "")
    raises_data_error(path, load_queries, "no queries")


def test_data_error_is_a_user_error(tmp_path):
    with pytest.raises(SbmoeError):
        load_corpus(tmp_path / "absent.jsonl")


# ------------------------------------------------------------------------------------ dataset behaviour


def test_dangling_counts_and_one_warning(tmp_path, caplog):
    folder = make_collection(
        tmp_path / "c",
        [{"_id": "d1", "text": "x"}, {"_id": "d2", "text": "y"}],
        [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}],
        {"test": "q1\td1\t1\nq1\td9\t1\nq2\td8\t0\nq7\td1\t1\nq7\td2\t1\n"},
    )
    ds = load_dataset(folder)
    with caplog.at_level(logging.WARNING, logger="sbmoe.data"):
        qrels = ds.qrels("test")
        ds.qrels("test")
    assert qrels["q1"] == {"d1": 1, "d9": 1}
    assert ds.dangling("test") == {"missing_documents": 2, "missing_queries": 2, "empty_queries": 0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 judgements point at documents" in warnings[0].getMessage()


def test_no_warning_when_nothing_dangles(tiny_beir, caplog):
    with caplog.at_level(logging.WARNING, logger="sbmoe.data"):
        load_dataset(tiny_beir).qrels("test")
    assert not caplog.records


def test_unknown_split(tiny_beir):
    with pytest.raises(SbmoeError, match=r"'tiny-beir' has no split 'dev'; available splits: test, train"):
        load_dataset(tiny_beir).qrels("dev")


def test_no_qrels_folder(tmp_path):
    ds = load_dataset(
        make_collection(tmp_path / "c", [{"_id": "d", "text": "x"}], [{"_id": "q", "text": "y"}])
    )
    assert ds.splits() == []
    with pytest.raises(SbmoeError, match="none"):
        ds.qrels("test")


def test_corpus_and_queries_are_lazy_and_cached(tmp_path):
    folder = make_collection(tmp_path / "c", [{"_id": "d", "text": "x"}], [{"_id": "q", "text": "y"}])
    ds = BeirDataset(folder)
    (folder / "queries.jsonl").unlink()
    assert ds.corpus is ds.corpus
    with pytest.raises(DataError, match="file not found"):
        _ = ds.queries


def test_queries_are_documents_true(tmp_path):
    # ArguAna: queries are corpus documents under the same id (one of three differs; still at least half).
    documents = [
        {"_id": "a", "title": "topic", "text": "argument one"},
        {"_id": "b", "title": "topic", "text": "argument two"},
        {"_id": "c", "title": "", "text": "argument three"},
        {"_id": "d", "text": "other"},
    ]
    queries = [
        {"_id": "a", "text": "argument one "},
        {"_id": "b", "text": "argument two"},
        {"_id": "c", "text": "else"},
    ]
    assert load_dataset(make_collection(tmp_path / "c", documents, queries)).queries_are_documents()


def test_queries_are_documents_false_for_shared_numbering(tmp_path):
    # Glasgow collections: query 1 and document 1 share an id but are unrelated texts.
    documents = [{"_id": "1", "title": "wings", "text": "lift of wings"}, {"_id": "2", "text": "flow"}]
    queries = [{"_id": "1", "text": "what is the lift of a wing?"}, {"_id": "2", "text": "turbulent flow?"}]
    assert not load_dataset(make_collection(tmp_path / "c", documents, queries)).queries_are_documents()


def test_queries_are_documents_false_without_shared_ids(tiny_beir):
    assert not load_dataset(tiny_beir).queries_are_documents()


# ------------------------------------------------------------------------------------- finding datasets


def test_resolve_by_path(tiny_beir, monkeypatch):
    monkeypatch.delenv("SBMOE_DATA", raising=False)
    assert resolve_dataset(tiny_beir) == tiny_beir
    assert resolve_dataset(str(tiny_beir), data_dir="/nowhere") == tiny_beir


def test_resolve_by_name_with_data_dir(tiny_beir, monkeypatch):
    monkeypatch.setenv("SBMOE_DATA", "/nowhere")  # an explicit data_dir wins over the environment
    assert resolve_dataset("tiny-beir", data_dir=tiny_beir.parent) == tiny_beir
    assert load_dataset("tiny-beir", tiny_beir.parent).name == "tiny-beir"


def test_resolve_by_name_with_environment(tiny_beir, monkeypatch):
    monkeypatch.setenv("SBMOE_DATA", str(tiny_beir.parent))
    assert resolve_dataset("tiny-beir") == tiny_beir


def test_resolve_not_found_lists_available(tiny_beir, tmp_path, monkeypatch):
    monkeypatch.delenv("SBMOE_DATA", raising=False)
    (tmp_path / "not-a-collection").mkdir()
    with pytest.raises(SbmoeError) as caught:
        resolve_dataset("scifact", data_dir=tmp_path)
    message = str(caught.value)
    assert "'scifact' not found" in message
    assert str(tmp_path) in message and "--data-dir" in message
    assert "available collections there: tiny-beir" in message
    assert "SBMOE_DATA" in message


def test_resolve_not_found_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SBMOE_DATA", str(tmp_path / "absent"))
    with pytest.raises(SbmoeError, match=r"\$SBMOE_DATA.*does not exist.*--data-dir or set SBMOE_DATA"):
        resolve_dataset("scifact")


def test_resolve_without_any_data_dir(monkeypatch):
    monkeypatch.delenv("SBMOE_DATA", raising=False)
    with pytest.raises(SbmoeError, match="pass --data-dir or set SBMOE_DATA"):
        resolve_dataset("surely-not-a-folder-here")


@pytest.mark.parametrize(
    ("remove", "named"), [("queries.jsonl", "queries.jsonl"), ("corpus.jsonl", "corpus.jsonl")]
)
def test_resolve_folder_missing_a_file(tiny_beir, remove, named):
    (tiny_beir / remove).unlink()
    with pytest.raises(DataError, match=f"{named}: file not found"):
        resolve_dataset(tiny_beir)


def test_list_datasets(tmp_path, monkeypatch):
    make_tiny_beir(tmp_path / "b")
    make_tiny_beir(tmp_path / "a", gzip_corpus=True)
    (tmp_path / "empty").mkdir()
    write(tmp_path / "README.md", "not a collection")
    assert list_datasets(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.setenv("SBMOE_DATA", str(tmp_path))
    assert [p.name for p in list_datasets()] == ["a", "b"]
    monkeypatch.delenv("SBMOE_DATA")
    with pytest.raises(SbmoeError, match="SBMOE_DATA"):
        list_datasets()


# ------------------------------------------------------------------------------------------- validation


def test_validate_report(tmp_path):
    folder = make_collection(
        tmp_path / "c",
        [
            {"_id": "d1", "title": "T", "text": "x"},
            {"_id": "d2", "title": "", "text": ""},
            {"_id": "d3", "text": "z"},
        ],
        [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}, {"_id": "q3", "text": "c"}],
        {"test": "q1\td1\t2\nq1\td3\t0\nq2\td3\t0\nq2\tgone\t1\nq9\td1\t1\n", "train": "q3\td1\t1\n"},
    )
    report = validate_dataset(load_dataset(folder))
    assert json.loads(json.dumps(report)) == report
    assert report["name"] == "c" and report["path"] == str(folder)
    assert (report["num_documents"], report["num_queries"], report["empty_documents"]) == (3, 3, 1)
    assert report["splits"]["test"] == {
        "rows": 5,
        "queries": 3,
        "relevant_rows": 3,
        "missing_documents": 1,
        "missing_queries": 1,
        "empty_queries": 0,
        "queries_without_relevant": 0,
    }
    assert report["splits"]["train"]["rows"] == 1
    assert report["queries_are_documents"] is False
    problems = "\n".join(report["problems"])
    assert "1 documents have no text" in problems
    assert "test: 1 judgements point at documents not in the corpus" in problems
    assert "test: 1 judgements point at queries not in queries.jsonl" in problems
    assert "train" not in problems


def test_validate_counts_queries_without_relevant(tmp_path):
    folder = make_collection(
        tmp_path / "c", [{"_id": "d1", "text": "x"}], [{"_id": "q1", "text": "a"}], {"test": "q1\td1\t0\n"}
    )
    report = validate_dataset(load_dataset(folder))
    assert report["splits"]["test"]["queries_without_relevant"] == 1
    assert any("no relevant document" in p for p in report["problems"])


def test_validate_clean_collection(tiny_beir):
    report = validate_dataset(load_dataset(tiny_beir))
    assert report["problems"] == []
    assert report["splits"]["test"]["rows"] == 3


# -------------------------------------------------------------------------------------------- real data


def real_datasets() -> Path:
    """The shared collections: $SBMOE_DATA, else ../shared/datasets beside the repository."""
    return Path(os.environ.get("SBMOE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


@pytest.mark.slow
def test_real_collections(monkeypatch):
    root = real_datasets()
    if not (root / "scifact").is_dir():
        pytest.skip(f"real collections not found under {root}")
    import sbmoe.data.beir as beir

    reads = []  # the files read, in order: every BEIR file is read through _read_lines, line by line

    def spy_read_lines(path):
        reads.append(Path(path).name)
        return real_read_lines(path)

    real_read_lines = beir._read_lines
    monkeypatch.setattr(beir, "_read_lines", spy_read_lines)
    scifact = load_dataset("scifact", root)
    assert reads == []  # finding the collection reads nothing: each file is read on first use
    assert len(scifact.corpus) == 5183
    corpus_file = scifact.corpus_path.name  # corpus.jsonl.gz, streamed through gzip
    assert reads == [corpus_file]
    assert len(scifact.queries) == 1109
    assert scifact.splits() == ["test", "train"]
    for split, queries, rows in [("test", 300, 339), ("train", 809, 919)]:
        qrels = scifact.qrels(split)
        assert (len(qrels), sum(len(d) for d in qrels.values())) == (queries, rows)
    assert len(scifact.corpus) == 5183 and scifact.dangling("test") == scifact.dangling("test")
    # Each file read once, though the corpus, queries and qrels were used again (the qrels check the
    # corpus and queries for dangling judgements).
    assert reads == [corpus_file, "queries.jsonl", "test.tsv", "train.tsv"]

    arguana = load_dataset("arguana", root)
    assert arguana.queries_are_documents()
    assert arguana.dangling("test")["missing_documents"] == 53
    assert not load_dataset("cranfield", root).queries_are_documents()
