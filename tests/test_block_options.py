"""The block options from the MoE literature, each checked by hand on a toy block whose weights are set
by hand, plus their wiring: config.json compatibility, k-means, upcycling, the trainer and the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import make_synthetic_beir, make_tiny_encoder

from sbmoe.analysis.routing import expert_counts, expert_shares
from sbmoe.commands import main
from sbmoe.modeling import build_model, load_model, save_model
from sbmoe.modeling.block_init import balanced_assignment, init_prototypes, upcycle
from sbmoe.modeling.moe import SBMoEBlock, noise_weight
from sbmoe.modeling.settings import BlockSettings
from sbmoe.retrieval.encode import Pooled, apply_head
from sbmoe.training.config import TrainingConfig

H = 4
E0 = torch.tensor([2.0, 0.0, 0.0, 0.0])  # expert 0's constant output, unit vector [1, 0, 0, 0]
E1 = torch.tensor([0.0, 0.0, 3.0, 0.0])  # expert 1's, unit vector [0, 0, 1, 0]
E2 = torch.tensor([0.0, 5.0, 0.0, 0.0])  # expert 2's (blocks of 3 experts)
SHARED = torch.tensor([0.0, 0.0, 0.0, 4.0])  # the shared expert's, unit vector [0, 0, 0, 1]
UNIT = {0: E0 / 2, 1: E1 / 3}
LN2 = math.log(2.0)  # softplus(0): the noise scale s of the toy block


def set_constant_expert(expert, output: torch.Tensor) -> None:
    """E(x) = output for every x: down weight 0, down bias [1, 0] (ReLU keeps 1), up maps it to `output`."""
    with torch.no_grad():
        expert.down.weight.zero_()
        expert.down.bias.copy_(torch.tensor([1.0, 0.0]))
        expert.up.weight.zero_()
        expert.up.weight[:, 0] = output
        expert.up.bias.zero_()


def toy_block(num_experts: int = 2, gate_bias: float = 0.0, **settings) -> SBMoEBlock:
    """H = 4: gate z_i = relu(x_i) + gate_bias for i < N, noise scale s = ln 2, experts E0, E1, E2 (constant),
    shared expert SHARED, prototypes (cluster routing) the first N unit axes."""
    block = SBMoEBlock(H, BlockSettings(num_experts=num_experts, **settings)).eval()
    for index, expert in enumerate(block.experts):
        set_constant_expert(expert, (E0, E1, E2)[index])
    if block.shared_expert is not None:
        set_constant_expert(block.shared_expert, SHARED)
    with torch.no_grad():
        if block.gate is not None:
            first, last = block.gate[0], block.gate[2]
            first.weight.copy_(torch.eye(2, H))
            first.bias.zero_()
            last.weight.copy_(torch.eye(num_experts, 2))
            last.bias.fill_(gate_bias)
        if block.noise is not None:
            block.noise.weight.zero_()
            block.noise.bias.zero_()
        if block.router == "cluster":
            block.prototypes.copy_(torch.eye(num_experts, H))
            block.prototypes_initialized.fill_(True)
    return block


# ------------------------------------------------------------------------------------------ router=sigmoid


def test_sigmoid_router_weights_are_sigmoids_of_the_logits_not_a_softmax():
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])  # z = [2, 1]
    out, routing = toy_block(router="sigmoid")(x, mode="top1")
    g = 1 / (1 + math.exp(-2))  # sigmoid(2) = 0.881; a softmax would keep sigmoid(2 - 1) = 0.731
    assert routing.selected_experts.tolist() == [[0]]
    assert routing.routing_weights[0].tolist() == pytest.approx([g, 0.0])
    torch.testing.assert_close(out, x + g * UNIT[0])
    _, routing = toy_block(router="sigmoid")(x, mode="all")
    assert routing.routing_weights[0].tolist() == pytest.approx(
        [g, 1 / (1 + math.exp(-1))]
    )  # not summing to 1


def test_gated_adapter_scales_the_normalised_expert_by_a_weight_strictly_inside_0_1():
    block = toy_block(num_experts=1, gate_bias=-1.0, router="sigmoid")  # z = relu(x0) - 1
    x = torch.tensor([[0.0, 5.0, 1.0, 1.0], [3.0, 0.0, 0.0, 2.0], [40.0, 0.0, 0.0, 0.0]])
    out, routing = block(x)
    z = torch.tensor([-1.0, 2.0, 39.0])
    weights = routing.routing_weights[:, 0]
    torch.testing.assert_close(weights, torch.sigmoid(z))
    assert bool((weights > 0).all()) and bool((weights[:2] < 1).all())  # (sigmoid(39) rounds to 1 in float32)
    torch.testing.assert_close(out, x + torch.sigmoid(z)[:, None] * UNIT[0])


def test_the_gated_adapter_system_is_one_sigmoid_expert_with_the_learned_variant():
    config = TrainingConfig(base="b", dataset="d", output_dir="o", system="gated-adapter")
    assert (config.num_experts, config.router, config.variant) == (1, "sigmoid", "learned")
    with pytest.raises(
        ValueError, match="system gated-adapter sets router to 'sigmoid'; got router='cluster'"
    ):
        TrainingConfig(base="b", dataset="d", output_dir="o", system="gated-adapter", router="cluster")


# ------------------------------------------------------------------------------------------ routing_noise


def test_noise_weight_schedule():
    anneal = BlockSettings(routing_noise="anneal", noise_anneal_fraction=0.5)
    assert [noise_weight(anneal, step, 10) for step in (0, 1, 4, 5, 9)] == pytest.approx([1, 0.8, 0.2, 0, 0])
    quarter = BlockSettings(routing_noise="anneal", noise_anneal_fraction=0.25)  # zero from ceil(2.5) = 3
    assert [noise_weight(quarter, step, 10) for step in (0, 2, 3)] == pytest.approx([1, 1 / 3, 0])
    assert noise_weight(BlockSettings(), 7, 10) == 1.0
    assert noise_weight(BlockSettings(routing_noise="none"), 0, 10) == 0.0


def test_noise_weight_scales_the_noise_term_of_the_logits():
    block = toy_block(routing_noise="anneal").train()
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])  # z = [2, 1]
    noise = torch.tensor([[0.0, 3.0]])  # z' = [2, 1 + w * 3 * ln 2]
    full = block(x, noise=noise, noise_weight=1.0)[1]  # z'_1 = 3.08 > 2: expert 1
    assert full.selected_experts.tolist() == [[1]]
    p1 = 1 / (1 + math.exp(2 - (1 + 3 * LN2)))
    assert full.routing_weights[0, 1].item() == pytest.approx(p1)
    weak = block(x, noise=noise, noise_weight=0.2)[1]  # z'_1 = 1.42 < 2: expert 0
    assert weak.selected_experts.tolist() == [[0]]
    assert weak.routing_weights[0, 0].item() == pytest.approx(1 / (1 + math.exp(-(2 - 1 - 0.6 * LN2))))


def test_no_routing_noise_routes_in_training_as_in_eval():
    block = toy_block(routing_noise="none")
    assert block.noise is None
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 3.0, 1.0, 0.0]])
    expected = block(x)[0]
    trained = block.train()(x, noise=torch.tensor([[0.0, 50.0], [50.0, 0.0]]))[0]
    torch.testing.assert_close(trained, expected, rtol=0, atol=0)


def test_random_gate_keeps_the_raw_noise_whatever_the_noise_setting():
    block = toy_block(random_gate=True, routing_noise="none").train()
    noise = torch.tensor([[0.1, 0.3], [0.9, -1.0]])
    routing = block(torch.zeros(2, H), noise=noise, noise_weight=0.0)[1]
    assert routing.selected_experts[:, 0].tolist() == [1, 0]


# ------------------------------------------------------------------------------------------ top1_weight


def linear_loss_gate_gradient(top1_weight: str) -> tuple[torch.Tensor, torch.Tensor]:
    block = toy_block(top1_weight=top1_weight, routing_noise="none").train()
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    out, routing = block(x, noise=torch.zeros(1, 2))
    (out * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    return routing.routing_weights.detach(), block.gate[2].weight.grad


def test_straight_through_weight_is_exactly_one_with_the_softmax_gradient():
    weights, gradient = linear_loss_gate_gradient("straight-through")
    assert weights.tolist() == [[1.0, 0.0]]
    assert gradient.abs().max() > 1e-3
    # For a loss linear in the output, d loss / d p_k is the same whether the forward weight is p_k or 1:
    # the straight-through gradient equals the softmax one.
    soft_weights, soft_gradient = linear_loss_gate_gradient("softmax")
    assert soft_weights[0, 0].item() == pytest.approx(1 / (1 + math.exp(-1)))
    torch.testing.assert_close(gradient, soft_gradient)


def test_straight_through_top1_inference_weight_is_one():
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    out, routing = toy_block(top1_weight="straight-through")(x, mode="top1")
    assert routing.routing_weights.tolist() == [[1.0, 0.0]]
    torch.testing.assert_close(out, x + UNIT[0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ shared_expert


def test_shared_expert_is_added_to_every_row():
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])  # routed to experts 0 and 1
    out, routing = toy_block(shared_expert=True)(x, mode="top1")
    g = routing.routing_weights.gather(1, routing.selected_experts)  # [2, 1]
    expected = x + g * torch.stack([UNIT[0], UNIT[1]]) + SHARED / 4
    torch.testing.assert_close(out, expected)
    without = toy_block()(x, mode="top1")[0]
    torch.testing.assert_close(out - without, (SHARED / 4).expand(2, H))  # its contribution, in each row


def test_shared_expert_gets_gradient_from_each_row():
    block = toy_block(shared_expert=True)
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    for row in range(2):
        block.zero_grad()
        block(x, mode="top1")[0][row].sum().backward()
        assert block.shared_expert.up.weight.grad.abs().max() > 0.1, row


def test_faithful_shared_expert_joins_m_before_the_normalisation_so_the_gate_counts():
    block = toy_block(variant="faithful", shared_expert=True)
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    out, routing = block(x, mode="top1")
    g = routing.routing_weights[0, 0]
    m = g * E0 + SHARED
    torch.testing.assert_close(out[0], x[0] + m / m.norm())
    block.train()(x, noise=torch.zeros(1, 2))[0].sum().backward()
    assert block.gate[2].weight.grad.abs().max() > 1e-3  # g_k is no longer cancelled


# ------------------------------------------------------------------------------------------ cluster routing


def test_cluster_routing_sends_each_text_to_its_nearest_prototype_with_weight_one():
    block = toy_block(router="cluster")
    with torch.no_grad():
        block.prototypes.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    x = torch.tensor([[3.0, 0.0, 2.0, 0.0], [1.0, 0.0, 2.0, 0.0], [1.0, 0.5, 0.0, 1.0]])
    cosines = F.cosine_similarity(x[:, None], block.prototypes[None], dim=-1)  # [3, 2]
    for model_mode in ("eval", "train"):
        getattr(block, model_mode)()
        out, routing = block(x, noise=torch.randn(3, 2))
        assert routing.selected_experts[:, 0].tolist() == cosines.argmax(dim=1).tolist() == [0, 1, 0]
        assert routing.routing_weights.sum(dim=1).tolist() == [1.0, 1.0, 1.0]
        torch.testing.assert_close(out, x + torch.stack([UNIT[0], UNIT[1], UNIT[0]]))


def test_cluster_routing_refuses_soft_modes_and_uninitialised_prototypes():
    block = toy_block(router="cluster")
    for mode in ("all", "topk:2", "random"):
        with pytest.raises(
            ValueError, match=re.escape(f"mode {mode!r} is not available with router 'cluster'")
        ):
            block(torch.randn(2, H), mode=mode)
    assert block.evaluation_modes(["top1", "all"]) == ("top1",)
    fresh = SBMoEBlock(H, BlockSettings(num_experts=2, router="cluster")).train()
    with pytest.raises(RuntimeError, match="cluster routing needs prototypes: call .*init_prototypes"):
        fresh(torch.randn(2, H))


def test_trained_prototypes_get_a_straight_through_gradient():
    block = toy_block(router="cluster", train_prototypes=True).train()
    assert isinstance(block.prototypes, torch.nn.Parameter)
    x = torch.tensor([[3.0, 1.0, 0.0, 0.0], [1.0, 2.0, 0.0, 1.0]])
    out, routing = block(x)
    assert routing.routing_weights.sum(dim=1).tolist() == [1.0, 1.0]  # exactly 1 forward
    out.sum().backward()
    assert block.prototypes.grad[0].abs().max() > 1e-3 and block.prototypes.grad[1].abs().max() > 1e-3


def blobs(sizes: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Points around the first len(sizes) axes of R^4, `sizes[i]` around axis i."""
    generator = torch.Generator().manual_seed(seed)
    parts = [torch.eye(H)[i] * 5 + 0.3 * torch.randn(n, H, generator=generator) for i, n in enumerate(sizes)]
    return torch.cat(parts)


