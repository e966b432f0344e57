"""`sbmoe data split` (`sbmoe.data.splits.split_collection`): a collection's judged queries split into train
and test, written as a new BEIR folder that links the corpus and queries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny import make_synthetic_beir

from sbmoe.commands import main
from sbmoe.data import load_dataset, validate_dataset
from sbmoe.data.splits import split_collection
from sbmoe.errors import SbmoeError


@pytest.fixture
def synthetic(tmp_path) -> Path:
    """40 queries, each with one relevant document: 32 judged in train, 8 in test."""
    return make_synthetic_beir(tmp_path / "synthetic")


def qrels_files(folder: Path) -> dict[str, str]:
    return {split: (folder / "qrels" / f"{split}.tsv").read_text() for split in ("train", "test")}


def test_counts_links_and_records(synthetic, tmp_path):
    output = tmp_path / "split"
    record = split_collection(synthetic, output, test_share=0.25, seed=3, split="train")
    counts = record["counts"]
    assert counts["judged_queries"] == 32
    assert counts["test"] == {"queries": 8, "rows": 8, "relevant_rows": 8}
    assert counts["train"] == {"queries": 24, "rows": 24, "relevant_rows": 24}
    # each query has its own positive: every test query's document is unseen in training
    assert counts["test_queries_with_a_relevant_document_no_training_query_judged"] == 8
    for name in ("corpus.jsonl", "queries.jsonl"):
        assert (output / name).is_symlink()
        assert (output / name).resolve() == (synthetic / name).resolve()
    recorded = json.loads((output / "split.json").read_text())
    assert recorded["collection"] == "synthetic" and recorded["source_split"] == "train"
    assert recorded["test_share"] == 0.25 and recorded["seed"] == 3
    assert recorded["counts"] == counts and recorded["problems"] == []
    assert recorded["sbmoe_version"] and "git_commit" in recorded
    sources = (output / "SOURCES.md").read_text()
    assert "synthetic" in sources and "seed 3" in sources and "test 8 queries" in sources
    assert sorted(path.name for path in output.iterdir()) == [
        "SOURCES.md",
        "corpus.jsonl",
        "qrels",
        "queries.jsonl",
        "split.json",
    ]


def test_loads_as_a_collection_with_disjoint_splits_covering_the_judged_queries(synthetic, tmp_path):
    split_collection(synthetic, tmp_path / "split", test_share=0.5, seed=0)  # the test split by default
    source = load_dataset(synthetic).qrels("test")
    dataset = load_dataset(tmp_path / "split")
    assert dataset.splits() == ["test", "train"]
    train, test = dataset.qrels("train"), dataset.qrels("test")
    assert len(train) == len(test) == 4
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(source)
    assert {**train, **test} == source  # every judgement row kept, with its grade
    assert validate_dataset(dataset)["problems"] == []
    assert len(dataset.corpus) == 80 and len(dataset.queries) == 40


def test_graded_rows_and_queries_without_text(tiny_beir, tmp_path):
    """A query keeps all its rows (grade 0 and 2 too); judgements of a query with no text are left out."""
    qrels = tiny_beir / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q6\td8\t0\nq9\td1\t1\n")
    record = split_collection(tiny_beir, tmp_path / "split", test_share=0.5, seed=0)
    assert record["counts"]["judged_queries"] == 2 and record["counts"]["rows_of_queries_without_text"] == 1
    dataset = load_dataset(tmp_path / "split")
    assert {**dataset.qrels("train"), **dataset.qrels("test")} == {
        "q5": {"d5": 2, "d4": 1},
        "q6": {"d6": 1, "d8": 0},
    }


def test_same_seed_same_split(synthetic, tmp_path):
    split_collection(synthetic, tmp_path / "a", test_share=0.3, seed=7, split="train")
    split_collection(synthetic, tmp_path / "b", test_share=0.3, seed=7, split="train")
    assert qrels_files(tmp_path / "a") == qrels_files(tmp_path / "b")


def test_different_seeds_differ(synthetic, tmp_path):
    split_collection(synthetic, tmp_path / "a", test_share=0.5, seed=1, split="train")
    split_collection(synthetic, tmp_path / "b", test_share=0.5, seed=2, split="train")
    first, second = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert set(first.qrels("test")) != set(second.qrels("test"))
    assert len(first.qrels("test")) == len(second.qrels("test")) == 16


def test_command_line(synthetic, tmp_path, capsys):
    output = tmp_path / "split"
    argv = ["data", "split", str(synthetic), "--test-share", "0.25", "--seed", "5", "--split", "train"]
    assert main([*argv, "--output", str(output)]) == 0
    assert "train 24 and test 8" in capsys.readouterr().out
    assert main(["data", "validate", str(output), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["test"]["queries"] == 8 and report["problems"] == []
    by_name = tmp_path / "by-name"
    argv = ["data", "split", "synthetic", "--data-dir", str(synthetic.parent), "--seed", "5"]
    assert main([*argv, "--output", str(by_name)]) == 0
    assert json.loads((by_name / "split.json").read_text())["counts"]["test"]["queries"] == 4


def refused(argv: list[str], output: Path, capsys, *words: str) -> None:
    """The command exits with status 2, its message holds `words`, and `output` was not created."""
    assert main([*argv, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for word in words:
        assert word in err
    assert not output.exists()
    assert not [path for path in output.parent.iterdir() if path.name.startswith(f".{output.name}")]


@pytest.mark.parametrize("share", ["0", "1", "-0.2", "1.5", "nan"])
def test_share_outside_zero_one_refused(tiny_beir, tmp_path, capsys, share):
    argv = ["data", "split", str(tiny_beir), "--test-share", share]
    refused(argv, tmp_path / "out", capsys, "share", share)


def test_collection_without_judgements_refused(tiny_beir, tmp_path, capsys):
    shutil.rmtree(tiny_beir / "qrels")
    refused(["data", "split", str(tiny_beir)], tmp_path / "out", capsys, "no judgements", "no qrels")


def test_split_absent_or_empty_refused(tiny_beir, tmp_path, capsys):
    refused(["data", "split", str(tiny_beir), "--split", "dev"], tmp_path / "out", capsys, "'dev'", "test")
    (tiny_beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    refused(["data", "split", str(tiny_beir), "--split", "dev"], tmp_path / "out", capsys, "no judged query")


@pytest.mark.parametrize("share", ["0.1", "0.9"])
def test_share_leaving_a_side_empty_refused(tiny_beir, tmp_path, capsys, share):
    refused(["data", "split", str(tiny_beir), "--test-share", share], tmp_path / "out", capsys, "both sides")


def test_existing_output_refused_and_kept(tiny_beir, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    assert main(["data", "split", str(tiny_beir), "--output", str(output)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    split_collection(tiny_beir, empty)  # an empty folder is filled
    assert (empty / "split.json").is_file()


def test_refusals_are_user_errors(tiny_beir, tmp_path):
    with pytest.raises(SbmoeError, match="between 0 and 1"):
        split_collection(tiny_beir, tmp_path / "out", test_share=1.0)
