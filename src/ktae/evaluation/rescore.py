"""Re-score model outputs without generating them (``ktae eval --responses FILE``, `ktae.cli.evaluate`).

Two input formats:

- ``released``: a JSON list (or JSON lines; gzip-compressed or not) of records
  ``{"task_name", "prompt", "gt", "model_output": [str, ...], "reward": [float, ...]}``, one per
  problem with all its samples, the layout of the evaluation outputs released with the KTAE paper.
  ``gt`` is any reference ``normalize_references`` reads (a str, a number, nested lists of them);
  ``reward`` (optional) is the verdict of the grader that wrote the file, per sample (> 0: correct).
  Task names are mapped to the suites' names (``RELEASED_TASK_NAMES``).
- ``ktae``: the response records ``ktae eval`` writes (JSON lines, ``responses/<benchmark>.jsonl``,
  fields ``benchmark``, ``answer``, ``response`` and optionally ``index``, ``sample``, ``problem``,
  ``prompt``, ``num_tokens``, ``finish_reason``); their ``correct`` is the verdict compared with.

Every response is graded as a generating run grades it (``score_benchmark``), and the outputs are a
run's, in the same layout (`ktae.evaluation.eval_folder`: ``results.json``, ``responses/<benchmark>.jsonl``),
plus, where the file carries verdicts, ``agreement.json`` and ``agreement.md``: per benchmark our accuracy
and the file's, the share of responses on which both agree, and each disagreement.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktae.data.benchmarks import BENCHMARKS
from ktae.evaluation import metrics
from ktae.evaluation.eval_folder import (
    RESPONSES_DIR,
    RESULTS_FILE,
    check_benchmark_name,
    earlier_outputs,
    read_results,
    remove_outputs,
    responses_path,
    write_agreement,
    write_eval_folder,
)
from ktae.rewards import AnswerChecker
from ktae.rewards.equivalence import normalize_references
from ktae.safe_files import json_lines, loads_json, printable, read_text_or_gzip

FORMATS = ("auto", "released", "ktae")
# The largest responses file read, decompressed (``ktae eval --max-responses-mb``).
MAX_RESPONSES_BYTES = 1 << 30
# Task names of the released outputs -> the suites' names.
RELEASED_TASK_NAMES = {
    "aime": "aime24",
    "amc": "amc23",
    "math": "math500",
    "minerva": "minerva",
    "olympiad_bench": "olympiadbench",
}
# The user turn of a ChatML prompt: the problem (after the template's wording, if any).
_CHATML_USER_TURN = re.compile(r"<\|im_start\|>user\n([\s\S]*?)<\|im_end\|>")


@dataclass(frozen=True)
class Output:
    """One response read from an outputs file."""

    benchmark: str
    index: int  # the problem's position in its benchmark
    sample: int  # the response's position among its problem's samples
    problem: str | None
    prompt: str | None
    answer: str | list[str]  # the reference: one answer, or the accepted answers
    response: str
    num_tokens: int | None  # unknown in the released format
    finish_reason: str | None
    verdict: bool | None  # the file's own verdict, when it has one


def _reference(value, where: str) -> str | list[str]:
    try:
        answers = normalize_references(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    return answers[0] if len(answers) == 1 else answers


def _verdict(value, where: str) -> bool:
    """A file's verdict: a bool, or a reward (1 correct; 0 or -1 not)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value > 0
    raise ValueError(f"{where}: a verdict must be a bool or a finite number, got {value!r:.100}")


def _field(record: dict, name: str, kind, where: str):
    if name not in record:
        raise ValueError(f"{where}: missing field {name!r} (fields: {sorted(record)})")
    if not isinstance(record[name], kind):
        raise ValueError(f"{where}: field {name!r} must be {kind.__name__}, got {type(record[name]).__name__}")
    return record[name]


def _read_released(path: Path, records) -> list[Output]:
    if not isinstance(records, list):
        raise ValueError(f"{path}: the released format is a JSON list of records, got {type(records).__name__}")
    outputs: list[Output] = []
    counts: dict[str, int] = {}  # problems read per benchmark
    for n, record in enumerate(records):
        where = f"{path}: record {n}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        task = _field(record, "task_name", str, where)
        benchmark = check_benchmark_name(RELEASED_TASK_NAMES.get(task, task), f"{where}: field 'task_name'")
        prompt = _field(record, "prompt", str, where)
        responses = _field(record, "model_output", list, where)
        if not responses or not all(isinstance(r, str) for r in responses):
            raise ValueError(f"{where}: field 'model_output' must be a non-empty list of str")
        rewards = record.get("reward")
        if rewards is not None and (not isinstance(rewards, list) or len(rewards) != len(responses)):
            raise ValueError(f"{where}: field 'reward' must be a list with one verdict per model_output")
        if "gt" not in record:
            raise ValueError(f"{where}: missing field 'gt' (fields: {sorted(record)})")
        answer = _reference(record["gt"], f"{where}: field 'gt'")
        user_turn = _CHATML_USER_TURN.search(prompt)
        index = counts[benchmark] = counts.get(benchmark, -1) + 1
        for sample, response in enumerate(responses):
            outputs.append(
                Output(
                    benchmark=benchmark,
                    index=index,
                    sample=sample,
                    problem=user_turn.group(1) if user_turn else None,
                    prompt=prompt,
                    answer=answer,
                    response=response,
                    num_tokens=None,
                    finish_reason=None,
                    verdict=None if rewards is None else _verdict(rewards[sample], f"{where}: reward {sample}"),
                )
            )
    return outputs


