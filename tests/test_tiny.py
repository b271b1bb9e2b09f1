"""The tiny tokenizer and model of the default job: lossless on the task, reloadable, seeded."""

import pytest
import torch

from ktae.data.synthetic import HEDGE, ArithmeticTask, make_arithmetic_dataset
from ktae.models import load_tokenizer
from ktae.tiny import TinyModelConfig, build_model, build_tokenizer


def test_tokenizer_is_lossless_on_the_task_and_boxed_is_one_token():
    tokenizer = build_tokenizer()
    data = make_arithmetic_dataset(100, seed=0, task=ArithmeticTask(max_operand=30, operations="+-"))
    for row in data:
        text = row["prompt"] + row["completion"]
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
        assert "".join(tokenizer.decode([i]) for i in ids) == text  # one piece per token
    assert len(tokenizer("\\boxed{12}").input_ids) == 4
    assert tokenizer("7<eos>").input_ids[-1] == tokenizer.eos_token_id


def test_a_task_with_hedges_adds_its_character_after_the_default_tokens():
    default = build_tokenizer().get_vocab()
    hedged = build_tokenizer(ArithmeticTask(hedge_rate=0.3).alphabet)
    assert build_tokenizer(ArithmeticTask().alphabet).get_vocab() == default
    assert hedged.get_vocab() == {**default, HEDGE: len(default)}
    text = "7+5=12\n~~~~\n\\boxed{12}"
    assert hedged.decode(hedged(text).input_ids) == text and hedged.unk_token_id not in hedged(text).input_ids
    with pytest.raises(ValueError, match="distinct single characters"):
        build_tokenizer(("a", "a"))


def test_saved_tokenizer_loads_back_identical(tmp_path):
    tokenizer = build_tokenizer()
    build_model(tokenizer, TinyModelConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1)).save_pretrained(
        tmp_path
    )
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "12+30=42\n\\boxed{42}"
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_model_is_sized_and_seeded():
    tokenizer = build_tokenizer()
    sizes = TinyModelConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )
    a, b, c = (
        build_model(tokenizer, sizes, seed=1),
        build_model(tokenizer, sizes, seed=1),
        build_model(tokenizer, sizes, seed=2),
    )
    assert a.config.vocab_size == len(tokenizer) and a.config.num_hidden_layers == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    prompt = tokenizer(["1+2="], return_tensors="pt")
    out = a.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= 4 + 5 and torch.equal(out[:, :4], prompt.input_ids)
