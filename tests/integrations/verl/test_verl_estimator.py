"""verl's own compute_advantage with adv_estimator="ktae", on a DataProto built as verl's trainer builds it."""

from __future__ import annotations

import copy
import uuid

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from verl import DataProto
from verl.trainer.ppo.core_algos import get_adv_estimator_fn, register_adv_est
from verl.trainer.ppo.ray_trainer import compute_advantage

from ktae import KTAEConfig, compute_key_token_values
from ktae.integrations.verl import compute_ktae_outcome_advantage, response_tokens

PAD, EOS = 0, 1


def make_batch(responses: list[list[int]], scores: list[float], uids: list[str], prompt_length: int = 3) -> DataProto:
    """A batch as verl's trainer has it before the advantage step: left-padded prompts, right-padded
    responses, attention mask over both, the outcome reward on the last response token, uid strings."""
    width = max(len(r) for r in responses)
    batch = len(responses)
    response_ids = torch.full((batch, width), PAD, dtype=torch.long)
    response_mask = torch.zeros((batch, width), dtype=torch.long)
    rewards = torch.zeros((batch, width), dtype=torch.float32)
    for i, (tokens, score) in enumerate(zip(responses, scores)):
        response_ids[i, : len(tokens)] = torch.tensor(tokens)
        response_mask[i, : len(tokens)] = 1
        rewards[i, len(tokens) - 1] = score
    prompts = torch.randint(2, 50, (batch, prompt_length))
    prompt_mask = torch.ones((batch, prompt_length), dtype=torch.long)
    prompt_mask[::2, 0] = 0  # some prompts left-padded
    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": response_ids,
            "input_ids": torch.cat([prompts, response_ids], dim=1),
            "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
            "token_level_rewards": rewards,
        },
        non_tensors={"uid": np.array(uids, dtype=object)},
    )


@pytest.fixture(scope="module")
def algorithm(compose):
    return compose(["algorithm.adv_estimator=ktae"]).algorithm


def with_options(algorithm, **options):
    algorithm = copy.deepcopy(algorithm)
    with open_dict(algorithm):
        for key, value in options.items():
            if key in algorithm.ktae:
                algorithm.ktae[key] = value
            else:
                algorithm[key] = value
    return algorithm


def random_batch(seed: int) -> tuple[DataProto, list[list[int]], list[float], list[str]]:
    """Three prompts of 5 rollouts, rows interleaved; one prompt all correct; EOS ends most responses."""
    rng = np.random.default_rng(seed)
    uids = [str(uuid.UUID(int=int(rng.integers(1 << 62)))) for _ in range(3)]
    rows, scores, row_uids = [], [], []
    for _ in range(5):
        for g, uid in enumerate(uids):
            length = int(rng.integers(1, 9))
            tokens = rng.integers(2, 9, size=length).tolist()
            if rng.random() < 0.8:
                tokens[-1] = EOS
            rows.append(tokens)
            scores.append(1.0 if g == 2 else float(rng.integers(0, 2)))
            row_uids.append(uid)
    return make_batch(rows, scores, row_uids), rows, scores, row_uids


def make_batch_like(data: DataProto) -> DataProto:
    return DataProto.from_dict(
        tensors={k: v.clone() for k, v in data.batch.items() if k not in ("advantages", "returns")},
        non_tensors={"uid": data.non_tensor_batch["uid"].copy()},
    )


def response_mask(data: DataProto) -> torch.Tensor:
    return data.batch["attention_mask"][:, -data.batch["responses"].shape[1] :]


def bonus_of(data: DataProto, config: KTAEConfig) -> torch.Tensor:
    """v(group, token) at each response token, 0 off the mask, from the core's per-(group, token) table."""
    mask = response_mask(data).bool()
    scores = data.batch["token_level_rewards"].sum(-1)
    uids = data.non_tensor_batch["uid"]
    records = compute_key_token_values(data.batch["responses"], mask, scores, uids, config=config).to_records()
    value = {(r["group"], r["token"]): r["value"] for r in records}
    return torch.tensor(
        [
            [value[(uid, int(t))] if m else 0.0 for t, m in zip(row, row_mask)]
            for uid, row, row_mask in zip(uids, data.batch["responses"], mask)
        ]
    )


def verl_base(data: DataProto, base: str, algorithm) -> DataProto:
    """verl's own advantage step with ``base`` as the estimator, on a copy of the batch."""
    return compute_advantage(
        make_batch_like(data),
        adv_estimator=base,
        config=algorithm,
        norm_adv_by_std_in_grpo=algorithm.get("norm_adv_by_std_in_grpo", True),
    )


@register_adv_est("test_median_baseline")
def median_baseline_advantage(token_level_rewards, response_mask, index, config=None, **kwargs):
    """An estimator another plugin registers: score minus the group's median, on every response token."""
    scores = token_level_rewards.sum(-1)
    medians = {uid: scores[torch.tensor(index == uid)].median() for uid in set(index)}
    advantages = (scores - torch.stack([medians[uid] for uid in index]))[:, None] * response_mask
    return advantages, advantages


