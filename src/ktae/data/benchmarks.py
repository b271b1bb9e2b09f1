"""The five evaluation suites, by name, from a local folder or the Hugging Face hub.

A local folder holds ``<name>.jsonl`` files of ``{"problem": str, "answer": str | [str, ...]}``
(the layout of ``shared/data/math-eval``). Without a folder, each suite loads from its hub id with
that dataset's own field names (``HubSource``; needs network access).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ktae.data.loading import read_records, to_example


@dataclass(frozen=True)
class HubSource:
    dataset_id: str
    split: str
    problem_field: str
    answer_field: str


BENCHMARKS: dict[str, HubSource] = {
    "aime24": HubSource("HuggingFaceH4/aime_2024", "train", "problem", "answer"),
    "amc23": HubSource("math-ai/amc23", "test", "question", "answer"),
    "math500": HubSource("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
    "minerva": HubSource("math-ai/minervamath", "test", "question", "answer"),
    "olympiadbench": HubSource("math-ai/olympiadbench", "test", "question", "final_answer"),
}


def parse_benchmark_names(names: str | list[str]) -> list[str]:
    """ "aime24,math500" (or a list) -> validated names, in order, without repeats."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BENCHMARKS)}")
    if not names:
        raise ValueError("no benchmark given")
    return list(dict.fromkeys(names))


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """The suite's examples as [{"problem", "answer"}], from ``data_dir/<name>.jsonl`` or the hub."""
    (name,) = parse_benchmark_names([name])
    if data_dir is not None:
        path = Path(data_dir) / f"{name}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {name!r}: {path} not found")
        records, fields = read_records(path), ("problem", "answer")
    else:
        hub = BENCHMARKS[name]
        records, fields = read_records(hub.dataset_id, split=hub.split), (hub.problem_field, hub.answer_field)
    if limit is not None:
        records = records[:limit]
    return [to_example(row, where, *fields) for where, row in records]