def test_kmeans_is_seeded_and_finds_the_blobs():
    vectors = blobs((20, 20, 21))
    first, second = toy_block(3, router="cluster"), toy_block(3, router="cluster")
    init_prototypes(first, vectors, seed=0, balanced=False)
    init_prototypes(second, vectors, seed=0, balanced=False)
    assert torch.equal(first.prototypes, second.prototypes)
    selected = first(vectors)[1].selected_experts[:, 0]
    nearest = F.cosine_similarity(vectors[:, None], first.prototypes[None], dim=-1).argmax(dim=1)
    assert torch.equal(selected, nearest)
    assert [len(set(selected[a:b].tolist())) for a, b in ((0, 20), (20, 40), (40, 61))] == [1, 1, 1]
    assert len(set(selected.tolist())) == 3


def test_balanced_kmeans_gives_clusters_within_one_of_m_over_n():
    vectors = blobs((40, 15, 6))  # M = 61, N = 3: sizes 20 or 21
    block = toy_block(3, router="cluster")
    sizes = torch.bincount(init_prototypes(block, vectors, seed=3, balanced=True), minlength=3)
    assert sorted(sizes.tolist()) == [20, 20, 21]
    unbalanced = torch.bincount(init_prototypes(block, vectors, seed=3, balanced=False), minlength=3)
    assert sorted(unbalanced.tolist()) == [6, 15, 40]


