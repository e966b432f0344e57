"""The single mixture-of-experts block of SB-MoE, applied to the pooled embedding.

Paper: "Mixture of Experts Approaches in Dense Retrieval Tasks" (Sokli et al., arXiv 2510.15683).
H = hidden size, N = number of experts, x = pooled embedding [B, H] (not normalised).

    expert i     E_i(x) = W_up,i · act(W_down,i · x + b_down,i) + b_up,i        H -> H/2 -> H
    gate         z = W_2 · ReLU(W_1 · x + b_1) + b_2                           H -> H/2 -> N  (router logits)
    noise        s = softplus(W_n · x + b_n),  z' = z + eps * s,  eps ~ N(0, I)   (training only)
    routing      training:  p = softmax(z'),  g = p * onehot(argmax p)           (noisy top-1, keeps p_k)
                 inference: top1  g = softmax(z) * onehot(argmax z)
                            topk:K  softmax(z) kept on the K largest (not renormalised, so topk:N == all)
                            all   g = softmax(z)
                            random  one expert per text, weight 1, from a hash of its tokens and a seed

Two ways to combine the experts (`variant`):

    faithful  out = x + m / max(||m||, 1e-6),  m = sum_i g_i E_i(x)      (the authors' code)
    learned   out = x + sum_i g_i E_i(x) / max(||E_i(x)||, 1e-6)

Under top-1 routing the faithful output does not depend on g_k: normalising m = g_k E_k(x) cancels it,
so the gate's exact gradient is zero and it never learns. Autograd would leave a float32 rounding residue
(~1e-8) that Adam's per-parameter normalisation turns into a random walk of ~0.1 lr per step, noise
rather than learning; the faithful variant therefore detaches g_k when one expert is selected, making the
zero exact without changing any output. The learned variant scales each normalised expert output by its
gate value, so the gate is trained by the retrieval loss. The faithful noise network is frozen (the
authors left it out of the optimiser); the learned one is trained.

Training-time randomness comes in as `noise` [B, N] ~ N(0, 1), one row per text: the eps of noisy
gating, and for RANDOM-GATE the expert argmax(noise) (uniform over N). Drawing it per text, outside the
block, makes a run independent of how a batch is split across processes.

A Switch-style load-balancing term, N * sum_i f_i P_i (f_i: share of inputs whose top choice is i,
P_i: mean routing probability of i), is returned for every forward; the model weights it by
`router_aux_loss_coef`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from sbmoe.modeling.settings import BlockSettings

VARIANTS = ("faithful", "learned")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
_HASH_MODULUS = 2_147_483_647  # 2^31 - 1, prime
_HASH_BASE = 1_000_003


def parse_mode(mode: str, num_experts: int) -> tuple[str, int]:
    """ "top1" | "topk:K" | "all" | "random" -> (kind, number of experts used per text).

    Raises ValueError naming the allowed values.
    """
    if mode == "top1":
        return "topk", 1
    if mode == "all":
        return "all", num_experts
    if mode == "random":
        return "random", 1
    if mode.startswith("topk:"):
        try:
            k = int(mode.split(":", 1)[1])
        except ValueError:
            k = 0
        if not 1 <= k <= num_experts:
            raise ValueError(f"mode {mode!r}: K must be an integer from 1 to num_experts={num_experts}")
        return "topk", k
    raise ValueError(f"mode must be one of top1, topk:K (1 <= K <= {num_experts}), all, random; got {mode!r}")


def routing_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A deterministic integer per text from its unpadded token ids: [B, T] -> [B] int64.

    A polynomial hash modulo a prime: sum_t (id_t + 1) * BASE^t mod P, padding excluded.
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    powers = torch.tensor(
        [pow(_HASH_BASE, int(t), _HASH_MODULUS) for t in positions],
        dtype=torch.int64,
        device=input_ids.device,
    )
    terms = (input_ids.long() + 1) * powers * attention_mask.long()  # each < 2^20 * 2^31
    return terms.sum(dim=1) % _HASH_MODULUS  # the sum over <= 2^12 tokens stays below 2^63


def random_experts(keys: torch.Tensor, num_experts: int, seed: int) -> torch.Tensor:
    """The RANDOM-GATE expert of each text: a fixed function of its routing key and the seed. [B] -> [B]."""
    mixed = (keys * 48_271 + seed * 69_621 + 12_345) % _HASH_MODULUS  # a Lehmer step decorrelates nearby keys
    return mixed % num_experts


class Expert(nn.Module):
    """H -> bottleneck -> H: W_up · act(W_down · x + b_down) + b_up. No activation after the up-projection."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


@dataclass
class RoutingOutput:
    """What the block did, for losses and statistics. All tensors have batch size B.

    router_logits [B, N] (before noise), routing_weights [B, N] (g, zero off the selected experts),
    selected_experts [B, K] (best first), balance_loss (scalar, unweighted Switch term).
    """

    router_logits: torch.Tensor
    routing_weights: torch.Tensor
    selected_experts: torch.Tensor
    balance_loss: torch.Tensor


