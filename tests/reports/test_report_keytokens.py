import numpy as np
import pytest
import torch

from ktae import KTAEConfig, compute_key_token_values
from ktae.reports.keytokens import analyse
from ktae.reports.rollouts import tokenize_rollouts
from ktae.run_folder import RolloutRecord

# The worked example of docs/spec.md: one group, scores [1, 1, 0, 0].
EXAMPLE = [([5, 7, 7, 9], 1.0), ([5, 8, 9], 1.0), ([6, 7, 9, 9], 0.0), ([6, 8], 0.0)]


def _data(rows, step=0, group="g", **kwargs):
    rollouts = [
        RolloutRecord(step=step, group=group, prompt="p", score=score, token_ids=ids, tokens=[f"<{t}>" for t in ids])
        for ids, score in rows
    ]
    return tokenize_rollouts(rollouts, **kwargs)


def test_the_spec_worked_example():
    analysis = analyse(_data(EXAMPLE))
    order = np.argsort(analysis.stats["token"])  # the estimator's row order is its own
    stats = {name: column[order] for name, column in analysis.stats.items()}
    assert stats["token"].tolist() == [5, 6, 7, 8, 9]
    assert [(a, b, c, d) for a, b, c, d in zip(stats["a"], stats["b"], stats["c"], stats["d"])] == [
        (2, 0, 0, 2),
        (0, 2, 2, 0),
        (1, 1, 1, 1),
        (1, 1, 1, 1),
        (2, 1, 0, 1),
    ]
    np.testing.assert_allclose(stats["p_value"], [1 / 3, 1 / 3, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(stats["info_gain"], [1, 1, 0, 0, 0.311278], atol=1e-6)
    np.testing.assert_allclose(stats["value"], [1, -1, 0, 0, 0.029752], atol=1e-6)
    np.testing.assert_allclose(analysis.rollout_advantage, [0.866024, 0.866024, -0.866024, -0.866024], atol=1e-6)
    # Every token points at the row of its own (group, token).
    for ids, rows in zip(analysis.data.token_ids, analysis.row_of_token):
        assert analysis.stats["token"][rows].tolist() == ids.tolist()
    assert stats["occ_true"].tolist() == [2, 0, 2, 1, 2] and stats["occ_false"].tolist() == [0, 2, 1, 1, 2]


def test_summaries_of_the_worked_example():
    analysis = analyse(_data(EXAMPLE))
    # 13 tokens; |v| > 0.5 for the two 5s (credited) and the two 6s (blamed).
    assert analysis.strong_shares() == pytest.approx({"strong": 4 / 13, "credited": 2 / 13, "blamed": 2 / 13})
    top = analysis.top_tokens()
    assert [(e["token"], e["occurrences"], e["groups"]) for e in top["credited"]] == [(5, 2, 1), (9, 4, 1)]
    assert top["credited"][1]["total"] == pytest.approx(4 * 0.029752, abs=1e-5)
    assert [(e["token"], e["label"], e["total"]) for e in top["blamed"]] == [(6, "<6>", pytest.approx(-2.0))]


def test_the_same_group_id_at_two_steps_is_two_groups_and_matches_the_estimator():
    flipped = [(ids, 1.0 - score) for ids, score in EXAMPLE]
    rows = [*EXAMPLE, *flipped]
    rollouts = [
        RolloutRecord(step=step, group="g", prompt="p", score=s, token_ids=ids, tokens=[str(t) for t in ids])
        for step, (ids, s) in zip([1] * 4 + [2] * 4, rows)
    ]
    analysis = analyse(tokenize_rollouts(rollouts))
    assert analysis.group_keys == [(1, "g"), (2, "g")]
    values = [analysis.stats["value"][r] for r in analysis.row_of_token]
    # Swapping correct and incorrect negates every value (spec property).
    for first, second in zip(values[:4], values[4:]):
        np.testing.assert_allclose(first, -second, atol=1e-12)
    # And each step equals a direct call of the estimator on its own rollouts.
    width = max(len(ids) for ids, _ in rows)
    responses = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in flipped])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in flipped])
    direct = compute_key_token_values(responses, mask, [s for _, s in flipped], [0] * 4)
    step_two = analysis.stats["group"] == 1
    ours = dict(zip(analysis.stats["token"][step_two].tolist(), analysis.stats["value"][step_two].tolist()))
    assert ours == dict(zip(direct.token.tolist(), direct.value.tolist()))


def test_ignored_ids_and_config_reach_the_estimator():
    data = _data(EXAMPLE, ignore_token_ids=[5])
    analysis = analyse(data, KTAEConfig(top=0.5, ignore_token_ids=(6,)))
    assert analysis.config.ignore_token_ids == (5, 6)
    values = dict(zip(analysis.stats["token"].tolist(), analysis.stats["value"].tolist()))
    assert values[5] == 0.0 and values[6] == 0.0
    assert values[9] == pytest.approx(0.5 * np.tanh(np.arctanh(0.029752) * 1), abs=1e-6)
    with pytest.raises(ValueError, match="no response tokens"):
        analyse(_data([([], 1.0), ([], 0.0)]))


def test_logged_advantages_are_checked_against_the_recomputed_ones():
    # The spec's advantages for the worked example, as a trainer would log them.
    logged = [
        [1.866024, 0.866024, 0.866024, 0.895775],
        [1.866024, 0.866024, 0.895775],
        [-1.866024, -0.866024, -0.836272, -0.836272],
        [-1.866024, -0.866024],
    ]
    rollouts = [
        RolloutRecord(
            step=0, group="g", prompt="p", score=s, token_ids=ids, tokens=[str(t) for t in ids], advantages=adv
        )
        for (ids, s), adv in zip(EXAMPLE, logged)
    ]
    count, gap = analyse(tokenize_rollouts(rollouts)).stored_advantage_gap()
    assert count == 4 and gap < 1e-5
    # A GRPO run without KTAE logs the rollout-level advantage only: the gap is the value of token 5.
    for rollout in rollouts:
        rollout.advantages = [rollout.advantages[0] - (1 if rollout.score else -1)] * len(rollout.token_ids)
    count, gap = analyse(tokenize_rollouts(rollouts)).stored_advantage_gap()
    assert count == 4 and gap == pytest.approx(1.0, abs=1e-5)
