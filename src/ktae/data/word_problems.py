"""Arithmetic word problems in plain English, for real (pretrained, chat) models.

The same difficulty knobs as the synthetic task (`ktae.data.synthetic.ArithmeticTask`: number of
terms, largest operand, operators), told as a short story simple enough for a small
instruction-tuned model to attempt, generated locally and deterministically from a seed:

    prompt      [{"role": "system", "content": "Please reason step by step, ..."},
                 {"role": "user", "content": "Ann has 2 pens. She buys 3 more pens. How many pens does Ann have now?"},
                 {"role": "assistant", "content": "2 + 3 = 5. The answer is \\boxed{5}."},
                 ... (the second worked example, `EXAMPLES`)
                 {"role": "user", "content": "Mia has 7 marbles. She finds 5 more marbles. Then she gives away
                  3 marbles. How many marbles does Mia have now?"}]
    answer      "9"
    completion  [{"role": "assistant", "content": "7 + 5 = 12. 12 - 3 = 9. The answer is \\boxed{9}."}]

Prompts are chat messages (TRL's conversational format), so the model's own chat template renders
them. The worked examples come as earlier turns of the conversation: a small instruction-tuned
model follows an answer format it has "given" itself far more often than one asked for in the
system turn or shown inside the user's message (benchmarks/NOTES.md, "Can it solve the word problems?",
has the figures). ``completion`` is the worked solution in the same format, for a supervised warm start.
A subtraction never takes more than there is: a step that would go below zero adds instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ktae.data.synthetic import ArithmeticTask
from ktae.data.templates import apply_template

#: (name, pronoun) of the story's owner.
PEOPLE = (("Mia", "She"), ("Tom", "He"), ("Ana", "She"), ("Leo", "He"), ("Sara", "She"), ("Ben", "He"))
#: Plural nouns whose singular drops the final "s".
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards")
GAINS = ("buys {n} more {noun}", "finds {n} more {noun}", "gets {n} more {noun} from a friend")
LOSSES = ("gives away {n} {noun}", "loses {n} {noun}", "gives {n} {noun} to a friend")
#: The prompt template of the word problems (`ktae.data.templates`): the boxed-answer instruction as the system turn.
TEMPLATE = "qwen_math"


def _noun(number: int, item: str) -> str:
    return item if number != 1 else item[:-1]


@dataclass(frozen=True)
class Story:
    """One word problem: ``owner`` (name, pronoun) starts with ``start`` ``item`` and makes ``moves``,
    each (operator "+" or "-", operand, phrase from `GAINS` or `LOSSES`)."""

    owner: tuple[str, str]
    item: str
    start: int
    moves: tuple[tuple[str, int, str], ...]

    def question(self) -> str:
        name, pronoun = self.owner
        sentences = [f"{name} has {self.start} {_noun(self.start, self.item)}."]
        for number, (_, operand, phrase) in enumerate(self.moves):
            subject = pronoun if number == 0 else "Then " + pronoun.lower()
            sentences.append(f"{subject} {phrase.format(n=operand, noun=_noun(operand, self.item))}.")
        sentences.append(f"How many {self.item} does {name} have now?")
        return " ".join(sentences)

    def solution(self) -> tuple[str, int]:
        """The worked solution (one equation per move, then the boxed answer) and the answer."""
        value, steps = self.start, []
        for operator, operand, _ in self.moves:
            result = value + operand if operator == "+" else value - operand
            steps.append(f"{value} {operator} {operand} = {result}.")
            value = result
        return " ".join([*steps, f"The answer is \\boxed{{{value}}}."]), value


#: The worked examples every prompt shows as earlier turns: one gain, one loss (two-term problems,
#: short enough that a solution in their format fits a 24-token response).
EXAMPLES = (
    Story(("Ann", "She"), "pens", 2, (("+", 3, GAINS[0]),)),
    Story(("Ben", "He"), "cards", 8, (("-", 6, LOSSES[1]),)),
)


def example_turns() -> list[dict[str, str]]:
    """`EXAMPLES` as chat turns: each question from the user, its worked solution from the assistant."""
    turns = []
    for story in EXAMPLES:
        turns.append({"role": "user", "content": story.question()})
        turns.append({"role": "assistant", "content": story.solution()[0]})
    return turns


def sample_story(rng: random.Random, task: ArithmeticTask) -> Story:
    """A story drawn from ``task``'s difficulty knobs."""
    owner = rng.choice(PEOPLE)
    item = rng.choice(ITEMS)
    n_terms = rng.randint(task.min_terms, task.max_terms)
    start = value = rng.randint(1, task.max_operand)
    moves = []
    for _ in range(n_terms - 1):
        operand = rng.randint(1, task.max_operand)
        operator = rng.choice(task.operations)
        if operator == "-" and operand > value:
            operator = "+"
        moves.append((operator, operand, rng.choice(GAINS if operator == "+" else LOSSES)))
        value = value + operand if operator == "+" else value - operand
    return Story(owner, item, start, tuple(moves))


def sample_word_problem(rng: random.Random, task: ArithmeticTask) -> dict:
    """One problem as a row: ``prompt`` (chat messages), ``answer`` and ``completion`` (assistant message)."""
    story = sample_story(rng, task)
    solution, value = story.solution()
    messages = apply_template(story.question(), TEMPLATE)
    assert isinstance(messages, list), "TEMPLATE is a chat template"
    return {
        "prompt": [*messages[:-1], *example_turns(), messages[-1]],
        "answer": str(value),
        "completion": [{"role": "assistant", "content": solution}],
    }


def make_word_problem_dataset(size: int, seed: int = 0, task: ArithmeticTask | None = None):
    """A ``datasets.Dataset`` of ``size`` word problems drawn with ``seed`` (same seed, same rows)."""
    from datasets import Dataset

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    task = task or ArithmeticTask()
    for knob in ("direct_answer_rate", "hedge_rate"):
        if getattr(task, knob):
            raise ValueError(f"word problems have no {knob} (the synthetic task's completions only), got {task!r}")
    rng = random.Random(seed)
    return Dataset.from_list([sample_word_problem(rng, task) for _ in range(size)])
