"""The KTAE estimator: per-(group, token) contingency statistics, key-token values, advantages.

Counting runs over the whole batch at once: numba kernels with per-thread vocabulary tables on the
CPU, one stable sort of (group, token) keys elsewhere. The Fisher p-values come from per-margin
tables (``ktae.core.fisher``) and every other formula is vectorized over the (group, token) pairs.
Memory is O(B * T + threads * vocabulary); nothing is sized groups x vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ktae.core import cpu
from ktae.core.config import KTAEConfig
from ktae.core.fisher import fisher_pvalue_tables, table_offsets
from ktae.core.groups import dense_groups, group_sums, validate_batch
from ktae.core.rollout import ROLLOUT_ADVANTAGES

# BM25-style saturation constants of the term-frequency correction (spec, step 5).
BM25_K1 = 2.0
BM25_B = 0.5
TF_EPS = 1e-5

# The numba kernels serve CPU tensors; tests switch them off to run the sort path on the CPU.
USE_CPU_KERNELS = True


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
# Step 3: counting. Two interchangeable backends: numba kernels on the CPU (``ktae.core.cpu``),
# and a stable sort of (group, token) keys on any other device.


def _segment_sums(values: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments of ``values`` [N] beginning at ``starts`` [K] (sorted, starts[0] = 0)."""
    cumulative = torch.cumsum(values, 0, dtype=torch.int64)
    ends = torch.cat([starts[1:], starts.new_tensor([values.shape[0]])]) - 1
    before = torch.cat([cumulative.new_zeros(1), cumulative[starts[1:] - 1]])
    return cumulative[ends] - before


