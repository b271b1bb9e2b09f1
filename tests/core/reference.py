"""A slow, literal float64 reference of docs/spec.md: one Python loop per group and token.

Fisher p-values use exact rational arithmetic, so the reference decides ties exactly as the spec
states them (relative tolerance 1e-7), independently of any floating-point p-value code.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

TIE = Fraction(1) + Fraction(1, 10**7)


def fisher_two_sided(a: int, b: int, c: int, d: int) -> tuple[float, bool]:
    """(p, p == 1 exactly) of the two-sided Fisher test, from exact hypergeometric probabilities."""
    n_true, n_false, row = a + c, b + d, a + b
    n = n_true + n_false
    total = math.comb(n, row)
    support = range(max(0, row - n_false), min(row, n_true) + 1)
    prob = {k: Fraction(math.comb(n_true, k) * math.comb(n_false, row - k), total) for k in support}
    included = [k for k in support if prob[k] <= prob[a] * TIE]
    p = sum(prob[k] for k in included)
    return float(p), len(included) == len(support)


def entropy_bits(q: float) -> float:
    return -sum(x * math.log2(x) for x in (q, 1 - q) if x > 0)


def key_token_value(a, b, n_true, n_false, f_true, f_false, len_true, len_false, cfg) -> dict:
    c, d = n_true - a, n_false - b
    n = n_true + n_false
    p, p_is_one = fisher_two_sided(a, b, c, d)
    fisher = 0.0 if p_is_one else math.exp(-2 * p)
    conditional = 0.0
    if a + b:
        conditional += (a + b) / n * entropy_bits(a / (a + b))
    if c + d:
        conditional += (c + d) / n * entropy_bits(c / (c + d))
    info_gain = entropy_bits(n_true / n) - conditional
    h = math.asin(math.sqrt(a / n_true)) - math.asin(math.sqrt(b / n_false))
    avg = (len_true + len_false) / 2
    k1, bb = 2.0, 0.5

    def saturate(f, length):
        if length == 0:
            return 0.0
        tf = f / length
        big_k = k1 * (1 - bb + bb * length / avg)
        return tf * (k1 + 1) / (tf + big_k)

    s_true, s_false = saturate(f_true, len_true), saturate(f_false, len_false)
    tf = s_true / (s_false + 1e-5) - s_false / (s_true + 1e-5)
    x = h + cfg.gamma_tf * tf
    k = (cfg.alpha * fisher + cfg.beta_ig * info_gain) * x / (cfg.alpha + cfg.beta_ig)
    value = cfg.top * (2 / (1 + math.exp(-k)) - 1) if abs(k) < 700 else math.copysign(cfg.top, k)
    return dict(a=a, b=b, c=c, d=d, p_value=p, fisher=fisher, info_gain=info_gain, h=h, tf=tf, value=value)


def rollout_advantages(scores: list[float], method: str, eps: float) -> list[float]:
    n = len(scores)
    mean = sum(scores) / n
    if method == "grpo":
        if n == 1:
            return [s / (1 + eps) for s in scores]
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
        return [(s - mean) / (std + eps) for s in scores]
    if method == "dr_grpo":
        return [s - mean for s in scores]
    if method == "rloo":
        if n == 1:
            return list(scores)
        return [s - (sum(scores) - s) / (n - 1) for s in scores]
    if method == "none":
        return [0.0] * n
    raise ValueError(method)


def reference(responses, mask, scores, groups, cfg):
    """Returns (advantages float64 [B, T], values {(group id, token): stats dict})."""
    responses = np.asarray(responses)
    mask = np.asarray(mask).astype(bool)
    scores = [float(s) for s in scores]
    groups = list(groups)
    out = np.zeros(responses.shape, dtype=np.float64)
    values = {}
    for gid in dict.fromkeys(groups):
        rows = [i for i, g in enumerate(groups) if g == gid]
        base = dict(zip(rows, rollout_advantages([scores[i] for i in rows], cfg.rollout_advantage, cfg.epsilon)))
        correct = {i: scores[i] > cfg.correct_threshold for i in rows}
        n_true = sum(correct.values())
        n_false = len(rows) - n_true
        tokens = {i: [int(t) for t, m in zip(responses[i], mask[i]) if m] for i in rows}
        len_true = sum(len(tokens[i]) for i in rows if correct[i])
        len_false = sum(len(tokens[i]) for i in rows if not correct[i])
        group_values = {}
        for t in sorted({t for i in rows for t in tokens[i]}):
            a = sum(t in tokens[i] for i in rows if correct[i])
            b = sum(t in tokens[i] for i in rows if not correct[i])
            f_true = sum(tokens[i].count(t) for i in rows if correct[i])
            f_false = sum(tokens[i].count(t) for i in rows if not correct[i])
            if n_true and n_false:
                stats = key_token_value(a, b, n_true, n_false, f_true, f_false, len_true, len_false, cfg)
                if t in cfg.ignore_token_ids or not cfg.enabled:
                    stats["value"] = 0.0
            else:
                stats = dict(a=a, b=b, c=n_true - a, d=n_false - b, value=0.0)
            group_values[t] = stats["value"]
            values[(gid, t)] = stats
        for i in rows:
            for j in range(responses.shape[1]):
                if mask[i, j]:
                    out[i, j] = base[i] + group_values[int(responses[i, j])]
    return out, values


def random_batch(
    seed: int,
    num_groups: int = 5,
    max_group: int = 8,
    max_len: int = 24,
    vocab: int = 12,
    adjacent: bool = False,
    ids: str = "int",
):
    """A random batch: ragged groups (1..max_group rollouts), right-padded responses, 0/1 scores."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_group + 1, size=num_groups)
    groups = np.repeat(np.arange(num_groups), sizes)
    if not adjacent:
        rng.shuffle(groups)
    batch = len(groups)
    lengths = rng.integers(0, max_len + 1, size=batch)
    responses = rng.integers(0, vocab, size=(batch, max_len))
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    responses[~mask] = vocab  # the pad id, outside the counted tokens
    scores = (rng.random(batch) < 0.5).astype(np.float64)
    group_index = groups if ids == "int" else np.array([f"uid-{g}" for g in groups], dtype=object)
    return torch.from_numpy(responses), torch.from_numpy(mask), torch.from_numpy(scores), group_index
