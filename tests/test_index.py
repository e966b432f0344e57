"""Scale paths: sharded and multi-process encoding, merging, approximate indexes, index + search CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import WORDS

from sbmoe.commands import main
from sbmoe.data.synthetic import synthetic_vectors, write_synthetic_collection
from sbmoe.errors import SbmoeError
from sbmoe.modeling import load_model
from sbmoe.retrieval.ann import ann_search, ann_settings, build_ann_index, recall_against_exact, rescore
from sbmoe.retrieval.index import Index, encode_shard, merge_shards, shard_rows
from sbmoe.retrieval.search import exact_search
from sbmoe.retrieval.trec import read_trec_run

CHUNK = 7  # small chunks so that 50 documents make 8 chunks and every shard has some


@pytest.fixture(scope="module")
def moe_model(tiny_encoder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "moe"
    assert main(["init", "--base", str(tiny_encoder), "--output", str(folder), "--num-experts", "3"]) == 0
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "synthetic"
    return write_synthetic_collection(folder, 50, 5, vocabulary=WORDS) / "corpus.jsonl"


def _encode(model_dir: Path, corpus: Path, output: Path, num_shards: int = 1, indices=None) -> None:
    model, tokenizer = load_model(model_dir)
    for shard_index in indices if indices is not None else range(num_shards):
        encode_shard(
            model,
            tokenizer,
            corpus,
            output,
            model_name=str(model_dir),
            num_shards=num_shards,
            shard_index=shard_index,
            chunk_size=CHUNK,
            progress=False,
        )


@pytest.mark.parametrize(
    "num_documents,num_shards,chunk", [(50, 3, 7), (10, 4, 3), (3, 5, 7), (4096, 2, 4096)]
)
def test_shards_partition_the_corpus_along_chunks(num_documents, num_shards, chunk):
    ranges = [shard_rows(num_documents, num_shards, i, chunk) for i in range(num_shards)]
    rows = [row for r in ranges for row in r]
    assert rows == list(range(num_documents))
    assert all(r.start % chunk == 0 for r in ranges if len(r))


def test_three_shards_give_the_embeddings_of_one_pass(moe_model, corpus, tmp_path):
    _encode(moe_model, corpus, tmp_path / "one")
    merge_shards(tmp_path / "one", progress=False)
    _encode(moe_model, corpus, tmp_path / "three", num_shards=3, indices=[2, 0, 1])  # any order
    assert len(list((tmp_path / "three" / "shards").iterdir())) == 3
    merge_shards(tmp_path / "three", progress=False)
    one, three = Index.open(tmp_path / "one"), Index.open(tmp_path / "three")
    assert np.array_equal(np.asarray(one.embeddings), np.asarray(three.embeddings))
    assert np.array_equal(one.experts, three.experts)
    assert one.ids == three.ids == [f"doc{i}" for i in range(50)]
    assert not (tmp_path / "three" / "shards").exists()  # merged shards are removed


def test_index_embeddings_are_the_models_forward(moe_model, corpus, tmp_path):
    """Against the model run text by text, independently of the chunked pipeline."""
    _encode(moe_model, corpus, tmp_path / "idx")
    merge_shards(tmp_path / "idx", progress=False)
    index = Index.open(tmp_path / "idx")
    model, tokenizer = load_model(moe_model)
    documents = [json.loads(line) for line in corpus.read_text().splitlines()]
    with torch.inference_mode():
        for row in (0, 17, 49):
            text = f"{documents[row]['title']} {documents[row]['text']}".strip()
            batch = tokenizer(
                [text], truncation=True, max_length=model.config.document_max_length, return_tensors="pt"
            )
            out = model(batch["input_ids"], batch["attention_mask"], mode="top1")
            np.testing.assert_allclose(index.embeddings[row], out.embeddings[0].numpy(), atol=1e-5)
            assert index.experts[row] == out.selected_experts[0, 0].item()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_give_the_embeddings_of_one_pass(moe_model, corpus, tmp_path):
    # One thread per process in both runs: the thread count, not the sharding, can change the last bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["encode", "--model", str(moe_model), "--corpus", str(corpus), "--chunk-size", str(CHUNK)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_port", str(_free_port()), "-m", "sbmoe"]
    for command in (
        [sys.executable, "-m", "sbmoe", *common, "--output", str(tmp_path / "one"), "--no-progress"],
        [*launcher, *common, "--output", str(tmp_path / "two"), "--no-progress"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((tmp_path / "two" / "index.json").read_text())
    assert info["num_shards"] == 2
    one, two = Index.open(tmp_path / "one"), Index.open(tmp_path / "two")
    assert np.array_equal(np.asarray(one.embeddings), np.asarray(two.embeddings))
    assert one.ids == two.ids


def test_merge_refuses_a_missing_shard(moe_model, corpus, tmp_path):
    _encode(moe_model, corpus, tmp_path / "out", num_shards=3, indices=[0, 2])
    with pytest.raises(SbmoeError, match=r"missing shard\(s\) 1 of 3"):
        merge_shards(tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "index.json").exists()
    assert len(list((tmp_path / "out" / "shards").iterdir())) == 2  # nothing written is lost


def test_merge_refuses_a_doubled_shard(moe_model, corpus, tmp_path):
    _encode(moe_model, corpus, tmp_path / "out", num_shards=3)
    shards = tmp_path / "out" / "shards"
    shutil.copytree(shards / "shard-00001-of-00003", shards / "shard-00001-of-00003 (copy)")
    with pytest.raises(SbmoeError, match="shard 1 of 3 is present 2 times"):
        merge_shards(tmp_path / "out", progress=False)


def test_merge_refuses_shards_of_different_encodings(moe_model, corpus, tmp_path):
    _encode(moe_model, corpus, tmp_path / "out", num_shards=2, indices=[0])
    model, tokenizer = load_model(moe_model)
    encode_shard(
        model, tokenizer, corpus, tmp_path / "out", model_name="m", num_shards=2, shard_index=1,
        mode="all", chunk_size=CHUNK, progress=False,
    )  # fmt: skip
    with pytest.raises(SbmoeError, match="shards of different encodings.*mode"):
        merge_shards(tmp_path / "out", progress=False)


def test_merge_via_cli_reports_a_missing_shard(moe_model, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["encode", "--model", str(moe_model), "--corpus", str(corpus), "--output", str(out)]
    assert main([*args, "--num-shards", "2", "--shard-index", "1", "--chunk-size", "7", "--no-progress"]) == 0
    assert "1 of 2 written" in capsys.readouterr().out
    assert main(["encode", "--merge", str(out)]) == 2
    assert "missing shard(s) 0 of 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------ approximate indexes


def test_hnsw_and_ivfpq_find_most_exact_neighbours():
    vectors = synthetic_vectors(5000, 32, num_clusters=50, seed=1)
    queries = synthetic_vectors(50, 32, num_clusters=50, seed=1)[::-1].copy()
    _, exact = exact_search(queries, vectors, 10)
    recalls = {}
    for kind, overrides in (("hnsw", {}), ("ivfpq", {"pq_m": 8, "nprobe": 8})):
        settings = ann_settings(kind, 5000, 32, **overrides)
        index = build_ann_index(vectors, kind, settings)
        _, rows = ann_search(index, queries, 10, batch_size=16)
        recalls[kind] = recall_against_exact(rows, exact)
        if kind == "ivfpq":
            _, rows = ann_search(
                index, queries, 10, embeddings=vectors, refine=settings["refine"], batch_size=16
            )
            recalls["ivfpq-refined"] = recall_against_exact(rows, exact)
    assert recalls["hnsw"] >= 0.95, recalls
    assert recalls["ivfpq"] >= 0.4, recalls
    assert recalls["ivfpq-refined"] >= max(0.9, recalls["ivfpq"]), recalls


def test_rescore_keeps_the_best_candidates_by_exact_score():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((40, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    candidates = np.array([[5, 9, 1, 30, -1], [0, 1, 2, 3, 4], [7, -1, -1, -1, -1]])
    scores, rows = rescore(queries, candidates, embeddings, k=2, block=2)
    for q, found in enumerate(candidates):
        found = found[found >= 0]
        exact = embeddings[found] @ queries[q]
        best = found[np.argsort(-exact)][:2]
        assert rows[q][rows[q] >= 0].tolist() == best.tolist()
        np.testing.assert_allclose(scores[q][: len(best)], np.sort(exact)[::-1][:2], rtol=1e-5)
    assert rows[2, 1] == -1  # one candidate only: the second hit is empty


def test_recall_against_exact_counts_shared_rows():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approximate = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_against_exact(approximate, exact) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_ann_settings_are_checked():
    with pytest.raises(SbmoeError, match="hnsw has no setting nprobe"):
        ann_settings("hnsw", 1000, 32, nprobe=4)
    with pytest.raises(SbmoeError, match="ivfpq needs at least 256 documents"):
        ann_settings("ivfpq", 50, 32)
    with pytest.raises(SbmoeError, match="pq_m 5 must divide the dimension 32"):
        ann_settings("ivfpq", 10_000, 32, pq_m=5)
    settings = ann_settings("ivfpq", 1_000_000, 384)
    assert settings["nlist"] == 1024 and settings["pq_m"] == 48


# ------------------------------------------------------------------------------ index and search CLI


def test_index_and_search_a_corpus_without_qrels(moe_model, corpus, tmp_path, capsys):
    own = tmp_path / "docs.jsonl"  # a user's file: no queries, no qrels beside it
    shutil.copy(corpus, own)
    index_dir = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "--model",
                str(moe_model),
                "--corpus",
                str(own),
                "--output",
                str(index_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "indexed 50 documents" in capsys.readouterr().out

    query = "heart diet exercise"
    assert main(["search", "--index", str(index_dir), query, "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    model, tokenizer = load_model(moe_model)
    batch = tokenizer([query], return_tensors="pt")
    with torch.inference_mode():
        out = model(batch["input_ids"], batch["attention_mask"], mode="top1")
    scores = np.asarray(Index.open(index_dir).embeddings) @ out.embeddings[0].numpy()
    best = np.argsort(-scores, kind="stable")[:3]
    assert f"routed to expert {out.selected_experts[0, 0].item()} of 3" in printed
    lines = [line.split() for line in printed.splitlines()[2:]]
    assert [line[2] for line in lines] == [f"doc{i}" for i in best]
    assert float(lines[0][1]) == pytest.approx(scores[best[0]], abs=1e-3)

    queries = tmp_path / "q.tsv"
    queries.write_text("a\theart diet\nb\tgene protein cells\n", encoding="utf-8")
    run_file = tmp_path / "run.trec"
    assert (
        main(
            [
                "search",
                "--index",
                str(index_dir),
                "--queries",
                str(queries),
                "--output",
                str(run_file),
                "--top-k",
                "5",
            ]
        )
        == 0
    )
    run = read_trec_run(run_file)
    assert set(run) == {"a", "b"} and all(len(hits) == 5 for hits in run.values())


def test_hnsw_index_via_cli_and_ivfpq_too_small(moe_model, corpus, tmp_path, capsys):
    out = tmp_path / "hnsw"
    args = ["index", "--model", str(moe_model), "--corpus", str(corpus), "--no-progress"]
    assert main([*args, "--output", str(out), "--index-type", "hnsw", "--ef-search", "64"]) == 0
    info = json.loads((out / "index.json").read_text())
    assert info["type"] == "hnsw" and info["settings"]["ef_search"] == 64 and (out / "ann.faiss").exists()
    capsys.readouterr()
    assert main(["search", "--index", str(out), "gene", "--top-k", "50"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + 50  # hnsw on 50 documents finds them all
    assert main([*args, "--output", str(tmp_path / "pq"), "--index-type", "ivfpq"]) == 2
    assert "ivfpq needs at least 256 documents" in capsys.readouterr().err
    assert not (tmp_path / "pq").exists()  # the failed index leaves nothing behind
    assert main([*args, "--output", str(tmp_path / "x"), "--nprobe", "4"]) == 2
    assert "--nprobe applies to --index-type ivfpq" in capsys.readouterr().err
    assert main(["search", "--index", str(out), "gene", "--nprobe", "4"]) == 2
    assert "is an hnsw index; --nprobe does not apply" in capsys.readouterr().err


def test_bad_input_gets_a_message_and_exit_2(moe_model, corpus, tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / "nowhere"), "gene"]) == 2
    assert "no index here" in capsys.readouterr().err

    index_dir = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "--model",
                str(moe_model),
                "--corpus",
                str(corpus),
                "--output",
                str(index_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["search", "--index", str(index_dir), "   "]) == 2
    assert "the query is empty" in capsys.readouterr().err

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"_id": "a", "text": "gene"}\n{"_id": "b", "title": "no text"}\n', encoding="utf-8")
    assert (
        main(["index", "--model", str(moe_model), "--corpus", str(broken), "--output", str(tmp_path / "b")])
        == 2
    )
    err = capsys.readouterr().err
    assert "broken.jsonl" in err and "line 2" in err and 'missing field "text"' in err

    empty_query = tmp_path / "q.tsv"
    empty_query.write_text("a\tgene\nb\t \n", encoding="utf-8")
    assert (
        main(
            [
                "search",
                "--index",
                str(index_dir),
                "--queries",
                str(empty_query),
                "--output",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "q.tsv" in err and "line 2" in err and "empty" in err

    assert (
        main(["index", "--model", str(moe_model), "--corpus", str(corpus), "--output", str(index_dir)]) == 2
    )
    assert "not empty" in capsys.readouterr().err  # an existing index is never overwritten


def test_evaluate_reports_recall_of_an_approximate_index(tiny_encoder, tmp_path):
    collection = write_synthetic_collection(tmp_path / "c", 400, 20, vocabulary=WORDS)
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(tiny_encoder), "--dataset", str(collection), "--output-dir", str(out)]
    assert main([*args, "--no-progress", "--top-k", "10", "--index-type", "ivfpq", "--nprobe", "2"]) == 0
    report = json.loads((out / "metrics.json").read_text())["index"]
    assert report["type"] == "ivfpq" and report["k"] == 10 and report["settings"]["nprobe"] == 2
    assert 0.0 < report["recall_vs_exact"] <= 1.0


def test_synthetic_collection_is_a_valid_beir_folder(tmp_path):
    from sbmoe.data import load_dataset, validate_dataset

    folder = write_synthetic_collection(tmp_path / "s", 30, 10, seed=3)
    dataset = load_dataset(folder)
    report = validate_dataset(dataset)
    assert report["num_documents"] == 30 and report["num_queries"] == 10 and not report["problems"]
    corpus = dict(zip(dataset.corpus.ids, dataset.corpus.texts, strict=True))
    for query_id, judged in dataset.qrels("test").items():
        (doc_id,) = judged
        assert set(dataset.queries[query_id].split()) <= set(corpus[doc_id].split())
    again = write_synthetic_collection(tmp_path / "t", 30, 10, seed=3)
    assert (again / "corpus.jsonl").read_text() == (folder / "corpus.jsonl").read_text()


def test_synthetic_vectors_are_unit_norm_and_streamed_to_disk(tmp_path):
    in_memory = synthetic_vectors(1000, 16, num_clusters=5, seed=2, block=300)
    on_disk = synthetic_vectors(1000, 16, num_clusters=5, seed=2, block=300, path=tmp_path / "v.npy")
    np.testing.assert_allclose(np.linalg.norm(in_memory, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(in_memory, np.load(tmp_path / "v.npy"))
    assert isinstance(on_disk, np.memmap)


def test_an_impossible_mode_is_refused_before_encoding(moe_model, corpus, tmp_path, capsys):
    args = ["index", "--model", str(moe_model), "--corpus", str(corpus), "--output", str(tmp_path / "m")]
    assert main([*args, "--mode", "topk:7"]) == 2
    assert "--mode topk:7" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_encode_a_collection_in_two_shard_jobs_then_merge(moe_model, tiny_beir, tmp_path, capsys):
    out = tmp_path / "idx"
    args = ["encode", "--model", str(moe_model), "--dataset", str(tiny_beir), "--output", str(out)]
    for shard in ("1", "0"):
        assert (
            main([*args, "--num-shards", "2", "--shard-index", shard, "--chunk-size", "3", "--no-progress"])
            == 0
        )
    assert "2 of 2 written" in capsys.readouterr().out
    assert main(["encode", "--merge", str(out), "--no-progress"]) == 0
    assert "merged 2 shard(s): 8 documents" in capsys.readouterr().out
    index = Index.open(out)
    assert index.ids == ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"] and index.titles[0] == "Gene study"
    assert main(["encode", "--merge", str(out)]) == 2  # merged already: refused, nothing replaced
    assert "already holds an index" in capsys.readouterr().err
