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

Options from the MoE literature, each a field of `BlockSettings` whose default is the block above
(sg = stop-gradient, S = a shared expert of the same shape, t = training step of T, tau = a threshold):

    router=sigmoid   g_i = sigmoid(z'_i), top-k by z', not normalised over the experts             [1]
                     N = 1 with learned: out = x + sigmoid(z) E(x) / ||E(x)||, the gated adapter
    router=cluster   c_i = cos(x, mu_i), k = argmax_i c_i, g_k = 1 (1 + c_k - sg(c_k) if mu trains)  [2]
                     mu: spherical k-means of training vectors, clusters balanced as BASE layers  [3]
    routing_noise    noisy: z' = z + eps s | none: z' = z | anneal: z' = z + w(t) eps s,
                     w(t) = max(0, 1 - t / ceil(f T)), f = noise_anneal_fraction (RANDOM-GATE: eps)
    top1_weight      softmax: g_k = p_k | straight-through: g_k = 1 + p_k - sg(p_k)               [4]
    shared_expert    learned: out += S(x) / ||S(x)|| | faithful: m = sum_i g_i E_i(x) + S(x)     [5]
    null expert      top score (p_k, sigmoid(z'_k) or c_k) < tau: out = x exactly, as expert N    [6]
    upcycling        E_i = E_adapter + noise * std(E_adapter) * eps, gate fresh                    [7]

[1] DeepSeek-V3 (arXiv 2412.19437). [2] RouterRetriever, Lee et al. (arXiv 2409.02685). [3] BASE layers,
Lewis et al. (arXiv 2103.16716). [4] the straight-through estimator, Bengio et al. (arXiv 1308.3432).
[5] DeepSeekMoE (arXiv 2401.06066), Qwen-MoE. [6] MoE++ zero-computation experts, Jin et al. (arXiv
2410.07348). [7] Sparse upcycling, Komatsuzaki et al. (arXiv 2212.05055).

Prototypes and upcycling are set up by `sbmoe.modeling.block_init`; the block only uses them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .settings import ACTIVATION_NAMES, ROUTERS, ROUTING_NOISE, TOP1_WEIGHTS, VARIANTS, parse_mode

if TYPE_CHECKING:
    from .settings import BlockSettings

__all__ = ["ROUTERS", "ROUTING_NOISE", "TOP1_WEIGHTS", "VARIANTS", "SBMoEBlock", "parse_mode", "routing_keys"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES  # the settings' names (settings.py has no torch)
_HASH_MODULUS = 2_147_483_647  # 2^31 - 1, prime
_HASH_BASE = 1_000_003


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


def noise_weight(settings: BlockSettings, step: int, total_steps: int) -> float:
    """The factor w of the routing noise eps * s at training step `step` (0-based) of `total_steps`.

    noisy: 1; none: 0; anneal: linear from 1 at step 0 to 0 at step ceil(noise_anneal_fraction * total),
    0 from there on.
    """
    if settings.routing_noise == "noisy":
        return 1.0
    zero_from = math.ceil(settings.noise_anneal_fraction * total_steps)
    if settings.routing_noise == "none" or zero_from <= 0:
        return 0.0
    return max(0.0, 1.0 - step / zero_from)


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

    router_logits [B, N] (the gate's z before noise; the cosines c for cluster routing), routing_weights
    [B, N] (g, zero off the selected experts and on null rows), selected_experts [B, K] (best first; N for
    a text the null expert passed through), balance_loss (scalar, unweighted Switch term).
    """

    router_logits: torch.Tensor
    routing_weights: torch.Tensor
    selected_experts: torch.Tensor
    balance_loss: torch.Tensor


class SBMoEBlock(nn.Module):
    """N experts and a router over the pooled embedding, with a skip connection. See the module docstring.

    hidden_size: H. settings: a `BlockSettings` (widths left as None are H/2).
    """

    def __init__(self, hidden_size: int, settings: BlockSettings):
        super().__init__()
        self.settings = settings
        self.num_experts = settings.num_experts
        self.variant = settings.variant
        self.router = settings.router
        self.random_gate = settings.random_gate
        self.random_gate_seed = settings.random_gate_seed
        expert_hidden_size = settings.expert_hidden_size or hidden_size // 2
        gate_hidden_size = settings.gate_hidden_size or hidden_size // 2
        self.experts = nn.ModuleList(
            Expert(hidden_size, expert_hidden_size, settings.expert_activation)
            for _ in range(settings.num_experts)
        )
        # Modules in this order, so that a block of the paper's settings draws the same initial weights.
        self.gate = self.noise = self.shared_expert = None
        if self.router != "cluster":
            self.gate = nn.Sequential(
                nn.Linear(hidden_size, gate_hidden_size),
                nn.ReLU(),
                nn.Linear(gate_hidden_size, self.num_experts),
            )
            if settings.routing_noise != "none":
                self.noise = nn.Linear(hidden_size, self.num_experts)
                if self.variant == "faithful":
                    self.noise.requires_grad_(False)  # the authors' optimiser never saw it
        if settings.shared_expert:
            self.shared_expert = Expert(hidden_size, expert_hidden_size, settings.expert_activation)
        if self.router == "cluster":
            prototypes = torch.zeros(self.num_experts, hidden_size)  # mu, set by init_prototypes
            if settings.train_prototypes:
                self.prototypes = nn.Parameter(prototypes)
            else:
                self.register_buffer("prototypes", prototypes)
            self.register_buffer("prototypes_initialized", torch.tensor(False))
        if settings.null_quantile is not None:  # tau, set by init_prototypes from the training vectors
            self.register_buffer("null_cutoff", torch.tensor(float("nan")))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw the initial weights as the constructor does (nn.Linear's defaults: kaiming-uniform weights,
        uniform biases), layer by layer in construction order (experts, gate, noise network, shared expert),
        from `generator` (default: the global one). A generator seeded with s gives exactly the weights the
        constructor draws after torch.manual_seed(s). Prototypes and the null cutoff are data-dependent:
        `sbmoe.modeling.block_init` sets them."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)

    @property
    def has_null_expert(self) -> bool:
        """Whether texts whose routing score is below a threshold pass through unchanged (as expert N)."""
        return self.settings.null_threshold is not None or self.settings.null_quantile is not None

    @property
    def num_choices(self) -> int:
        """Values `selected_experts` can take: the N experts, plus N for the null expert if there is one."""
        return self.num_experts + int(self.has_null_expert)

    @property
    def supported_modes(self) -> tuple[str, ...]:
        """The inference modes this block accepts (topk:K for 1 <= K <= N)."""
        return ("top1",) if self.router == "cluster" else ("top1", "topk:K", "all", "random")

    def check_mode(self, mode: str) -> tuple[str, int]:
        """`parse_mode` for this block: ValueError naming the mode and the router when it cannot route so."""
        parsed = parse_mode(mode, self.num_experts)
        if self.router == "cluster" and mode != "top1":
            raise ValueError(
                f"mode {mode!r} is not available with router 'cluster' (one nearest prototype per text); "
                f"supported: {list(self.supported_modes)}"
            )
        return parsed

    def evaluation_modes(self, requested: Sequence[str]) -> tuple[str, ...]:
        """The inference modes worth evaluating among `requested`: RANDOM-GATE routes at random, a single
        expert or cluster routing has one mode, any other block every requested mode."""
        if self.random_gate:
            return ("random",)
        if self.num_experts == 1 or self.router == "cluster":
            return ("top1",)
        return tuple(dict.fromkeys(requested))

    def forward(
        self,
        x: torch.Tensor,
        mode: str = "top1",
        keys: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        noise_weight: float = 1.0,
    ) -> tuple[torch.Tensor, RoutingOutput]:
        """x [B, H] -> (out [B, H], routing).

        In training mode routing is noisy top-1 (or RANDOM-GATE's random expert) whatever `mode` says,
        driven by `noise` [B, N] ~ N(0, 1) (drawn from the global generator when None) scaled by
        `noise_weight` (see `noise_weight()`). In eval mode `mode` chooses; "random" needs `keys` from
        `routing_keys`. Cluster routing is the same in both.
        """
        scores = self._router_scores(x.float())  # [B, N]; routing in float32
        if self.training:
            if noise is None:
                noise = torch.randn(scores.shape, device=scores.device)
            noise = noise.to(scores.device, torch.float32)
            weights, selected, top = self._route_training(x, scores, noise, noise_weight)
        else:
            weights, selected, top = self._route_inference(scores, mode, keys)
        null = self._null_rows(top)  # [B] bool, or None without a null expert
        if null is not None:
            weights = weights.masked_fill(null[:, None], 0.0)
            selected = selected.masked_fill(null[:, None], self.num_experts)
        out = x + self._combine(x, weights, selected).to(x.dtype)
        if null is not None:
            out = torch.where(null[:, None], x, out)  # the null expert: the text passes through unchanged
        routing = RoutingOutput(
            router_logits=scores,
            routing_weights=weights,
            selected_experts=selected,
            balance_loss=self._balance_loss(self.probabilities(scores), selected[:, 0]),
        )
        return out, routing

    def _router_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Gate logits z [B, N], or for cluster routing the cosines c_i = cos(x, mu_i)."""
        if self.router != "cluster":
            return self.gate(x)
        if not bool(self.prototypes_initialized):
            raise RuntimeError(
                "cluster routing needs prototypes: call sbmoe.modeling.block_init.init_prototypes(block, "
                "vectors, seed, balanced) first (sbmoe train does it from the training documents)"
            )
        return F.normalize(x, dim=-1) @ F.normalize(self.prototypes.float(), dim=-1).T

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Routing distribution [B, N] (rows sum to 1) of router scores: softmax(z); sigmoid(z) normalised
        over the experts; one-hot of the nearest prototype for cluster routing."""
        if self.router == "softmax":
            return scores.softmax(dim=-1)
        if self.router == "sigmoid":
            gates = scores.sigmoid()
            return gates / gates.sum(dim=-1, keepdim=True)
        return F.one_hot(scores.argmax(dim=-1), self.num_experts).to(scores.dtype)

    def routing_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """`probabilities` of pooled vectors x [B, H], without noise: [B, N]."""
        return self.probabilities(self._router_scores(x.float()))

    def _gate_values(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.softmax(dim=-1) if self.router == "softmax" else scores.sigmoid()

    def _route_training(
        self, x: torch.Tensor, scores: torch.Tensor, noise: torch.Tensor, noise_weight: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.random_gate:
            selected = noise.argmax(dim=-1, keepdim=True)  # uniform over the N experts
            return _one_hot_weights(selected, self.num_experts, x.dtype), selected, None
        if self.router == "cluster":
            return self._route_cluster(scores)
        if self.noise is not None and noise_weight != 0:
            noise_scale = F.softplus(self.noise(x.float()))  # s, [B, N]
            scores = scores + noise_weight * noise * noise_scale  # z' = z + w * eps * s
        weights, selected = _keep_top(self._gate_values(scores), 1)  # p = softmax(z') or sigmoid(z')
        top = weights.gather(1, selected)  # [B, 1]
        if self.settings.top1_weight == "straight-through":
            weights = weights.scatter(1, selected, _straight_through(top))
        return weights, selected, top[:, 0].detach()

    def _route_inference(
        self, scores: torch.Tensor, mode: str, keys: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        kind, k = self.check_mode(mode)
        if kind == "random":
            if keys is None:
                raise ValueError("mode 'random' needs routing keys (see routing_keys)")
            selected = random_experts(keys, self.num_experts, self.random_gate_seed).unsqueeze(1)
            return _one_hot_weights(selected, self.num_experts, scores.dtype), selected, None
        if self.router == "cluster":
            return self._route_cluster(scores)
        values = self._gate_values(scores)
        weights, selected = _keep_top(values, k)
        top = values.gather(1, selected[:, :1])  # [B, 1], the best gate value
        if k == 1 and self.settings.top1_weight == "straight-through":
            weights = weights.scatter(1, selected, _straight_through(top))
        return weights, selected, top[:, 0]

    def _route_cluster(self, cosines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hard top-1 to the nearest prototype, weight exactly 1 (a straight-through gradient to the
        cosine when the prototypes train, so they move)."""
        best, selected = cosines.max(dim=-1, keepdim=True)  # [B, 1]
        weight = _straight_through(best) if self.settings.train_prototypes else torch.ones_like(best)
        return torch.zeros_like(cosines).scatter(1, selected, weight), selected, best[:, 0].detach()

    def _null_rows(self, top: torch.Tensor | None) -> torch.Tensor | None:
        """Rows whose routing score is below the null expert's threshold tau: [B] bool (None: no null)."""
        threshold = self.settings.null_threshold
        if threshold is None and self.settings.null_quantile is not None:
            if torch.isnan(self.null_cutoff):
                raise RuntimeError("null_quantile: the threshold is set by init_prototypes, not called yet")
            threshold = self.null_cutoff
        if threshold is None or top is None:
            return None
        return top < threshold

    def _combine(self, x: torch.Tensor, weights: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """The MoE branch [B, H]: only the experts some row selected are computed, on those rows."""
        combined = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        # Under faithful top-1 the normalisation cancels g_k (unless a shared expert is added to m).
        cancelled = self.variant == "faithful" and selected.shape[1] == 1 and self.shared_expert is None
        for expert_index in selected.unique().tolist():
            if expert_index == self.num_experts:  # the null expert computes nothing
                continue
            rows = (selected == expert_index).any(dim=1).nonzero(as_tuple=True)[0]
            expert_out = self.experts[expert_index](x[rows]).float()  # [b, H]
            if self.variant == "learned":
                expert_out = expert_out / expert_out.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            gate_values = weights[rows, expert_index, None]  # [b, 1]
            if cancelled:
                gate_values = gate_values.detach()  # cancelled by the normalisation: exact zero gradient
            combined = combined.index_add(0, rows, gate_values * expert_out)
        if self.shared_expert is not None:  # every routed text, with weight 1
            rows = (selected[:, 0] < self.num_experts).nonzero(as_tuple=True)[0]
            shared_out = self.shared_expert(x[rows]).float()  # [b, H]
            if self.variant == "learned":
                shared_out = shared_out / shared_out.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            combined = combined.index_add(0, rows, shared_out)
        if self.variant == "faithful":
            combined = combined / combined.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return combined

    def _balance_loss(self, probs: torch.Tensor, top_choice: torch.Tensor) -> torch.Tensor:
        """Switch Transformer load balancing: N * sum_i f_i * P_i (1 when perfectly balanced). Texts the
        null expert passed through count in no f_i."""
        share = F.one_hot(top_choice, self.num_experts + 1)[:, : self.num_experts].float().mean(dim=0)  # f_i
        return self.num_experts * (share * probs.mean(dim=0)).sum()


def _straight_through(value: torch.Tensor) -> torch.Tensor:
    """Exactly 1 in the forward pass, d/d value = 1 in the backward pass ((v - v) is exactly 0)."""
    return (value - value.detach()) + 1.0


def _keep_top(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero all but the k largest probabilities of each row (kept values are not renormalised)."""
    top_values, selected = probs.topk(k, dim=-1)  # [B, k]
    weights = torch.zeros_like(probs).scatter(-1, selected, top_values)
    return weights, selected


def _one_hot_weights(selected: torch.Tensor, num_experts: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(selected[:, 0], num_experts).to(torch.float32 if dtype != torch.float64 else dtype)
