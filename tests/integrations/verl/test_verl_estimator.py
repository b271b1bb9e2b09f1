"""verl's own compute_advantage with adv_estimator="ktae", on a DataProto built as verl's trainer builds it."""

from __future__ import annotations

import copy
import uuid

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from verl import DataProto
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

from ktae import KTAEConfig, compute_ktae_advantages
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
    for rollout in range(5):
        for g, uid in enumerate(uids):
            length = int(rng.integers(1, 9))
            tokens = rng.integers(2, 9, size=length).tolist()
            if rng.random() < 0.8:
                tokens[-1] = EOS
            rows.append(tokens)
            scores.append(1.0 if g == 2 else float(rng.integers(0, 2)))
            row_uids.append(uid)
    return make_batch(rows, scores, row_uids), rows, scores, row_uids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verl_compute_advantage_equals_core_estimator(algorithm, seed):
    data, _, scores, uids = random_batch(seed)
    with response_tokens(data.batch["responses"], uids=uids, ignore_token_ids=(PAD, EOS)):
        out = compute_advantage(data, adv_estimator="ktae", config=algorithm)
    mask = data.batch["attention_mask"][:, -data.batch["responses"].shape[1] :]
    expected = compute_ktae_advantages(
        data.batch["responses"], mask, torch.tensor(scores), np.array(uids, dtype=object),
        config=KTAEConfig(ignore_token_ids=(PAD, EOS)),
    )
    assert out.batch["advantages"].dtype == torch.float32
    torch.testing.assert_close(out.batch["advantages"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out.batch["returns"], expected, rtol=0, atol=0)
    # KTAE really acts here: some token-level values differ from the rollout-level advantage.
    rollout_level = compute_advantage(make_batch_like(data), adv_estimator="grpo", config=algorithm)
    assert not torch.allclose(out.batch["advantages"], rollout_level.batch["advantages"])


def make_batch_like(data: DataProto) -> DataProto:
    return DataProto.from_dict(
        tensors={k: v.clone() for k, v in data.batch.items() if k not in ("advantages", "returns")},
        non_tensors={"uid": data.non_tensor_batch["uid"].copy()},
    )


def test_worked_example_of_the_spec(algorithm):
    # ../shared/spec/KTAE.md, "A worked example": scores [1, 1, 0, 0], alpha = beta = gamma = top = 1.
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


@pytest.mark.parametrize("normalize", [True, False])
def test_top_zero_is_verls_grpo(algorithm, normalize):
    """With the key-token term off, KTAE is verl's own grpo (std-normalised or not)."""
    data, *_ = random_batch(3)
    config = with_options(algorithm, top=0.0, norm_adv_by_std_in_grpo=normalize)
    with response_tokens(data.batch["responses"], ignore_token_ids=(PAD, EOS)):
        ktae = compute_advantage(make_batch_like(data), adv_estimator="ktae", config=config).batch["advantages"]
    grpo = compute_advantage(
        make_batch_like(data), adv_estimator="grpo", norm_adv_by_std_in_grpo=normalize, config=config
    ).batch["advantages"]
    torch.testing.assert_close(ktae, grpo, rtol=0, atol=1e-6)


def test_ktae_options_reach_the_estimator(algorithm):
    data, _, scores, uids = random_batch(4)
    config = with_options(algorithm, alpha=2.0, gamma_tf=0.5, top=0.7)
    with response_tokens(data.batch["responses"], ignore_token_ids=(PAD,)):
        adv = compute_advantage(data, adv_estimator="ktae", config=config).batch["advantages"]
    mask = data.batch["attention_mask"][:, -data.batch["responses"].shape[1] :]
    expected = compute_ktae_advantages(
        data.batch["responses"], mask, torch.tensor(scores), np.array(uids, dtype=object),
        config=KTAEConfig(alpha=2.0, gamma_tf=0.5, top=0.7, ignore_token_ids=(PAD,)),
    )
    torch.testing.assert_close(adv, expected, rtol=0, atol=0)


def test_estimator_is_registered_and_accepts_responses_directly(algorithm):
    assert get_adv_estimator_fn("ktae") is compute_ktae_outcome_advantage
    data, _, scores, uids = random_batch(5)
    mask = data.batch["attention_mask"][:, -data.batch["responses"].shape[1] :]
    adv, returns = compute_ktae_outcome_advantage(
        token_level_rewards=data.batch["token_level_rewards"], response_mask=mask,
        index=data.non_tensor_batch["uid"], config=algorithm, responses=data.batch["responses"],
    )
    expected = compute_ktae_advantages(data.batch["responses"], mask, torch.tensor(scores), uids)
    torch.testing.assert_close(adv, expected, rtol=0, atol=0)
    assert returns is adv


def test_without_response_tokens_the_error_says_how_to_launch(algorithm):
    data, *_ = random_batch(6)
    with pytest.raises(RuntimeError, match="python -m ktae.integrations.verl"):
        compute_advantage(data, adv_estimator="ktae", config=algorithm)


def test_rows_out_of_order_are_refused(algorithm):
    data, _, _, uids = random_batch(7)
    with response_tokens(data.batch["responses"], uids=uids[::-1], ignore_token_ids=(PAD,)):
        with pytest.raises(ValueError, match="not in the order of the batch"):
            compute_advantage(data, adv_estimator="ktae", config=algorithm)
    with response_tokens(data.batch["responses"][:, :-1], ignore_token_ids=(PAD,)):
        with pytest.raises(ValueError, match="same \\[batch, response length\\] shape"):
            compute_advantage(data, adv_estimator="ktae", config=algorithm)
