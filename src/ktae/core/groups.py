"""Input validation and group numbering shared by every estimator entry point."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from numbers import Integral, Real
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

# [B] group ids: an integer tensor or array, or a sequence (or object array) of hashable ids of one kind.
GroupIndex: TypeAlias = "torch.Tensor | npt.NDArray[Any] | Sequence[Hashable]"
# [B] real numbers: a tensor, an array or a sequence.
ScoresLike: TypeAlias = "torch.Tensor | npt.NDArray[Any] | Sequence[float]"


def _id_kind(kind: type) -> str:
    """The kind of a group id's type; ids of different kinds must not meet in one batch."""
    if issubclass(kind, (bool, np.bool_)):
        return "bool"
    if issubclass(kind, (Integral, np.integer)):
        return "int"
    if issubclass(kind, (Real, np.floating)):
        return "float"
    if issubclass(kind, (str, np.str_)):
        return "str"
    return kind.__name__


def _check_id_kinds(group_index: Sequence[Hashable] | npt.NDArray[Any]) -> None:
    """Refuse ids of mixed kinds (1, True and 1.0 are equal keys and would merge silently) and NaN ids
    (never equal to themselves, so each would be a group of its own)."""
    kinds = {_id_kind(kind) for kind in set(map(type, group_index))}
    if len(kinds) > 1:
        raise TypeError(
            f"group_index mixes id types ({', '.join(sorted(kinds))}); use one type (ints or strings), "
            "since for example 1, True and 1.0 would count as one group"
        )
    if kinds == {"float"} and any(isinstance(gid, Real) and math.isnan(gid) for gid in group_index):
        raise ValueError("group_index holds a NaN id")


def dense_groups(group_index: GroupIndex, batch_size: int, device: torch.device) -> tuple[torch.Tensor, list[Hashable]]:
    """Number the groups 0..G-1.

    group_index: [B] ints (tensor, ndarray, list) or hashable ids (verl's numpy object array of uid
    strings), all of one kind: ints, strings, floats, or one other hashable type; mixed kinds are
    refused (1, True and 1.0 are equal as keys). Rollouts of one group need not be adjacent.
    Returns (group [B] int64 on ``device``, group_ids: the original id of each dense number).
    """
    if isinstance(group_index, torch.Tensor):
        if group_index.dim() != 1 or group_index.shape[0] != batch_size:
            raise ValueError(f"group_index must have shape [{batch_size}], got {list(group_index.shape)}")
        if group_index.dtype.is_floating_point or group_index.dtype == torch.bool or group_index.is_complex():
            raise TypeError(f"group_index tensor must hold integers, got {group_index.dtype}")
        ids, group = torch.unique(group_index, return_inverse=True)
        return group.to(device=device, dtype=torch.int64), ids.tolist()
    if isinstance(group_index, np.ndarray) and group_index.dtype.kind in "iu":
        if group_index.shape != (batch_size,):
            raise ValueError(f"group_index must have shape [{batch_size}], got {list(group_index.shape)}")
        ids, group = np.unique(group_index, return_inverse=True)
        return torch.as_tensor(group.reshape(-1), dtype=torch.int64, device=device), ids.tolist()
    if isinstance(group_index, (str, bytes)) or not isinstance(group_index, (Sequence, np.ndarray)):
        raise TypeError(
            f"group_index must be a tensor, an array or a sequence of ids, got {type(group_index).__name__}"
        )
    if len(group_index) != batch_size:
        raise ValueError(f"group_index has {len(group_index)} entries, expected {batch_size} (one per rollout)")
    _check_id_kinds(group_index)
    numbers: dict[Hashable, int] = {}
    try:
        group = [numbers.setdefault(gid, len(numbers)) for gid in group_index]
    except TypeError as err:
        raise TypeError(f"group_index entries must be hashable ids: {err}") from None
    return torch.tensor(group, dtype=torch.int64, device=device), list(numbers)


def group_sums(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-group sums of ``values`` [B] (booleans count as int64). [G]."""
    values = values.long() if values.dtype == torch.bool else values
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group, values)


def validate_scores(scores: ScoresLike, device: torch.device | None) -> torch.Tensor:
    """scores: [B] real numbers, all finite. Returns a tensor on ``device`` (its own when None), detached:
    advantages are constants of the policy-gradient loss."""
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(np.asarray(scores, dtype=np.float64), device=device)
    elif device is not None and scores.device != device:
        raise ValueError(f"scores are on {scores.device} but responses are on {device}")
    scores = scores.detach()
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [B], got {list(scores.shape)}")
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    if scores.dtype.is_floating_point:
        bad = ~torch.isfinite(scores)
        if bool(bad.any()):
            where = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(f"scores must be finite: NaN or infinite score at rollout(s) {where}")
    return scores


def validate_batch(
    responses: torch.Tensor, response_mask: torch.Tensor, scores: ScoresLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the shapes, dtypes and devices of one batch.

    responses: [B, T] integer ids; response_mask: [B, T] bool or 0/1 numbers; scores: [B].
    Returns (mask as bool [B, T], scores as a tensor [B] on responses.device). Token ids are
    checked where they are counted (``ktae.core.estimator``), which reads them anyway.
    """
    if not isinstance(responses, torch.Tensor):
        raise TypeError(f"responses must be a torch.Tensor, got {type(responses).__name__}")
    if not isinstance(response_mask, torch.Tensor):
        raise TypeError(f"response_mask must be a torch.Tensor, got {type(response_mask).__name__}")
    if responses.dim() != 2:
        raise ValueError(f"responses must have shape [B, T], got {list(responses.shape)}")
    if responses.dtype.is_floating_point or responses.dtype == torch.bool or responses.is_complex():
        raise TypeError(f"responses must hold integer token ids, got {responses.dtype}")
    if response_mask.shape != responses.shape:
        raise ValueError(
            f"response_mask shape {list(response_mask.shape)} does not match responses shape {list(responses.shape)}"
        )
    if response_mask.device != responses.device:
        raise ValueError(f"response_mask is on {response_mask.device} but responses are on {responses.device}")
    if response_mask.dtype == torch.bool:
        mask = response_mask
    else:
        if response_mask.is_complex():
            raise TypeError(f"response_mask must be bool or 0/1 numbers, got {response_mask.dtype}")
        mask = response_mask != 0
        if bool((mask & (response_mask != 1)).any()):
            raise ValueError("response_mask must contain only 0 and 1")
    scores = validate_scores(scores, responses.device)
    if scores.shape[0] != responses.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} entries but responses has {responses.shape[0]} rows")
    return mask.contiguous(), scores
