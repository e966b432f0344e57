"""The SB-MoE block: the paper's equations, both variants, every routing mode."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from sbmoe.modeling.config import SBMoEConfig
from sbmoe.modeling.moe import SBMoEBlock, parse_mode, random_experts, routing_keys
from sbmoe.modeling.settings import BlockSettings

H, N = 16, 4


def make_block(variant: str = "faithful", num_experts: int = N, seed: int = 0, **kwargs) -> SBMoEBlock:
    torch.manual_seed(seed)
    return SBMoEBlock(H, BlockSettings(num_experts=num_experts, variant=variant, **kwargs)).eval()


def dense_reference(block: SBMoEBlock, x: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's equations written out densely: every expert on every row, then mask and combine."""
    probs = block.gate(x).softmax(dim=-1)  # [B, N]
    top_values, top_index = probs.topk(k, dim=-1)
    g = torch.zeros_like(probs).scatter(-1, top_index, top_values)  # kept values not renormalised
    outputs = torch.stack([expert(x) for expert in block.experts], dim=1)  # [B, N, H]
    if block.variant == "faithful":
        m = (g.unsqueeze(-1) * outputs).sum(dim=1)
        return x + m / m.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    unit = outputs / outputs.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return x + (g.unsqueeze(-1) * unit).sum(dim=1)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"variant": "learned", "shared_expert": True},
        {"variant": "learned", "router": "sigmoid", "routing_noise": "none"},
    ],
)
def test_initial_weights_from_a_generator_are_those_of_the_seeded_constructor(settings):
    constructed = make_block(seed=3, **settings).state_dict()
    block = SBMoEBlock(H, BlockSettings(num_experts=N, **{"variant": "faithful", **settings}))
    state = torch.get_rng_state()
    block.reset_parameters(torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state())  # the global generator is not used
    for name, value in block.state_dict().items():
        assert torch.equal(value, constructed[name]), name


@pytest.mark.parametrize(
    ("hidden", "experts", "expected"),
    [(312, 6, 638_520), (512, 6, 1_713_420), (768, 12, 7_400_856)],  # TinyBERT, BERT-Small, BERT-Base
)
def test_parameter_counts_match_the_paper_shapes(hidden, experts, expected):
    block = SBMoEBlock(hidden, BlockSettings(num_experts=experts))
    assert sum(p.numel() for p in block.parameters()) == expected


def test_faithful_top1_is_x_plus_the_normalised_argmax_expert():
    block = make_block("faithful")
    x = torch.randn(8, H)
    out, routing = block(x, mode="top1")
    k = block.gate(x).argmax(dim=-1)
    expected = torch.stack([x[i] + (e := block.experts[int(k[i])](x[i])) / e.norm() for i in range(len(x))])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert routing.selected_experts[:, 0].tolist() == k.tolist()


@pytest.mark.parametrize("variant", ["faithful", "learned"])
@pytest.mark.parametrize("mode", ["top1", "topk:2", "topk:3", "all"])
def test_sparse_routing_equals_the_dense_equations(variant, mode):
    block = make_block(variant)
    x = torch.randn(32, H)
    out, routing = block(x, mode=mode)
    k = parse_mode(mode, N)[1]
    torch.testing.assert_close(out, dense_reference(block, x, k), atol=1e-5, rtol=1e-5)
    assert routing.selected_experts.shape == (32, k)
    assert (routing.routing_weights > 0).sum(dim=-1).tolist() == [k] * 32


@pytest.mark.parametrize("variant", ["faithful", "learned"])
def test_topk_n_equals_all_and_topk_1_equals_top1(variant):
    block = make_block(variant)
    x = torch.randn(16, H)
    torch.testing.assert_close(block(x, mode=f"topk:{N}")[0], block(x, mode="all")[0])
    torch.testing.assert_close(block(x, mode="topk:1")[0], block(x, mode="top1")[0])


def contrastive_gradients(variant: str) -> tuple[float, float]:
    """Largest |gradient| reaching the gate and the experts from an in-batch InfoNCE loss in training mode."""
    block = make_block(variant).train()
    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(16, H), torch.randn(16, H)
    q, _ = block(queries, noise=torch.randn(16, N, generator=generator))
    d, _ = block(documents, noise=torch.randn(16, N, generator=generator))
    F.cross_entropy(q @ d.T, torch.arange(16)).backward()
    gate = max(0.0 if p.grad is None else p.grad.abs().max().item() for p in block.gate.parameters())
    experts = max(p.grad.abs().max().item() for p in block.experts.parameters() if p.grad is not None)
    return gate, experts


def test_faithful_gate_gets_no_gradient():
    gate, experts = contrastive_gradients("faithful")
    assert experts > 1e-3
    assert gate / experts < 1e-6


