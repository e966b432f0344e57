"""SBMoEModel with the block: save/load and sentence-transformers round trips, and the CLI around it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModel

from sbmoe.commands import main
from sbmoe.modeling import SBMoEModel, build_model, load_model, save_model
from sbmoe.retrieval.encode import apply_head, encode_pooled, text_routing_keys

TEXTS = ["gene protein", "the cancer risk and drug trial in patients with a heart study", "virus", "sleep"]
MODES = ["top1", "topk:2", "all", "random"]


def embed(model, tokenizer, mode):
    pooled = encode_pooled(model, tokenizer, TEXTS, "document", batch_size=3, progress=False)
    keys = text_routing_keys(tokenizer, TEXTS, model.config.document_max_length)
    return apply_head(model, pooled, mode, keys)


@pytest.fixture
def sbmoe_model(tiny_encoder):
    return build_model(tiny_encoder, num_experts=3, variant="learned", seed=1)


def test_build_model_keeps_the_base_encoder_weights(tiny_encoder, sbmoe_model):
    base, _ = load_model(tiny_encoder)
    model, _ = sbmoe_model
    for (name, ours), (_, theirs) in zip(
        model.encoder.state_dict().items(), base.encoder.state_dict().items(), strict=True
    ):
        assert np.array_equal(ours.numpy(), theirs.numpy()), name
    assert model.config.use_moe and model.config.num_experts == 3 and model.config.variant == "learned"


@pytest.mark.parametrize("mode", MODES)
def test_save_and_reload_give_identical_embeddings_in_every_mode(sbmoe_model, tmp_path, mode):
    model, tokenizer = sbmoe_model
    save_model(model, tokenizer, tmp_path / "m")
    reloaded, reloaded_tokenizer = load_model(tmp_path / "m")
    before, experts_before = embed(model, tokenizer, mode)
    after, experts_after = embed(reloaded, reloaded_tokenizer, mode)
    assert np.abs(before - after).max() <= 1e-6
    assert np.array_equal(experts_before, experts_after)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "m"), SBMoEModel)


def test_encode_path_routes_random_mode_like_forward(sbmoe_model):
    """Cached pooled vectors + text_routing_keys must pick the experts forward() picks from token ids."""
    model, tokenizer = sbmoe_model
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    direct = model(batch["input_ids"], batch["attention_mask"], mode="random")
    embeddings, experts = embed(model, tokenizer, "random")
    assert experts.tolist() == direct.selected_experts[:, 0].tolist()
    assert np.abs(embeddings - direct.embeddings.detach().numpy()).max() <= 1e-5


@pytest.mark.parametrize("mode", ["top1", "all", "random"])
def test_sentence_transformers_export_gives_identical_embeddings(sbmoe_model, tmp_path, mode):
    from sentence_transformers import SentenceTransformer

    from sbmoe.integrations.sentence_transformers import export_sentence_transformers

    model, tokenizer = sbmoe_model
    export_sentence_transformers(model, tokenizer, tmp_path / "st", mode=mode)
    st_model = SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")
    theirs = st_model.encode(TEXTS, batch_size=3, convert_to_numpy=True)
    ours, _ = embed(model, tokenizer, mode)
    assert np.abs(ours - theirs).max() <= 1e-6


def test_export_refuses_a_non_empty_folder_and_leaves_it_alone(sbmoe_model, tmp_path):
    from sbmoe.errors import SbmoeError
    from sbmoe.integrations.sentence_transformers import export_sentence_transformers

    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "keep.txt").write_text("mine")
    with pytest.raises(SbmoeError, match="already exists and is not empty"):
        export_sentence_transformers(*sbmoe_model, tmp_path / "st")
    assert (tmp_path / "st" / "keep.txt").read_text() == "mine"


def test_cli_init_evaluate_modes_and_export(tiny_encoder, tiny_beir, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert main(["init", "--base", str(tiny_encoder), "--num-experts", "3", "--output", str(model_dir)]) == 0
    assert json.loads((model_dir / "config.json").read_text())["num_experts"] == 3

    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(model_dir), "--dataset", str(tiny_beir), "--output-dir", str(out)]
    assert main([*argv, "--mode", "top1,all,random", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for mode in ("top1", "all", "random"):
        metrics = json.loads((out / mode / "metrics.json").read_text())
        assert metrics["mode"] == mode and mode in printed
        assert (
            sum(metrics["expert_counts"]["documents"]) == 8 and sum(metrics["expert_counts"]["queries"]) == 2
        )
        assert (out / mode / "run.trec").is_file()

    assert main(["export", "--model", str(model_dir), "--output", str(tmp_path / "st")]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    assert (tmp_path / "st" / "2_SBMoEHead" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["init", "--num-experts", "0"], "num_experts must be an integer >= 1"),
        (["init", "--variant", "soft"], "variant must be one of ['faithful', 'learned']"),
        (["init", "--default-mode", "topk:9"], "K must be an integer from 1 to num_experts=6"),
    ],
)
def test_cli_bad_model_settings_exit_2(tiny_encoder, tmp_path, capsys, argv, message):
    assert main([*argv, "--base", str(tiny_encoder), "--output", str(tmp_path / "m")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cli_bad_mode_exits_2(tiny_encoder, tiny_beir, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert main(["init", "--base", str(tiny_encoder), "--num-experts", "2", "--output", str(model_dir)]) == 0
    base = ["evaluate", "--dataset", str(tiny_beir), "--output-dir", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--model", str(model_dir), "--mode", "topk:3"]) == 2
    assert "K must be an integer from 1 to num_experts=2" in capsys.readouterr().err
    assert main([*base, "--model", str(tiny_encoder), "--mode", "all"]) == 2
    assert "has no MoE block" in capsys.readouterr().err
