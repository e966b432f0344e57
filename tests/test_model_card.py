"""The model card written with every model folder: Hugging Face metadata the Hub reads, and the settings."""

from __future__ import annotations

from huggingface_hub import ModelCard
from tiny import make_synthetic_beir

from sbmoe.modeling import SBMoEConfig, build_model, save_model
from sbmoe.modeling.card import model_card
from sbmoe.training.config import TrainingConfig
from sbmoe.training.trainer import train


def test_a_saved_model_has_a_card_with_its_block_settings(tiny_encoder, tmp_path):
    model, tokenizer = build_model(tiny_encoder, num_experts=4, router="cluster", seed=1)
    save_model(model, tokenizer, tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.library_name == "transformers"
    assert {"sbmoe", "mixture-of-experts", "dense-retrieval"} <= set(card.data.tags)
    assert "| num_experts | 4 |" in card.text and "| router | cluster |" in card.text
    assert "trust_remote_code=True" in card.text


def test_metadata_names_hub_ids_only():
    config = SBMoEConfig(use_moe=False)
    card = model_card(config, base_model="minilm-l6", training={"datasets": ["scifact", "my-local-set"]})
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.datasets == ["BeIR/scifact"]  # a local collection is named in the text only
    assert "my-local-set" in card.text
    local = model_card(config, base_model="/models/my-encoder")
    assert local.data.base_model is None and "/models/my-encoder" in local.text


def test_a_trained_model_card_says_how_it_was_trained(tiny_encoder, tmp_path):
    data = make_synthetic_beir(tmp_path / "synthetic")
    config = TrainingConfig(
        base=str(tiny_encoder), dataset=str(data), output_dir=str(tmp_path / "run"), batch_size=4, epochs=1,
        num_experts=3, freeze_encoder=True, progress=False, seed=7,
    )  # fmt: skip
    summary = train(config)
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert "## Training" in card.text and "- seed: 7" in card.text and "- frozen encoder: true" in card.text
    assert f"- best validation ndcg@10: {summary['best_validation_ndcg@10']:.4f}" in card.text
    assert "| num_experts | 3 |" in card.text
