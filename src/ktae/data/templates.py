"""Prompt templates for math problems.

- ``qwen_math``: the paper's prompt (Qwen2.5-Math's CoT prompt): system "Please reason step by
  step, and put your final answer within \\boxed{}.", the problem as the user turn.
- ``qwen_boxed``: Qwen2.5-Math's "qwen-boxed" prompt: system "You are a helpful assistant.", the
  problem followed by the boxed instruction as the user turn.
- ``r1``: DeepSeek-R1-Zero's plain-text prompt with <think>/<answer> tags (no chat format).
- ``plain``: the problem followed by the boxed instruction, as plain text (no chat format).

Chat templates give a list of messages (TRL's conversational format; the model's tokenizer renders
it); ``render_prompt`` turns either kind into the text a model is given.
"""

from __future__ import annotations

from dataclasses import dataclass

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class PromptTemplate:
    """``{problem}`` in ``user`` is replaced by the problem; ``chat`` False gives plain text."""

    name: str
    user: str
    system: str | None = None
    chat: bool = True

    def build(self, problem: str) -> str | list[dict[str, str]]:
        """The prompt for one problem: chat messages, or a string for plain-text templates."""
        user = self.user.replace("{problem}", problem)
        if not self.chat:
            return user
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*messages, {"role": "user", "content": user}]


TEMPLATES: dict[str, PromptTemplate] = {
    "qwen_math": PromptTemplate("qwen_math", user="{problem}", system=BOXED_INSTRUCTION),
    "qwen_boxed": PromptTemplate(
        "qwen_boxed", user="{problem}\n" + BOXED_INSTRUCTION, system="You are a helpful assistant."
    ),
    "r1": PromptTemplate(
        "r1",
        chat=False,
        user=(
            "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
            "The assistant first thinks about the reasoning process in the mind and then provides the user with "
            "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
            "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
            "</answer>.\nUser: {problem}\nAssistant: <think>"
        ),
    ),
    "plain": PromptTemplate("plain", chat=False, user="{problem}\n" + BOXED_INSTRUCTION + "\n"),
}


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}") from None


def apply_template(problem: str, template: str) -> str | list[dict[str, str]]:
    """The prompt of ``problem`` under the template named ``template``."""
    return get_template(template).build(problem)


def render_prompt(prompt: str | list[dict[str, str]], tokenizer=None) -> str:
    """The text a model is given: a string as is; chat messages through the tokenizer's chat template
    (with the assistant turn opened), or in Qwen's ChatML format when the tokenizer has none."""
    if isinstance(prompt, str):
        return prompt
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in prompt)
    return turns + "<|im_start|>assistant\n"