def _optional(record: dict, name: str, kind, where: str):
    value = record.get(name)
    if value is not None and ((isinstance(value, bool) and kind is not bool) or not isinstance(value, kind)):
        raise ValueError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r:.100}")
    return value


def _read_ktae(path: Path, text: str) -> list[Output]:
    outputs: list[Output] = []
    counts: dict[str, int] = {}  # problems read per benchmark
    for where, record in json_lines(text, path):
        benchmark = check_benchmark_name(_field(record, "benchmark", str, where), f"{where}: field 'benchmark'")
        if "answer" not in record:
            raise ValueError(f"{where}: missing field 'answer' (fields: {sorted(record)})")
        position = counts[benchmark] = counts.get(benchmark, -1) + 1
        index = _optional(record, "index", int, where)
        correct = record.get("correct")
        outputs.append(
            Output(
                benchmark=benchmark,
                index=position if index is None else index,
                sample=_optional(record, "sample", int, where) or 0,
                problem=_optional(record, "problem", str, where),
                prompt=_optional(record, "prompt", str, where),
                answer=_reference(record["answer"], f"{where}: field 'answer'"),
                response=_field(record, "response", str, where),
                num_tokens=_optional(record, "num_tokens", int, where),
                finish_reason=_optional(record, "finish_reason", str, where),
                verdict=None if correct is None else _verdict(correct, f"{where}: field 'correct'"),
            )
        )
    return outputs


def _files(path: Path) -> list[tuple[Path, bool]]:
    """(file, whether a link is followed to it): a file the user named (followed), or the JSON lines of a
    ``responses/`` folder or of a run folder's ``responses/`` (found there: not followed). A run folder
    with a results.json gives the responses it lists."""
    if not path.is_dir():
        if not os.path.lexists(path):
            raise FileNotFoundError(f"responses file not found: {path}")
        return [(path, True)]  # read, or refused by name if it is not a regular file
    run = path.parent if path.name == RESPONSES_DIR and not (path / RESPONSES_DIR).is_dir() else path
    if (run / RESULTS_FILE).is_file():
        listed = read_results(run / RESULTS_FILE).get("responses")
        if listed:
            return [(responses_path(run, name), False) for name in listed]
    folder = path / RESPONSES_DIR if (path / RESPONSES_DIR).is_dir() else path
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl response files in {folder}")
    return [(file, False) for file in files]


def _looks_released(text: str) -> bool:
    """A JSON list, or JSON lines whose first record has the released format's ``task_name``."""
    text = text.lstrip()
    if text.startswith("["):
        return True
    try:
        first = loads_json(text.split("\n", 1)[0], "")
    except ValueError:
        return False
    return isinstance(first, dict) and "task_name" in first


