"""The KTAE estimator: per-(group, token) contingency statistics, key-token values, advantages.

Counting runs over the whole batch at once, by one backend of ``ktae.core.counting`` (numba kernels
on the CPU, one stable sort of (group, token) keys on any device). The Fisher p-values and the other
per-table statistics are computed once per distinct (n_T, n_F, a, b) table (``ktae.core.fisher``,
``_group_terms``) and every other formula is vectorized over the (group, token) pairs. Memory and
time are bounded by the batch: nothing is sized groups x vocabulary, nor by an id's value, nor by
n_T x n_F of a large group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import torch

from ktae.core.config import KTAEConfig
from ktae.core.counting import Counts, check_backend, count_tokens, fork_safe_threads
from ktae.core.fisher import fisher_pvalues
from ktae.core.groups import GroupIndex, ScoresLike, dense_groups, group_sums, validate_batch
from ktae.core.rollout import finite_rollout_advantages

# BM25-style saturation constants of the term-frequency correction (docs/spec.md, step 5).
BM25_K1 = 2.0
BM25_B = 0.5
TF_EPS = 1e-5
# |TF| stays below this: each saturated frequency s lies in [0, k1 + 1) (``_term_frequency``).
TF_BOUND = (BM25_K1 + 1) / TF_EPS


@dataclasses.dataclass
class TokenStatistics:
    """Sums over rollouts that determine every key-token value; shards add them up.

    Per (group, token) pair, [K]: ``group`` (dense number into ``group_ids``), ``token``,
    ``a``/``b`` (correct/incorrect rollouts containing the token), ``f_true``/``f_false``
    (its occurrences in the masked tokens of correct/incorrect rollouts).
    Per group, [G]: ``n_true``/``n_false`` (correct/incorrect rollouts), ``len_true``/``len_false``
    (masked tokens of correct/incorrect rollouts). All int64.
    """

    group_ids: list[Hashable]
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

    group_ids: list[Hashable]
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

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per (group, token), for reports and JSON."""
        columns = {f.name: getattr(self, f.name).tolist() for f in dataclasses.fields(self) if f.name != "group_ids"}
        records = [dict(zip(columns, row)) for row in zip(*columns.values())]
        for record in records:
            record["group"] = self.group_ids[record["group"]]
        return records


# ----------------------------------------------------------------------------------------------
# Step 3: counting, by one of the backends of ``ktae.core.counting``.


def _config(config: KTAEConfig | Mapping[str, Any] | None) -> KTAEConfig:
    """The options: a KTAEConfig, a mapping of its fields (``KTAEConfig.from_dict``), or None for the defaults."""
    if config is None:
        return KTAEConfig()
    if isinstance(config, KTAEConfig):
        return config
    if isinstance(config, Mapping):
        return KTAEConfig.from_dict(config)
    raise TypeError(f"config must be a KTAEConfig, a mapping of its options or None, got {type(config).__name__}")


def _count(
    responses: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    group_ids: list[Hashable],
    correct: torch.Tensor,
    counted: torch.Tensor,
    backend: str,
    vocab_size: int | None,
) -> tuple[TokenStatistics, Counts]:
    """Statistics of the groups flagged in ``counted`` [G] (the others get no (group, token) pairs),
    and the backend's counts (to write values back with ``Counts.place``)."""
    num_groups = len(group_ids)
    counts = count_tokens(responses, mask, group, num_groups, correct, counted, backend, vocab_size)
    per_group = (
        group_sums(correct, group, num_groups),
        group_sums(~correct, group, num_groups),
        group_sums(counts.lengths * correct, group, num_groups),
        group_sums(counts.lengths * ~correct, group, num_groups),
    )
    return TokenStatistics(group_ids, *counts.pairs, *per_group), counts


