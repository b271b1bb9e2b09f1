"""`ktae.data.word_problems`: the arithmetic task told in English, as chat prompts."""

import re

import pytest

from ktae.data.synthetic import ArithmeticTask
from ktae.data.templates import BOXED_INSTRUCTION
from ktae.data.word_problems import EXAMPLE, make_word_problem_dataset
from ktae.rewards import accuracy_reward

NUMBER = {"has": 1, "buys": 1, "finds": 1, "gets": 1, "gives": -1, "loses": -1}


def story_value(story: str) -> int:
    """The answer read back off the story's sentences (a verb, then its count)."""
    total = 0
    for sentence in story.split(". "):
        match = re.search(r"\b(has|buys|finds|gets|gives|loses)\b(?: away)? (\d+)", sentence)
        if match:
            total += NUMBER[match.group(1)] * int(match.group(2))
    return total


def test_word_problems_are_deterministic_solvable_chat_prompts():
    task = ArithmeticTask(min_terms=2, max_terms=4, max_operand=9, operations="+-")
    rows = make_word_problem_dataset(300, seed=5, task=task)
    assert rows.to_list() == make_word_problem_dataset(300, seed=5, task=task).to_list()
    assert rows.to_list() != make_word_problem_dataset(300, seed=6, task=task).to_list()
    for row in rows:
        system, user = row["prompt"]
        assert system == {"role": "system", "content": BOXED_INSTRUCTION} and user["role"] == "user"
        example, story = user["content"].split("Now solve: ")
        assert example == EXAMPLE.removesuffix("Now solve: ") and story.endswith("have now?")
        assert int(row["answer"]) == story_value(story) >= 0  # never below zero
        steps = row["completion"][0]["content"].split("\n")
        assert 1 <= len(steps) - 2 <= 3  # one line per operation, between the opening and the answer
        assert accuracy_reward([row["completion"][0]["content"]], answer=[row["answer"]]) == [1.0]
    assert any(" - " in row["completion"][0]["content"] for row in rows)  # both operators occur


@pytest.mark.parametrize("knob", ["direct_answer_rate", "hedge_rate"])
def test_knobs_of_the_synthetic_completions_are_refused(knob):
    with pytest.raises(ValueError, match=f"word problems have no {knob}"):
        make_word_problem_dataset(3, task=ArithmeticTask(**{knob: 0.5}))
