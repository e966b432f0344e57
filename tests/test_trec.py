"""TREC run files: round trip, order, precision, and one test per malformed-file case."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sbmoe.errors import DataError, SbmoeError
from sbmoe.retrieval.trec import read_trec_run, write_trec_run


def test_round_trip_with_ties_and_precision(tmp_path):
    run = {
        "q2": {"d1": 0.5, "d3": 0.5, "d2": 0.5, "d0": 0.9},
        "q1": {
            "a": 0.1 + 0.2,  # 0.30000000000000004: differs from 0.3 in the 17th digit
            "b": 0.3,
            "c": 1e-300,
            "d": -2.5,
            "e": float(np.float32(0.123456789)),  # a float32 score widened to double
            "f": 0.30000001,  # equal to "b" with %.6f or %.7g
        },
    }
    path = tmp_path / "run.trec"
    write_trec_run(run, path, tag="mytag")
    back = read_trec_run(path)
    assert back == run
    for query_id, hits in run.items():
        for doc_id, score in hits.items():
            assert back[query_id][doc_id] == score  # bit-exact, not approximately
    assert back["q1"]["a"] != back["q1"]["b"]
    # Ties: score descending, then doc id descending (trec_eval's order), ranks from 1.
    assert list(back["q2"]) == ["d0", "d3", "d2", "d1"]
    assert list(back["q1"]) == ["f", "a", "b", "e", "c", "d"]


def test_file_layout(tmp_path):
    path = tmp_path / "out" / "run.trec"  # the folder is created
    write_trec_run({"q2": {"x": 1.0}, "q1": {"b": 2.0, "a": 2.0, "c": 3.0}}, path)
    assert path.read_text().splitlines() == [
        "q1 Q0 c 1 3.0 sbmoe",
        "q1 Q0 b 2 2.0 sbmoe",
        "q1 Q0 a 3 2.0 sbmoe",
        "q2 Q0 x 1 1.0 sbmoe",
    ]
    assert [p.name for p in path.parent.iterdir()] == ["run.trec"]  # no temporary file left behind


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "run.trec"
    write_trec_run({"q": {"a": 1.0, "b": 0.5}}, path)
    write_trec_run({"q": {"c": 1.0}}, path)
    assert read_trec_run(path) == {"q": {"c": 1.0}}


@pytest.mark.parametrize(
    ("run", "tag"),
    [
        ({"q 1": {"a": 1.0}}, "t"),
        ({"q": {"a b": 1.0}}, "t"),
        ({"q": {"": 1.0}}, "t"),
        ({"q": {"a": 1.0}}, "my tag"),
        ({"q": {"a": float("nan")}}, "t"),
    ],
)
def test_write_refuses_unreadable_lines(tmp_path, run, tag):
    path = tmp_path / "run.trec"
    with pytest.raises(SbmoeError):
        write_trec_run(run, path, tag=tag)
    assert not path.exists()


def test_read_skips_blank_lines_and_tabs(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1\tQ0\td1\t1\t2.5\tt\n\n  \nq1 Q0 d2 2 -1 t\n")
    assert read_trec_run(path) == {"q1": {"d1": 2.5, "d2": -1.0}}


def write_lines(tmp_path, *lines: str):
    path = tmp_path / "bad.trec"
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = "q1 Q0 d1 1 0.5 t"


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("q1 Q0 d2 2 0.4", "expected 6 fields"),
        ("q1 Q0 d2 2 0.4 t extra", "expected 6 fields"),
        ("q1 Q0 d2 2 high t", "score 'high' is not a number"),
        ("q1 Q0 d2 2 nan t", "score 'nan' is not a number"),
        ("q1 Q0 d2 two 0.4 t", "rank 'two' is not an integer"),
        ("q1 Q0 d2 2.0 0.4 t", "rank '2.0' is not an integer"),
        ("q1 Q0 d1 2 0.4 t", "document 'd1' is listed twice for query 'q1'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, problem):
    path = write_lines(tmp_path, GOOD, "q2 Q0 d1 1 0.5 t", bad_line)
    with pytest.raises(DataError) as caught:
        read_trec_run(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 3: ")
    assert problem in message
    assert caught.value.line == 3


def test_same_doc_for_another_query_is_fine(tmp_path):
    path = write_lines(tmp_path, GOOD, "q2 Q0 d1 1 0.5 t")
    assert read_trec_run(path) == {"q1": {"d1": 0.5}, "q2": {"d1": 0.5}}


def test_missing_file(tmp_path):
    path = tmp_path / "nope.trec"
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: file not found$"):
        read_trec_run(path)