def collect_token_statistics(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores: ScoresLike,
    group_index: GroupIndex,
    config: KTAEConfig | Mapping[str, Any] | None = None,
    *,
    backend: str = "auto",
    vocab_size: int | None = None,
) -> TokenStatistics:
    """Sums per (group, token) and per group for one batch (or one data-parallel shard).

    responses: [B, T] int; response_mask: [B, T] bool or 0/1; scores: [B]; group_index: [B] ids.
    backend and vocab_size: as in ``compute_ktae_advantages``.
    Shards of one step combine with ``merge_token_statistics`` when their group ids are global.
    """
    fork_safe_threads()
    config = _config(config)
    mask, scores = validate_batch(responses, response_mask, scores)
    check_backend(backend, vocab_size, responses.device)
    group, group_ids = dense_groups(group_index, responses.shape[0], responses.device)
    every_group = torch.ones(len(group_ids), dtype=torch.bool, device=responses.device)
    stats, _ = _count(
        responses, mask, group, group_ids, scores > config.correct_threshold, every_group, backend, vocab_size
    )
    return stats


def merge_token_statistics(shards: list[TokenStatistics]) -> TokenStatistics:
    """Add up the statistics of several shards, matching groups by id and (group, token) pairs."""
    fork_safe_threads()
    if not shards:
        raise ValueError("merge_token_statistics needs at least one shard")
    numbers: dict[Hashable, int] = {}
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
    # Key the pairs by compacted token ids: group * (distinct tokens) + token never overflows int64.
    ids, token = torch.unique(torch.cat([s.token.to(device) for s in shards]), return_inverse=True)
    vocab = max(len(ids), 1)
    pair_key, pair = torch.unique(group * vocab + token, return_inverse=True)

    def per_pair(field: str) -> torch.Tensor:
        values = torch.cat([getattr(s, field).to(device) for s in shards])
        return torch.zeros(len(pair_key), dtype=torch.int64, device=device).index_add_(0, pair, values)

    return TokenStatistics(
        list(numbers),
        pair_key // vocab,
        ids[pair_key % vocab],
        *(per_pair(f) for f in ("a", "b", "f_true", "f_false")),
        *(per_group(f) for f in ("n_true", "n_false", "len_true", "len_false")),
    )


# ----------------------------------------------------------------------------------------------
# Steps 4-6: strength, direction, value


def _entropy_bits(q: torch.Tensor) -> torch.Tensor:
    """Binary entropy H(q) in bits with 0 log 0 = 0. Elementwise, float64."""
    terms = torch.stack([q, 1 - q])
    return -torch.where(terms > 0, terms * torch.log2(terms.clamp(min=1e-300)), 0.0).sum(0)


def _table_statistics(
    n_true: torch.Tensor, n_false: torch.Tensor, a: torch.Tensor, b: torch.Tensor, config: KTAEConfig
) -> dict[str, torch.Tensor]:
    """p-value, F, IG, h and the strength (alpha F + beta IG) / (alpha + beta) of the tables (a, b) with
    margins (n_true, n_false), all [C], plus one trailing neutral entry (p = 1, everything else 0) for
    pairs outside any table."""
    p_value, p_is_one = fisher_pvalues(n_true, n_false, a, b)
    nt, nf, a, b = n_true.double(), n_false.double(), a.double(), b.double()
    c, n = nt - a, nt + nf
    fisher = torch.where(p_is_one, 0.0, torch.exp(-2 * p_value))
    present, absent = a + b, n - a - b
    conditional = present / n * _entropy_bits(a / present.clamp(min=1)) + absent / n * _entropy_bits(
        c / absent.clamp(min=1)
    )
    info_gain = (_entropy_bits(nt / n) - conditional).clamp(min=0.0)
    h = torch.asin(torch.sqrt(a / nt)) - torch.asin(torch.sqrt(b / nf))
    weight = config.alpha + config.beta_ig
    strength = (config.alpha * fisher + config.beta_ig * info_gain) / weight if weight else torch.zeros_like(h)
    tables = {"p_value": p_value, "fisher": fisher, "info_gain": info_gain, "h": h, "strength": strength}
    neutral = {"p_value": 1.0}
    return {name: torch.cat([t, t.new_full((1,), neutral.get(name, 0.0))]) for name, t in tables.items()}


