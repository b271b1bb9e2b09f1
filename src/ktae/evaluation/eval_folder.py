"""The folder ``ktae eval`` fills, generating or re-scoring: its file names and their one writer.

Layout of ``OUTPUT_DIR``::

    results.json                  RESULTS_FILE   the figures, the settings, per-problem records (`summarize` of
                                                 `ktae.evaluation.harness`); one layout for both
    responses/<benchmark>.jsonl   RESPONSES_DIR  one scored response per line (`score_benchmark`); a re-scored
                                                 one adds ``file_correct``, the file's own verdict
    settings.json                 SETTINGS_FILE  generating: the `EvalSettings` and grader a ``--resume`` must match
    agreement.json, agreement.md  AGREEMENT_*    re-scoring a file with verdicts: ours against the file's

Every file is written whole, through `ktae.run_folder.write_atomic`: a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ktae.run_folder import write_atomic

RESULTS_FILE = "results.json"
RESPONSES_DIR = "responses"
SETTINGS_FILE = "settings.json"
AGREEMENT_FILE = "agreement.json"
AGREEMENT_REPORT = "agreement.md"


def responses_path(output_dir: str | os.PathLike, benchmark: str) -> Path:
    """``output_dir/responses/<benchmark>.jsonl``."""
    return Path(output_dir) / RESPONSES_DIR / f"{benchmark}.jsonl"


def responses_reference(benchmark: str) -> str:
    """Where results.json's ``responses`` says a benchmark's responses are, relative to it."""
    return f"{RESPONSES_DIR}/{benchmark}.jsonl"


def write_responses(output_dir: str | os.PathLike, benchmark: str, records: Iterable[Mapping[str, Any]]) -> Path:
    """One benchmark's scored responses, one JSON object per line."""
    return write_atomic(responses_path(output_dir, benchmark), "".join(json.dumps(r) + "\n" for r in records))


def results_json(results: Mapping[str, Any]) -> str:
    """``results`` as indented JSON, except that each per-problem record takes one line."""
    per_problem = results.get("per_problem")
    head = json.dumps({k: v for k, v in results.items() if k != "per_problem"}, indent=2)
    if per_problem is None:
        return head + "\n"
    blocks = [
        f"    {json.dumps(name)}: [\n" + ",\n".join("      " + json.dumps(p) for p in problems) + "\n    ]"
        for name, problems in per_problem.items()
    ]
    return head[:-2] + ',\n  "per_problem": {\n' + ",\n".join(blocks) + "\n  }\n}\n"


def write_results(output_dir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``output_dir/results.json`` (`results_json`); returns its path."""
    return write_atomic(Path(output_dir) / RESULTS_FILE, results_json(results))


def write_eval_folder(
    output_dir: str | os.PathLike, results: Mapping[str, Any], records_by_benchmark: Mapping[str, list[dict]]
) -> Path:
    """Every benchmark's responses, then results.json (last: its presence means the folder is complete)."""
    for name, records in records_by_benchmark.items():
        write_responses(output_dir, name, records)
    return write_results(output_dir, results)


def write_settings(output_dir: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """``output_dir/settings.json``: the generation settings a resumed run must match."""
    return write_atomic(Path(output_dir) / SETTINGS_FILE, json.dumps(dict(settings), indent=2) + "\n")


def read_settings(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The generation settings of ``output_dir``'s run; None when it has none."""
    path = Path(output_dir) / SETTINGS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_agreement(output_dir: str | os.PathLike, agreement: Mapping[str, Any], report: str) -> None:
    """A re-scoring run's agreement with the file's verdicts: the figures (JSON) and the report (Markdown)."""
    write_atomic(Path(output_dir) / AGREEMENT_FILE, json.dumps(dict(agreement), indent=2) + "\n")
    write_atomic(Path(output_dir) / AGREEMENT_REPORT, report)
