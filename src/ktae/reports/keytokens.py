"""Key-token values of rollouts recomputed with the project's estimator, and their summaries.

Reports never trust numbers stored next to the rollouts: they recompute every (group, token)
statistic with ``ktae.compute_key_token_values`` from the token ids, scores and groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

import numpy as np
import torch

from ktae import KTAEConfig, compute_key_token_values, compute_rollout_advantages
from ktae.reports.rollouts import TokenizedRollouts

STRONG_VALUE = 0.5  # |v| above this is a strongly weighted token (the trainer logs the same share)


@dataclasses.dataclass
class KeyTokenAnalysis:
    """Key-token values of a set of tokenized rollouts.

    group_keys: the (step, group) of each dense group; rollout_group: [B] dense group of each
    rollout; correct [B], rollout_advantage [B]; stats: one numpy array [K] per statistic
    ("group", "token", "a", "b", "c", "d", "p_value", "fisher", "info_gain", "h", "tf", "value"),
    plus "occ_true"/"occ_false" (occurrences in correct / incorrect rollouts); row_of_token[i]:
    [T_i] the stats row of each token of rollout i; n_true, n_false [G].
    """

    data: TokenizedRollouts
    config: KTAEConfig
    group_keys: list[tuple[int | None, Hashable]]
    rollout_group: np.ndarray
    correct: np.ndarray
    rollout_advantage: np.ndarray
    stats: dict[str, np.ndarray]
    row_of_token: list[np.ndarray]
    n_true: np.ndarray
    n_false: np.ndarray

    def token_values(self) -> np.ndarray:
        """Key-token value of every token of every rollout, concatenated. [sum T_i] float64."""
        return self.stats["value"][np.concatenate(self.row_of_token)]

    def strong_shares(self, threshold: float = STRONG_VALUE) -> dict[str, float]:
        """Share of all response tokens with v > threshold, v < -threshold, and |v| > threshold."""
        values = self.token_values()
        credited = float(np.mean(values > threshold))
        blamed = float(np.mean(values < -threshold))
        return {"strong": credited + blamed, "credited": credited, "blamed": blamed}

    def stored_advantage_gap(self) -> tuple[int, float]:
        """(rollouts with logged advantages, largest |logged - recomputed| over their tokens).

        The recomputed advantage is the rollout-level advantage plus the key-token value; a gap
        means the rollouts were trained with other settings (or without KTAE).
        """
        count, gap = 0, 0.0
        for index, rollout in enumerate(self.data.rollouts):
            rows = self.row_of_token[index]
            if rollout.advantages is not None and len(rollout.advantages) == rows.size:
                recomputed = self.rollout_advantage[index] + self.stats["value"][rows]
                gap = max(gap, float(np.max(np.abs(recomputed - np.asarray(rollout.advantages)), initial=0.0)))
                count += 1
        return count, gap

    def top_tokens(self, count: int = 10) -> dict[str, list[dict]]:
        """The most credited and most blamed tokens (`rank_key_tokens`), each entry with its display label."""
        stats = self.stats
        ranked = rank_key_tokens(stats["token"], stats["value"], stats["occ_true"] + stats["occ_false"], count)
        for entries in ranked.values():
            for entry in entries:
                entry["label"] = self.data.labels.get(entry["token"], str(entry["token"]))
        return ranked


def rank_key_tokens(token: np.ndarray, value: np.ndarray, occurrences: np.ndarray, count: int) -> dict[str, list[dict]]:
    """The most credited and most blamed tokens of a batch: the one definition the trainer's logs, its
    progress line and the reports share.

    A token's credit is its total bonus: the sum of its key-token value over every occurrence (value x
    occurrences, summed over the groups), which is what the token added to the batch's advantages.
    Inputs, one entry per (group, token) pair, [K]: ``token`` ids, key-token ``value``, ``occurrences``
    of the token in that group's responses. Returns ``{"credited": [...], "blamed": [...]}``, at most
    ``count`` entries each (total > 0, largest first; total < 0, most negative first), each entry
    ``{"token": id, "total", "occurrences", "groups"}`` (groups: how many groups the token occurs in).
    """
    token, value, occurrences = np.asarray(token), np.asarray(value, dtype=np.float64), np.asarray(occurrences)
    tokens, inverse = np.unique(token, return_inverse=True)
    total = np.bincount(inverse, weights=value * occurrences, minlength=tokens.size)
    total_occurrences = np.bincount(inverse, weights=occurrences, minlength=tokens.size)
    groups = np.bincount(inverse, minlength=tokens.size)

    def entries(order):
        return [
            {
                "token": int(tokens[i]),
                "total": float(total[i]),
                "occurrences": int(total_occurrences[i]),
                "groups": int(groups[i]),
            }
            for i in order
        ]

    credited = [i for i in np.argsort(-total, kind="stable") if total[i] > 0][:count]
    blamed = [i for i in np.argsort(total, kind="stable") if total[i] < 0][:count]
    return {"credited": entries(credited), "blamed": entries(blamed)}


def analyse(data: TokenizedRollouts, config: KTAEConfig | None = None) -> KeyTokenAnalysis:
    """Recompute the key-token statistics of ``data`` with ``ktae.compute_key_token_values``.

    Groups are (step, group) pairs, so group ids reused at every step stay apart. The config's
    ignore_token_ids are extended with ``data.ignore_token_ids``.
    """
    config = config or KTAEConfig()
    if data.ignore_token_ids:
        config = dataclasses.replace(
            config, ignore_token_ids=tuple(sorted(set(config.ignore_token_ids) | set(data.ignore_token_ids)))
        )
    numbers: dict[tuple, int] = {}
    rollout_group = np.array(
        [numbers.setdefault((r.step, r.group), len(numbers)) for r in data.rollouts], dtype=np.int64
    )
    group_keys = list(numbers)
    lengths = np.array([ids.size for ids in data.token_ids], dtype=np.int64)
    if not lengths.sum():
        raise ValueError("the rollouts have no response tokens to report on")
    flat_tokens = np.concatenate(data.token_ids)
    responses = torch.zeros((len(lengths), int(lengths.max())), dtype=torch.int64)
    mask = torch.arange(responses.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]
    responses[mask] = torch.as_tensor(flat_tokens)
    scores = torch.tensor([r.score for r in data.rollouts], dtype=torch.float64)
    group_index = torch.as_tensor(rollout_group)
    values = compute_key_token_values(responses, mask, scores, group_index, config=config)
    advantage = compute_rollout_advantages(scores, group_index, method=config.rollout_advantage, epsilon=config.epsilon)

    names = ("group", "token", "a", "b", "c", "d", "p_value", "fisher", "info_gain", "h", "tf", "value")
    stats = {name: getattr(values, name).cpu().numpy() for name in names}
    stats["group"] = np.asarray(values.group_ids, dtype=np.int64)[stats["group"]]

    # The stats row of every token: look its (group, token) key up among the rows' keys, keyed by
    # compacted token ids so that group * vocab + token cannot overflow whatever the ids.
    token_ids, flat_compact = np.unique(flat_tokens, return_inverse=True)
    vocab = len(token_ids)
    row_keys = stats["group"] * vocab + np.searchsorted(token_ids, stats["token"])
    order = np.argsort(row_keys, kind="stable")
    flat_keys = np.repeat(rollout_group, lengths) * vocab + flat_compact.reshape(-1)
    found = np.minimum(np.searchsorted(row_keys[order], flat_keys), order.size - 1)
    if not np.array_equal(row_keys[order][found], flat_keys):
        raise RuntimeError("the estimator returned no statistics for some (group, token) pairs")
    flat_rows = order[found]
    correct = scores.numpy() > config.correct_threshold
    flat_correct = np.repeat(correct, lengths)
    stats["occ_true"] = np.bincount(flat_rows[flat_correct], minlength=row_keys.size)
    stats["occ_false"] = np.bincount(flat_rows[~flat_correct], minlength=row_keys.size)
    groups = len(group_keys)
    n_true = np.bincount(rollout_group[correct], minlength=groups)
    n_false = np.bincount(rollout_group[~correct], minlength=groups)
    return KeyTokenAnalysis(
        data=data,
        config=config,
        group_keys=group_keys,
        rollout_group=rollout_group,
        correct=correct,
        rollout_advantage=advantage.numpy().astype(np.float64),
        stats=stats,
        row_of_token=np.split(flat_rows, np.cumsum(lengths)[:-1]),
        n_true=n_true,
        n_false=n_false,
    )
