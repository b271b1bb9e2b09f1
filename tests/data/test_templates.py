import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from ktae.data import TEMPLATES, apply_template, get_template, render_prompt


def test_the_papers_prompt_in_qwen_chat_format():
    text = render_prompt(apply_template("What is 1+1?", "qwen_math"))
    assert text == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen_boxed_puts_the_instruction_after_the_problem():
    system, user = apply_template("P", "qwen_boxed")
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert user["content"] == "P\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_plain_text_templates_are_strings():
    for name in ("r1", "plain"):
        prompt = apply_template("P", name)
        assert isinstance(prompt, str) and "P" in prompt and render_prompt(prompt) == prompt
    assert apply_template("P", "r1").endswith("Assistant: <think>")


def test_render_uses_the_tokenizers_chat_template():
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert render_prompt(apply_template("P", "qwen_math"), tokenizer).endswith("[user]P[assistant]")


def test_unknown_template():
    assert set(TEMPLATES) == {"qwen_math", "qwen_boxed", "r1", "plain"}
    with pytest.raises(ValueError, match="unknown prompt template 'foo'"):
        get_template("foo")
