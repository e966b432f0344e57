"""Query-side blocks (`apply_to: queries`): documents keep the base encoder's vectors, only queries pass
through the block; honoured by the head, training, evaluation, an index, the BEIR and MTEB integrations and
the sentence-transformers export (its query and document routes)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny import DOCUMENTS, QUERIES, make_synthetic_beir

from sbmoe.commands import main
from sbmoe.modeling import build_model, load_model, save_model
from sbmoe.modeling.settings import BlockSettings
from sbmoe.retrieval.encode import apply_head, encode_pooled

DOCUMENT_TEXTS = [f"{title} {text}".strip() for title, text in DOCUMENTS.values()]
QUERY_TEXTS = list(QUERIES.values())


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The Hugging Face Hub off, and any network connection an error."""
    import huggingface_hub.constants as constants

    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def refuse(sock, address):
        raise OSError(f"network access attempted in an offline test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def query_side(tiny_encoder, tmp_path_factory) -> Path:
    """A tiny query-side SB-MoE model (3 experts, normalised embeddings), saved."""
    model, tokenizer = build_model(
        tiny_encoder, num_experts=3, seed=1, apply_to="queries", encoder_settings={"normalize": True}
    )
    return save_model(model, tokenizer, tmp_path_factory.mktemp("query-side") / "model")


def embeddings(model, tokenizer, texts: list[str], kind: str, mode: str | None = None):
    """sbmoe's embeddings [N, H] and top experts (or None) of `texts` as `kind`."""
    pooled = encode_pooled(model, tokenizer, texts, kind, batch_size=3, progress=False)
    return apply_head(model, pooled, mode, kind=kind)


def base_embeddings(encoder: Path, texts: list[str], kind: str, normalize: bool) -> np.ndarray:
    """What the base encoder alone gives: pooled, normalised if asked."""
    base, tokenizer = load_model(encoder, normalize=normalize)
    assert base.moe is None
    return embeddings(base, tokenizer, texts, kind)[0]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mode", ["top1", "all", "random"])
def test_documents_get_the_base_encoders_vectors_and_queries_the_blocks(tiny_encoder, normalize, mode):
    model, tokenizer = build_model(
        tiny_encoder, num_experts=3, seed=1, apply_to="queries", encoder_settings={"normalize": normalize}
    )
    documents, document_experts = embeddings(model, tokenizer, DOCUMENT_TEXTS, "document", mode)
    assert (
        np.abs(documents - base_embeddings(tiny_encoder, DOCUMENT_TEXTS, "document", normalize)).max() <= 1e-6
    )
    assert document_experts is None  # documents are not routed

    queries, query_experts = embeddings(model, tokenizer, QUERY_TEXTS, "query", mode)
    assert np.abs(queries - base_embeddings(tiny_encoder, QUERY_TEXTS, "query", normalize)).max() > 1e-3
    assert query_experts is not None and query_experts.shape == (len(QUERY_TEXTS),)
    both, _ = build_model(tiny_encoder, num_experts=3, seed=1, encoder_settings={"normalize": normalize})
    same_block, _ = embeddings(both, tokenizer, QUERY_TEXTS, "query", mode)
    assert np.abs(queries - same_block).max() <= 1e-6  # the queries' path is the block's, unchanged


def test_forward_takes_the_kind_and_refuses_to_guess(query_side, tiny_encoder):
    model, tokenizer = load_model(query_side)
    batch = tokenizer(DOCUMENT_TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        document = model(batch["input_ids"], batch["attention_mask"], kind="document")
        query = model(batch["input_ids"], batch["attention_mask"], kind="query")
        with pytest.raises(ValueError, match="queries only"):
            model(batch["input_ids"], batch["attention_mask"])
        with pytest.raises(ValueError, match="kind must be one of"):
            model.head(document.pooled, kind="passage")
    expected = base_embeddings(tiny_encoder, DOCUMENT_TEXTS, "document", normalize=True)
    assert (
        np.abs(document.embeddings.numpy() - expected).max() <= 1e-5
    )  # padding: forward batches differently
    assert document.selected_experts is None and document.aux_loss is None
    assert query.selected_experts is not None and np.abs(query.embeddings.numpy() - expected).max() > 1e-3


def test_apply_to_is_saved_validated_and_a_flag(query_side, tiny_encoder, tmp_path, capsys):
    assert json.loads((query_side / "config.json").read_text())["apply_to"] == "queries"
    model, _ = load_model(query_side)
    assert (
        model.config.apply_to == "queries" and model.uses_block("query") and not model.uses_block("document")
    )
    both, _ = build_model(tiny_encoder, num_experts=2)
    assert both.config.apply_to == "both" and both.uses_block() and both.uses_block("document")
    with pytest.raises(ValueError, match=r"apply_to must be one of \['both', 'queries'\]"):
        BlockSettings(apply_to="documents")
    folder = tmp_path / "init"
    argv = ["init", "--base", str(tiny_encoder), "--num-experts", "2", "--apply-to", "queries"]
    assert main([*argv, "--output", str(folder)]) == 0
    assert json.loads((folder / "config.json").read_text())["apply_to"] == "queries"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_beir(tmp_path_factory.mktemp("data") / "synthetic")


def train_argv(base: Path, dataset: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--base", str(base), "--dataset", str(dataset), "--output-dir", str(output),
        "--batch-size", "4", "--num-experts", "3", "--epochs", "1", "--freeze-encoder", "--selection", "last",
        "--moe-lr", "1e-2", "--no-progress", "--apply-to", "queries", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("system", ["sbmoe", "adapter"])
def test_trains_with_a_frozen_encoder_and_evaluates(tiny_encoder, synthetic, tmp_path, capsys, system):
    run = tmp_path / "run"
    assert main(train_argv(tiny_encoder, synthetic, run, "--system", system)) == 0
    trained, tokenizer = load_model(run)
    initial, _ = build_model(tiny_encoder, num_experts=trained.config.num_experts, seed=0)
    assert trained.config.apply_to == "queries"
    assert any(
        not torch.equal(tensor, initial.moe.state_dict()[name])
        for name, tensor in trained.moe.state_dict().items()
    )  # the block trained, on queries only
    texts = DOCUMENT_TEXTS[:4]
    documents, _ = embeddings(trained, tokenizer, texts, "document")
    assert np.abs(documents - base_embeddings(tiny_encoder, texts, "document", normalize=False)).max() <= 1e-6
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [record for record in log if record["type"] == "step"]
    assert steps and all(np.isfinite(record["loss/total"]) for record in steps)
    if system == "sbmoe":  # routing statistics count the 4 queries of a batch, not its documents too
        assert all(4 * share == int(4 * share) for record in steps for share in record["expert_share"])

    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(run), "--dataset", str(synthetic), "--output-dir", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    (metrics_file,) = out.rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert 0 <= metrics["ndcg@10"] <= 1
    assert metrics["expert_counts"]["documents"] is None
    assert sum(metrics["expert_counts"]["queries"]) == 8  # the test split's queries, each routed once


def test_train_refuses_apply_to_without_a_block(tiny_encoder, synthetic, tmp_path, capsys):
    argv = train_argv(tiny_encoder, synthetic, tmp_path / "run", "--system", "finetune")
    argv.remove("--freeze-encoder")  # refused for another reason
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "apply_to 'queries'" in err and "system finetune has no block" in err
    assert not (tmp_path / "run").exists()


def test_an_index_holds_the_encoders_vectors_and_search_routes_the_query(
    query_side, tiny_encoder, tiny_beir, tmp_path, capsys
):
    index_dir = tmp_path / "idx"
    argv = ["index", "--model", str(query_side), "--corpus", str(tiny_beir / "corpus.jsonl")]
    assert main([*argv, "--output", str(index_dir), "--no-progress"]) == 0
    info = json.loads((index_dir / "index.json").read_text())
    assert info["apply_to"] == "queries" and not (index_dir / "experts.npy").exists()
    stored = np.load(index_dir / "embeddings.npy")
    assert (
        np.abs(stored - base_embeddings(tiny_encoder, DOCUMENT_TEXTS, "document", normalize=True)).max()
        <= 1e-6
    )
    capsys.readouterr()
    assert main(["search", "--index", str(index_dir), "gene protein", "--top-k", "3"]) == 0
    model, tokenizer = load_model(query_side)
    query, experts = embeddings(model, tokenizer, ["gene protein"], "query")
    assert f"routed to expert {experts[0]} of 3" in capsys.readouterr().out
    best = np.argsort(-(stored @ query[0]), kind="stable")[:3]
    from sbmoe.retrieval.index import Index

    index = Index.open(index_dir)
    _, rows = index.search(index.encode_queries(model, tokenizer, ["gene protein"])[0], 3)
    assert rows[0].tolist() == best.tolist()


def test_sentence_transformers_export_has_the_query_side_routes(query_side, tiny_encoder, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    assert main(["export", "--model", str(query_side), "--output", str(tmp_path / "st")]) == 0
    st_model = SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")
    model, tokenizer = load_model(query_side)
    queries, _ = embeddings(model, tokenizer, QUERY_TEXTS, "query")
    documents = base_embeddings(tiny_encoder, DOCUMENT_TEXTS, "document", normalize=True)
    theirs_queries = st_model.encode_query(QUERY_TEXTS, batch_size=3, convert_to_numpy=True)
    theirs_documents = st_model.encode_document(DOCUMENT_TEXTS, batch_size=3, convert_to_numpy=True)
    assert np.abs(theirs_documents - documents).max() <= 1e-6
    assert np.abs(theirs_queries - queries).max() <= 1e-6
    plain = st_model.encode(DOCUMENT_TEXTS, batch_size=3, convert_to_numpy=True)
    assert np.abs(plain - documents).max() <= 1e-6  # plain encode takes the document route
    assert st_model.similarity_fn_name == "cosine"


def test_beir_and_mteb_integrations_embed_each_side_as_sbmoe_does(query_side, tiny_encoder):
    from sbmoe.integrations import SbmoeBeirModel

    model, tokenizer = load_model(query_side)
    queries, _ = embeddings(model, tokenizer, QUERY_TEXTS, "query")
    documents = base_embeddings(tiny_encoder, DOCUMENT_TEXTS, "document", normalize=True)
    beir = SbmoeBeirModel(query_side, device="cpu", progress=False)
    corpus = [{"title": title, "text": text} for title, text in DOCUMENTS.values()]
    assert np.abs(beir.encode_corpus(corpus, batch_size=3) - documents).max() <= 1e-6
    assert np.abs(beir.encode_queries(QUERY_TEXTS, batch_size=3) - queries).max() <= 1e-6

    pytest.importorskip("mteb")
    from datasets import Dataset
    from mteb._create_dataloaders import create_dataloader
    from mteb.types import PromptType

    from sbmoe.integrations import SbmoeMtebEncoder

    encoder = SbmoeMtebEncoder(query_side, device="cpu", use_cache=False, progress=False)
    task = _mteb_task_metadata()
    sides: list[tuple[Any, Any, np.ndarray]] = [
        (Dataset.from_dict({"id": list(QUERIES), "text": QUERY_TEXTS}), PromptType.query, queries),
        (
            Dataset.from_dict({"id": list(DOCUMENTS), "title": [t for t, _ in DOCUMENTS.values()],
                               "text": [x for _, x in DOCUMENTS.values()]}),
            PromptType.document,
            documents,
        ),
    ]  # fmt: skip
    for dataset, prompt_type, expected in sides:
        loader = create_dataloader(dataset, task_metadata=task, prompt_type=prompt_type, batch_size=3)
        got = encoder.encode(
            loader, task_metadata=task, hf_split="test", hf_subset="default", prompt_type=prompt_type
        )
        assert np.abs(np.asarray(got) - expected).max() <= 1e-6, prompt_type


def _mteb_task_metadata():
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name="SbmoeQuerySide",
        description="A tiny collection (tests).",
        dataset={"path": "local", "revision": "local"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
    )


def test_analysis_routes_documents_as_the_block_would(query_side):
    from sbmoe.analysis.routing import route

    model, tokenizer = load_model(query_side)
    pooled = encode_pooled(model, tokenizer, DOCUMENT_TEXTS, "document", progress=False)
    experts, probabilities = route(model, pooled)
    assert experts.shape == (len(DOCUMENT_TEXTS),) and probabilities.shape == (len(DOCUMENT_TEXTS), 3)
