"""Arithmetic word problems in plain English, for real (pretrained, chat) models.

The same difficulty knobs as the synthetic task (`ktae.data.synthetic.ArithmeticTask`: number of
terms, largest operand, operators), told as a short story simple enough for a small
instruction-tuned model to attempt, generated locally and deterministically from a seed:

    prompt      [{"role": "system", "content": "Please reason step by step, ..."},
                 {"role": "user", "content": "Example: ... \\boxed{5}.\\n\\nNow solve: Mia has 7 marbles.
                  She finds 5 more marbles. Then she gives away 3 marbles. How many marbles does Mia have now?"}]
    answer      "9"
    completion  [{"role": "assistant", "content": "Mia starts with 7 marbles.\\n7 + 5 = 12\\n12 - 3 = 9\\n
                  The answer is \\boxed{9}."}]

Prompts are chat messages (TRL's conversational format), so the model's own chat template renders
them; ``completion`` is the worked solution a supervised warm start can train on. A subtraction
never takes more than there is: a step that would go below zero adds instead.
"""

from __future__ import annotations

import random

from ktae.data.synthetic import ArithmeticTask
from ktae.data.templates import apply_template

#: (name, pronoun) of the story's owner.
PEOPLE = (("Mia", "She"), ("Tom", "He"), ("Ana", "She"), ("Leo", "He"), ("Sara", "She"), ("Ben", "He"))
#: Plural nouns whose singular drops the final "s".
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards")
GAINS = ("buys {n} more {noun}", "finds {n} more {noun}", "gets {n} more {noun} from a friend")
LOSSES = ("gives away {n} {noun}", "loses {n} {noun}", "gives {n} {noun} to a friend")
#: A worked example before each problem: small instruction-tuned models ignore the system turn's
#: "\boxed{}" request far more often without one (SmolLM2-135M, greedy: 0 of 8 answers boxed without
#: it, some with it).
EXAMPLE = (
    "Example: Ann has 2 pens. She buys 3 more pens. How many pens does Ann have now?\n"
    "Ann starts with 2 pens.\n2 + 3 = 5\nThe answer is \\boxed{5}.\n\nNow solve: "
)
#: The prompt template of the word problems (`ktae.data.templates`): the boxed-answer instruction as the system turn.
TEMPLATE = "qwen_math"


def _noun(number: int, item: str) -> str:
    return item if number != 1 else item[:-1]


def sample_word_problem(rng: random.Random, task: ArithmeticTask) -> dict:
    """One problem as a row: ``prompt`` (chat messages), ``answer`` and ``completion`` (assistant message)."""
    name, pronoun = rng.choice(PEOPLE)
    item = rng.choice(ITEMS)
    n_terms = rng.randint(task.min_terms, task.max_terms)
    value = rng.randint(1, task.max_operand)
    sentences = [f"{name} has {value} {_noun(value, item)}."]
    steps = [f"{name} starts with {value} {_noun(value, item)}."]
    for number in range(n_terms - 1):
        operand = rng.randint(1, task.max_operand)
        operator = rng.choice(task.operations)
        if operator == "-" and operand > value:
            operator = "+"
        phrase = rng.choice(GAINS if operator == "+" else LOSSES).format(n=operand, noun=_noun(operand, item))
        sentences.append(f"{pronoun if number == 0 else 'Then ' + pronoun.lower()} {phrase}.")
        result = value + operand if operator == "+" else value - operand
        steps.append(f"{value} {operator} {operand} = {result}")
        value = result
    sentences.append(f"How many {item} does {name} have now?")
    steps.append(f"The answer is \\boxed{{{value}}}.")
    return {
        "prompt": apply_template(EXAMPLE + " ".join(sentences), TEMPLATE),
        "answer": str(value),
        "completion": [{"role": "assistant", "content": "\n".join(steps)}],
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