def _json_records(path: Path, text: str) -> list:
    """The records of a JSON list, or of JSON lines."""
    if text.lstrip().startswith("["):
        return loads_json(text, str(path))
    return [loads_json(line, f"{path}:{number}") for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_outputs(paths: str | Path | list, format: str = "auto", max_bytes: int = MAX_RESPONSES_BYTES) -> list[Output]:
    """Every response of ``paths`` (files, or folders of ``ktae eval`` response files).

    ``format``: "released", "ktae", or "auto" (a JSON list, or records with a ``task_name``, are the
    released format; other JSON lines are ktae's). A malformed record is an error naming the file
    and record; nothing is skipped. A file must be a regular one (a link the user names is followed, one
    found in a folder is not) of at most ``max_bytes`` bytes, decompressed; a benchmark name must be a safe
    file name (`check_benchmark_name`); a key twice in one JSON object is refused.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown responses format {format!r}; choose from {', '.join(FORMATS)}")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("no responses file given")
    outputs: list[Output] = []
    for path, follow_links in [file for p in paths for file in _files(Path(p))]:
        text = read_text_or_gzip(path, max_bytes, follow_links=follow_links)
        if format == "released" or (format == "auto" and _looks_released(text)):
            outputs += _read_released(path, _json_records(path, text))
        else:
            outputs += _read_ktae(path, text)
    if not outputs:
        raise ValueError(f"no responses in {', '.join(map(str, paths))}")
    seen = set()
    for output in outputs:
        key = (output.benchmark, output.index, output.sample)
        if key in seen:
            raise ValueError(
                f"{output.benchmark}: problem {output.index} sample {output.sample} appears twice in the responses"
            )
        seen.add(key)
    return outputs


def _benchmark_order(names) -> list[str]:
    return [n for n in BENCHMARKS if n in names] + [n for n in dict.fromkeys(names) if n not in BENCHMARKS]


def rescore(outputs: list[Output], checker: AnswerChecker) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Grade every output as a generating run does (`score_benchmark`, each problem's samples together, so
    that its answer groups and majority vote are a generating run's); returns the response records by
    benchmark (in the suites' order, each record with ``file_correct``: the file's verdict or None) and
    the seconds each benchmark took."""
    from ktae.evaluation.generation import Generation
    from ktae.evaluation.harness import score_benchmark

    by_benchmark: dict[str, list[Output]] = {}
    for output in outputs:
        by_benchmark.setdefault(output.benchmark, []).append(output)
    records, seconds = {}, {}
    for name in _benchmark_order(by_benchmark):
        rows = sorted(by_benchmark[name], key=lambda o: (o.index, o.sample))
        problems: dict[int, list[Output]] = {}
        for output in rows:
            problems.setdefault(output.index, []).append(output)
        sizes = sorted({len(samples) for samples in problems.values()})
        if len(sizes) > 1:
            raise ValueError(f"{name}: problems have different numbers of samples ({sizes})")
        for index, samples in problems.items():
            if len({json.dumps([o.problem, o.answer]) for o in samples}) > 1:
                raise ValueError(f"{name}: problem {index}: its samples differ in the problem or the reference")
        firsts = [samples[0] for samples in problems.values()]
        start = time.perf_counter()
        scored = score_benchmark(
            name,
            [{"problem": o.problem, "answer": o.answer} for o in firsts],
            [o.prompt for o in firsts],
            [Generation(o.response, o.num_tokens, o.finish_reason) for o in rows],
            checker,
            samples=sizes[0],
        )
        seconds[name] = time.perf_counter() - start
        for record, output in zip(scored, rows):
            record.update(index=output.index, sample=output.sample, file_correct=output.verdict)
        records[name] = scored
    return records, seconds


def agreement(records_by_benchmark: dict[str, list[dict]], seconds: dict[str, float] | None = None) -> dict | None:
    """Our verdicts against the file's, over the responses that have one; None when none has.

    Per benchmark (and ``all``): ``n`` (responses with both verdicts), ``ours``/``theirs``
    (accuracy %), ``agree`` (% of responses with the same verdict), ``ours_only``/``theirs_only``
    (responses only one grader counts correct) and ``seconds`` (time to grade the benchmark);
    ``disagreements``: benchmark, index, sample, reference, extracted answer, both verdicts, check.
    """
    per_benchmark: dict[str, dict[str, Any]] = {}
    disagreements: list[dict[str, Any]] = []
    for name, records in records_by_benchmark.items():
        judged = [r for r in records if r.get("file_correct") is not None]
        if not judged:
            continue
        ours_only = [r for r in judged if r["correct"] and not r["file_correct"]]
        theirs_only = [r for r in judged if r["file_correct"] and not r["correct"]]
        n = len(judged)
        per_benchmark[name] = {
            "n": n,
            "ours": 100.0 * sum(bool(r["correct"]) for r in judged) / n,
            "theirs": 100.0 * sum(bool(r["file_correct"]) for r in judged) / n,
            "agree": 100.0 * (n - len(ours_only) - len(theirs_only)) / n,
            "ours_only": len(ours_only),
            "theirs_only": len(theirs_only),
            "seconds": (seconds or {}).get(name),
        }
        disagreements += [
            {
                "benchmark": name,
                "index": r["index"],
                "sample": r.get("sample", 0),
                "reference": r["answer"],
                "extracted": r["extracted"],
                "ours": bool(r["correct"]),
                "theirs": bool(r["file_correct"]),
                "check": r["check"],
            }
            for r in judged
            if bool(r["correct"]) != bool(r["file_correct"])
        ]
    if not per_benchmark:
        return None
    n = sum(b["n"] for b in per_benchmark.values())
    total = {
        "n": n,
        "ours": sum(b["ours"] * b["n"] for b in per_benchmark.values()) / n,
        "theirs": sum(b["theirs"] * b["n"] for b in per_benchmark.values()) / n,
        "agree": 100.0 * (n - len(disagreements)) / n,
        "ours_only": sum(b["ours_only"] for b in per_benchmark.values()),
        "theirs_only": sum(b["theirs_only"] for b in per_benchmark.values()),
        "seconds": sum(b["seconds"] for b in per_benchmark.values()) if seconds else None,
    }
    return {"benchmarks": per_benchmark, "all": total, "disagreements": disagreements}


def agreement_table(agreement: dict) -> str:
    """Markdown: per benchmark our accuracy, the file's, the agreement and the time taken."""
    from ktae.evaluation.report import TITLES, markdown_table

    rows = []
    for name, b in [*agreement["benchmarks"].items(), ("all", agreement["all"])]:
        seconds = "–" if b["seconds"] is None else f"{b['seconds']:.0f}"
        rows.append(
            [
                TITLES.get(name, name),
                str(b["n"]),
                f"{b['ours']:.1f}",
                f"{b['theirs']:.1f}",
                f"{b['agree']:.1f}",
                str(b["ours_only"]),
                str(b["theirs_only"]),
                seconds,
            ]
        )
    header = ["benchmark", "n", "ours %", "file %", "agree %", "only ours correct", "only file correct", "seconds"]
    return markdown_table(header, rows)


def _short(text, width: int) -> str:
    text = printable(" ".join(str(text).split()))  # model output: escapes shown, not acted on by a terminal
    return text if len(text) <= width else text[: width - 1] + "…"


def disagreement_list(agreement: dict, limit: int | None = None, width: int = 100) -> str:
    """The disagreements, one readable line each (at most ``limit``, then how many are left)."""
    items = agreement["disagreements"]
    shown = items if limit is None else items[:limit]
    lines = []
    for d in shown:
        reference = " | ".join(d["reference"]) if isinstance(d["reference"], list) else d["reference"]
        status = "" if d["check"] == "ok" else f" ({d['check']})"
        lines.append(
            f"- {d['benchmark']} #{d['index']}"
            + (f" sample {d['sample']}" if d["sample"] else "")
            + f": reference `{_short(reference, width)}`, extracted `{_short(d['extracted'], width)}`: "
            + f"ours {'correct' if d['ours'] else 'wrong'}{status}, file {'correct' if d['theirs'] else 'wrong'}"
        )
    if len(items) > len(shown):
        lines.append(f"- … and {len(items) - len(shown)} more")
    return "\n".join(lines) if lines else "(none)"


def rescore_files(
    paths,
    output_dir: str | Path,
    *,
    format: str = "auto",
    checker: AnswerChecker,
    label: str | None = None,
    pass_k: list[int] | None = None,
    max_bytes: int = MAX_RESPONSES_BYTES,
) -> tuple[dict, dict | None]:
    """Read, grade and write the outputs of a re-scoring run in ``output_dir``; returns the results
    dict and the agreement (None when the file has no verdicts). ``pass_k``: as `summarize` takes it;
    ``max_bytes``: as `read_outputs` takes it. A used ``output_dir`` holds one run afterwards, this one
    (`ktae.evaluation.eval_folder.earlier_outputs`)."""
    from ktae.evaluation.harness import EvalSettings, summarize

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    output_dir = Path(output_dir)
    inputs = [file.resolve() for p in paths for file, _ in _files(Path(p))]
    if any(file.is_relative_to(output_dir.resolve()) for file in inputs):
        raise ValueError(f"--output-dir {output_dir} holds the responses being re-scored; choose another folder")
    earlier = earlier_outputs(output_dir)  # a used folder: an earlier run's, replaced, or refused before any work
    outputs = read_outputs(paths, format, max_bytes)
    if pass_k is not None:
        metrics.check_ks(pass_k, max(Counter((o.benchmark, o.index) for o in outputs).values()))
    records, seconds = rescore(outputs, checker)
    label = label or default_label(paths)
    rescored = {"responses": [str(p) for p in inputs], "format": format}
    results = summarize(
        records,
        EvalSettings(model=label),
        pass_k,
        check_timeout_s=checker.timeout_s,
        rescored=rescored,
        grader=checker.grader,
    )
    remove_outputs(earlier)
    write_eval_folder(output_dir, results, records)
    agreed = agreement(records, seconds)
    if agreed is not None:
        report = (
            f"# {printable(label)}: our verdicts against the file's\n\n{agreement_table(agreed)}\n\n"
            f"## Disagreements\n\n{disagreement_list(agreed)}\n"
        )
        write_agreement(output_dir, agreed, report)
    return results, agreed


def default_label(paths) -> str:
    """A run's name from its input: the file's name without .json/.jsonl/.gz, or the run folder's."""
    path = Path(paths[0] if isinstance(paths, (list, tuple)) else paths).resolve()
    if path.is_dir():
        return (path.parent if path.name == RESPONSES_DIR else path).name
    if path.parent.name == RESPONSES_DIR:
        return path.parent.parent.name
    return re.sub(r"(\.jsonl?)?(\.gz)?$", "", path.name) or path.name
