"""The five evaluation suites, by name: shipped with the package, or from a folder or the Hugging Face hub.

Each suite is a ``<name>.jsonl`` file of ``{"problem": str, "answer": str | [str, ...]}`` (a list
holds answers that are all accepted). The package carries the five in ``ktae/data/math_eval/``
(sources and licences in its README.md), with the KTAE paper's scores on them
(``reference_scores.json``), so evaluation needs no network. ``data_dir`` reads the same layout from
another folder (regular files of at most ``MAX_SUITE_BYTES``, not links); ``hub=True`` loads each suite
from its hub dataset with that dataset's own field names (``HubSource``; needs network access).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

from ktae.data.loading import read_records, to_example

#: The package's folder of suites (importlib.resources: works from a wheel and an editable install).
PACKAGED_SUITES = files("ktae.data") / "math_eval"
REFERENCE_SCORES_FILE = "reference_scores.json"
# The largest suite file ``data_dir`` may hold (MATH-500, the largest shipped, is 0.4 MB).
MAX_SUITE_BYTES = 256 << 20


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


def load_benchmark(
    name: str, data_dir: str | Path | None = None, limit: int | None = None, *, hub: bool = False
) -> list[dict]:
    """The suite's examples as [{"problem", "answer"}]: the packaged copy by default, else
    ``data_dir/<name>.jsonl``, or with ``hub=True`` the suite's hub dataset."""
    (name,) = parse_benchmark_names([name])
    if hub and data_dir is not None:
        raise ValueError("load a benchmark from a folder (data_dir) or from the hub (hub=True), not both")
    if hub:
        source = BENCHMARKS[name]
        records = read_records(source.dataset_id, split=source.split)
        fields = (source.problem_field, source.answer_field)
    elif data_dir is not None:
        path = Path(data_dir) / f"{name}.jsonl"
        if not os.path.lexists(path):
            raise FileNotFoundError(f"benchmark {name!r}: {path} not found")
        # found in a folder: a link is not followed; anything but a regular file is refused
        records, fields = read_records(path, max_bytes=MAX_SUITE_BYTES, follow_links=False), ("problem", "answer")
    else:
        with as_file(PACKAGED_SUITES / f"{name}.jsonl") as path:
            records, fields = read_records(path), ("problem", "answer")
    if limit is not None:
        records = records[:limit]
    return [to_example(row, where, *fields) for where, row in records]


def reference_scores() -> list[dict]:
    """The KTAE paper's accuracies (%) on the five suites: [{"label", "base_model", "algorithm",
    "ktae", "results": {name: %}, "avg"}], one row per trained model, as shipped with the package."""
    return json.loads((PACKAGED_SUITES / REFERENCE_SCORES_FILE).read_text(encoding="utf-8"))["rows"]
