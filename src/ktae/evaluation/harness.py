"""The evaluation protocol of the paper (docs/recipes.md, "Evaluation protocol"), on any Hugging Face causal LM.

For each benchmark: build the prompts with the template (the model tokenizer's chat format),
generate (greedily by default, or ``samples`` seeded samples per problem), extract the last
\\boxed{} answer and check it against the references with math-verify under a time limit.
Outputs in ``output_dir`` (`ktae.evaluation.eval_folder`, the folder's one writer):

- ``responses/<benchmark>.jsonl``: one line per sample (prompt, response, extracted answer,
  verdict, token count, answer group), written atomically when the benchmark is done, so that
  ``resume`` can skip finished benchmarks of an interrupted run with the same settings;
- ``results.json``: per benchmark ``results`` (accuracy %, the mean over samples: avg@N) and its
  bootstrap interval ``ci95``, ``pass_at_k``/``maj_at_k``, ``formatted`` (% of responses with an
  extractable answer), ``avg_lens``/``max_lens`` (response tokens), ``truncated`` (% cut at the
  token limit), ``num_examples``, ``samples``; ``avg`` (mean accuracy over the benchmarks) and
  ``avg_ci95``; the ``settings`` (`results_settings`); and ``per_problem`` records (id, key, each
  sample's answer, correctness, length) that ``ktae eval --compare`` pairs between runs. Re-scored
  outputs (`ktae.evaluation.rescore`) get the same layout.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ktae.data.benchmarks import load_benchmark, parse_benchmark_names
from ktae.data.templates import apply_template, get_template, render_prompt
from ktae.evaluation import metrics
from ktae.evaluation.eval_folder import (
    earlier_outputs,
    read_responses,
    read_settings,
    remove_outputs,
    responses_path,
    responses_reference,
    write_responses,
    write_results,
    write_settings,
)
from ktae.evaluation.generation import MIN_TEMPERATURE, Generation
from ktae.rewards import DEFAULT_GRADER, AnswerChecker, extract_answer


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides a run's responses (a resumed run must match them).

    samples: responses per problem (avg@N, pass@k, maj@k); samples_per_benchmark overrides it by
        benchmark name (for example {"aime24": 32, "amc23": 32}).
    temperature: 0 is greedy decoding (the paper's protocol; one sample only); > 0 samples.
    top_p: nucleus sampling mass, in (0, 1]; only with temperature > 0.
    seed: seeds sampling (each benchmark draws from its own seed derived from it) and the bootstrap.
    """

    model: str
    template: str = "qwen_math"
    max_new_tokens: int = 3000
    max_model_len: int = 4096
    limit: int | None = None
    data_dir: str | None = None  # None: the suites shipped with ktae
    hub: bool = False  # load the suites from their hub datasets instead
    samples: int = 1
    samples_per_benchmark: dict[str, int] = field(default_factory=dict)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("max_new_tokens", "max_model_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be > 0, got {self.limit}")
        if not (math.isfinite(self.temperature) and (self.temperature == 0 or self.temperature >= MIN_TEMPERATURE)):
            raise ValueError(
                f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got {self.temperature}"
            )
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature == 0 and self.top_p != 1:
            raise ValueError("top_p applies to sampling: set temperature > 0 (temperature 0 is greedy)")
        if self.samples_per_benchmark:
            parse_benchmark_names(list(self.samples_per_benchmark))
        counts = {"samples": self.samples} | {f"samples for {k}": n for k, n in self.samples_per_benchmark.items()}
        for what, n in counts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{what} must be an integer >= 1, got {n!r}")
            if n > 1 and self.temperature == 0:
                raise ValueError(
                    f"{what} = {n} needs temperature > 0 (temperature 0 is greedy: every sample would be the same)"
                )

    def samples_for(self, benchmark: str) -> int:
        return self.samples_per_benchmark.get(benchmark, self.samples)


