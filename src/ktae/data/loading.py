"""Prompt datasets from JSONL, JSON, parquet or a Hugging Face dataset id.

Every dataset becomes the project's format: a ``datasets.Dataset`` with columns ``prompt`` (a
string, or chat messages for chat templates), ``answer`` (a string, or a list of accepted strings)
and ``problem`` (the raw problem text). A row without a usable problem or answer is an error that
names the file and line (or row), never silently dropped.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from ktae.data.templates import apply_template, get_template
from ktae.rewards.equivalence import normalize_references
from ktae.rewards.extraction import extract_boxed
from ktae.safe_files import RefusedFile, format_size, loads_json, open_regular

MATH_TRAIN_HUB_ID = "DigitalLearningGmbH/MATH-lighteval"
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_records(
    source: str | Path,
    split: str = "train",
    name: str | None = None,
    *,
    max_bytes: int | None = None,
    follow_links: bool = True,
) -> list[tuple[str, dict]]:
    """Rows of ``source`` as (location, row) pairs; location is "file:line" or "id[split] row i".

    ``source``: a .jsonl/.json/.parquet file, else anything ``datasets.load_dataset`` takes (a hub
    id, ``name`` its config, or a local dataset folder). A file must be a regular one
    (`ktae.safe_files.open_regular`: a FIFO or device is refused, and a link unless ``follow_links``), of at
    most ``max_bytes`` bytes when given; a key twice in one JSON object is refused.
    """
    path = Path(source)
    if path.suffix in _LOCAL_SUFFIXES:
        if not os.path.lexists(path):
            raise FileNotFoundError(f"dataset file not found: {path}")
        with open_regular(path, follow_links=follow_links) as opened:
            handle: BinaryIO = opened
            if max_bytes is not None:  # read within the limit whatever the file's size says (/proc reports 0)
                data = opened.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise RefusedFile(f"{path} is larger than {format_size(max_bytes)}: refused")
                handle = io.BytesIO(data)
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                return [(f"{path} row {i}", row) for i, row in enumerate(pq.read_table(handle).to_pylist())]
            try:
                if path.suffix == ".json":
                    rows = loads_json(handle.read().decode("utf-8"), str(path))
                    if not isinstance(rows, list):
                        raise ValueError(f"{path}: expected a JSON list of objects")
                    return [(f"{path} row {i}", row) for i, row in enumerate(rows)]
                return [
                    (f"{path}:{number}", loads_json(line, f"{path}:{number}"))
                    for number, line in enumerate(io.TextIOWrapper(handle, encoding="utf-8"), 1)
                    if line.strip()
                ]
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    import datasets

    dataset = datasets.load_dataset(str(source), name, split=split)
    return [(f"{source}[{split}] row {i}", row) for i, row in enumerate(dataset)]


def _as_answer(value, location: str, field: str) -> str | list[str]:
    """The row's reference as the reward functions read it (``normalize_references``): one str, or
    the list of accepted str when the field holds a list."""
    try:
        answers = normalize_references(value)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{location}: field {field!r} must be a non-empty string or list of them, or a number: {e}"
        ) from None
    return answers if isinstance(value, (list, tuple)) else answers[0]


def to_example(
    row, location: str, problem_field: str = "problem", answer_field: str = "answer", answer_from_solution: bool = False
) -> dict:
    """{"problem", "answer"} of one row, validated; ``answer_from_solution`` takes the answer from
    the last \\boxed{} of the answer field (MATH's worked ``solution``)."""
    if not isinstance(row, dict):
        raise ValueError(f"{location}: expected a JSON object, got {type(row).__name__}")
    for field in (problem_field, answer_field):
        if field not in row:
            raise ValueError(f"{location}: missing field {field!r} (fields: {sorted(row)})")
    problem = row[problem_field]
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"{location}: field {problem_field!r} must be a non-empty string, got {problem!r:.200}")
    answer = row[answer_field]
    if answer_from_solution:
        if not isinstance(answer, str) or extract_boxed(answer) is None:
            raise ValueError(f"{location}: field {answer_field!r} has no \\boxed{{}} answer")
        answer = extract_boxed(answer)
    return {"problem": problem, "answer": _as_answer(answer, location, answer_field)}


def load_prompt_dataset(
    source: str | Path,
    *,
    problem_field: str = "problem",
    answer_field: str = "answer",
    template: str = "qwen_math",
    split: str = "train",
    name: str | None = None,
    answer_from_solution: bool = False,
    limit: int | None = None,
):
    """A ``datasets.Dataset`` of ``prompt``/``answer``/``problem`` from a file or a hub id.

    Answers are all strings, or (when any row has several accepted answers) all lists of strings,
    since an Arrow column has one type; the reward functions accept both.
    """
    import datasets

    get_template(template)  # an unknown name fails before any download
    records = read_records(source, split=split, name=name)
    if limit is not None:
        records = records[:limit]
    examples = [to_example(row, where, problem_field, answer_field, answer_from_solution) for where, row in records]
    if not examples:
        raise ValueError(f"{source}: no rows")
    if any(isinstance(e["answer"], list) for e in examples):
        for e in examples:
            e["answer"] = e["answer"] if isinstance(e["answer"], list) else [e["answer"]]
    return datasets.Dataset.from_list(
        [
            {"prompt": apply_template(e["problem"], template), "answer": e["answer"], "problem": e["problem"]}
            for e in examples
        ]
    )


def load_math_train(
    source: str | Path = MATH_TRAIN_HUB_ID, *, template: str = "qwen_math", split: str = "train", **kwargs
):
    """The MATH training set (the paper's training data): problems, answers from the solutions' last \\boxed{}."""
    kwargs.setdefault("problem_field", "problem")
    kwargs.setdefault("answer_field", "solution")
    kwargs.setdefault("answer_from_solution", True)
    return load_prompt_dataset(source, template=template, split=split, **kwargs)
