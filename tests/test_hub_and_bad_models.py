"""Models named by Hugging Face Hub id (read from a Hub cache laid out by the test, offline), and model
names or folders that cannot work: each is a message naming the path and exit 2, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sbmoe.commands import main
from sbmoe.errors import SbmoeError
from sbmoe.modeling import build_model, load_model
from sbmoe.modeling.loading import save_model
from sbmoe.retrieval.encode import encode_pooled

TEXTS = ["gene protein expression", "virus blood", "cancer drug trial"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(hub_cache: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out as huggingface_hub's cache holds repository `repo_id` at revision main."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    hub_cache = tmp_path / "hub"
    hub_cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    return hub_cache


def embeddings(model, tokenizer) -> np.ndarray:
    return model.head(
        torch.from_numpy(encode_pooled(model, tokenizer, TEXTS, "document", progress=False).vectors)
    )


def test_an_sbmoe_repository_by_hub_id_keeps_its_block(tiny_encoder, tmp_path, offline_hub):
    model, tokenizer = build_model(tiny_encoder, num_experts=3, seed=4)
    save_model(model, tokenizer, tmp_path / "local")
    cache_repo(offline_hub, "someone/tiny-sbmoe", tmp_path / "local")
    by_id, by_id_tokenizer = load_model("someone/tiny-sbmoe")
    assert by_id.moe is not None and by_id.config.num_experts == 3
    local, local_tokenizer = load_model(tmp_path / "local")
    expected = embeddings(local, local_tokenizer)
    got = embeddings(by_id, by_id_tokenizer)
    torch.testing.assert_close(got.embeddings, expected.embeddings)


def test_a_sentence_transformers_repository_by_hub_id_brings_its_settings(
    tiny_encoder, tmp_path, offline_hub
):
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer

    st_model = SentenceTransformer(
        modules=[
            Transformer(str(tiny_encoder), max_seq_length=20),
            Pooling(32, pooling_mode="cls"),
            Normalize(),
        ],
        device="cpu",
    )
    st_model.save(str(tmp_path / "st"))
    cache_repo(offline_hub, "someone/tiny-st", tmp_path / "st")
    model, tokenizer = load_model("someone/tiny-st")
    assert (model.config.pooling, model.config.normalize, model.config.document_max_length) == (
        "cls",
        True,
        20,
    )
    np.testing.assert_allclose(
        embeddings(model, tokenizer).embeddings.numpy(),
        st_model.encode(TEXTS, convert_to_numpy=True),
        atol=1e-5,
    )


def test_a_repository_missing_from_the_offline_cache_is_a_user_error(offline_hub, capsys):
    with pytest.raises(
        SbmoeError, match="someone/absent: no such folder, and the Hugging Face Hub repository"
    ):
        load_model("someone/absent")


@pytest.mark.parametrize("name", ["/nonexistent", "./no/such/folder", "a//b"])
def test_a_path_that_is_neither_folder_nor_hub_id_says_so(name, tiny_beir, capsys):
    with pytest.raises(SbmoeError, match="no such folder, and not a Hugging Face Hub id"):
        load_model(name)
    assert main(["evaluate", "--model", name, "--dataset", str(tiny_beir), "--no-progress"]) == 2
    assert f"{name}: no such folder, and not a Hugging Face Hub id" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_weights_file_names_the_file_and_exits_2(tiny_encoder, tiny_beir, tmp_path, capsys, damage):
    model, tokenizer = build_model(tiny_encoder, num_experts=2)
    folder = save_model(model, tokenizer, tmp_path / "model")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64)
    code = main(["evaluate", "--model", str(folder), "--dataset", str(tiny_beir), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "Traceback" not in err


def test_a_file_given_as_model_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(SbmoeError, match="is a file; a model is a folder"):
        load_model(tmp_path / "model.bin")