# Every table of each margin pair is computed up to this many Fisher terms, or the batch's masked tokens
# when more; beyond, only the tables the batch's pairs hold.
ALL_TABLES_MIN_TERMS = 2**16


def _computes_every_table(terms: float, tokens: int) -> bool:
    """Whether the tables of every (a, b) of the margin pairs, costing ``terms`` Fisher terms, stay within
    the size of a batch of ``tokens`` masked tokens."""
    return terms <= max(ALL_TABLES_MIN_TERMS, tokens)


@dataclasses.dataclass
class _GroupTerms:
    """What a (group, token) pair's value needs from its group. Per group [G] unless said.

    ``tables`` holds flat per-table statistics (``_table_statistics``) ending in a neutral entry.
    ``pair_entry`` [K], when set, is each pair's entry (the layout of the tables the pairs hold);
    when None the tables are every (a, b) of each margin pair and the pair (a, b) of group g reads
    entry offset + a * width + b * b_step, groups with one outcome the neutral last entry
    (width = b_step = 0). scale_true/scale_false are the K * N of the TF saturation (1 where N = 0,
    where f = 0 too).
    """

    tables: dict[str, torch.Tensor]
    offset: torch.Tensor
    width: torch.Tensor
    b_step: torch.Tensor
    scale_true: torch.Tensor
    scale_false: torch.Tensor
    pair_entry: torch.Tensor | None

    def entry(self, stats: TokenStatistics) -> torch.Tensor:
        if self.pair_entry is not None:
            return self.pair_entry
        g = stats.group
        return self.offset[g] + stats.a * self.width[g] + stats.b * self.b_step[g]


def _group_terms(stats: TokenStatistics, config: KTAEConfig) -> _GroupTerms:
    """Fisher tables of the groups with both outcomes, and TF scales.

    A margin pair (n_T, n_F) has (n_T + 1) (n_F + 1) tables: computing them all costs up to that times
    min(n_T, n_F) + 1 Fisher terms. While that stays within the batch's size (small groups, the usual
    case) every table is computed and a pair finds its own by arithmetic; otherwise (a group of
    thousands of rollouts) only the distinct tables of the pairs are, whose cost the pairs' tokens bound.
    """
    device = stats.token.device
    margins = torch.stack([stats.n_true, stats.n_false], dim=1)
    mixed = (margins > 0).all(dim=1)
    pairs, pair_of_group = torch.unique(margins[mixed], dim=0, return_inverse=True)
    n_true, n_false = pairs.reshape(-1, 2).unbind(1)
    sizes = (n_true + 1) * (n_false + 1)
    pair_offset = torch.cumsum(sizes, 0) - sizes
    offset = torch.zeros(len(stats.group_ids), dtype=torch.int64, device=device)
    offset[mixed] = pair_offset[pair_of_group]
    width = torch.where(mixed, stats.n_false + 1, 0)

    # >= the sum of their support sizes; in float64, where n_T n_F min(n_T, n_F) of a huge group cannot overflow
    terms = float((sizes.double() * (torch.minimum(n_true, n_false) + 1)).sum())
    if _computes_every_table(terms, int((stats.len_true + stats.len_false).sum())):
        table_pair = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)
        keys = torch.arange(int(sizes.sum()), device=device)
        pair_entry = None
    else:
        counted = mixed[stats.group]
        g = stats.group[counted]
        keys, inverse = torch.unique(offset[g] + stats.a[counted] * width[g] + stats.b[counted], return_inverse=True)
        table_pair = torch.searchsorted(pair_offset, keys, right=True) - 1
        pair_entry = torch.full_like(stats.group, len(keys))
        pair_entry[counted] = inverse
    local = keys - pair_offset[table_pair]
    table_width = n_false[table_pair] + 1
    tables = _table_statistics(
        n_true[table_pair], n_false[table_pair], local // table_width, local % table_width, config
    )
    offset[~mixed] = tables["h"].shape[0] - 1

    # s = tf (k1 + 1) / (tf + K) with tf = f / N is f (k1 + 1) / (f + K N): K N is per group.
    length = torch.stack([stats.len_true, stats.len_false]).double()
    average = (length.sum(0, keepdim=True) / 2).clamp(min=1)
    scale = torch.where(length > 0, BM25_K1 * (1 - BM25_B + BM25_B * length / average) * length, 1.0)
    return _GroupTerms(tables, offset, width, mixed.long(), scale[0], scale[1], pair_entry)


