"""The custom reward functions, loaded and called by verl's own reward code (naive and dapo managers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from verl import DataProto
from verl.trainer.ppo.reward import get_custom_reward_fn, load_reward_manager

from ktae.rewards import dapo_reward, make_overlong_penalty

WORDS = ["<pad>", "<eos>", "so", "the", "answer", "is", "\\boxed{4}", "\\boxed{5}", "\\boxed{\\frac{1}{2}}", "x"]


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="x"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def reward_config(compose, name: str, *extra: str):
    return compose(
        [
            "reward.custom_reward_function.path=pkg://ktae.integrations.verl.reward",
            f"reward.custom_reward_function.name={name}",
            *extra,
        ]
    )


def test_verl_loads_and_calls_compute_score(compose):
    score = get_custom_reward_fn(reward_config(compose, "compute_score"))
    right = score(
        data_source="math",
        solution_str="so the answer is \\boxed{\\frac{1}{2}}",
        ground_truth="0.5",
        extra_info={"index": 0},
    )
    wrong = score(data_source="math", solution_str="the answer is \\boxed{3}", ground_truth="0.5", extra_info={})
    none = score(data_source="math", solution_str="no box here", ground_truth=np.array(["4", "four"]), extra_info={})
    assert (right["score"], right["acc"]) == (1.0, True)
    assert (wrong["score"], wrong["acc"]) == (0.0, False)
    assert (none["score"], none["acc"]) == (0.0, False)


def response_item(tokenizer, words: list[str], ground_truth: str, prompt_length: int = 2, width: int = 20) -> DataProto:
    ids = tokenizer.convert_tokens_to_ids(words)
    responses = torch.full((1, width), tokenizer.pad_token_id)
    responses[0, : len(ids)] = torch.tensor(ids)
    attention = torch.zeros((1, prompt_length + width), dtype=torch.long)
    attention[0, : prompt_length + len(ids)] = 1
    return DataProto.from_dict(
        tensors={"prompts": torch.full((1, prompt_length), 2), "responses": responses, "attention_mask": attention},
        non_tensors={
            "data_source": np.array(["math"], dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": ground_truth}], dtype=object),
            "extra_info": np.array([{"index": 0}], dtype=object),
        },
    )


def test_dapo_reward_with_verls_overlong_shaping_equals_ktae_rewards(compose, tokenizer):
    max_length, buffer = 16, 8
    config = reward_config(
        compose,
        "compute_dapo_score",
        "reward.reward_manager.name=dapo",
        f"+reward.reward_kwargs.max_resp_len={max_length}",
        "+reward.reward_kwargs.overlong_buffer_cfg.enable=True",
        f"+reward.reward_kwargs.overlong_buffer_cfg.len={buffer}",
        "+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0",
        "+reward.reward_kwargs.overlong_buffer_cfg.log=True",
    )
    manager = load_reward_manager(config, tokenizer)
    assert type(manager).__name__ == "DAPORewardManager"
    overlong = make_overlong_penalty(max_length, buffer, penalty_factor=1.0)
    # Responses up to max_resp_len tokens: the recipes set it to data.max_response_length, which the
    # rollout never exceeds (beyond it verl's penalty keeps growing while ktae's stops at -factor).
    cases = []
    for filler, answer in [
        (0, "\\boxed{4}"),
        (7, "\\boxed{4}"),
        (11, "\\boxed{5}"),
        (12, "\\boxed{4}"),
        (2, "\\boxed{5}"),
    ]:
        words = ["the", "answer", "is", *["so"] * filler, answer]
        result = manager.loop.run_until_complete(manager.run_single(response_item(tokenizer, words, "4")))
        text = " ".join(words)
        expected = dapo_reward([text], answer=["4"])[0] + overlong([words])[0]
        cases.append((result["reward_score"], expected))
        assert result["reward_extra_info"]["acc"] == (answer == "\\boxed{4}")
    scores, expected = zip(*cases)
    assert scores == pytest.approx(expected, abs=1e-9)
    assert min(scores) < -1.0  # the penalty acted on at least one long wrong answer
