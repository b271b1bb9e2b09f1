"""The folder ``ktae eval`` fills, generating or re-scoring: its file names, their one writer and their readers.

Layout of ``OUTPUT_DIR``::

    results.json                  RESULTS_FILE   the figures, the settings, per-problem records (`summarize` of
                                                 `ktae.evaluation.harness`); one layout for both
    responses/<benchmark>.jsonl   RESPONSES_DIR  one scored response per line (`score_benchmark`); a re-scored
                                                 one adds ``file_correct``, the file's own verdict
    settings.json                 SETTINGS_FILE  generating: the `EvalSettings` and grader a ``--resume`` must match
    agreement.json, agreement.md  AGREEMENT_*    re-scoring a file with verdicts: ours against the file's

Every file is written whole, through `ktae.run_folder.write_atomic`: a reader never sees half of one. A
benchmark's name becomes a file name, so it must be a safe one (`check_benchmark_name`) wherever it comes
from. A folder holds one run's outputs only (`earlier_outputs`): a run that starts in a used folder removes
the files of the earlier run, and refuses a folder that holds anything else, or an unfinished run.

The readers (`read_results`, `read_settings`, `read_responses`) read regular files only, at most
`MAX_FILE_BYTES` each, as strict JSON (a key twice in one object is refused), and check every field they
pass on: an error names the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ktae.run_folder import write_atomic
from ktae.safe_files import json_lines, loads_json, read_text, short_repr

RESULTS_FILE = "results.json"
RESPONSES_DIR = "responses"
SETTINGS_FILE = "settings.json"
AGREEMENT_FILE = "agreement.json"
AGREEMENT_REPORT = "agreement.md"
# The largest file of an evaluation folder the readers take (1 GiB: 32 samples of every suite's problem
# take about 250 MB).
MAX_FILE_BYTES = 1 << 30
# A benchmark's name: it names a file in responses/, so no separators, no leading dot, no control characters.
BENCHMARK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# What `write_atomic` leaves behind when a run is killed mid-write: ".<name>.<8 random characters>".
_TEMPORARY_FILE = re.compile(r"\.(.+)\.[a-z0-9_]{8}")


def check_benchmark_name(name: Any, where: str) -> str:
    """``name`` if it is a safe benchmark name (`BENCHMARK_NAME`), else a ValueError that starts with ``where``."""
    if not isinstance(name, str) or not BENCHMARK_NAME.fullmatch(name):
        raise ValueError(
            f"{where}: {short_repr(name)} is not a benchmark name (letters, digits, '.', '_' and '-', starting "
            "with a letter or digit, at most 100): it would name a file of responses/"
        )
    return name


def responses_path(output_dir: str | os.PathLike, benchmark: str) -> Path:
    """``output_dir/responses/<benchmark>.jsonl``."""
    return Path(output_dir) / RESPONSES_DIR / f"{check_benchmark_name(benchmark, 'benchmark')}.jsonl"


def responses_reference(benchmark: str) -> str:
    """Where results.json's ``responses`` says a benchmark's responses are, relative to it."""
    return f"{RESPONSES_DIR}/{check_benchmark_name(benchmark, 'benchmark')}.jsonl"


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
    if not os.path.lexists(path):
        return None
    settings = loads_json(read_text(path, MAX_FILE_BYTES), str(path))
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got {type(settings).__name__}")
    return settings


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{where} must be a number in [{low:g}, {high:g}], got {short_repr(value)}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object of benchmarks, got {type(value).__name__}")
    for name in value:
        check_benchmark_name(name, where)
    return value


def _check_problems(problems: Any, where: str) -> None:
    """Per-problem records as `ktae.evaluation.harness.problem_records` writes them, as far as a paired
    comparison reads them (``id``, ``key``, ``correct``)."""
    if not isinstance(problems, list):
        raise ValueError(f"{where} must be a list of per-problem records, got {type(problems).__name__}")
    for number, problem in enumerate(problems):
        at = f"{where}[{number}]"
        if not isinstance(problem, dict):
            raise ValueError(f"{at} must be an object, got {type(problem).__name__}")
        if isinstance(problem.get("id"), bool) or not isinstance(problem.get("id"), int):
            raise ValueError(f"{at}: field 'id' must be an integer, got {short_repr(problem.get('id'))}")
        if not isinstance(problem.get("key"), str):
            raise ValueError(f"{at}: field 'key' must be a string, got {short_repr(problem.get('key'))}")
        correct = problem.get("correct")
        if not isinstance(correct, list) or not correct or not all(isinstance(c, bool) for c in correct):
            raise ValueError(f"{at}: field 'correct' must be a non-empty list of true/false, got {short_repr(correct)}")


def check_results(results: Any, where: str) -> dict[str, Any]:
    """``results`` if it is a results dict as `summarize` writes it, as far as its readers read it: ``results``
    (a percentage per benchmark), ``avg`` (a percentage), ``model`` (a str), ``num_examples`` (a count per
    benchmark), ``per_problem`` and ``responses`` (each benchmark's file, where the layout puts it); a
    ValueError naming ``where`` and the field otherwise. Fields older layouts lack may be absent."""
    if not isinstance(results, dict) or "results" not in results:
        raise ValueError(f"{where}: not a ktae eval results file (no 'results')")
    for name, value in _mapping(results["results"], f"{where}: field 'results'").items():
        _number(value, f"{where}: field 'results' of {name}", 0, 100)
    if results.get("avg") is not None:
        _number(results["avg"], f"{where}: field 'avg'", 0, 100)
    if results.get("model") is not None and not isinstance(results["model"], str):
        raise ValueError(f"{where}: field 'model' must be a string, got {short_repr(results['model'])}")
    for name, count in _mapping(results.get("num_examples", {}), f"{where}: field 'num_examples'").items():
        _number(count, f"{where}: field 'num_examples' of {name}", 0, math.inf)
    for name, problems in _mapping(results.get("per_problem", {}), f"{where}: field 'per_problem'").items():
        _check_problems(problems, f"{where}: field 'per_problem' of {name}")
    for name, reference in _mapping(results.get("responses", {}), f"{where}: field 'responses'").items():
        if reference != responses_reference(name):
            expected = responses_reference(name)
            raise ValueError(f"{where}: field 'responses' of {name} must be {expected!r}, got {short_repr(reference)}")
    return results


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """A results file (`check_results`), a path the user gave (a link to a regular file is followed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file not found: {path}")
    return check_results(loads_json(read_text(path, MAX_FILE_BYTES, follow_links=True), str(path)), str(path))


# Fields of a response record its readers use (`problem_records`, `--resume`): name -> the types it may have.
_RESPONSE_FIELDS: dict[str, tuple[type, ...]] = {
    "index": (int,),
    "problem": (str, type(None)),
    "extracted": (str, type(None)),
    "correct": (bool,),
    "num_tokens": (int, type(None)),
    "finish_reason": (str, type(None)),
}
_OPTIONAL_RESPONSE_FIELDS: dict[str, tuple[type, ...]] = {"sample": (int,), "answer_group": (int, type(None))}


def read_responses(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The scored responses of ``responses/<benchmark>.jsonl`` in an evaluation folder (found in it: a link
    is refused), each record checked for the fields its readers use."""
    path = Path(path)
    records = []
    for where, record in json_lines(read_text(path, MAX_FILE_BYTES), path):
        if "answer" not in record:
            raise ValueError(f"{where}: missing field 'answer'")
        for fields, required in ((_RESPONSE_FIELDS, True), (_OPTIONAL_RESPONSE_FIELDS, False)):
            for name, kinds in fields.items():
                if name not in record and not required:
                    continue
                value = record.get(name, ...)
                if value is ... or (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                    raise ValueError(
                        f"{where}: field {name!r} must be {' or '.join(k.__name__ for k in kinds)}, "
                        f"got {'nothing' if value is ... else short_repr(value)}"
                    )
        records.append(record)
    return records


def write_agreement(output_dir: str | os.PathLike, agreement: Mapping[str, Any], report: str) -> None:
    """A re-scoring run's agreement with the file's verdicts: the figures (JSON) and the report (Markdown)."""
    write_atomic(Path(output_dir) / AGREEMENT_FILE, json.dumps(dict(agreement), indent=2) + "\n")
    write_atomic(Path(output_dir) / AGREEMENT_REPORT, report)


def _ours(name: str) -> bool:
    """A file name of this layout's top level, or a temporary file `write_atomic` left of one."""
    temporary = _TEMPORARY_FILE.fullmatch(name)
    return (temporary.group(1) if temporary else name) in (
        RESULTS_FILE,
        SETTINGS_FILE,
        AGREEMENT_FILE,
        AGREEMENT_REPORT,
    )


def _a_response_file(name: str) -> bool:
    temporary = _TEMPORARY_FILE.fullmatch(name)
    base = temporary.group(1) if temporary else name
    return base.endswith(".jsonl") and BENCHMARK_NAME.fullmatch(base[: -len(".jsonl")]) is not None


def _listing(paths: list[Path], root: Path) -> str:
    names = [str(p.relative_to(root)) for p in paths]
    return ", ".join(map(short_repr, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def earlier_outputs(output_dir: str | os.PathLike, *, resume: bool = False) -> list[Path]:
    """The files of an earlier run in ``output_dir`` that a new run replaces (`remove_outputs`), or a ValueError
    naming what makes the folder unusable; nothing is changed here.

    - A missing or empty folder: none.
    - ``resume`` and a ``settings.json``: none; resuming keeps the finished benchmarks (the harness checks that
      the settings match).
    - An entry that is not of this layout (a regular file named as above, or a temporary file `write_atomic`
      left of one; a link is not), anywhere in the folder: refused, named.
    - A finished earlier run (its results.json): its files, the responses its results.json lists and the other
      files of the layout; a responses file it does not list is not known to be ours: refused, named.
    - An unfinished earlier run (files of the layout, no results.json): refused; resume it or choose another folder.
    """
    root = Path(output_dir)
    if not root.exists():
        return []
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if resume and os.path.lexists(root / SETTINGS_FILE):
        return []
    found: list[Path] = []
    foreign: list[Path] = []
    for entry in sorted(root.iterdir()):
        mode = entry.lstat().st_mode
        if entry.name == RESPONSES_DIR and stat.S_ISDIR(mode):
            for response in sorted(entry.iterdir()):
                ok = stat.S_ISREG(response.lstat().st_mode) and _a_response_file(response.name)
                (found if ok else foreign).append(response)
        elif stat.S_ISREG(mode) and _ours(entry.name):
            found.append(entry)
        else:
            foreign.append(entry)
    if foreign:
        raise ValueError(
            f"{root} holds files that are not an evaluation's ({_listing(foreign, root)}): "
            "evaluate into an empty or new folder"
        )
    if not found:
        return []
    if not (root / RESULTS_FILE).is_file():
        resume_it = "resume it (--resume, the same settings), " if (root / SETTINGS_FILE).exists() else ""
        raise ValueError(
            f"{root} holds an evaluation that did not finish ({_listing(found, root)}, no {RESULTS_FILE}): "
            f"{resume_it}delete those files or evaluate into another folder"
        )
    listed = {root / reference for reference in read_results(root / RESULTS_FILE).get("responses", {}).values()}
    unlisted = [
        path
        for path in found
        if path.parent.name == RESPONSES_DIR and path not in listed and not _TEMPORARY_FILE.fullmatch(path.name)
    ]
    if unlisted:
        raise ValueError(
            f"{root} holds responses its {RESULTS_FILE} does not list ({_listing(unlisted, root)}): delete them "
            "or evaluate into another folder"
        )
    return found


def remove_outputs(paths: list[Path]) -> None:
    """Remove an earlier run's files (`earlier_outputs`), its results.json last: a run stopped midway leaves
    a folder that `earlier_outputs` still recognises."""
    for path in sorted(paths, key=lambda p: p.name == RESULTS_FILE):
        path.unlink(missing_ok=True)