def _count_tokens_sorted(
    responses: torch.Tensor, mask: torch.Tensor, group: torch.Tensor, correct: torch.Tensor, vocab: int, num_groups: int
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Per-(group, token) counts of the masked tokens by one stable sort; any device.

    Returns ((group, token, a, b, f_true, f_false) [K], segment [N]: the pair of each masked position
    in row-major order).
    """
    rows = torch.repeat_interleave(torch.arange(responses.shape[0], device=responses.device), mask.sum(dim=1))
    tokens = responses[mask].to(torch.int64)
    # A stable sort keeps positions of one (group, token) in row order, so a new rollout inside a
    # segment shows as a change of row. int32 keys sort markedly faster when they fit.
    key = group[rows] * vocab + tokens
    sorted_key, order = torch.sort(key if num_groups * vocab >= 2**31 else key.to(torch.int32), stable=True)
    sorted_rows = rows[order]
    new_key = torch.ones_like(sorted_key, dtype=torch.bool)
    new_key[1:] = sorted_key[1:] != sorted_key[:-1]
    new_row = new_key.clone()
    new_row[1:] |= sorted_rows[1:] != sorted_rows[:-1]
    sorted_correct = correct[sorted_rows]

    starts = torch.nonzero(new_key).flatten()
    occurrences = torch.diff(starts, append=starts.new_tensor([tokens.shape[0]]))
    f_true = _segment_sums(sorted_correct, starts)
    presence = _segment_sums(new_row, starts)
    a = _segment_sums(new_row & sorted_correct, starts)
    pair_key = sorted_key[starts].to(torch.int64)
    segment = torch.empty_like(order)
    segment[order] = torch.cumsum(new_key, 0) - 1
    return (pair_key // vocab, pair_key % vocab, a, presence - a, f_true, occurrences - f_true), segment


def _on_cpu_kernels(responses: torch.Tensor) -> bool:
    return USE_CPU_KERNELS and responses.device.type == "cpu"


def _scan(responses: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """Smallest and largest token id at masked positions ((0, -1) when none), and row lengths [B]."""
    if _on_cpu_kernels(responses):
        return cpu.scan_masked(responses, mask)
    lengths = mask.sum(dim=1)
    if not bool(mask.any()):
        return 0, -1, lengths
    return int(torch.where(mask, responses, 0).min()), int(torch.where(mask, responses, -1).max()), lengths


def _count(
    responses: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    group_ids: list,
    correct: torch.Tensor,
    counted: torch.Tensor,
) -> tuple[TokenStatistics, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Statistics of the groups flagged in ``counted`` [G] (the others get no (group, token) pairs).

    Returns the statistics and ``place(values [K], rollout [B]) -> [B, T] float32``, which writes
    rollout[i] + the value of each masked token's (group, token) pair, 0 off the mask.
    """
    if _on_cpu_kernels(responses):
        responses = responses.contiguous()
    low, high, lengths = _scan(responses, mask)
    if low < 0:
        raise ValueError(f"responses contain a negative token id ({low}) at a masked (response) position")
    num_groups, vocab = len(group_ids), max(high + 1, 1)
    per_group = (
        group_sums(correct, group, num_groups),
        group_sums(~correct, group, num_groups),
        group_sums(lengths * correct, group, num_groups),
        group_sums(lengths * ~correct, group, num_groups),
    )
    if _on_cpu_kernels(responses):
        layout = cpu.group_layout(group, num_groups)
        *pairs, entry_ptr = cpu.count_tokens(responses, mask, lengths, *layout, correct, counted, vocab)

        def place(values: torch.Tensor, rollout: torch.Tensor) -> torch.Tensor:
            return cpu.write_advantages(responses, mask, *layout, entry_ptr, pairs[1], values, rollout, vocab)

    else:
        token_mask = mask & counted[group][:, None]
        if bool(token_mask.any()):
            pairs, segment = _count_tokens_sorted(responses, token_mask, group, correct, vocab, num_groups)
        else:
            pairs = [torch.zeros(0, dtype=torch.int64, device=mask.device) for _ in range(6)]
            segment = torch.zeros(0, dtype=torch.int64, device=mask.device)

        def place(values: torch.Tensor, rollout: torch.Tensor) -> torch.Tensor:
            advantages = torch.where(mask, rollout.float()[:, None], 0.0)
            advantages[token_mask] += values.float()[segment]
            return advantages

    return TokenStatistics(group_ids, *pairs, *per_group), place


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
    every_group = torch.ones(len(group_ids), dtype=torch.bool, device=responses.device)
    stats, _ = _count(responses, mask, group, group_ids, scores > config.correct_threshold, every_group)
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


def _table_statistics(n_true: torch.Tensor, n_false: torch.Tensor, config: KTAEConfig) -> dict[str, torch.Tensor]:
    """p-value, F, IG, h and the strength (alpha F + beta IG) / (alpha + beta) of every table (a, b)
    of each margin pair, flat as in ``fisher_pvalue_tables``, plus one trailing neutral entry
    (p = 1, everything else 0) for pairs outside any table."""
    p_value, p_is_one = fisher_pvalue_tables(n_true, n_false)
    sizes = (n_true + 1) * (n_false + 1)
    pair = torch.repeat_interleave(torch.arange(len(n_true), device=n_true.device), sizes)
    local = torch.arange(int(sizes.sum()), device=n_true.device) - table_offsets(n_true, n_false)[pair]
    nt, nf = n_true[pair].double(), n_false[pair].double()
    a = (local // (n_false[pair] + 1)).double()
    b = (local % (n_false[pair] + 1)).double()
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


@dataclasses.dataclass
class _GroupTerms:
    """What a (group, token) pair's value needs from its group. Per group [G] unless said.

    The pair (a, b) of group g reads entry offset + a * width + b * b_step of the flat ``tables``;
    groups with one outcome point at the tables' neutral last entry (width = b_step = 0).
    scale_true/scale_false are the K * N of the TF saturation (1 where N = 0, where f = 0 too).
    """

    tables: dict[str, torch.Tensor]
    offset: torch.Tensor
    width: torch.Tensor
    b_step: torch.Tensor
    scale_true: torch.Tensor
    scale_false: torch.Tensor

    def entry(self, stats: TokenStatistics) -> torch.Tensor:
        g = stats.group
        return self.offset[g] + stats.a * self.width[g] + stats.b * self.b_step[g]


def _group_terms(stats: TokenStatistics, config: KTAEConfig) -> _GroupTerms:
    """Tables of the distinct (n_T, n_F) margins of groups with both outcomes, and TF scales."""
    device = stats.token.device
    margins = torch.stack([stats.n_true, stats.n_false], dim=1)
    mixed = (margins > 0).all(dim=1)
    pairs, pair_of_group = torch.unique(margins[mixed], dim=0, return_inverse=True)
    pairs = pairs.reshape(-1, 2)
    tables = _table_statistics(pairs[:, 0], pairs[:, 1], config)
    offset = torch.full((len(stats.group_ids),), tables["h"].shape[0] - 1, dtype=torch.int64, device=device)
    offset[mixed] = table_offsets(pairs[:, 0], pairs[:, 1])[pair_of_group]

    # s = tf (k1 + 1) / (tf + K) with tf = f / N is f (k1 + 1) / (f + K N): K N is per group.
    length = torch.stack([stats.len_true, stats.len_false]).double()
    average = (length.sum(0, keepdim=True) / 2).clamp(min=1)
    scale = torch.where(length > 0, BM25_K1 * (1 - BM25_B + BM25_B * length / average) * length, 1.0)
    return _GroupTerms(tables, offset, torch.where(mixed, stats.n_false + 1, 0), mixed.long(), scale[0], scale[1])


def _term_frequency(stats: TokenStatistics, terms: _GroupTerms) -> torch.Tensor:
    """TF = s_T / (s_F + eps) - s_F / (s_T + eps) of BM25-style saturated frequencies. [K] float64."""
    s_true = stats.f_true * (BM25_K1 + 1) / (stats.f_true + terms.scale_true[stats.group])
    s_false = stats.f_false * (BM25_K1 + 1) / (stats.f_false + terms.scale_false[stats.group])
    return s_true / (s_false + TF_EPS) - s_false / (s_true + TF_EPS)


def _ignored_ids(config: KTAEConfig, device: torch.device) -> torch.Tensor:
    return torch.tensor(config.ignore_token_ids, dtype=torch.int64, device=device)


def _values(stats: TokenStatistics, config: KTAEConfig, terms: _GroupTerms, entry: torch.Tensor, tf: torch.Tensor):
    """v = top * tanh(strength * (h + gamma TF) / 2), 0 for ignored token ids. [K] float64."""
    if not config.enabled:
        return torch.zeros_like(tf)
    value = config.top * torch.tanh(terms.tables["strength"][entry] * (terms.tables["h"][entry] + config.gamma_tf * tf) / 2)
    if config.ignore_token_ids:
        value = torch.where(torch.isin(stats.token, _ignored_ids(config, stats.token.device)), 0.0, value)
    return value


def _pair_values(stats: TokenStatistics, config: KTAEConfig) -> torch.Tensor:
    """The values alone, [K] float64: one fused kernel on the CPU, the formulas above elsewhere."""
    terms = _group_terms(stats, config)
    if not (_on_cpu_kernels(stats.token) and config.enabled):
        return _values(stats, config, terms, terms.entry(stats), _term_frequency(stats, terms))
    return cpu.pair_values(
        stats.group, stats.token, stats.a, stats.b, stats.f_true, stats.f_false, terms.offset, terms.width,
        terms.b_step, terms.scale_true, terms.scale_false, terms.tables["strength"], terms.tables["h"],
        _ignored_ids(config, stats.token.device), config.gamma_tf, config.top, BM25_K1 + 1, TF_EPS,
    )


def key_token_values_from_statistics(stats: TokenStatistics, config: KTAEConfig | None = None) -> KeyTokenValues:
    """Key-token value of every (group, token) pair from its statistics (spec steps 4-6), with the
    intermediate statistics for reports. All [K]."""
    config = config or KTAEConfig()
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
    rollout = ROLLOUT_ADVANTAGES[config.rollout_advantage](scores.double(), group, len(group_ids), config.epsilon)
    if not config.enabled:
        return torch.where(mask, rollout.float()[:, None], 0.0)
    # Only groups with both correct and incorrect rollouts get key-token values: count only theirs.
    correct = scores > config.correct_threshold
    n_true = group_sums(correct, group, len(group_ids))
    n_all = group_sums(torch.ones_like(correct), group, len(group_ids))
    stats, place = _count(responses, mask, group, group_ids, correct, (n_true > 0) & (n_true < n_all))
    return place(_pair_values(stats, config), rollout)