def test_faithful_detach_changes_no_output():
    """The exact-zero gradient must not alter the forward pass: compare with g_k kept in the graph."""
    block = make_block("faithful").train()
    x, noise = torch.randn(8, H), torch.randn(8, N)
    out, routing = block(x, noise=noise)
    k = routing.selected_experts[:, 0]
    g = routing.routing_weights.gather(1, k[:, None])  # p_k, not detached
    m = g * torch.stack([block.experts[int(k[i])](x[i]) for i in range(8)])
    torch.testing.assert_close(out, x + m / m.norm(dim=-1, keepdim=True), atol=1e-6, rtol=1e-5)


def test_learned_gate_gets_gradient():
    gate, experts = contrastive_gradients("learned")
    assert gate / experts > 1e-2


def test_noise_network_frozen_in_faithful_trained_in_learned():
    assert not any(p.requires_grad for p in make_block("faithful").noise.parameters())
    assert all(p.requires_grad for p in make_block("learned").noise.parameters())


def test_eval_mode_is_deterministic_and_draws_no_randomness():
    block = make_block("learned")
    x = torch.randn(8, H)
    torch.manual_seed(1)
    first = block(x, mode="top1")[0]
    torch.manual_seed(2)
    second = block(x, mode="top1")[0]
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_training_routing_follows_the_noise():
    block = make_block("learned").train()
    x = torch.randn(64, H)

    def route(seed: int) -> torch.Tensor:
        noise = torch.randn(64, N, generator=torch.Generator().manual_seed(seed))
        return block(x, noise=noise)[1].selected_experts

    assert torch.equal(route(3), route(3))
    assert not torch.equal(route(3), route(4))  # the noise changes some choices


def test_random_gate_in_training_takes_argmax_noise_with_weight_one():
    block = make_block("faithful", random_gate=True).train()
    x = torch.randn(200, H)
    noise = torch.randn(200, N, generator=torch.Generator().manual_seed(0))
    _, first = block(x, noise=noise)
    assert first.selected_experts[:, 0].tolist() == noise.argmax(dim=-1).tolist()
    assert set(first.selected_experts[:, 0].tolist()) == set(range(N))
    assert first.routing_weights.sum(dim=-1).tolist() == [1.0] * 200


def test_random_mode_gives_the_same_expert_to_the_same_text_in_any_batch():
    block = make_block()
    ids = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 5, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    padded_more = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    keys = routing_keys(ids, mask)
    assert torch.equal(keys, routing_keys(padded_more, (padded_more != 0).long()))  # padding is ignored
    assert torch.equal(routing_keys(ids[1:], mask[1:]), keys[1:])  # batch composition is ignored
    x = torch.randn(2, H)
    first = block(x, mode="random", keys=keys)[1].selected_experts
    second = block(x.flip(0), mode="random", keys=keys.flip(0))[1].selected_experts.flip(0)
    assert torch.equal(first, second)


def test_random_experts_spread_evenly_and_depend_on_the_seed():
    tokens = torch.randint(5, 30000, (6000, 12), generator=torch.Generator().manual_seed(0))
    keys = routing_keys(tokens, torch.ones(6000, 12, dtype=torch.long))
    counts = torch.bincount(random_experts(keys, 6, seed=0), minlength=6)
    assert counts.min() > 0.9 * 1000 and counts.max() < 1.1 * 1000
    assert not torch.equal(random_experts(keys, 6, seed=0), random_experts(keys, 6, seed=1))


def test_balance_loss_matches_the_switch_formula():
    block = make_block(num_experts=2)
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    # Both rows pick expert 0: f = [1, 0]; P = [0.85, 0.15]; N * sum f_i P_i = 2 * 0.85 = 1.7
    assert block._balance_loss(probs, torch.tensor([0, 0])).item() == pytest.approx(1.7)
    # Uniform probabilities give 1 whatever the choices: 2 * (0.5 * 0.5 + 0.5 * 0.5) = 1
    assert block._balance_loss(torch.full((2, 2), 0.5), torch.tensor([0, 1])).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_experts", 0, "num_experts must be an integer >= 1"),
        ("variant", "soft", "variant must be one of ['faithful', 'learned']"),
        ("default_mode", "topk:7", "K must be an integer from 1 to num_experts=6"),
        ("default_mode", "best", "mode must be one of top1, topk:K"),
        ("expert_activation", "swish", "expert_activation must be one of"),
        ("router_aux_loss_coef", -1.0, "router_aux_loss_coef must be >= 0"),
    ],
)
def test_bad_config_names_the_field_and_allowed_values(field, value, message):
    settings = {"use_moe": True, "num_experts": 6, field: value}
    with pytest.raises(ValueError, match=re.escape(message)):
        SBMoEConfig(**settings)


def test_unknown_inference_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        make_block()(torch.randn(2, H), mode="top2")
