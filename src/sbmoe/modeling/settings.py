"""`BlockSettings`: the one declaration of the SB-MoE block's settings.

Every place that names a block setting reads it from here: `SBMoEConfig` (saved flat in config.json),
`SBMoEBlock` (built from it), `build_model`, `TrainingConfig` (which inherits these fields), the `init` and
`train` flags (generated from the fields and their help) and the experiment grid (any field per system).
Adding a setting is adding a field here, with a default that reproduces the behaviour before it existed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from .fields import check_choices, setting
from .pooling import POOLING_METHODS

# Allowed values, here and not in moe.py so that the settings (and the command line) need no torch.
VARIANTS = ("faithful", "learned")
ROUTERS = ("softmax", "sigmoid", "cluster")
ROUTING_NOISE = ("noisy", "none", "anneal")
TOP1_WEIGHTS = ("softmax", "straight-through")
ACTIVATION_NAMES = ("relu", "gelu", "silu", "tanh")
APPLY_TO = ("both", "queries")
KINDS = ("query", "document")  # what a text is; `SBMoEModel.uses_block` says which kinds the block takes


ENCODER_FIELDS = ("pooling", "normalize", "query_max_length", "document_max_length")


@dataclass(kw_only=True)
class EncoderOverrides:
    """Encoder settings a command may set on the model it loads or builds; None keeps the model's own.

    Declared once here: `EvaluateSettings` and `TrainingConfig` inherit these fields (and so their flags);
    `load_model` and `build_model` take them as keywords (`encoder_settings()`).
    """

    pooling: str | None = setting(None, "override the model's pooling", POOLING_METHODS, null="the model's")
    normalize: bool | None = setting(None, "override L2 normalisation", null="the model's")
    query_max_length: int | None = setting(None, "override the queries' max tokens", null="the model's")
    document_max_length: int | None = setting(None, "override the documents' max tokens", null="the model's")

    def encoder_settings(self) -> dict[str, Any]:
        """{field: value} of the four overrides (None: keep the model's)."""
        return {name: getattr(self, name) for name in ENCODER_FIELDS}


@lru_cache(maxsize=64)  # the block checks its mode on every forward: each (mode, N) is parsed once
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


@dataclass
class BlockSettings:
    """The MoE block's settings; the defaults are the block as the paper describes it, with a learned gate.

    Validation (`validate`, run on construction) raises ValueError naming the field and its allowed values.
    """

    num_experts: int = setting(6, "N, the number of experts (1 = a single adapter)")
    expert_hidden_size: int | None = setting(None, "experts' bottleneck width", null="hidden size / 2")
    gate_hidden_size: int | None = setting(None, "the gate's hidden width", null="hidden size / 2")
    expert_activation: str = setting("relu", "the experts' activation (relu: the paper)", ACTIVATION_NAMES)
    variant: str = setting(
        "learned",
        "how expert outputs combine: faithful (the authors' code: the gate gets no gradient) or learned "
        "(each normalised expert output scaled by its gate value)",
        VARIANTS,
    )
    router: str = setting(
        "softmax",
        "how texts choose experts: softmax (the paper's gate), sigmoid (each gate value in (0, 1); with one "
        "expert the gated adapter) or cluster (nearest of N prototypes from k-means, weight 1)",
        ROUTERS,
    )
    routing_noise: str = setting(
        "noisy",
        "training noise of the softmax and sigmoid routers: noisy (the paper: z + eps * softplus(W_n x)), "
        "none, or anneal (its weight falls linearly from 1 to 0 at noise_anneal_fraction of training)",
        ROUTING_NOISE,
    )
    noise_anneal_fraction: float = setting(
        0.5, "anneal: share of the training steps after which the noise is 0"
    )
    top1_weight: str = setting(
        "softmax",
        "weight of the chosen expert under top-1: softmax (the paper: its probability) or straight-through "
        "(exactly 1 forward, the probability's gradient backward); learned variant only",
        TOP1_WEIGHTS,
    )
    shared_expert: bool = setting(False, "one more expert applied to every text besides the routed ones")
    train_prototypes: bool = setting(False, "cluster: train the prototypes (straight-through gradient)")
    cluster_balanced: bool = setting(
        True, "cluster: k-means with balanced clusters (~M/N texts each, as BASE layers)"
    )
    null_threshold: float | None = setting(
        None, "null expert: a text whose routing score (top gate value, or best cosine) is below this passes "
        "through unchanged", null="no null expert",
    )  # fmt: skip
    null_quantile: float | None = setting(
        None, "cluster: set the null expert's threshold to this quantile of the training vectors' best "
        "cosine", null="no null expert",
    )  # fmt: skip
    random_gate: bool = setting(False, "the RANDOM-GATE ablation: a random expert per text")
    random_gate_seed: int = setting(0, "seed of the per-text expert choice of the random mode")
    router_aux_loss_coef: float = setting(
        0.0, "weight of the Switch load-balancing loss (0 = off, the paper)"
    )
    default_mode: str | None = setting(
        None, "inference routing when none is asked for: top1, topk:K, all or random",
        null="top1, or random with random_gate",
    )  # fmt: skip
    apply_to: str = setting(
        "both",
        "which texts pass through the block: both (queries and documents, the paper) or queries (documents "
        "keep the encoder's pooled vectors, normalised if the model normalises, as RouterRetriever)",
        APPLY_TO,
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending field and what it accepts."""
        check_choices(self, BlockSettings)
        if not _is_int(self.num_experts) or self.num_experts < 1:
            raise ValueError(f"num_experts must be an integer >= 1, got {self.num_experts!r}")
        for name in ("expert_hidden_size", "gate_hidden_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(
                    f"{name} must be a positive integer or null (= hidden size / 2), got {value!r}"
                )
        if not isinstance(self.random_gate, bool):
            raise ValueError(f"random_gate must be true or false, got {self.random_gate!r}")
        if not _is_int(self.random_gate_seed):
            raise ValueError(f"random_gate_seed must be an integer, got {self.random_gate_seed!r}")
        if not isinstance(self.router_aux_loss_coef, int | float) or not self.router_aux_loss_coef >= 0:
            raise ValueError(f"router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef!r}")
        if (
            not isinstance(self.noise_anneal_fraction, int | float)
            or not 0 <= self.noise_anneal_fraction <= 1
        ):
            raise ValueError(f"noise_anneal_fraction must be in [0, 1], got {self.noise_anneal_fraction!r}")
        for name in ("shared_expert", "train_prototypes", "cluster_balanced"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.null_threshold is not None and not isinstance(self.null_threshold, int | float):
            raise ValueError(f"null_threshold must be a number or null, got {self.null_threshold!r}")
        if self.null_quantile is not None and (
            not isinstance(self.null_quantile, int | float) or not 0 < self.null_quantile < 1
        ):
            raise ValueError(f"null_quantile must be in (0, 1) or null, got {self.null_quantile!r}")
        self._check_combinations()
        mode = self.resolved_default_mode()
        parse_mode(mode, self.num_experts)
        if self.router == "cluster" and mode != "top1":
            raise ValueError(f"default_mode must be top1 with router 'cluster', got {mode!r}")

    def _check_combinations(self) -> None:
        """Settings that cannot work together, or a non-default setting that would have no effect."""
        faithful = self.variant == "faithful"
        problems = [
            (faithful and self.router == "sigmoid",
             "router 'sigmoid' with variant 'faithful': the normalisation of m cancels the gate value under "
             "top-1, so it would never learn; use variant learned"),
            (faithful and self.top1_weight == "straight-through",
             "top1_weight 'straight-through' with variant 'faithful': the normalisation of m cancels the "
             "weight under top-1, so the gate gets no gradient; use variant learned"),
            (faithful and self.train_prototypes,
             "train_prototypes with variant 'faithful': the normalisation cancels the straight-through "
             "weight, so the prototypes get no gradient; use variant learned"),
            (self.random_gate and self.router != "softmax",
             f"random_gate with router {self.router!r}: RANDOM-GATE ignores the router; use router softmax"),
            (self.random_gate and (self.null_threshold is not None or self.null_quantile is not None),
             "null_threshold / null_quantile with random_gate: a random expert has no routing score"),
            (self.router == "cluster" and self.routing_noise != "noisy",
             f"routing_noise {self.routing_noise!r} with router 'cluster': cluster routing has no noise"),
            (self.router == "cluster" and self.top1_weight != "softmax",
             "top1_weight 'straight-through' with router 'cluster': its weight is always 1"),
            (self.router == "cluster" and self.router_aux_loss_coef > 0,
             "router_aux_loss_coef > 0 with router 'cluster': the hard nearest-prototype choice gets no "
             "gradient from it (cluster_balanced balances the prototypes instead)"),
            (self.router != "cluster" and self.train_prototypes,
             f"train_prototypes with router {self.router!r}: only cluster routing has prototypes"),
            (self.router != "cluster" and not self.cluster_balanced,
             f"cluster_balanced false with router {self.router!r}: only cluster routing has prototypes"),
            (self.router != "cluster" and self.null_quantile is not None,
             f"null_quantile with router {self.router!r}: it is computed with the prototypes; give "
             "null_threshold instead"),
            (self.null_threshold is not None and self.null_quantile is not None,
             "null_threshold and null_quantile both set: give one"),
        ]  # fmt: skip
        for failed, message in problems:
            if failed:
                raise ValueError(message)

    def resolved_default_mode(self) -> str:
        """`default_mode`, or what None means: random for RANDOM-GATE, else top1."""
        return self.default_mode or ("random" if self.random_gate else "top1")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


BLOCK_FIELDS: tuple[str, ...] = tuple(spec.name for spec in fields(BlockSettings))


def block_settings_of(source: Any) -> BlockSettings:
    """The `BlockSettings` held by any object with these attributes (a config, a TrainingConfig)."""
    return BlockSettings(**{name: getattr(source, name) for name in BLOCK_FIELDS})


def block_settings_dict(settings: BlockSettings) -> dict[str, Any]:
    """The block fields of `settings` only (a TrainingConfig holds more), as a plain dict."""
    return {name: getattr(settings, name) for name in BLOCK_FIELDS}