def benchmark_seed(seed: int, benchmark: str) -> int:
    """The sampling seed of one benchmark: a resumed run draws the same samples for the benchmarks it
    still has to run as an uninterrupted one."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{benchmark}".encode()).digest()[:4], "little")


def problem_key(problem: str, answer) -> str:
    """What pairs a problem between two runs: a digest of its text and reference answer(s)."""
    return hashlib.sha256(json.dumps([problem, answer], ensure_ascii=False).encode()).hexdigest()[:16]


def score_benchmark(
    name: str,
    examples: list[dict],
    prompts: Sequence[str | None],
    generations: Sequence[Generation],
    checker: AnswerChecker,
    samples: int = 1,
) -> list[dict]:
    """Response records of one benchmark: extraction, a time-limited check per response and, with
    several samples per problem, the groups of equivalent answers that majority voting counts.

    ``prompts``: one per problem (None: not known, as for re-scored outputs that carry none);
    ``generations``: ``samples`` per prompt, problem-major (problem 0's samples, then problem 1's, ...).
    """
    if len(generations) != len(examples) * samples or len(prompts) != len(examples):
        raise ValueError(
            f"{name}: {len(examples)} problems and {len(prompts)} prompts need {len(examples) * samples} "
            f"responses ({samples} each), got {len(generations)}"
        )
    references = [e["answer"] for e in examples for _ in range(samples)]
    extracted = [extract_answer(g.text) for g in generations]
    predictions = [checker.rule.prediction(g.text, answer) for g, answer in zip(generations, extracted)]
    verdicts = checker.verdicts(predictions, references, progress=f"{name}: checking")
    groups = _answer_groups(name, extracted, verdicts, samples, checker)
    return [
        {
            "benchmark": name,
            "index": i // samples,
            "sample": i % samples,
            "problem": examples[i // samples]["problem"],
            "answer": examples[i // samples]["answer"],
            "prompt": prompts[i // samples],
            "response": generation.text,
            "extracted": answer,
            "correct": verdict.equivalent,
            "check": verdict.status,
            "num_tokens": generation.num_tokens,
            "finish_reason": generation.finish_reason,
            "answer_group": group,
        }
        for i, (generation, answer, verdict, group) in enumerate(zip(generations, extracted, verdicts, groups))
    ]


def _answer_groups(name: str, extracted: list, verdicts: list, samples: int, checker: AnswerChecker) -> list:
    """``metrics.group_answers`` per problem, its equivalence checks batched over the benchmark.

    Only wrong answers whose check finished are compared (a timed-out answer would time out again):
    each later distinct one with each earlier one, the earlier one as the reference (a grader that reads
    whole responses reads the later one boxed).
    """
    per_problem = [range(start, start + samples) for start in range(0, len(extracted), samples)]
    pairs: dict[tuple[str, str], bool] = {}
    if samples > 1:
        for rows in per_problem:
            wrong = [extracted[i] for i in rows if verdicts[i].status == "ok" and not verdicts[i].equivalent]
            distinct = list(dict.fromkeys(wrong))
            pairs.update({(later, earlier): False for j, later in enumerate(distinct) for earlier in distinct[:j]})
        if pairs:
            checked = checker.verdicts(
                [checker.rule.prediction(f"\\boxed{{{a}}}", a) for a, _ in pairs],
                [b for _, b in pairs],
                progress=f"{name}: grouping answers",
            )
            pairs = {pair: verdict.equivalent for pair, verdict in zip(pairs, checked)}
    groups = []
    for rows in per_problem:
        groups += metrics.group_answers(
            [extracted[i] for i in rows],
            [verdicts[i].equivalent for i in rows],
            lambda answer, earlier: pairs.get((answer, earlier), False),
        )
    return groups


def problem_records(name: str, records: list[dict]) -> list[dict]:
    """Response records (one per sample) -> one record per problem, in problem order: ``id`` (its
    index in the benchmark), ``key`` (``problem_key``) and per sample ``answers``, ``correct``,
    ``num_tokens``, ``truncated`` (cut at the token limit) and ``groups`` (answer groups)."""
    by_index: dict[int, list[dict]] = {}
    for r in records:
        by_index.setdefault(r["index"], []).append(r)
    problems: list[dict[str, Any]] = []
    for index in sorted(by_index):
        rows = sorted(by_index[index], key=lambda r: r.get("sample", 0))
        problems.append(
            {
                "id": index,
                "key": problem_key(rows[0]["problem"], rows[0]["answer"]),
                "answers": [r["extracted"] for r in rows],
                "correct": [bool(r["correct"]) for r in rows],
                "num_tokens": [r["num_tokens"] for r in rows],
                # None: not known (re-scored outputs that carry text only)
                "truncated": [None if r["finish_reason"] is None else r["finish_reason"] == "length" for r in rows],
                "groups": [r["answer_group"] for r in rows]
                if all("answer_group" in r for r in rows)
                # responses written before answer groups: group identical answers (and the right ones)
                else metrics.group_answers(
                    [r["extracted"] for r in rows], [bool(r["correct"]) for r in rows], lambda a, b: False
                ),
            }
        )
    sizes = {len(p["correct"]) for p in problems}
    if len(sizes) > 1:
        raise ValueError(f"{name}: problems have different numbers of samples ({sorted(sizes)})")
    if not problems:
        raise ValueError(f"{name}: no responses")
    return problems


def _percent(values) -> float:
    return 100.0 * sum(values) / len(values)


def _benchmark_summary(problems: list[dict], pass_k: list[int] | None, resamples: int, seed: int) -> dict:
    """One benchmark's figures from its per-problem records (percentages, lengths in tokens)."""
    n = len(problems[0]["correct"])
    samples = [(p, s) for p in problems for s in range(n)]
    scores = [sum(p["correct"]) / n for p in problems]
    ks = ([n] if n > 1 else []) if pass_k is None else [k for k in pass_k if k <= n]
    # None: a length not known (re-scored outputs that carry text only)
    lengths = [p["num_tokens"][s] for p, s in samples if p["num_tokens"][s] is not None]
    cut = [p["truncated"][s] for p, s in samples if p["truncated"][s] is not None]
    return {
        "results": _percent([p["correct"][s] for p, s in samples]),  # = the mean of scores: every problem has n
        "ci95": [100.0 * x for x in metrics.bootstrap_ci([scores], resamples=resamples, seed=seed)],
        "formatted": _percent([p["answers"][s] is not None for p, s in samples]),
        "avg_lens": sum(lengths) / len(lengths) if lengths else None,
        "max_lens": max(lengths, default=None),
        "truncated": _percent(cut) if cut else None,
        "num_examples": len(problems),
        "samples": n,
        "pass_at_k": {str(k): _percent([metrics.pass_at_k(n, sum(p["correct"]), k) for p in problems]) for k in ks},
        "maj_at_k": {str(k): _percent([metrics.maj_at_k(p["groups"], p["correct"], k) for p in problems]) for k in ks},
    }


