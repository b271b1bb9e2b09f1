"""`ktae.data.word_problems`: the arithmetic task told in English, as chat prompts."""

import re

import pytest

from ktae.data.synthetic import ArithmeticTask
from ktae.data.templates import BOXED_INSTRUCTION
from ktae.data.word_problems import EXAMPLES, example_turns, make_word_problem_dataset
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
        system, *examples, user = row["prompt"]
        assert system == {"role": "system", "content": BOXED_INSTRUCTION} and examples == example_turns()
        story = user["content"]
        assert user["role"] == "user" and story.endswith("have now?")
        assert int(row["answer"]) == story_value(story) >= 0  # never below zero
        solution = row["completion"][0]["content"]
        *steps, last = solution.split(". ")
        assert 1 <= len(steps) <= 3 and last == f"The answer is \\boxed{{{row['answer']}}}."  # one step per operation
        assert all(step_holds(step) for step in steps)
        assert accuracy_reward([solution], answer=[row["answer"]]) == [1.0]
    assert any(" - " in row["completion"][0]["content"] for row in rows)  # both operators occur


def step_holds(step: str) -> bool:
    """A step "a + b = c" (or "a - b = c") holds."""
    a, operator, b, _, c = step.removesuffix(".").split(" ")
    return int(a) + (int(b) if operator == "+" else -int(b)) == int(c)


def test_worked_examples_are_chat_turns_that_solve_their_stories():
    # Each example: the user's question, then the assistant's worked solution in the format of ``completion``.
    turns = example_turns()
    assert [t["role"] for t in turns] == ["user", "assistant"] * len(EXAMPLES)
    assert {story.moves[0][0] for story in EXAMPLES} == {"+", "-"}  # a gain and a loss
    for question, solution in zip(turns[::2], turns[1::2]):
        answer = str(story_value(question["content"]))
        assert accuracy_reward([solution["content"]], answer=[answer]) == [1.0]


@pytest.mark.parametrize("knob", ["direct_answer_rate", "hedge_rate"])
def test_knobs_of_the_synthetic_completions_are_refused(knob):
    with pytest.raises(ValueError, match=f"word problems have no {knob}"):
        make_word_problem_dataset(3, task=ArithmeticTask(**{knob: 0.5}))
