"""Judged queries with an empty text, and judgements of queries absent from queries.jsonl: counted and
warned about by `data validate` and `evaluate`, refused by `train` before anything is written."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tiny import make_synthetic_beir

from sbmoe.commands import main
from sbmoe.data import load_dataset, validate_dataset


def with_bad_queries(folder: Path) -> Path:
    """The synthetic collection with q0's text emptied and judgements for a query that does not exist."""
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines()]
    queries[0]["text"] = "   "
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    with open(folder / "qrels" / "test.tsv", "a", encoding="utf-8") as qrels:
        qrels.write("q-missing\td1\t1\n")
    with open(folder / "qrels" / "train.tsv", "a", encoding="utf-8") as qrels:
        qrels.write("q-missing\td2\t1\n")
    return folder


def test_validate_counts_both(tmp_path, capsys):
    folder = with_bad_queries(make_synthetic_beir(tmp_path / "bad"))
    report = validate_dataset(load_dataset(folder))
    assert report["splits"]["train"]["empty_queries"] == 1  # q0 is a training query
    assert report["splits"]["test"]["missing_queries"] == 1
    assert "train: 1 judged queries have an empty text" in report["problems"]
    assert "test: 1 judgements point at queries not in queries.jsonl" in report["problems"]
    assert main(["data", "validate", str(folder)]) == 0  # problems are reported, not fatal
    out = capsys.readouterr().out
    assert "problem: train: 1 judged queries have an empty text" in out
    assert "problem: test: 1 judgements point at queries not in queries.jsonl" in out


def test_evaluate_warns(tmp_path, tiny_encoder, caplog):
    folder = with_bad_queries(make_synthetic_beir(tmp_path / "bad"))
    with caplog.at_level(logging.WARNING):
        code = main(
            ["evaluate", "--model", str(tiny_encoder), "--dataset", str(folder), "--split", "train",
             "--output-dir", str(tmp_path / "eval"), "--no-progress", "--no-cache"]
        )  # fmt: skip
    assert code == 0
    assert "1 judged queries have an empty text" in caplog.text
    assert "1 at queries not in queries.jsonl" in caplog.text


def test_train_refuses_an_empty_training_query(tmp_path, tiny_encoder, capsys):
    folder = with_bad_queries(make_synthetic_beir(tmp_path / "bad"))
    output = tmp_path / "run"
    code = main(
        ["train", "--base", str(tiny_encoder), "--dataset", str(folder), "--output-dir", str(output),
         "--epochs", "1", "--batch-size", "4", "--no-progress"]
    )  # fmt: skip
    assert code == 2
    assert "1 judged queries have an empty text in queries.jsonl (e.g. 'q0')" in capsys.readouterr().err
    assert not output.exists()
