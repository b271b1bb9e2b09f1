"""Supervised warm start: stops at the accuracy target, saves a loadable model folder, refuses bad data."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from ktae.data.synthetic import make_arithmetic_dataset
from ktae.integrations.trl.warmstart import WarmStartConfig, warm_start
from ktae.models import load_tokenizer
from ktae.tiny import TinyModelConfig, build_model, build_tokenizer

SIZES = TinyModelConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
)


def test_stops_at_the_target_and_saves_the_trained_model(tmp_path):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, SIZES)
    before = model.model.embed_tokens.weight.detach().clone()
    train, held_out = make_arithmetic_dataset(128, seed=1), make_arithmetic_dataset(8, seed=2)
    # target 0 is reached at the first measurement after a step: training stops there, not at max_steps
    config = WarmStartConfig(max_steps=50, target_accuracy=0.0, eval_steps=3, batch_size=8, max_new_tokens=8)
    history = warm_start(model, tokenizer, train, held_out, tmp_path / "warm", config)
    assert [step for step, _ in history] == [0, 3]
    assert all(0.0 <= accuracy <= 1.0 for _, accuracy in history)

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "warm")
    assert torch.equal(saved.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert not torch.equal(saved.model.embed_tokens.weight, before)
    assert load_tokenizer(tmp_path / "warm")("1+2=").input_ids == tokenizer("1+2=").input_ids
    assert not (tmp_path / "warm.saving").exists() and not (tmp_path / "warm.tmp").exists()


def test_refuses_data_without_worked_solutions(tmp_path):
    tokenizer = build_tokenizer()
    prompts_only = make_arithmetic_dataset(16, seed=1).remove_columns("completion")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['completion'\]"):
        warm_start(
            build_model(tokenizer, SIZES),
            tokenizer,
            prompts_only,
            prompts_only,
            tmp_path / "w",
            WarmStartConfig(max_steps=1),
        )


@pytest.mark.parametrize("kwargs", [{"max_steps": -1}, {"target_accuracy": 1.5}, {"eval_steps": 0}])
def test_bad_options_are_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        WarmStartConfig(**kwargs)