def test_balanced_assignment_is_greedy_under_capacity():
    similarity = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.5], [0.95, 0.0]])
    # Best pairs first: row 4 and row 0 fill cluster 0's 2 places, row 1 takes its extra third place (5 =
    # 2 * 2 + 1); rows 2 and 3 go to cluster 1.
    assert balanced_assignment(similarity).tolist() == [0, 0, 1, 1, 0]


# ------------------------------------------------------------------------------------------ null expert


def test_text_below_the_null_threshold_comes_out_unchanged():
    block = toy_block(null_threshold=0.7, shared_expert=True)
    x = torch.tensor([[2.0, 1.0, 0.5, 0.0], [1.0, 1.0, 0.5, 0.0]])  # top p: sigmoid(1) = 0.73 | 0.5
    out, routing = block(x, mode="top1")
    assert torch.equal(out[1], x[1])  # passed through: no expert, no shared expert
    assert not torch.equal(out[0], x[0])
    assert routing.selected_experts[:, 0].tolist() == [0, 2]  # the null expert is reported as N
    assert routing.routing_weights[1].tolist() == [0.0, 0.0]
    assert block.num_choices == 3 and toy_block().num_choices == 2


def test_cluster_null_threshold_is_a_cosine():
    block = toy_block(router="cluster", null_threshold=0.9)  # prototypes: the first two axes
    x = torch.tensor([[1.0, 0.1, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # best cosines 0.995 and 0.707
    out, routing = block(x)
    assert routing.selected_experts[:, 0].tolist() == [0, 2] and torch.equal(out[1], x[1])


def test_null_quantile_threshold_is_set_by_kmeans_and_survives_save_and_load(tiny_encoder, tmp_path):
    model, tokenizer = build_model(tiny_encoder, num_experts=3, router="cluster", null_quantile=0.25)
    vectors = torch.randn(40, 32, generator=torch.Generator().manual_seed(0))
    init_prototypes(model.moe, vectors, seed=0, balanced=True)
    best = F.cosine_similarity(F.normalize(vectors)[:, None], model.moe.prototypes[None], dim=-1).max(dim=1)
    assert model.moe.null_cutoff.item() == pytest.approx(torch.quantile(best.values, 0.25).item(), abs=1e-6)
    save_model(model, tokenizer, tmp_path / "m")
    reloaded, _ = load_model(tmp_path / "m")
    assert torch.equal(reloaded.moe.null_cutoff, model.moe.null_cutoff)
    assert torch.equal(reloaded.moe.prototypes, model.moe.prototypes)
    before, experts = apply_head(model, Pooled(vectors.numpy()))
    after, experts_after = apply_head(reloaded, Pooled(vectors.numpy()))
    assert np.array_equal(before, after) and np.array_equal(experts, experts_after)
    assert (experts == 3).sum() == 10  # a quarter of the training vectors fall below their own quartile


def test_expert_counts_have_a_bin_for_the_null_expert():
    assert expert_counts(np.array([0, 2, 2, 1]), 2, null_expert=True) == [1, 1, 2]
    assert expert_shares(np.array([0, 2, 2, 1]), 2, null_expert=True) == [0.25, 0.25, 0.5]
    with pytest.raises(ValueError, match=re.escape("expert indices must lie in [0, 2)")):
        expert_counts(np.array([0, 2]), 2)


# ------------------------------------------------------------------------------------------ upcycling


def test_upcycled_experts_equal_the_source_expert_before_the_noise():
    source = SBMoEBlock(H, BlockSettings(num_experts=1))
    block = SBMoEBlock(H, BlockSettings(num_experts=3, shared_expert=True))
    gate = {k: v.clone() for k, v in block.gate.state_dict().items()}
    upcycle(block, source, torch.Generator().manual_seed(0), noise=0.0)
    for target in (*block.experts, block.shared_expert):
        for name, value in target.state_dict().items():
            assert torch.equal(value, source.experts[0].state_dict()[name]), name
    assert all(torch.equal(v, gate[k]) for k, v in block.gate.state_dict().items())  # router left fresh


def test_upcycling_noise_makes_experts_differ_but_stay_close():
    source = SBMoEBlock(H, BlockSettings(num_experts=1))
    block = SBMoEBlock(H, BlockSettings(num_experts=2))
    upcycle(block, source, torch.Generator().manual_seed(0), noise=0.01)
    reference = source.experts[0].state_dict()
    for name, value in reference.items():
        first, second = block.experts[0].state_dict()[name], block.experts[1].state_dict()[name]
        assert not torch.equal(first, value) and not torch.equal(first, second), name
        assert (first - value).abs().max() < 6 * 0.01 * value.std(), name


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (BlockSettings(num_experts=2), "upcycling needs a source block with 1 expert, got 2"),
        (BlockSettings(num_experts=1, expert_activation="gelu"), "expert_activation differs"),
        (BlockSettings(num_experts=1, expert_hidden_size=3), "expert shapes differ: down.weight"),
    ],
)
def test_upcycling_refuses_a_source_that_does_not_fit(source, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        upcycle(SBMoEBlock(H, BlockSettings()), SBMoEBlock(H, source), torch.Generator(), 0.01)


# ------------------------------------------------------------------------------------------ compatibility

NEW_KEYS = (
    "router", "routing_noise", "noise_anneal_fraction", "top1_weight", "shared_expert", "train_prototypes",
    "cluster_balanced", "null_threshold", "null_quantile", "upcycled_from",
)  # fmt: skip


@pytest.mark.parametrize("variant", ["faithful", "learned"])
def test_a_config_json_without_the_new_fields_loads_with_the_same_embeddings(tiny_encoder, tmp_path, variant):
    model, tokenizer = build_model(tiny_encoder, num_experts=3, variant=variant, seed=1)
    save_model(model, tokenizer, tmp_path / "m")
    config_file = tmp_path / "m" / "config.json"
    config = json.loads(config_file.read_text())
    assert set(NEW_KEYS) <= set(config)
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k not in NEW_KEYS}))
    reloaded, _ = load_model(tmp_path / "m")
    assert set(reloaded.moe.state_dict()) == set(model.moe.state_dict())
    assert {name.split(".")[0] for name in reloaded.moe.state_dict()} == {"experts", "gate", "noise"}
    pooled = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    texts = Pooled(pooled, keys=np.arange(20))
    for mode in ("top1", "topk:2", "all", "random"):
        assert np.array_equal(apply_head(model, texts, mode)[0], apply_head(reloaded, texts, mode)[0])
    noise = torch.randn(20, 3, generator=torch.Generator().manual_seed(1))
    trained = [m.train().head(torch.from_numpy(pooled), noise=noise).embeddings for m in (model, reloaded)]
    assert torch.equal(*trained)
    # ... and that is the paper's block (SBMOE.md), written out densely from the reloaded weights.
    x = torch.from_numpy(pooled)
    with torch.no_grad():
        torch.testing.assert_close(trained[1], paper_block(reloaded.moe, x, 1, noise))
        for mode, k in (("top1", 1), ("all", 3)):
            torch.testing.assert_close(
                torch.from_numpy(apply_head(reloaded, texts, mode)[0]), paper_block(reloaded.moe, x, k)
            )


