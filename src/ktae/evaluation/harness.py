"""The evaluation protocol of the paper (RECIPES.md, Evaluation), on any Hugging Face causal LM.

For each benchmark: build the prompts with the template (the model tokenizer's chat format),
generate greedily, extract the last \\boxed{} answer and check it against the references with
math-verify under a time limit. Outputs in ``output_dir``:

- ``responses/<benchmark>.jsonl``: one line per problem (prompt, response, extracted answer,
  verdict, token count), written atomically when the benchmark is done, so that ``resume`` can
  skip finished benchmarks of an interrupted run with the same settings;
- ``results.json``: per benchmark ``results`` (accuracy %), ``formatted`` (% of responses with an
  extractable answer), ``avg_lens``/``max_lens`` (response tokens), ``num_examples``; ``avg``
  (mean accuracy over the benchmarks) and the settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ktae.data.benchmarks import load_benchmark, parse_benchmark_names
from ktae.data.templates import apply_template, get_template, render_prompt
from ktae.rewards import AnswerChecker, extract_answer
from ktae.run_folder import write_atomic


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides a run's responses (a resumed run must match them)."""

    model: str
    template: str = "qwen_math"
    max_new_tokens: int = 3000
    max_model_len: int = 4096
    limit: int | None = None
    data_dir: str | None = None


def score_benchmark(
    name: str, examples: list[dict], prompts: list[str], generations, checker: AnswerChecker
) -> list[dict]:
    """Response records of one benchmark: extraction and a time-limited check per response."""
    extracted = [extract_answer(g.text) for g in generations]
    verdicts = checker.verdicts(extracted, [e["answer"] for e in examples], progress=f"{name}: checking")
    return [
        {
            "benchmark": name,
            "index": i,
            "problem": example["problem"],
            "answer": example["answer"],
            "prompt": prompt,
            "response": generation.text,
            "extracted": answer,
            "correct": verdict.equivalent,
            "check": verdict.status,
            "num_tokens": generation.num_tokens,
            "finish_reason": generation.finish_reason,
        }
        for i, (example, prompt, generation, answer, verdict) in enumerate(
            zip(examples, prompts, generations, extracted, verdicts)
        )
    ]


def summarize(records_by_benchmark: dict[str, list[dict]], settings: EvalSettings) -> dict:
    """The results dict (see the module docstring) of scored response records."""
    results, formatted, avg_lens, max_lens, counts = {}, {}, {}, {}, {}
    for name, records in records_by_benchmark.items():
        n = len(records)
        counts[name] = n
        results[name] = 100.0 * sum(r["correct"] for r in records) / n
        formatted[name] = 100.0 * sum(r["extracted"] is not None for r in records) / n
        avg_lens[name] = sum(r["num_tokens"] for r in records) / n
        max_lens[name] = max(r["num_tokens"] for r in records)
    return {
        "model": settings.model,
        "results": results,
        "avg": sum(results.values()) / len(results),
        "avg_lens": avg_lens,
        "max_lens": max_lens,
        "formatted": formatted,
        "num_examples": counts,
        "settings": asdict(settings),
        "responses": {name: f"responses/{name}.jsonl" for name in records_by_benchmark},
    }


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate(
    settings: EvalSettings,
    benchmarks: str | list[str],
    output_dir: str | Path,
    *,
    backend: str = "auto",
    resume: bool = False,
    checker: AnswerChecker | None = None,
    generator_options: dict | None = None,
) -> dict:
    """Run the protocol on ``benchmarks`` and write the outputs; returns the results dict.

    Data and names are validated before the model loads, so a typo fails in a second.
    """
    from ktae.evaluation.generation import check_model_source, make_generator

    names = parse_benchmark_names(benchmarks)
    get_template(settings.template)
    check_model_source(settings.model)
    if settings.max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {settings.max_new_tokens}")
    suites = {name: load_benchmark(name, settings.data_dir, settings.limit) for name in names}
    output_dir = Path(output_dir)
    settings_path = output_dir / "settings.json"
    done: dict[str, list[dict]] = {}
    if resume and settings_path.is_file():
        saved = json.loads(settings_path.read_text(encoding="utf-8"))
        if saved != asdict(settings):
            differing = sorted(k for k in asdict(settings) if saved.get(k) != asdict(settings)[k])
            raise ValueError(f"cannot resume {output_dir}: its settings differ in {', '.join(differing)}")
        for name in names:
            path = output_dir / "responses" / f"{name}.jsonl"
            if path.is_file():
                done[name] = _read_jsonl(path)
    write_atomic(settings_path, json.dumps(asdict(settings), indent=2) + "\n")

    todo = [name for name in names if name not in done]
    own_checker = checker is None
    checker = checker or AnswerChecker(num_workers=min(4, os.cpu_count() or 1))
    try:
        generator = (
            make_generator(settings.model, backend, max_model_len=settings.max_model_len, **(generator_options or {}))
            if todo
            else None
        )
        for name in todo:
            examples = suites[name]
            prompts = [
                render_prompt(apply_template(e["problem"], settings.template), generator.tokenizer) for e in examples
            ]
            generations = generator.generate(prompts, settings.max_new_tokens, desc=name)
            records = score_benchmark(name, examples, prompts, generations, checker)
            write_atomic(
                output_dir / "responses" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records)
            )
            done[name] = records
    finally:
        if own_checker:
            checker.close()
    results = summarize({name: done[name] for name in names}, settings)
    write_atomic(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results