def results_settings(
    settings: EvalSettings,
    check_timeout_s: float | None = None,
    rescored: dict[str, Any] | None = None,
    grader: str = DEFAULT_GRADER,
) -> dict[str, Any]:
    """results.json's ``settings``, one layout for generated and re-scored outputs: the `EvalSettings` fields
    (re-scored outputs name their model only: the others are null), ``check_timeout_s`` (the time limit of
    an answer check), ``grader`` (the answer check's rule, `ktae.rewards.GRADERS`), ``responses`` (the files
    re-scored) and ``format`` (theirs); null when generated."""
    generation = asdict(settings) if rescored is None else {**dict.fromkeys(asdict(settings)), "model": settings.model}
    source = {"responses": None, "format": None, **(rescored or {})}
    return {**generation, "check_timeout_s": check_timeout_s, "grader": grader, **source}


def run_grader(results: dict) -> str:
    """The grader of a results dict; results written before graders had names were graded by ktae's."""
    settings = results.get("settings")
    grader = settings.get("grader") if isinstance(settings, dict) else None
    if grader is not None and not isinstance(grader, str):
        raise ValueError(f"results of {results.get('model')!r}: settings.grader must be a string, got {grader!r:.100}")
    return grader or DEFAULT_GRADER


def summarize(
    records_by_benchmark: dict[str, list[dict]],
    settings: EvalSettings,
    pass_k: list[int] | None = None,
    resamples: int = metrics.BOOTSTRAP_RESAMPLES,
    *,
    check_timeout_s: float | None = None,
    rescored: dict[str, Any] | None = None,
    grader: str = DEFAULT_GRADER,
) -> dict:
    """The results dict (see the module docstring) of scored response records.

    pass_k: the k of pass@k and maj@k, each reported where a benchmark has at least k samples
    (and averaged where every benchmark has it); None reports k = each benchmark's number of
    samples when it is above one. check_timeout_s, rescored, grader: see `results_settings`.
    """
    per_problem = {name: problem_records(name, records) for name, records in records_by_benchmark.items()}
    names = list(per_problem)
    summaries = {name: _benchmark_summary(per_problem[name], pass_k, resamples, settings.seed) for name in names}

    def by_benchmark(key: str) -> dict:
        return {name: summaries[name][key] for name in names}

    def average(key: str) -> dict:
        shared = [k for k in summaries[names[0]][key] if all(k in summaries[n][key] for n in names)]
        return {k: sum(summaries[n][key][k] for n in names) / len(names) for k in shared}

    scores = [[sum(p["correct"]) / len(p["correct"]) for p in per_problem[name]] for name in names]
    return {
        "model": settings.model,
        "results": by_benchmark("results"),
        "avg": sum(s["results"] for s in summaries.values()) / len(names),
        "avg_lens": by_benchmark("avg_lens"),
        "max_lens": by_benchmark("max_lens"),
        "formatted": by_benchmark("formatted"),
        "num_examples": by_benchmark("num_examples"),
        "settings": results_settings(settings, check_timeout_s, rescored, grader),
        "responses": {name: responses_reference(name) for name in names},
        "samples": by_benchmark("samples"),
        "ci95": by_benchmark("ci95"),
        "avg_ci95": [100.0 * x for x in metrics.bootstrap_ci(scores, resamples=resamples, seed=settings.seed)],
        "pass_at_k": by_benchmark("pass_at_k"),
        "avg_pass_at_k": average("pass_at_k"),
        "maj_at_k": by_benchmark("maj_at_k"),
        "avg_maj_at_k": average("maj_at_k"),
        "truncated": by_benchmark("truncated"),
        "bootstrap": {"resamples": resamples, "confidence": 0.95, "seed": settings.seed},
        "per_problem": per_problem,
    }


