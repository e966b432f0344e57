"""SBMoEModel with the block: save/load and sentence-transformers round trips, and the CLI around it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from sbmoe.commands import main
from sbmoe.modeling import SBMoEModel, build_model, load_model, save_model
from sbmoe.retrieval.encode import apply_head, encode_pooled

TEXTS = ["gene protein", "the cancer risk and drug trial in patients with a heart study", "virus", "sleep"]
MODES = ["top1", "topk:2", "all", "random"]


def embed(model, tokenizer, mode):
    return apply_head(
        model, encode_pooled(model, tokenizer, TEXTS, "document", batch_size=3, progress=False), mode
    )


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


def test_build_model_draws_the_block_from_its_seed_only(tiny_encoder, sbmoe_model):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again, _ = build_model(tiny_encoder, num_experts=3, variant="learned", seed=1)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left alone
    model, _ = sbmoe_model
    for name, value in model.moe.state_dict().items():
        assert torch.equal(value, again.moe.state_dict()[name]), name
    other, _ = build_model(tiny_encoder, num_experts=3, variant="learned", seed=2)
    assert not torch.equal(other.moe.gate[0].weight, model.moe.gate[0].weight)


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
    """Pooled vectors with the keys they carry must pick the experts forward() picks from token ids."""
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


@pytest.mark.parametrize("normalize, similarity", [(False, "dot"), (True, "cosine")])
def test_export_declares_the_similarity_sbmoe_scores_with(tiny_encoder, tmp_path, normalize, similarity):
    from sentence_transformers import SentenceTransformer

    from sbmoe.integrations.sentence_transformers import export_sentence_transformers

    model, tokenizer = build_model(tiny_encoder, num_experts=3, encoder_settings={"normalize": normalize})
    export_sentence_transformers(model, tokenizer, tmp_path / "st")
    st_model = SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")
    assert st_model.similarity_fn_name == similarity
    queries, documents = embed(model, tokenizer, "top1")[0][:2], embed(model, tokenizer, "top1")[0][2:]
    ours = queries @ documents.T  # sbmoe ranks by dot product
    theirs = st_model.similarity(queries, documents).numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_export_keeps_query_and_document_max_lengths_apart(tiny_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    from sbmoe.integrations.sentence_transformers import export_sentence_transformers

    lengths = {"query_max_length": 6, "document_max_length": 20}
    model, tokenizer = build_model(tiny_encoder, num_experts=3, encoder_settings=lengths)
    export_sentence_transformers(model, tokenizer, tmp_path / "st")
    st_model = SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")
    long_texts = [" ".join([text] * 6) for text in TEXTS]
    for kind, encode in (("query", st_model.encode_query), ("document", st_model.encode_document)):
        pooled = encode_pooled(model, tokenizer, long_texts, kind, progress=False)
        ours, _ = apply_head(model, pooled, "top1")
        np.testing.assert_allclose(encode(long_texts, convert_to_numpy=True), ours, atol=1e-5)
    queries = encode_pooled(model, tokenizer, long_texts, "query", progress=False)
    documents = encode_pooled(model, tokenizer, long_texts, "document", progress=False)
    assert np.abs(queries.vectors - documents.vectors).max() > 1e-3  # the two limits do truncate differently


def test_the_exported_model_card_loads_with_remote_code(sbmoe_model, tmp_path):
    from sbmoe.integrations.sentence_transformers import export_sentence_transformers

    export_sentence_transformers(*sbmoe_model, tmp_path / "st")
    card = (tmp_path / "st" / "README.md").read_text()
    assert 'SentenceTransformer("sentence_transformers_model_id", trust_remote_code=True)' in card


@pytest.mark.parametrize("written_by", ["save_model", "sbmoe train"])
def test_a_saved_folder_loads_with_transformers_where_sbmoe_is_absent(sbmoe_model, tmp_path, written_by):
    """auto_map and the modeling code travel with the folder (saved, or written by `sbmoe train`):
    AutoModel(trust_remote_code=True) in a Python where `import sbmoe` fails gives sbmoe's embeddings and
    routing."""
    import subprocess
    import sys

    from tiny import make_synthetic_beir

    if written_by == "save_model":
        model, tokenizer = sbmoe_model
        save_model(model, tokenizer, tmp_path / "m")
    else:
        base = save_model(*sbmoe_model, tmp_path / "base")
        data = make_synthetic_beir(tmp_path / "data")
        args = ["train", "--base", str(base), "--dataset", str(data), "--output-dir", str(tmp_path / "m"),
                "--batch-size", "4", "--epochs", "1", "--freeze-encoder", "--no-progress"]  # fmt: skip
        assert main(args) == 0
        model, tokenizer = load_model(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "config.SBMoEConfig",
        "AutoModel": "model.SBMoEModel",
    }
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    expected = model(batch["input_ids"], batch["attention_mask"], mode="top1")
    np.save(tmp_path / "expected.npy", expected.embeddings.detach().numpy())
    script = f"""
import sys
sys.modules["sbmoe"] = None  # import sbmoe fails
import numpy as np, torch
from transformers import AutoModel, AutoTokenizer
folder = {str(tmp_path / "m")!r}
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
batch = tokenizer({TEXTS!r}, padding=True, return_tensors="pt")
with torch.no_grad():
    out = model(batch["input_ids"], batch["attention_mask"], mode="top1")
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
difference = np.abs(out.embeddings.numpy() - np.load({str(tmp_path / "expected.npy")!r})).max()
print("max difference", difference)
assert difference <= 1e-6
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max difference" in result.stdout