BASES = [
    ("grpo", {}),
    ("grpo", {"norm_adv_by_std_in_grpo": False}),
    ("grpo_vectorized", {}),
    ("rloo", {}),
    ("rloo_vectorized", {}),
    ("reinforce_plus_plus", {}),
    ("reinforce_plus_plus_baseline", {}),
    ("remax", {}),
    ("opo", {}),
    ("gpg", {}),
    ("grpo_passk", {}),
    ("test_median_baseline", {}),
]


@pytest.mark.parametrize(("base", "options"), BASES, ids=[f"{b}{'-unscaled' if o else ''}" for b, o in BASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_advantage_is_verls_base_plus_the_key_token_values(algorithm, base, options, seed):
    data, *_ = random_batch(seed)
    if base == "remax":  # ReMax's greedy-rollout baseline, where the batch has one
        data.batch["reward_baselines"] = torch.linspace(0.0, 1.0, len(data))
    config = with_options(algorithm, base=base, **options)
    uids = data.non_tensor_batch["uid"]
    with response_tokens(data.batch["responses"], uids=uids, ignore_token_ids=(PAD, EOS)) as tokens:
        out = compute_advantage(make_batch_like(data), adv_estimator="ktae", config=config)
    reference = verl_base(data, base, config)
    bonus = bonus_of(data, KTAEConfig(ignore_token_ids=(PAD, EOS)))
    assert bonus.abs().max() > 0.1  # the key-token term really acts
    expected = reference.batch["advantages"] + bonus * response_mask(data)
    assert out.batch["advantages"].dtype == torch.float32
    torch.testing.assert_close(out.batch["advantages"], expected, rtol=0, atol=1e-6)
    outside = response_mask(data) == 0
    assert (out.batch["advantages"][outside] == reference.batch["advantages"][outside]).all()
    # returns: verl's own where the base has separate ones (reward-to-go), else the advantages
    if reference.batch["returns"] is reference.batch["advantages"]:
        torch.testing.assert_close(out.batch["returns"], out.batch["advantages"], rtol=0, atol=0)
    else:
        torch.testing.assert_close(out.batch["returns"], reference.batch["returns"], rtol=0, atol=0)
    assert set(tokens.metrics) == {
        "ktae/large_bonus_share",
        "ktae/bonus_mean_correct",
        "ktae/bonus_mean_incorrect",
        "ktae/seconds",
    }


def test_metrics_of_the_advantage_step(algorithm):
    data, _, scores, _ = random_batch(8)
    with response_tokens(data.batch["responses"], ignore_token_ids=(PAD, EOS)) as tokens:
        compute_advantage(make_batch_like(data), adv_estimator="ktae", config=algorithm)
    mask = response_mask(data).bool()
    bonus = bonus_of(data, KTAEConfig(ignore_token_ids=(PAD, EOS)))
    correct = torch.tensor(scores)[:, None].expand_as(mask) > 0
    assert tokens.metrics["ktae/large_bonus_share"] == pytest.approx(float((bonus.abs() > 0.5)[mask].double().mean()))
    assert tokens.metrics["ktae/bonus_mean_correct"] == pytest.approx(float(bonus[mask & correct].double().mean()))
    assert tokens.metrics["ktae/bonus_mean_incorrect"] == pytest.approx(float(bonus[mask & ~correct].double().mean()))
    assert tokens.metrics["ktae/bonus_mean_correct"] > 0 > tokens.metrics["ktae/bonus_mean_incorrect"]
    assert 0 < tokens.metrics["ktae/seconds"] < 5
    torch.testing.assert_close(tokens.scores, torch.tensor(scores))


@pytest.mark.parametrize("score", [1.0, 0.0])
def test_a_step_with_one_outcome_leaves_the_other_bonus_mean_out(algorithm, score):
    data = make_batch([[5, 7, 7, 9], [5, 8, 9], [6, 7, 9, 9], [6, 8]], [score] * 4, ["p0"] * 4)
    with response_tokens(data.batch["responses"], ignore_token_ids=(PAD, EOS)) as tokens:
        compute_advantage(data, adv_estimator="ktae", config=algorithm)
    present, absent = ("correct", "incorrect") if score else ("incorrect", "correct")
    assert f"ktae/bonus_mean_{absent}" not in tokens.metrics  # not NaN: nothing to average this step
    assert tokens.metrics[f"ktae/bonus_mean_{present}"] == 0.0  # one outcome: no key-token value
    assert tokens.metrics["ktae/large_bonus_share"] == 0.0


def test_values_asked_for_are_the_ones_behind_the_bonus(algorithm):
    data, *_ = random_batch(6)
    uids = data.non_tensor_batch["uid"]
    with response_tokens(data.batch["responses"], uids=uids, ignore_token_ids=(PAD, EOS)) as plain:
        expected = compute_advantage(make_batch_like(data), adv_estimator="ktae", config=algorithm)
    with response_tokens(data.batch["responses"], uids=uids, ignore_token_ids=(PAD, EOS), with_values=True) as tokens:
        out = compute_advantage(make_batch_like(data), adv_estimator="ktae", config=algorithm)
    assert plain.values is None
    torch.testing.assert_close(out.batch["advantages"], expected.batch["advantages"], rtol=0, atol=1e-6)
    scores = data.batch["token_level_rewards"].sum(-1)
    reference = compute_key_token_values(
        data.batch["responses"], response_mask(data), scores, uids, config=KTAEConfig(ignore_token_ids=(PAD, EOS))
    )
    assert tokens.values.to_records() == reference.to_records()


def test_worked_example_of_the_spec(algorithm):
    # docs/spec.md, "Worked example": scores [1, 1, 0, 0], alpha = beta = gamma = top = 1, grpo base.
    rows = [[5, 7, 7, 9], [5, 8, 9], [6, 7, 9, 9], [6, 8]]
    data = make_batch(rows, [1.0, 1.0, 0.0, 0.0], ["p0"] * 4)
    with response_tokens(data.batch["responses"], ignore_token_ids=(PAD, EOS)):
        adv = compute_advantage(data, adv_estimator="ktae", config=algorithm).batch["advantages"]
    expected = [
        [1.866024, 0.866024, 0.866024, 0.895775],
        [1.866024, 0.866024, 0.895775, 0.0],
        [-1.866024, -0.866024, -0.836272, -0.836272],
        [-1.866024, -0.866024, 0.0, 0.0],
    ]
    torch.testing.assert_close(adv, torch.tensor(expected), rtol=0, atol=2e-6)


@pytest.mark.parametrize("base", ["grpo", "rloo", "reinforce_plus_plus"])
def test_top_zero_is_verls_base(algorithm, base):
    """With the key-token term off, KTAE is verl's own base estimator."""
    data, *_ = random_batch(3)
    config = with_options(algorithm, top=0.0, base=base)
    with response_tokens(data.batch["responses"], ignore_token_ids=(PAD, EOS)):
        ktae = compute_advantage(make_batch_like(data), adv_estimator="ktae", config=config).batch["advantages"]
    torch.testing.assert_close(ktae, verl_base(data, base, config).batch["advantages"], rtol=0, atol=0)


def test_ktae_options_reach_the_estimator(algorithm):
    data, *_ = random_batch(4)
    config = with_options(algorithm, alpha=2.0, gamma_tf=0.5, top=0.7)
    with response_tokens(data.batch["responses"], ignore_token_ids=(PAD,)):
        adv = compute_advantage(make_batch_like(data), adv_estimator="ktae", config=config).batch["advantages"]
    bonus = bonus_of(data, KTAEConfig(alpha=2.0, gamma_tf=0.5, top=0.7, ignore_token_ids=(PAD,)))
    expected = verl_base(data, "grpo", config).batch["advantages"] + bonus * response_mask(data)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_estimator_is_registered_and_accepts_responses_directly(algorithm):
    assert get_adv_estimator_fn("ktae") is compute_ktae_outcome_advantage
    data, *_ = random_batch(5)
    adv, returns = compute_ktae_outcome_advantage(
        token_level_rewards=data.batch["token_level_rewards"],
        response_mask=response_mask(data),
        index=data.non_tensor_batch["uid"],
        config=algorithm,
        responses=data.batch["responses"],
    )
    bonus = bonus_of(data, KTAEConfig()) * response_mask(data)
    expected = verl_base(data, "grpo", algorithm).batch["advantages"] + bonus
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    assert returns is adv


@pytest.mark.parametrize(
    ("base", "missing"),
    [
        ("remax", "reward_baselines"),
        ("gae", "values, gamma, lam"),
        ("optimal_token_baseline", "old_log_probs, sum_pi_squared, rollout_is_weights"),
        ("gdpo", "non_tensor_batch, batch"),
    ],
)
def test_a_base_whose_inputs_ktae_cannot_supply_is_refused(algorithm, base, missing):
    data, *_ = random_batch(9)
    with response_tokens(data.batch["responses"], ignore_token_ids=(PAD,)):
        message = f"base={base}: verl's {base} estimator needs {missing}, which KTAE cannot"
        with pytest.raises(ValueError, match=message):
            compute_advantage(data, adv_estimator="ktae", config=with_options(algorithm, base=base))


def test_without_response_tokens_the_error_says_how_to_launch(algorithm):
    data, *_ = random_batch(6)
    with pytest.raises(RuntimeError, match=r"python -m ktae\.integrations\.verl"):
        compute_advantage(data, adv_estimator="ktae", config=algorithm)


def test_rows_out_of_order_are_refused(algorithm):
    data, _, _, uids = random_batch(7)
    with (
        response_tokens(data.batch["responses"], uids=uids[::-1], ignore_token_ids=(PAD,)),
        pytest.raises(ValueError, match="not in the order of the batch"),
    ):
        compute_advantage(data, adv_estimator="ktae", config=algorithm)
    with (
        response_tokens(data.batch["responses"][:, :-1], ignore_token_ids=(PAD,)),
        pytest.raises(ValueError, match="same \\[batch, response length\\] shape"),
    ):
        compute_advantage(data, adv_estimator="ktae", config=algorithm)