def _resumable(output_dir: Path, settings: EvalSettings, grader: str = DEFAULT_GRADER) -> bool:
    """Whether ``output_dir`` holds a run with these settings and grader (settings a run saved before a
    field existed count as that field's default); raises if it holds one with other settings."""
    saved = read_settings(output_dir)
    if saved is None:
        return False
    defaults = {f.name: f.default for f in fields(EvalSettings)} | {"samples_per_benchmark": {}}
    defaults["grader"] = DEFAULT_GRADER
    current = {**asdict(settings), "grader": grader}
    differing = sorted(k for k in current if saved.get(k, defaults.get(k)) != current[k])
    if differing:
        raise ValueError(f"cannot resume {output_dir}: its settings differ in {', '.join(differing)}")
    return True


def evaluate(
    settings: EvalSettings,
    benchmarks: str | list[str],
    output_dir: str | Path,
    *,
    backend: str = "auto",
    resume: bool = False,
    checker: AnswerChecker | None = None,
    generator_options: dict | None = None,
    pass_k: list[int] | None = None,
    generator=None,
) -> dict:
    """Run the protocol on ``benchmarks`` and write the outputs; returns the results dict.

    Data, names and options are validated before the model loads, so a typo fails in a second.
    ``generator``: one made already (a ``generate`` and a ``tokenizer`` as `make_generator`'s have, such as
    `TransformersGenerator.from_model` on a model in training); ``settings.model`` then only names it.
    """
    from ktae.evaluation.generation import Sampling, check_generator_options, check_model_source, make_generator

    names = parse_benchmark_names(benchmarks)
    get_template(settings.template)
    if generator is None:
        check_model_source(settings.model)
        backend = check_generator_options(backend, generator_options or {}, settings.model)
    unused = [name for name in settings.samples_per_benchmark if name not in names]
    if unused:
        raise ValueError(f"samples_per_benchmark names {', '.join(unused)}, not among the benchmarks run")
    if pass_k is not None:
        metrics.check_ks(pass_k, max(settings.samples_for(name) for name in names))
    suites = {name: load_benchmark(name, settings.data_dir, settings.limit, hub=settings.hub) for name in names}
    for name, examples in suites.items():
        if not examples:
            where = f" in {settings.data_dir}" if settings.data_dir else ""
            raise ValueError(f"benchmark {name!r} has no problems{where}")
    output_dir = Path(output_dir)
    earlier = earlier_outputs(output_dir, resume=resume)  # a used folder: an earlier run's, or refused
    done: dict[str, list[dict]] = {}
    grader = DEFAULT_GRADER if checker is None else checker.grader
    if resume and _resumable(output_dir, settings, grader):
        for name in names:
            path = responses_path(output_dir, name)
            if os.path.lexists(path):  # anything there is read, or refused by name
                done[name] = _cached_responses(path, suites[name], settings.samples_for(name))
    remove_outputs(earlier)
    write_settings(output_dir, {**asdict(settings), "grader": grader})

    todo = [name for name in names if name not in done]
    own_checker = checker is None
    checker = checker or AnswerChecker(num_workers=min(4, os.cpu_count() or 1))
    try:
        for name in todo:  # the generator is loaded for the first benchmark to generate, if any
            generator = generator or make_generator(
                settings.model, backend, max_model_len=settings.max_model_len, **(generator_options or {})
            )
            examples = suites[name]
            samples = settings.samples_for(name)
            prompts = [
                render_prompt(apply_template(e["problem"], settings.template), generator.tokenizer) for e in examples
            ]
            sampling = Sampling(settings.temperature, settings.top_p, benchmark_seed(settings.seed, name))
            generations = generator.generate(
                prompts, settings.max_new_tokens, desc=name, samples=samples, sampling=sampling
            )
            records = score_benchmark(name, examples, prompts, generations, checker, samples)
            write_responses(output_dir, name, records)
            done[name] = records
    finally:
        if own_checker:
            checker.close()
    results = summarize(
        {name: done[name] for name in names},
        settings,
        pass_k,
        check_timeout_s=checker.timeout_s,
        grader=grader,
    )
    write_results(output_dir, results)
    return results


def _cached_responses(path: Path, examples: list[dict], samples: int) -> list[dict]:
    """A finished benchmark's responses, checked against the problems it must cover."""
    records = read_responses(path)
    expected = [(i, s) for i in range(len(examples)) for s in range(samples)]
    found = sorted((r["index"], r.get("sample", 0)) for r in records)
    keys = {r["index"]: problem_key(r["problem"], r["answer"]) for r in records}
    if found != expected or any(keys.get(i) != problem_key(e["problem"], e["answer"]) for i, e in enumerate(examples)):
        raise ValueError(
            f"cannot resume: {path} does not hold {samples} response(s) for each of the benchmark's "
            f"{len(examples)} problems (the data changed?); delete it to evaluate that benchmark again"
        )
    return records