def paper_block(
    block: SBMoEBlock, x: torch.Tensor, k: int, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """x + the paper's MoE branch with the kept softmax values of the top k (noisy when `noise` is given)."""
    z = block.gate(x)
    if noise is not None:
        z = z + noise * F.softplus(block.noise(x))
    p = z.softmax(dim=-1)
    top, index = p.topk(k, dim=-1)
    g = torch.zeros_like(p).scatter(-1, index, top)  # [B, N]
    outputs = torch.stack([expert(x) for expert in block.experts], dim=1)  # [B, N, H]
    if block.variant == "faithful":
        m = (g[..., None] * outputs).sum(dim=1)
        return x + m / m.norm(dim=-1, keepdim=True)
    return x + (g[..., None] * outputs / outputs.norm(dim=-1, keepdim=True)).sum(dim=1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"router": "topk"}, "router must be one of ['softmax', 'sigmoid', 'cluster']"),
        ({"routing_noise": "bogus"}, "routing_noise must be one of ['noisy', 'none', 'anneal']"),
        ({"top1_weight": "one"}, "top1_weight must be one of ['softmax', 'straight-through']"),
        ({"noise_anneal_fraction": 1.5}, "noise_anneal_fraction must be in [0, 1]"),
        ({"null_quantile": 1.0, "router": "cluster"}, "null_quantile must be in (0, 1)"),
        ({"router": "sigmoid", "variant": "faithful"}, "router 'sigmoid' with variant 'faithful'"),
        (
            {"top1_weight": "straight-through", "variant": "faithful"},
            "top1_weight 'straight-through' with variant",
        ),
        (
            {"router": "cluster", "train_prototypes": True, "variant": "faithful"},
            "train_prototypes with variant",
        ),
        ({"router": "cluster", "routing_noise": "anneal"}, "routing_noise 'anneal' with router 'cluster'"),
        (
            {"router": "cluster", "router_aux_loss_coef": 0.1},
            "router_aux_loss_coef > 0 with router 'cluster'",
        ),
        ({"router": "cluster", "default_mode": "all"}, "default_mode must be top1 with router 'cluster'"),
        ({"train_prototypes": True}, "train_prototypes with router 'softmax'"),
        ({"null_quantile": 0.1}, "null_quantile with router 'softmax'"),
        (
            {"router": "cluster", "null_quantile": 0.1, "null_threshold": 0.2},
            "null_threshold and null_quantile",
        ),
        ({"random_gate": True, "router": "sigmoid"}, "random_gate with router 'sigmoid'"),
        ({"random_gate": True, "null_threshold": 0.5}, "null_threshold / null_quantile with random_gate"),
    ],
)
def test_bad_settings_raise_naming_the_field(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        BlockSettings(**settings)


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_beir(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def adapter(tiny_encoder, synthetic, tmp_path_factory) -> Path:
    """A trained adapter (1 expert) on the tiny encoder."""
    folder = tmp_path_factory.mktemp("adapter") / "model"
    assert main(train_args(tiny_encoder, synthetic, folder, "--system", "adapter", "--freeze-encoder")) == 0
    return folder


def train_args(base, dataset, output, *extra) -> list[str]:
    return [
        "train", "--base", str(base), "--dataset", str(dataset), "--output-dir", str(output),
        "--batch-size", "4", "--epochs", "1", "--no-progress", "--selection", "last", *extra,
    ]  # fmt: skip


def test_upcycled_cluster_model_with_a_null_expert_trains_and_evaluates(
    tiny_encoder, synthetic, adapter, tmp_path
):
    run = tmp_path / "run"
    extra = [
        "--init-from",
        str(adapter),
        "--router",
        "cluster",
        "--null-quantile",
        "0.2",
        "--num-experts",
        "2",
    ]
    assert main(train_args(tiny_encoder, synthetic, run, "--freeze-encoder", *extra)) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["upcycled_from"], config["router"], config["null_quantile"]) == (
        str(adapter),
        "cluster",
        0.2,
    )
    model, _ = load_model(run)
    assert bool(model.moe.prototypes_initialized) and not torch.isnan(model.moe.null_cutoff)
    steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert all(len(r["expert_share"]) == 3 for r in steps if r["type"] == "step")  # 2 experts + the null one
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--model",
        str(run),
        "--dataset",
        str(synthetic),
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    counts = json.loads((out / "metrics.json").read_text())["expert_counts"]
    assert len(counts["documents"]) == 3 and sum(counts["documents"]) == 80
    assert main([*argv[:-2], str(tmp_path / "eval-all"), "--mode", "all", "--no-progress"]) == 2


def test_cluster_prototypes_from_the_encoded_corpus_when_the_encoder_trains(
    tiny_encoder, synthetic, tmp_path
):
    run = tmp_path / "run"
    assert main(train_args(tiny_encoder, synthetic, run, "--router", "cluster", "--num-experts", "2")) == 0
    model, _ = load_model(run)
    assert bool(model.moe.prototypes_initialized) and model.moe.prototypes.abs().sum() > 0


def test_gated_adapter_trains(tiny_encoder, synthetic, tmp_path):
    run = tmp_path / "run"
    assert (
        main(train_args(tiny_encoder, synthetic, run, "--system", "gated-adapter", "--freeze-encoder")) == 0
    )
    model, _ = load_model(run)
    assert (model.moe.num_experts, model.moe.router, model.moe.variant) == (1, "sigmoid", "learned")
    weights = model.moe(torch.randn(50, 32))[1].routing_weights
    assert bool((weights > 0).all()) and bool((weights < 1).all())


@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("others")
    narrow = make_tiny_encoder(root / "narrow-encoder", hidden_size=16)
    assert main(["init", "--base", str(narrow), "--num-experts", "1", "--output", str(root / "narrow")]) == 0
    return {"narrow": root / "narrow", "encoder": narrow}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("narrow", "hidden size 16 differs from the base encoder's 32"),
        ("no-block", "the model has no MoE block"),
        ("encoder", "not an SB-MoE model folder"),
        ("missing", "not an SB-MoE model folder"),
    ],
)
def test_init_from_a_model_that_cannot_be_upcycled_exits_2(
    tiny_encoder, synthetic, other_models, tmp_path, capsys, source, message
):
    if source == "no-block":
        folder = tmp_path / "plain"
        assert main(["init", "--base", str(tiny_encoder), "--no-moe", "--output", str(folder)]) == 0
    else:
        folder = other_models.get(source, tmp_path / "nowhere")
    output = tmp_path / "run"
    assert (
        main(train_args(tiny_encoder, synthetic, output, "--init-from", str(folder), "--freeze-encoder")) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: init_from ") and message in err, err
    assert not output.exists()


def test_unknown_routing_noise_on_the_command_line_exits_2_naming_the_choices(
    tiny_encoder, synthetic, tmp_path, capsys
):
    assert main(train_args(tiny_encoder, synthetic, tmp_path / "run", "--routing-noise", "bogus")) == 2
    assert "routing_noise must be one of ['noisy', 'none', 'anneal'], got 'bogus'" in capsys.readouterr().err


def test_a_batch_that_only_takes_the_null_expert_trains_on(synthetic, tmp_path):
    """Trained prototypes with a high null quantile: some batches send every text through the null expert,
    so no parameter enters the loss; the step must still run (zero gradients), not fail in backward."""
    from sbmoe.training.trainer import train

    encoder = make_tiny_encoder(tmp_path / "encoder")
    config = TrainingConfig(
        base=str(encoder), dataset=str(synthetic), output_dir=str(tmp_path / "run"), batch_size=4, epochs=2,
        num_experts=3, freeze_encoder=True, progress=False, router="cluster", train_prototypes=True,
        null_quantile=0.9,
    )  # fmt: skip
    summary = train(config)
    assert summary["epochs_run"] == 2
    shares = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    null_only = [r for r in shares if r["type"] == "step" and r["expert_share"][-1] == 1.0]
    assert null_only  # the case happened
