"""A tiny transformer and tokenizer built locally (no downloads), for the default CPU job, the verl CPU demo and tests.

The tokenizer is character-level over the synthetic arithmetic alphabet (a task's own, when it adds
characters: `ktae.data.synthetic.ArithmeticTask.alphabet`), with ``\\boxed{`` as a
single token so that a rollout's answer marker is one decision, plus ``<pad>``, ``<eos>`` and
``<unk>``. It decodes by plain concatenation, so each token's piece is its text. The model is a
Qwen2 causal LM of a few hundred thousand parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ktae.data.synthetic import ALPHABET, BOXED

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_tokenizer(alphabet: Sequence[str] = ALPHABET):
    """Character-level ``PreTrainedTokenizerFast`` over the synthetic task's alphabet and the characters
    of ``alphabet`` not in it (a task's `ArithmeticTask.alphabet`), which go after the default ones so
    that the default tokens keep their ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    extra = [c for c in alphabet if c not in ALPHABET]
    if len(set(alphabet)) != len(alphabet) or any(len(c) != 1 for c in alphabet):
        raise ValueError(f"the tiny tokenizer's alphabet must be distinct single characters, got {alphabet!r}")
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, BOXED, *ALPHABET, *extra])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # One piece per character, except the boxed marker; [\s\S] matches the newline too.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed\{|[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    return tokenizer


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the tiny Qwen2 model."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 128

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tiny model {name} must be an integer >= 1, got {value!r}")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"tiny model: hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads}), and that of num_key_value_heads ({self.num_key_value_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(tokenizer, sizes: TinyModelConfig | None = None, seed: int = 0):
    """A randomly initialised ``Qwen2ForCausalLM`` sized by ``sizes``, seeded for reproducibility."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sizes = sizes or TinyModelConfig()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **sizes.to_dict(),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model
