"""The model card written with every model folder: Hugging Face metadata the Hub reads, and the settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
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


@pytest.fixture
def tiny_sbmoe(tiny_encoder, tmp_path):
    model, tokenizer = build_model(tiny_encoder, num_experts=3, variant="learned")
    return save_model(model, tokenizer, tmp_path / "tiny-sbmoe")


def test_evaluate_records_its_metrics_in_the_card(tiny_sbmoe, tiny_beir, tmp_path):
    """Each (collection, split, routing mode) evaluated is one entry of the card's model-index and one row
    of its Evaluation table, with the values of metrics.json; evaluating again replaces that entry."""
    from sbmoe.evaluation.evaluate import evaluate
    from sbmoe.evaluation.settings import EvaluateSettings

    def run(modes, **extra):
        settings = EvaluateSettings(
            model=str(tiny_sbmoe), dataset=str(tiny_beir), output_dir=str(tmp_path / "e"), modes=modes,
            progress=False, top_k=100, per_mode_folders=True, **extra,
        )  # fmt: skip
        return evaluate(settings)

    before = (tiny_sbmoe / "README.md").read_text()
    run(("top1",), record_in_card=False)
    assert (tiny_sbmoe / "README.md").read_text() == before

    summaries = run(("top1", "all"))
    card = ModelCard.load(tiny_sbmoe / "README.md")
    results = card.data.eval_results
    assert {(r.dataset_split, r.metric_config) for r in results} == {("test", "top1"), ("test", "all")}
    for summary in summaries:
        written = json.loads((Path(summary["output_dir"]) / "metrics.json").read_text())
        (ndcg,) = [r for r in results if r.metric_type == "ndcg_at_10" and r.metric_config == summary["mode"]]
        assert ndcg.metric_value == pytest.approx(written["ndcg@10"], abs=1e-5)
        assert ndcg.dataset_name == written["dataset"]
    assert card.text.count("## Evaluation") == 1 and card.text.count("| test | top1 |") == 1

    run(("top1",))  # again: replaced, not added
    again = ModelCard.load(tiny_sbmoe / "README.md")
    assert len(again.data.eval_results) == len(results)
    assert again.text.count("| test | top1 |") == 1 and "| num_experts |" in again.text


def test_evaluate_leaves_a_folder_without_an_sbmoe_card_alone(tiny_encoder, tiny_beir, tmp_path):
    from sbmoe.evaluation.evaluate import evaluate
    from sbmoe.evaluation.settings import EvaluateSettings

    encoder = shutil.copytree(tiny_encoder, tmp_path / "encoder")
    (encoder / "README.md").write_text("# someone else's model\n")
    evaluate(EvaluateSettings(model=str(encoder), dataset=str(tiny_beir), output_dir=str(tmp_path / "e"),
                              progress=False, top_k=100))  # fmt: skip
    assert (encoder / "README.md").read_text() == "# someone else's model\n"