class SBMoEBlock(nn.Module):
    """N experts and a gate over the pooled embedding, with a skip connection. See the module docstring.

    hidden_size: H. settings: a `BlockSettings` (widths left as None are H/2).
    """

    def __init__(self, hidden_size: int, settings: BlockSettings):
        super().__init__()
        self.settings = settings
        self.num_experts = settings.num_experts
        self.variant = settings.variant
        self.random_gate = settings.random_gate
        self.random_gate_seed = settings.random_gate_seed
        expert_hidden_size = settings.expert_hidden_size or hidden_size // 2
        gate_hidden_size = settings.gate_hidden_size or hidden_size // 2
        self.experts = nn.ModuleList(
            Expert(hidden_size, expert_hidden_size, settings.expert_activation)
            for _ in range(settings.num_experts)
        )
        self.gate = nn.Sequential(
            nn.Linear(hidden_size, gate_hidden_size), nn.ReLU(), nn.Linear(gate_hidden_size, self.num_experts)
        )
        self.noise = nn.Linear(hidden_size, self.num_experts)
        if self.variant == "faithful":
            self.noise.requires_grad_(False)  # the authors' optimiser never saw it

    def evaluation_modes(self, requested: Sequence[str]) -> tuple[str, ...]:
        """The inference modes worth evaluating among `requested`: RANDOM-GATE routes at random, a single
        expert has one mode, any other block every requested mode."""
        if self.random_gate:
            return ("random",)
        if self.num_experts == 1:
            return ("top1",)
        return tuple(dict.fromkeys(requested))

    def forward(
        self,
        x: torch.Tensor,
        mode: str = "top1",
        keys: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RoutingOutput]:
        """x [B, H] -> (out [B, H], routing).

        In training mode routing is noisy top-1 (or RANDOM-GATE's random expert) whatever `mode` says,
        driven by `noise` [B, N] ~ N(0, 1) (drawn from the global generator when None). In eval mode
        `mode` chooses; "random" needs `keys` from `routing_keys`.
        """
        logits = self.gate(x.float())  # [B, N]; routing in float32
        if self.training:
            if noise is None:
                noise = torch.randn(logits.shape, device=logits.device)
            weights, selected = self._route_training(x, logits, noise.to(logits.device, torch.float32))
        else:
            weights, selected = self._route_inference(logits, mode, keys)
        out = x + self._combine(x, weights, selected).to(x.dtype)
        probs = logits.softmax(dim=-1)
        routing = RoutingOutput(
            router_logits=logits,
            routing_weights=weights,
            selected_experts=selected,
            balance_loss=self._balance_loss(probs, selected[:, 0]),
        )
        return out, routing

    def _route_training(
        self, x: torch.Tensor, logits: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.random_gate:
            selected = noise.argmax(dim=-1, keepdim=True)  # uniform over the N experts
            return _one_hot_weights(selected, self.num_experts, x.dtype), selected
        noise_scale = F.softplus(self.noise(x.float()))  # s, [B, N]
        probs = (logits + noise * noise_scale).softmax(dim=-1)  # p = softmax(z + eps * s)
        return _keep_top(probs, 1)

    def _route_inference(
        self, logits: torch.Tensor, mode: str, keys: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kind, k = parse_mode(mode, self.num_experts)
        if kind == "random":
            if keys is None:
                raise ValueError("mode 'random' needs routing keys (see routing_keys)")
            selected = random_experts(keys, self.num_experts, self.random_gate_seed).unsqueeze(1)
            return _one_hot_weights(selected, self.num_experts, logits.dtype), selected
        return _keep_top(logits.softmax(dim=-1), k)

    def _combine(self, x: torch.Tensor, weights: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """The MoE branch [B, H]: only the experts some row selected are computed, on those rows."""
        combined = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for expert_index in selected.unique().tolist():
            rows = (selected == expert_index).any(dim=1).nonzero(as_tuple=True)[0]
            expert_out = self.experts[expert_index](x[rows]).float()  # [b, H]
            if self.variant == "learned":
                expert_out = expert_out / expert_out.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            gate_values = weights[rows, expert_index, None]  # [b, 1]
            if self.variant == "faithful" and selected.shape[1] == 1:
                gate_values = gate_values.detach()  # cancelled by the normalisation: exact zero gradient
            combined = combined.index_add(0, rows, gate_values * expert_out)
        if self.variant == "faithful":
            combined = combined / combined.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return combined

    def _balance_loss(self, probs: torch.Tensor, top_choice: torch.Tensor) -> torch.Tensor:
        """Switch Transformer load balancing: N * sum_i f_i * P_i (1 when perfectly balanced)."""
        share = F.one_hot(top_choice, self.num_experts).float().mean(dim=0)  # f_i, no gradient
        return self.num_experts * (share * probs.mean(dim=0)).sum()


def _keep_top(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero all but the k largest probabilities of each row (kept values are not renormalised)."""
    top_values, selected = probs.topk(k, dim=-1)  # [B, k]
    weights = torch.zeros_like(probs).scatter(-1, selected, top_values)
    return weights, selected


def _one_hot_weights(selected: torch.Tensor, num_experts: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(selected[:, 0], num_experts).to(torch.float32 if dtype != torch.float64 else dtype)
