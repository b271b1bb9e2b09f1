"""A tiny Qwen2 policy, a word-level tokenizer and a toy prompt set, built locally (no downloads).

Shared by the TRL trainer tests and their two-process worker script.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

WORDS = ["a", "b", "c", "d", "e", "f", "easy", "hard", "mixed", "q", "?"]
SPECIALS = ["<pad>", "<eos>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="?")


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_dataset(kinds=("mixed",), copies: int = 8) -> Dataset:
    """Prompts "<kind> q <i>"; the kind decides the reward (see `toy_reward`)."""
    rows = [{"prompt": f"{kind} q {letter}", "kind": kind} for kind in kinds for letter in "abcdef"[:copies]]
    return Dataset.from_list(rows)


def toy_reward(completions, kind, **kwargs) -> list[float]:
    """1 for an "easy" prompt, 0 for a "hard" one; for "mixed", 1 when the completion has an odd number of characters.

    The parity makes about half of a random policy's rollouts correct, so "mixed" groups rarely score alike.
    """
    rewards = []
    for text, k in zip(completions, kind):
        if k == "easy":
            rewards.append(1.0)
        elif k == "hard":
            rewards.append(0.0)
        else:
            rewards.append(float(len(text) % 2))
    return rewards


def config_options(output_dir, **overrides) -> dict:
    """Options of a KTAEGRPOConfig that runs on CPU in a second or two per step."""
    options = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        temperature=1.5,
        ktae_log_rollouts_steps=1,
        ktae_log_rollouts_groups=1,
        dataloader_num_workers=0,
    )
    options.update(overrides)
    return options
