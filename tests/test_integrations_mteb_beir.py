"""The MTEB encoder and the BEIR retriever: the same embeddings and the same nDCG@10 as sbmoe's own path.

Fast tests: a tiny SB-MoE model on the tiny BEIR folder, offline (the Hub switched off, and any network
connection attempt fails the test). Slow: the packaged MiniLM on the real SciFact.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("mteb")
pytest.importorskip("beir")

import mteb  # noqa: E402
from beir.retrieval.evaluation import EvaluateRetrieval  # noqa: E402
from beir.retrieval.search.dense import DenseRetrievalExactSearch  # noqa: E402
from datasets import Dataset  # noqa: E402
from mteb._create_dataloaders import create_dataloader  # noqa: E402
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.models import EncoderProtocol  # noqa: E402
from mteb.types import PromptType  # noqa: E402
from tiny import DOCUMENTS, QUERIES, make_tiny_encoder  # noqa: E402

from sbmoe.data import BeirDataset, load_dataset  # noqa: E402
from sbmoe.errors import SbmoeError  # noqa: E402
from sbmoe.evaluation.evaluate import EvaluateSettings, evaluate  # noqa: E402
from sbmoe.integrations import SbmoeBeirModel, SbmoeMtebEncoder  # noqa: E402
from sbmoe.modeling import build_model, load_model, save_model  # noqa: E402

MODES = ("top1", "all", "random")
QUERY_MAX_LENGTH = 3  # [CLS] w [SEP]: a query is cut where the same text as a document is not


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The Hugging Face Hub off, and any network connection an error that also fails the test."""
    import huggingface_hub.constants as constants

    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    attempts: list[Any] = []

    def refuse(sock, address):
        attempts.append(address)
        raise OSError(f"network access attempted in an offline test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    assert not attempts, f"network connections attempted: {attempts}"


@pytest.fixture(scope="module")
def sbmoe_folder(tmp_path_factory) -> Path:
    """A tiny SB-MoE model (3 experts) whose queries are cut shorter than documents."""
    root = tmp_path_factory.mktemp("sbmoe-model")
    encoder = make_tiny_encoder(root / "tiny-bert")
    model, tokenizer = build_model(
        encoder, num_experts=3, seed=1, encoder_settings={"query_max_length": QUERY_MAX_LENGTH}
    )
    return save_model(model, tokenizer, root / "model")


class LocalBeirRetrieval(AbsTaskRetrieval):
    """An MTEB retrieval task over a BEIR folder on disk, read with `sbmoe.data.load_dataset`.

    Queries are the judged ones in qrels order, documents in file order: as `sbmoe evaluate` encodes
    them, so the two share embedding-cache entries.
    """

    metadata = TaskMetadata(
        name="SbmoeLocalBeir",
        description="A BEIR collection folder read by sbmoe (tests).",
        dataset={"path": "local", "revision": "local"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
    )

    def __init__(self, folder: str | Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.folder = folder

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        dataset = load_dataset(self.folder)
        corpus = dataset.corpus
        documents = Dataset.from_dict({"id": corpus.ids, "title": corpus.titles, "text": corpus.texts})
        self.ignore_identical_ids = dataset.queries_are_documents()  # as `sbmoe evaluate` decides
        self.dataset = {"default": {}}
        for split in self.metadata.eval_splits:
            qrels = dataset.qrels(split)
            query_ids = [query_id for query_id in qrels if query_id in dataset.queries]
            queries = Dataset.from_dict({"id": query_ids, "text": [dataset.queries[q] for q in query_ids]})
            self.dataset["default"][split] = RetrievalSplitData(
                corpus=documents, queries=queries, relevant_docs=qrels, top_ranked=None
            )
        self.data_loaded = True


def mteb_ndcg10(model: Any, folder: Path) -> float:
    result = mteb.evaluate(
        model, LocalBeirRetrieval(folder), cache=None, co2_tracker=False, show_progress_bar=False
    )
    return result.task_results[0].scores["test"][0]["ndcg_at_10"]


def beir_inputs(dataset: BeirDataset, split: str) -> tuple[dict, dict, dict]:
    """corpus {id: {"title", "text"}}, judged queries {id: text} and qrels, as BEIR's loader gives them."""
    corpus = dataset.corpus
    documents = {
        doc_id: {"title": title, "text": text}
        for doc_id, title, text in zip(corpus.ids, corpus.titles, corpus.texts, strict=True)
    }
    qrels = dataset.qrels(split)
    queries = {query_id: dataset.queries[query_id] for query_id in qrels if query_id in dataset.queries}
    return documents, queries, qrels


def beir_ndcg10(model: SbmoeBeirModel, folder: Path, batch_size: int = 4) -> float:
    corpus, queries, qrels = beir_inputs(load_dataset(folder), "test")
    search = DenseRetrievalExactSearch(model, batch_size=batch_size, show_progress_bar=False)
    retriever = EvaluateRetrieval(search, score_function="dot")
    ndcg, _map, _recall, _precision = retriever.evaluate(qrels, retriever.retrieve(corpus, queries), [10])
    return ndcg["NDCG@10"]


def sbmoe_ndcg10(model: str | Path, folder: Path, output: Path, mode: str | None = None, **settings) -> float:
    summary = evaluate(
        EvaluateSettings(
            model=str(model),
            dataset=str(folder),
            split="test",
            output_dir=str(output),
            modes=(mode,) if mode else None,
            progress=False,
            **settings,
        )
    )
    return summary[0]["ndcg@10"]


def forward_embeddings(folder: Path, texts: list[str], kind: str, mode: str) -> np.ndarray:
    """The reference: `SBMoEModel.forward` on the tokenised texts (its own pooling, routing keys, head)."""
    model, tokenizer = load_model(folder)
    batch = tokenizer(
        texts,
        truncation=True,
        max_length=model.config.max_length_for(kind),
        padding=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        return model(batch["input_ids"], batch["attention_mask"], mode=mode).embeddings.numpy()


# ----------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mode", MODES)
def test_mteb_retrieval_matches_sbmoe_evaluate(sbmoe_folder, tiny_beir, tmp_path, mode):
    ours = sbmoe_ndcg10(sbmoe_folder, tiny_beir, tmp_path / "run", mode, use_cache=False)
    encoder = SbmoeMtebEncoder(sbmoe_folder, mode=mode, device="cpu", use_cache=False, progress=False)
    assert isinstance(encoder, EncoderProtocol)
    assert mteb_ndcg10(encoder, tiny_beir) == pytest.approx(ours, abs=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_beir_exact_search_matches_sbmoe_evaluate(sbmoe_folder, tiny_beir, tmp_path, mode):
    ours = sbmoe_ndcg10(sbmoe_folder, tiny_beir, tmp_path / "run", mode, use_cache=False)
    model = SbmoeBeirModel(sbmoe_folder, mode=mode, device="cpu", progress=False)
    assert beir_ndcg10(model, tiny_beir) == pytest.approx(ours, abs=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_embeddings_equal_the_models_forward_for_queries_and_documents(sbmoe_folder, mode):
    titles = [title for title, _ in DOCUMENTS.values()]
    bodies = [text for _, text in DOCUMENTS.values()]
    joined = [f"{title} {text}".strip() for title, text in DOCUMENTS.values()]  # d7 has no title
    queries = list(QUERIES.values()) + [joined[0]]  # a long query: cut at QUERY_MAX_LENGTH
    expected_queries = forward_embeddings(sbmoe_folder, queries, "query", mode)
    expected_documents = forward_embeddings(sbmoe_folder, joined, "document", mode)
    assert np.abs(expected_queries[-1] - expected_documents[0]).max() > 1e-3  # the side matters

    beir = SbmoeBeirModel(sbmoe_folder, mode=mode, device="cpu", progress=False)
    got = {
        "beir queries": (beir.encode_queries(queries, batch_size=2), expected_queries),
        "beir corpus (dicts)": (
            beir.encode_corpus([{"title": t, "text": x} for t, x in zip(titles, bodies, strict=True)]),
            expected_documents,
        ),
        "beir corpus (dict of lists)": (
            beir.encode_corpus({"title": titles, "text": bodies}, batch_size=3),
            expected_documents,
        ),
    }
    encoder = SbmoeMtebEncoder(sbmoe_folder, mode=mode, device="cpu", use_cache=False, progress=False)
    task = LocalBeirRetrieval("unused").metadata
    corpus = Dataset.from_dict({"id": list(DOCUMENTS), "title": titles, "text": bodies})
    query_set = Dataset.from_dict({"id": [f"q{i}" for i in range(len(queries))], "text": queries})
    for name, dataset, prompt_type, expected in [
        ("mteb queries", query_set, PromptType.query, expected_queries),
        ("mteb corpus", corpus, PromptType.document, expected_documents),
    ]:
        loader = create_dataloader(dataset, task_metadata=task, prompt_type=prompt_type, batch_size=3)
        embeddings = encoder.encode(
            loader, task_metadata=task, hf_split="test", hf_subset="default", prompt_type=prompt_type
        )
        got[name] = (embeddings, expected)
    for name, (embeddings, expected) in got.items():
        assert embeddings.shape == expected.shape, name
        assert np.abs(embeddings - expected).max() <= 1e-5, name


def test_mteb_reuses_the_corpus_sbmoe_evaluate_cached_and_reloads_from_its_meta(
    sbmoe_folder, tiny_beir, tmp_path, caplog
):
    ours = sbmoe_ndcg10(sbmoe_folder, tiny_beir, tmp_path / "run")  # fills $SBMOE_CACHE (a tmp folder)
    encoder = SbmoeMtebEncoder(sbmoe_folder, device="cpu", progress=False)
    with caplog.at_level(logging.INFO, logger="sbmoe.retrieval.encode"):
        score = mteb_ndcg10(encoder, tiny_beir)
    assert "Reusing cached document embeddings" in caplog.text
    assert "Reusing cached query embeddings" in caplog.text
    assert score == pytest.approx(ours, abs=1e-3)

    meta = encoder.mteb_model_meta
    assert meta.name == "sbmoe/model" and meta.experiment_kwargs == {"mode": "top1"}
    assert meta.similarity_fn_name == "dot" and meta.embed_dim == 32 and meta.max_tokens == 64
    assert mteb_ndcg10(meta, tiny_beir) == pytest.approx(ours, abs=1e-3)  # mteb loads it with meta.loader
    with pytest.raises(SbmoeError, match="another version"):
        SbmoeMtebEncoder(sbmoe_folder, revision="0" * 20, device="cpu")


def test_similarity_declared_matches_how_sbmoe_scores(tiny_encoder, sbmoe_folder, tmp_path):
    plain = SbmoeMtebEncoder(sbmoe_folder, mode="random", device="cpu")
    a, b = np.random.default_rng(0).normal(size=(2, 3, 32)).astype(np.float32)
    assert np.allclose(np.asarray(plain.similarity(a, b)), a @ b.T, atol=1e-5)
    assert np.allclose(np.asarray(plain.similarity_pairwise(a, b)), (a * b).sum(axis=1), atol=1e-5)
    assert plain.mteb_model_meta.experiment_kwargs == {"mode": "random"}

    normalised = SbmoeMtebEncoder(tiny_encoder, device="cpu", loaded=load_model(tiny_encoder, normalize=True))
    assert normalised.mteb_model_meta.similarity_fn_name == "cosine"
    assert normalised.mteb_model_meta.experiment_kwargs is None  # no MoE block, no mode
    assert normalised.mteb_model_meta.revision != plain.mteb_model_meta.revision


def test_beir_options_follow_sentence_transformers(sbmoe_folder):
    """BEIR's searches pass sentence-transformers' options: a tensor on request, unit vectors on request."""
    model = SbmoeBeirModel(sbmoe_folder, device="cpu", progress=False)
    plain = model.encode_queries(["gene protein", "virus"])
    assert isinstance(plain, np.ndarray) and plain.dtype == np.float32
    unit = model.encode_queries(["gene protein", "virus"], convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(unit, torch.Tensor)
    assert torch.allclose(unit, torch.nn.functional.normalize(torch.from_numpy(plain), dim=-1), atol=1e-6)
    assert model.encode_corpus([]).shape == (0, 32)


def test_bad_settings_are_refused_with_a_message(tiny_encoder, sbmoe_folder):
    with pytest.raises(SbmoeError, match="no MoE block"):
        SbmoeBeirModel(tiny_encoder, mode="top1")
    with pytest.raises(SbmoeError, match="mode must be one of"):
        SbmoeMtebEncoder(sbmoe_folder, mode="top2")
    with pytest.raises(SbmoeError, match="dtype must be one of"):
        SbmoeBeirModel(sbmoe_folder, dtype="float16")
    encoder = SbmoeMtebEncoder(sbmoe_folder, device="cpu", use_cache=False)
    task = LocalBeirRetrieval("unused").metadata
    loader = create_dataloader(Dataset.from_dict({"text": ["gene"]}), task_metadata=task, input_column="text")
    with pytest.raises(ValueError, match="float32 only"):
        encoder.encode(loader, task_metadata=task, hf_split="test", hf_subset="default", precision="int8")
    assert encoder.encode(loader, task_metadata=task, hf_split="test", hf_subset="default").shape == (1, 32)


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.slow
def test_minilm_on_scifact_scores_the_same_in_sbmoe_mteb_and_beir(tmp_path):
    """`sbmoe evaluate` fills the embedding cache, MTEB reads its corpus from it, BEIR encodes again."""
    from conftest import shared_datasets

    folder = shared_datasets() / "scifact"
    if not folder.is_dir():
        pytest.skip(f"SciFact not found at {folder} (set SBMOE_DATA)")
    batch_size = int(os.environ.get("SBMOE_TEST_BATCH_SIZE", "64"))
    ticks = [time.perf_counter()]
    ours = sbmoe_ndcg10("minilm-l6", folder, tmp_path / "run", batch_size=batch_size)
    ticks.append(time.perf_counter())
    encoder = SbmoeMtebEncoder("minilm-l6", device="cpu", progress=False)
    via_mteb = mteb_ndcg10(encoder, folder)
    ticks.append(time.perf_counter())
    via_beir = beir_ndcg10(SbmoeBeirModel("minilm-l6", device="cpu", progress=False), folder, batch_size)
    ticks.append(time.perf_counter())
    seconds = np.diff(ticks).round().astype(int).tolist()
    scores = f"sbmoe {ours:.5f}  mteb {via_mteb:.5f}  beir {via_beir:.5f}"
    print(f"\nSciFact test nDCG@10: {scores}  (seconds: sbmoe, mteb, beir {seconds})")
    assert via_mteb == pytest.approx(ours, abs=1e-3)
    assert via_beir == pytest.approx(ours, abs=1e-3)
