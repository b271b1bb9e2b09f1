"""What a counting backend gives the estimator: one pass over a batch's tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import torch

# (group, token, a, b, f_true, f_false): [K] int64 each, one entry per (group, token) pair.
Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class Counts:
    """Per-(group, token) counts of one batch, and how to write per-pair values back onto its tokens.

    group, token, a, b, f_true, f_false: [K] int64, one entry per (group, token) pair of the counted
    groups (as in ``ktae.core.estimator.TokenStatistics``). lengths: [B] int64, masked tokens per rollout.
    place(values [K], rollout [B]) -> [B, T] float32: rollout[i] plus the value of each masked
    token's (group, token) pair, 0 off the mask.
    fused_values: the backend's one-pass kernel for the per-pair value formulas (arguments as
    ``ktae.core.counting.kernels.pair_values``), or None to use the estimator's torch formulas.
    """

    group: torch.Tensor
    token: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    f_true: torch.Tensor
    f_false: torch.Tensor
    lengths: torch.Tensor
    place: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    fused_values: Callable[..., torch.Tensor] | None = None

    @property
    def pairs(self) -> Pairs:
        """(group, token, a, b, f_true, f_false)."""
        return self.group, self.token, self.a, self.b, self.f_true, self.f_false


class Backend(Protocol):
    """What a counting backend module provides (``ktae.core.counting.kernels``, ``ktae.core.counting.sort``)."""

    def scan(self, responses: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        """(smallest id, largest id, lengths [B]) over the masked positions; (0, -1) when none."""
        ...

    def count(
        self,
        responses: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        group: torch.Tensor,
        num_groups: int,
        correct: torch.Tensor,
        counted: torch.Tensor,
        vocab: int,
    ) -> Counts:
        """Per-(group, token) counts of the groups flagged in ``counted``, ids in [0, vocab)."""
        ...