def _term_frequency(stats: TokenStatistics, terms: _GroupTerms) -> torch.Tensor:
    """TF = s_T / (s_F + eps) - s_F / (s_T + eps) of BM25-style saturated frequencies. [K] float64."""
    s_true = stats.f_true * (BM25_K1 + 1) / (stats.f_true + terms.scale_true[stats.group])
    s_false = stats.f_false * (BM25_K1 + 1) / (stats.f_false + terms.scale_false[stats.group])
    return s_true / (s_false + TF_EPS) - s_false / (s_true + TF_EPS)


def _ignored_ids(config: KTAEConfig, device: torch.device) -> torch.Tensor:
    return torch.tensor(config.ignore_token_ids, dtype=torch.int64, device=device)


def _values(
    stats: TokenStatistics, config: KTAEConfig, terms: _GroupTerms, entry: torch.Tensor, tf: torch.Tensor
) -> torch.Tensor:
    """v = top * tanh(strength * (h + gamma TF) / 2), 0 for ignored token ids. [K] float64."""
    if not config.enabled:
        return torch.zeros_like(tf)
    value = config.top * torch.tanh(
        terms.tables["strength"][entry] * (terms.tables["h"][entry] + config.gamma_tf * tf) / 2
    )
    if config.ignore_token_ids:
        value = torch.where(torch.isin(stats.token, _ignored_ids(config, stats.token.device)), 0.0, value)
    return value


def _pair_values(stats: TokenStatistics, config: KTAEConfig, counts: Counts) -> torch.Tensor:
    """The values alone, [K] float64: the backend's fused kernel when it has one (and the tables are laid
    out by margin pair), the formulas above otherwise."""
    terms = _group_terms(stats, config)
    if counts.fused_values is None or not config.enabled or terms.pair_entry is not None:
        return _values(stats, config, terms, terms.entry(stats), _term_frequency(stats, terms))
    return counts.fused_values(
        stats.group,
        stats.token,
        stats.a,
        stats.b,
        stats.f_true,
        stats.f_false,
        terms.offset,
        terms.width,
        terms.b_step,
        terms.scale_true,
        terms.scale_false,
        terms.tables["strength"],
        terms.tables["h"],
        _ignored_ids(config, stats.token.device),
        config.gamma_tf,
        config.top,
        BM25_K1 + 1,
        TF_EPS,
    )


def key_token_values_from_statistics(
    stats: TokenStatistics, config: KTAEConfig | Mapping[str, Any] | None = None
) -> KeyTokenValues:
    """Key-token value of every (group, token) pair from its statistics (docs/spec.md, steps 4-6), with the
    intermediate statistics for reports. All [K]."""
    fork_safe_threads()
    config = _config(config)
    terms = _group_terms(stats, config)
    entry = terms.entry(stats)
    tables = terms.tables
    tf = _term_frequency(stats, terms)
    return KeyTokenValues(
        group_ids=stats.group_ids,
        group=stats.group,
        token=stats.token,
        a=stats.a,
        b=stats.b,
        c=stats.n_true[stats.group] - stats.a,
        d=stats.n_false[stats.group] - stats.b,
        p_value=tables["p_value"][entry],
        fisher=tables["fisher"][entry],
        info_gain=tables["info_gain"][entry],
        h=tables["h"][entry],
        tf=tf,
        value=_values(stats, config, terms, entry, tf),
    )


def compute_key_token_values(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores: ScoresLike,
    group_index: GroupIndex,
    config: KTAEConfig | Mapping[str, Any] | None = None,
    *,
    backend: str = "auto",
    vocab_size: int | None = None,
) -> KeyTokenValues:
    """Key-token value and statistics of every (group, token) pair of a batch.

    responses: [B, T] int; response_mask: [B, T]; scores: [B]; group_index: [B] ids.
    backend and vocab_size: as in ``compute_ktae_advantages``.
    """
    fork_safe_threads()
    config = _config(config)
    stats = collect_token_statistics(
        responses, response_mask, scores, group_index, config, backend=backend, vocab_size=vocab_size
    )
    return key_token_values_from_statistics(stats, config)


