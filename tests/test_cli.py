"""The `sbmoe` command end to end on a tiny BEIR folder with a tiny random BERT (seconds)."""

from __future__ import annotations

import json

import pytest

from sbmoe.commands import main
from sbmoe.evaluation.metrics import METRICS
from sbmoe.retrieval.trec import read_trec_run


def test_evaluate_writes_metrics_run_and_settings(tiny_encoder, tiny_beir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_encoder),
            "--dataset",
            str(tiny_beir),
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRICS) <= set(metrics) and metrics["num_queries"] == 2
    assert set(metrics["per_query"]["ndcg@10"]) == {"q5", "q6"}
    for name in METRICS:
        per_query = metrics["per_query"][name]
        assert metrics[name] == pytest.approx(sum(per_query.values()) / len(per_query))
    run = read_trec_run(out / "run.trec")
    assert set(run) == {"q5", "q6"} and all(len(hits) == 8 for hits in run.values())  # whole tiny corpus
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["dataset"] == str(tiny_beir)
    assert settings["model_config"]["pooling"] == "mean"
    assert {"git_commit", "command", "packages"} <= set(settings["provenance"])
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "encoded" in printed


def test_second_evaluation_reuses_the_cached_corpus(tiny_encoder, tiny_beir, tmp_path, capsys):
    args = ["evaluate", "--model", str(tiny_encoder), "--dataset", str(tiny_beir), "--no-progress"]
    assert main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    assert "encoded" in capsys.readouterr().out
    assert main([*args, "--output-dir", str(tmp_path / "b")]) == 0
    assert "reused from cache" in capsys.readouterr().out
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert first["corpus_from_cache"] is False and second["corpus_from_cache"] is True
    assert first["per_query"] == second["per_query"]


def test_self_hits_dropped_only_when_asked_or_detected(tiny_encoder, tiny_beir, tmp_path):
    # Make query q5 also a corpus document with the same id and text: ArguAna's situation.
    with open(tiny_beir / "corpus.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "q5", "title": "", "text": "heart diet"}) + "\n")
    base = ["evaluate", "--model", str(tiny_encoder), "--dataset", str(tiny_beir), "--no-progress"]
    assert main([*base, "--output-dir", str(tmp_path / "auto")]) == 0
    assert main([*base, "--output-dir", str(tmp_path / "no"), "--drop-self-hits", "no"]) == 0
    assert "q5" not in read_trec_run(tmp_path / "auto" / "run.trec")["q5"]
    assert "q5" in read_trec_run(tmp_path / "no" / "run.trec")["q5"]
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["drop_self_hits"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "no-such-collection"], "no-such-collection"),
        (["--split", "dev"], "dev"),
        (["--top-k", "0"], "top_k must be at least 1"),
    ],
)
def test_bad_evaluate_input_exits_2_with_a_message(tiny_encoder, tiny_beir, tmp_path, capsys, args, message):
    base = {"--model": str(tiny_encoder), "--dataset": str(tiny_beir), "--output-dir": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [
        "evaluate",
        "--no-progress",
        "--data-dir",
        str(tmp_path),
        *[x for pair in base.items() for x in pair],
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_malformed_corpus_exits_2_naming_file_and_line(tiny_encoder, tiny_beir, tmp_path, capsys):
    with open(tiny_beir / "corpus.jsonl", "a") as handle:
        handle.write("{not json\n")
    argv = [
        "evaluate",
        "--model",
        str(tiny_encoder),
        "--dataset",
        str(tiny_beir),
        "--output-dir",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "corpus.jsonl" in err and "line 9" in err


def test_data_list_and_validate(tiny_beir, capsys):
    assert main(["data", "list", "--data-dir", str(tiny_beir.parent)]) == 0
    assert "tiny-beir" in capsys.readouterr().out
    assert main(["data", "validate", str(tiny_beir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_documents"] == 8 and report["splits"]["test"]["queries"] == 2
