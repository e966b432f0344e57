"""`BlockSettings`: the one declaration of the SB-MoE block's settings.

Every place that names a block setting reads it from here: `SBMoEConfig` (saved flat in config.json),
`SBMoEBlock` (built from it), `build_model`, `TrainingConfig` (which inherits these fields), the `init` and
`train` flags (generated from the fields and their help) and the experiment grid (any field per system).
Adding a setting is adding a field here, with a default that reproduces the behaviour before it existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from sbmoe.modeling.moe import ACTIVATIONS, VARIANTS, parse_mode


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None, null: str | None = None) -> Any:
    """A field with its help text; `choices`: the allowed values; `null`: what a None default means."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if null is not None:
        metadata["null"] = null
    return field(default=default, metadata=metadata)


@dataclass
class BlockSettings:
    """The MoE block's settings; the defaults are the block as the paper describes it, with a learned gate.

    Validation (`validate`, run on construction) raises ValueError naming the field and its allowed values.
    """

    num_experts: int = _setting(6, "N, the number of experts (1 = a single adapter)")
    expert_hidden_size: int | None = _setting(None, "experts' bottleneck width", null="hidden size / 2")
    gate_hidden_size: int | None = _setting(None, "the gate's hidden width", null="hidden size / 2")
    expert_activation: str = _setting("relu", "the experts' activation (relu: the paper)", tuple(ACTIVATIONS))
    variant: str = _setting(
        "learned",
        "how expert outputs combine: faithful (the authors' code: the gate gets no gradient) or learned "
        "(each normalised expert output scaled by its gate value)",
        VARIANTS,
    )
    random_gate: bool = _setting(False, "the RANDOM-GATE ablation: a random expert per text")
    random_gate_seed: int = _setting(0, "seed of the per-text expert choice of the random mode")
    router_aux_loss_coef: float = _setting(
        0.0, "weight of the Switch load-balancing loss (0 = off, the paper)"
    )
    default_mode: str | None = _setting(
        None, "inference routing when none is asked for: top1, topk:K, all or random",
        null="top1, or random with random_gate",
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending field and what it accepts."""
        for spec in fields(BlockSettings):
            choices = spec.metadata.get("choices")
            value = getattr(self, spec.name)
            if choices is not None and value not in choices:
                raise ValueError(f"{spec.name} must be one of {list(choices)}, got {value!r}")
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
        parse_mode(self.resolved_default_mode(), self.num_experts)

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