# ----------------------------------------------------------------------------------------------
# Step 7: token-level advantage


def _advantage_inputs(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores: ScoresLike,
    group_index: GroupIndex,
    config: KTAEConfig,
    backend: str,
    vocab_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Hashable], torch.Tensor]:
    """The checked batch: mask [B, T] bool, scores [B], dense group [B] and ids [G], rollout-level advantage [B]."""
    mask, scores = validate_batch(responses, response_mask, scores)
    check_backend(backend, vocab_size, responses.device)
    group, group_ids = dense_groups(group_index, responses.shape[0], responses.device)
    headroom = config.top if config.enabled else 0.0  # |key-token value| < top
    rollout = finite_rollout_advantages(
        scores, group, len(group_ids), config.rollout_advantage, config.epsilon, headroom
    )
    return mask, scores, group, group_ids, rollout


def compute_ktae_advantages(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores: ScoresLike,
    group_index: GroupIndex,
    config: KTAEConfig | Mapping[str, Any] | None = None,
    *,
    backend: str = "auto",
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Token-level KTAE advantage: rollout-level advantage plus the key-token value of each token.

    responses: [B, T] int token ids (right-padded); response_mask: [B, T] bool or 0/1;
    scores: [B] float, treated as constants (detached); group_index: [B] ids of one type: ints, strings
    or other hashables (rollouts of a group need not be adjacent).
    config: a KTAEConfig, a mapping of its options (``KTAEConfig.from_dict``) or None (the defaults).
    backend: how tokens are counted, "auto", "cpu-kernels" or "sort" (``ktae.core.counting``).
    vocab_size: when given, a token id >= vocab_size at a masked position is refused by name.
    Returns float32 [B, T] on responses.device, exactly 0 where the mask is 0.
    """
    fork_safe_threads()
    config = _config(config)
    mask, scores, group, group_ids, rollout = _advantage_inputs(
        responses, response_mask, scores, group_index, config, backend, vocab_size
    )
    if not config.enabled:
        return torch.where(mask, rollout.float()[:, None], 0.0)
    # Only groups with both correct and incorrect rollouts get key-token values: count only theirs.
    correct = scores > config.correct_threshold
    n_true = group_sums(correct, group, len(group_ids))
    n_all = group_sums(torch.ones_like(correct), group, len(group_ids))
    mixed = (n_true > 0) & (n_true < n_all)
    stats, counts = _count(responses, mask, group, group_ids, correct, mixed, backend, vocab_size)
    return counts.place(_pair_values(stats, config, counts), rollout)


def compute_ktae_advantages_with_values(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    scores: ScoresLike,
    group_index: GroupIndex,
    config: KTAEConfig | Mapping[str, Any] | None = None,
    *,
    backend: str = "auto",
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, KeyTokenValues]:
    """``compute_ktae_advantages`` and ``compute_key_token_values`` of one batch from one count, for a
    trainer that also reports the key tokens of its step.

    Arguments as in ``compute_ktae_advantages``. Every group is counted, as ``compute_key_token_values``
    counts them (a group with one outcome has value 0 on every token, so the advantages are the same).
    Returns (advantages [B, T] float32, the values and statistics of every (group, token) pair).
    """
    fork_safe_threads()
    config = _config(config)
    mask, scores, group, group_ids, rollout = _advantage_inputs(
        responses, response_mask, scores, group_index, config, backend, vocab_size
    )
    every_group = torch.ones(len(group_ids), dtype=torch.bool, device=responses.device)
    correct = scores > config.correct_threshold
    stats, counts = _count(responses, mask, group, group_ids, correct, every_group, backend, vocab_size)
    values = key_token_values_from_statistics(stats, config)
    return counts.place(values.value, rollout), values
