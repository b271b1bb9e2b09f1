"""The KTAE estimator: per-(group, token) contingency statistics, key-token values, advantages.

Everything is vectorized over the whole batch: one stable sort of (group, token) keys finds every
distinct token of every group, segment sums give the counts, and the Fisher p-values come from
per-margin tables (``ktae.core.fisher``). Memory is O(B * T); nothing is sized groups x vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ktae.core.config import KTAEConfig
from ktae.core.fisher import fisher_pvalue_tables, table_offsets
from ktae.core.groups import dense_groups, validate_batch
from ktae.core.rollout import ROLLOUT_ADVANTAGES

# BM25-style saturation constants of the term-frequency correction (spec, step 5).
BM25_K1 = 2.0
BM25_B = 0.5
TF_EPS = 1e-5


@dataclasses.dataclass
class TokenStatistics:
    """Sums over rollouts that determine every key-token value; shards add them up.

    Per (group, token) pair, [K]: ``group`` (dense number into ``group_ids``), ``token``,
    ``a``/``b`` (correct/incorrect rollouts containing the token), ``f_true``/``f_false``
    (its occurrences in the masked tokens of correct/incorrect rollouts).
    Per group, [G]: ``n_true``/``n_false`` (correct/incorrect rollouts), ``len_true``/``len_false``
    (masked tokens of correct/incorrect rollouts). All int64.
    """

    group_ids: list
    group: torch.Tensor
    token: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    f_true: torch.Tensor
    f_false: torch.Tensor
    n_true: torch.Tensor
    n_false: torch.Tensor
    len_true: torch.Tensor
    len_false: torch.Tensor


@dataclasses.dataclass
class KeyTokenValues:
    """Key-token value of every (group, token) pair, with the statistics behind it. All tensors [K].

    ``group`` indexes ``group_ids`` (the caller's ids); ``a, b, c, d`` is the contingency table;
    ``p_value``, ``fisher`` (F), ``info_gain`` (IG, bits), ``h``, ``tf`` and ``value`` are float64.
    """

    group_ids: list
    group: torch.Tensor
    token: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    d: torch.Tensor
    p_value: torch.Tensor
    fisher: torch.Tensor
    info_gain: torch.Tensor
    h: torch.Tensor
    tf: torch.Tensor
    value: torch.Tensor

    def to_records(self) -> list[dict]:
        """One plain dict per (group, token), for reports and JSON."""
        columns = {f.name: getattr(self, f.name).tolist() for f in dataclasses.fields(self) if f.name != "group_ids"}
        records = [dict(zip(columns, row)) for row in zip(*columns.values())]
        for record in records:
            record["group"] = self.group_ids[record["group"]]
        return records


# ----------------------------------------------------------------------------------------------
# Step 3: counting


def _segment_sums(values: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments of ``values`` [N] beginning at ``starts`` [K] (sorted, starts[0] = 0)."""
    cumulative = torch.cumsum(values, 0, dtype=torch.int64)
    ends = torch.cat([starts[1:], starts.new_tensor([values.shape[0]])]) - 1
    before = torch.cat([cumulative.new_zeros(1), cumulative[starts[1:] - 1]])
    return cumulative[ends] - before


def _count_tokens(
    tokens: torch.Tensor, rows: torch.Tensor, group_of_row: torch.Tensor, correct_of_row: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, ...]:
    """Per-(group, token) presence and occurrence counts of a flat list of masked tokens.

    tokens, rows: [N] (row-major order, so rows ascend); group_of_row, correct_of_row: [B].
    Returns (group [K], token [K], a, b, f_true, f_false [K], segment_of_position [N]).
    """
    vocab = int(tokens.max()) + 1
    wide = num_groups * vocab >= 2**31
    # A stable sort keeps positions of one (group, token) in row order, so a new rollout inside a
    # segment shows as a change of row. int32 keys sort markedly faster when they fit.
    key = group_of_row[rows] * vocab + tokens.to(torch.int64)
    key = key if wide else key.to(torch.int32)
    sorted_key, order = torch.sort(key, stable=True)
    sorted_rows = rows[order]
    new_key = torch.ones_like(sorted_key, dtype=torch.bool)
    new_key[1:] = sorted_key[1:] != sorted_key[:-1]
    new_row = new_key.clone()
    new_row[1:] |= sorted_rows[1:] != sorted_rows[:-1]
    correct = correct_of_row[sorted_rows]

    starts = torch.nonzero(new_key).flatten()
    occurrences = torch.diff(starts, append=starts.new_tensor([tokens.shape[0]]))
    f_true = _segment_sums(correct, starts)
    presence = _segment_sums(new_row, starts)
    a = _segment_sums(new_row & correct, starts)
    segment_key = sorted_key[starts].to(torch.int64)

    segment = torch.empty_like(order)
    segment[order] = torch.cumsum(new_key, 0) - 1
    return segment_key // vocab, segment_key % vocab, a, presence - a, f_true, occurrences - f_true, segment


def _flatten(responses: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked tokens in row-major order and the row of each. [N], [N]."""
    lengths = mask.sum(dim=1)
    rows = torch.repeat_interleave(torch.arange(responses.shape[0], device=responses.device), lengths)
    return responses[mask], rows


def _group_sums(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    return torch.zeros(num_groups, dtype=torch.int64, device=group.device).index_add_(0, group, values.to(torch.int64))


def _statistics(
    tokens: torch.Tensor,
    rows: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    group_ids: list,
    correct: torch.Tensor,
) -> tuple[TokenStatistics, torch.Tensor]:
    num_groups = len(group_ids)
    lengths = mask.sum(dim=1)
    per_group = (
        _group_sums(correct, group, num_groups),
        _group_sums(~correct, group, num_groups),
        _group_sums(lengths * correct, group, num_groups),
        _group_sums(lengths * ~correct, group, num_groups),
    )
    if tokens.numel():
        counts = _count_tokens(tokens, rows, group, correct, num_groups)
        pairs, segment = counts[:6], counts[6]
    else:
        pairs = tuple(torch.zeros(0, dtype=torch.int64, device=mask.device) for _ in range(6))
        segment = torch.zeros(0, dtype=torch.int64, device=mask.device)
    return TokenStatistics(group_ids, *pairs, *per_group), segment


def collect_token_statistics(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores,
    group_index,
    config: KTAEConfig | None = None,
) -> TokenStatistics:
    """Sums per (group, token) and per group for one batch (or one data-parallel shard).

    responses: [B, T] int; response_mask: [B, T] bool or 0/1; scores: [B]; group_index: [B] ids.
    Shards of one step combine with ``merge_token_statistics`` when their group ids are global.
    """
    config = config or KTAEConfig()
    mask, scores = validate_batch(responses, response_mask, scores)
    group, group_ids = dense_groups(group_index, responses.shape[0], responses.device)
    tokens, rows = _flatten(responses, mask)
    stats, _ = _statistics(tokens, rows, mask, group, group_ids, scores > config.correct_threshold)
    return stats


def merge_token_statistics(shards: list[TokenStatistics]) -> TokenStatistics:
    """Add up the statistics of several shards, matching groups by id and (group, token) pairs."""
    if not shards:
        raise ValueError("merge_token_statistics needs at least one shard")
    numbers: dict = {}
    for shard in shards:
        for gid in shard.group_ids:
            numbers.setdefault(gid, len(numbers))
    device = shards[0].group.device
    num_groups = len(numbers)
    remap = [torch.tensor([numbers[g] for g in s.group_ids], dtype=torch.int64, device=device) for s in shards]

    def per_group(field: str) -> torch.Tensor:
        total = torch.zeros(num_groups, dtype=torch.int64, device=device)
        for shard, to_global in zip(shards, remap):
            total.index_add_(0, to_global, getattr(shard, field).to(device))
        return total

    group = torch.cat([to_global[s.group.to(device)] for s, to_global in zip(shards, remap)])
    token = torch.cat([s.token.to(device) for s in shards])
    vocab = int(token.max()) + 1 if token.numel() else 1
    pair_key, pair = torch.unique(group * vocab + token, return_inverse=True)

    def per_pair(field: str) -> torch.Tensor:
        values = torch.cat([getattr(s, field).to(device) for s in shards])
        return torch.zeros(len(pair_key), dtype=torch.int64, device=device).index_add_(0, pair, values)

    return TokenStatistics(
        list(numbers),
        pair_key // vocab,
        pair_key % vocab,
        *(per_pair(f) for f in ("a", "b", "f_true", "f_false")),
        *(per_group(f) for f in ("n_true", "n_false", "len_true", "len_false")),
    )


# ----------------------------------------------------------------------------------------------
# Steps 4-6: strength, direction, value


def _entropy_bits(q: torch.Tensor) -> torch.Tensor:
    """Binary entropy H(q) in bits with 0 log 0 = 0. Elementwise, float64."""
    terms = torch.stack([q, 1 - q])
    return -torch.where(terms > 0, terms * torch.log2(terms.clamp(min=1e-300)), 0.0).sum(0)


def _table_statistics(n_true: torch.Tensor, n_false: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """p-value, F, IG and h of every table (a, b) of each margin pair, flat as in ``fisher_pvalue_tables``."""
    p_value, p_is_one = fisher_pvalue_tables(n_true, n_false)
    sizes = (n_true + 1) * (n_false + 1)
    pair = torch.repeat_interleave(torch.arange(len(n_true), device=n_true.device), sizes)
    local = torch.arange(int(sizes.sum()), device=n_true.device) - table_offsets(n_true, n_false)[pair]
    nt, nf = n_true[pair].double(), n_false[pair].double()
    a = (local // (n_false[pair] + 1)).double()
    b = (local % (n_false[pair] + 1)).double()
    c, d, n = nt - a, nf - b, nt + nf
    fisher = torch.where(p_is_one, 0.0, torch.exp(-2 * p_value))
    present, absent = a + b, c + d
    conditional = present / n * _entropy_bits(a / present.clamp(min=1)) + absent / n * _entropy_bits(
        c / absent.clamp(min=1)
    )
    info_gain = (_entropy_bits(nt / n) - conditional).clamp(min=0.0)
    h = torch.asin(torch.sqrt(a / nt.clamp(min=1))) - torch.asin(torch.sqrt(b / nf.clamp(min=1)))
    return p_value, fisher, info_gain, h


def _saturated_tf(f: torch.Tensor, length: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
    """BM25-style saturation s = tf (k1 + 1) / (tf + K) of a token's frequency in ``length`` tokens."""
    tf = f / length.clamp(min=1)
    k = BM25_K1 * (1 - BM25_B + BM25_B * length / average)
    return torch.where(length > 0, tf * (BM25_K1 + 1) / (tf + k), 0.0)


def key_token_values_from_statistics(stats: TokenStatistics, config: KTAEConfig | None = None) -> KeyTokenValues:
    """Key-token value v of every (group, token) pair from its statistics (spec steps 4-6). [K] float64."""
    config = config or KTAEConfig()
    device = stats.token.device
    n_true, n_false = stats.n_true[stats.group], stats.n_false[stats.group]
    mixed = (n_true > 0) & (n_false > 0)

    # Tables of the distinct margin pairs of mixed groups; each pair's (a, b) entry is looked up.
    margins = torch.stack([stats.n_true, stats.n_false], dim=1)
    group_mixed = (margins > 0).all(dim=1)
    pairs, pair_of_group = torch.unique(margins[group_mixed], dim=0, return_inverse=True)
    pair_lookup = torch.zeros(len(stats.group_ids), dtype=torch.int64, device=device)
    pair_lookup[group_mixed] = pair_of_group
    if pairs.numel():
        tables = _table_statistics(pairs[:, 0], pairs[:, 1])
        pair = pair_lookup[stats.group]
        entry = table_offsets(pairs[:, 0], pairs[:, 1])[pair] + stats.a * (pairs[pair, 1] + 1) + stats.b
        entry = torch.where(mixed, entry, 0)
        p_value, fisher, info_gain, h = (torch.where(mixed, t[entry], default) for t, default in zip(tables, (1.0, 0.0, 0.0, 0.0)))
    else:
        p_value = torch.ones(stats.token.shape, dtype=torch.float64, device=device)
        fisher = info_gain = h = torch.zeros_like(p_value)

    len_true = stats.len_true[stats.group].double()
    len_false = stats.len_false[stats.group].double()
    average = ((len_true + len_false) / 2).clamp(min=1)
    s_true = _saturated_tf(stats.f_true.double(), len_true, average)
    s_false = _saturated_tf(stats.f_false.double(), len_false, average)
    tf = s_true / (s_false + TF_EPS) - s_false / (s_true + TF_EPS)

    if config.enabled:
        strength = (config.alpha * fisher + config.beta_ig * info_gain) / (config.alpha + config.beta_ig)
        value = config.top * torch.tanh(strength * (h + config.gamma_tf * tf) / 2)
        keep = mixed
        if config.ignore_token_ids:
            ignored = torch.tensor(config.ignore_token_ids, dtype=stats.token.dtype, device=device)
            keep = keep & ~torch.isin(stats.token, ignored)
        value = torch.where(keep, value, 0.0)
    else:
        value = torch.zeros_like(tf)
    return KeyTokenValues(
        group_ids=stats.group_ids,
        group=stats.group,
        token=stats.token,
        a=stats.a,
        b=stats.b,
        c=n_true - stats.a,
        d=n_false - stats.b,
        p_value=p_value,
        fisher=fisher,
        info_gain=info_gain,
        h=h,
        tf=tf,
        value=value,
    )


def compute_key_token_values(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores,
    group_index,
    config: KTAEConfig | None = None,
) -> KeyTokenValues:
    """Key-token value and statistics of every (group, token) pair of a batch.

    responses: [B, T] int; response_mask: [B, T]; scores: [B]; group_index: [B] ids.
    """
    return key_token_values_from_statistics(
        collect_token_statistics(responses, response_mask, scores, group_index, config), config
    )


# ----------------------------------------------------------------------------------------------
# Step 7: token-level advantage


def compute_ktae_advantages(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores,
    group_index,
    config: KTAEConfig | None = None,
) -> torch.Tensor:
    """Token-level KTAE advantage: rollout-level advantage plus the key-token value of each token.

    responses: [B, T] int token ids (right-padded); response_mask: [B, T] bool or 0/1;
    scores: [B] float; group_index: [B] ints or hashable ids (rollouts of a group need not be adjacent).
    Returns float32 [B, T] on responses.device, exactly 0 where the mask is 0.
    """
    config = config or KTAEConfig()
    mask, scores = validate_batch(responses, response_mask, scores)
    group, group_ids = dense_groups(group_index, responses.shape[0], responses.device)
    num_groups = len(group_ids)
    rollout = ROLLOUT_ADVANTAGES[config.rollout_advantage](scores.double(), group, num_groups, config.epsilon)
    advantages = torch.zeros(responses.shape, dtype=torch.float32, device=responses.device)
    per_token = rollout.float()[:, None].expand_as(advantages)
    if not config.enabled:
        return torch.where(mask, per_token, advantages)

    # Only groups with both correct and incorrect rollouts get key-token values: skip the others' tokens.
    correct = scores > config.correct_threshold
    n_true = _group_sums(correct, group, num_groups)
    n_all = _group_sums(torch.ones_like(correct), group, num_groups)
    informative = ((n_true > 0) & (n_true < n_all))[group]
    token_mask = mask & informative[:, None]
    tokens, rows = _flatten(responses, token_mask)
    stats, segment = _statistics(tokens, rows, token_mask, group, group_ids, correct)
    if not tokens.numel():
        return torch.where(mask, per_token, advantages)
    values = key_token_values_from_statistics(stats, config).value.float()
    advantages[mask] = per_token[mask]
    advantages[token_mask] += values[segment]
    return advantages
