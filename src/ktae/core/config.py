"""KTAE options, validated once at construction."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32
INT64_MAX = 2**63 - 1  # the largest int64: token ids and the sort backend's (group, token) keys


@dataclasses.dataclass(frozen=True)
class KTAEConfig:
    """Options of Key-token Advantage Estimation (``docs/spec.md``).

    alpha, beta_ig: weights of the Fisher term F and of the information gain IG.
    gamma_tf: weight of the term-frequency correction TF inside the direction x = h + gamma_tf * TF.
    top: bound of the key-token value, |v| < top; ``top=0`` turns KTAE off.
    correct_threshold: a rollout is correct when its score is strictly above this.
    ignore_token_ids: token ids whose value is forced to 0 (pad and end-of-sequence ids).
    rollout_advantage: the rollout-level base, a name registered in ``ktae.core.rollout`` ("grpo",
        "dr_grpo", "rloo", "none" for the key-token bonus alone, or one registered with
        ``ktae.register_rollout_advantage``).
    epsilon: added to the group's standard deviation in the GRPO normalisation.
    """

    alpha: float = 1.0
    beta_ig: float = 1.0
    gamma_tf: float = 1.0
    top: float = 1.0
    correct_threshold: float = 0.0
    ignore_token_ids: tuple[int, ...] = ()
    rollout_advantage: str = "grpo"
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("alpha", "beta_ig", "gamma_tf", "top", "correct_threshold", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"KTAEConfig.{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"KTAEConfig.{name} must be finite, got {value}")
            object.__setattr__(self, name, float(value))
        for name in ("alpha", "beta_ig", "top", "epsilon"):
            if getattr(self, name) < 0:
                raise ValueError(f"KTAEConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.epsilon == 0:
            # a group whose rollouts all score alike has std 0: its GRPO advantages would be 0 / 0
            raise ValueError("KTAEConfig.epsilon must be > 0: it keeps the GRPO normalisation of uniform groups finite")
        if self.top >= FLOAT32_MAX:
            raise ValueError(f"KTAEConfig.top must be below {FLOAT32_MAX:.3g} (advantages are float32), got {self.top}")
        if not math.isfinite(self.alpha + self.beta_ig):
            raise ValueError(
                f"KTAEConfig.alpha + beta_ig must be finite (the strength is divided by it), got alpha={self.alpha} "
                f"and beta_ig={self.beta_ig}"
            )
        # Imported when a config is built, not with this module: these modules load torch.
        from ktae.core.estimator import TF_BOUND
        from ktae.core.rollout import ROLLOUT_ADVANTAGES

        if not math.isfinite(abs(self.gamma_tf) * TF_BOUND + math.pi):
            raise ValueError(
                f"KTAEConfig.gamma_tf must be at most {sys.float_info.max / TF_BOUND:.3g} in magnitude, so that "
                f"h + gamma_tf * TF stays finite (|TF| < {TF_BOUND:.3g}), got {self.gamma_tf}"
            )

        if self.rollout_advantage not in ROLLOUT_ADVANTAGES:
            raise ValueError(
                f"unknown rollout_advantage {self.rollout_advantage!r}; choose one of {', '.join(ROLLOUT_ADVANTAGES)}"
            )
        ids = self.ignore_token_ids
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"KTAEConfig.ignore_token_ids must be a sequence of ints, got {ids!r}")
        ids = tuple(ids)
        for token_id in ids:
            if isinstance(token_id, bool) or (not isinstance(token_id, int) and not hasattr(token_id, "__index__")):
                raise TypeError(f"KTAEConfig.ignore_token_ids must hold ints, got {token_id!r}")
            if int(token_id) < 0:
                raise ValueError(f"KTAEConfig.ignore_token_ids must be >= 0, got {int(token_id)}")
            if int(token_id) > INT64_MAX:
                raise ValueError(
                    f"KTAEConfig.ignore_token_ids must be int64 token ids (at most 2**63 - 1), got {int(token_id)}"
                )
        object.__setattr__(self, "ignore_token_ids", tuple(sorted({int(t) for t in ids})))

    @property
    def enabled(self) -> bool:
        """False when the key-token term is identically 0 and KTAE reduces to the rollout-level advantage."""
        return self.top != 0.0 and (self.alpha + self.beta_ig) != 0.0

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> KTAEConfig:
        """Build from a mapping (a YAML or Hydra section), rejecting unknown keys by name."""
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown KTAE option(s) {unknown}; known options: {sorted(known)}")
        if "ignore_token_ids" in options and options["ignore_token_ids"] is not None:
            options["ignore_token_ids"] = tuple(options["ignore_token_ids"])
        elif "ignore_token_ids" in options:
            options["ignore_token_ids"] = ()
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ignore_token_ids": list(self.ignore_token_ids)}
