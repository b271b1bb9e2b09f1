"""How far a model gets on the built-in word problems: greedy and sampled accuracy at a token budget.

The problems are the held-out draw of the real-model job (`ktae.integrations.trl.job.default_job`, its
``task_*`` keys; ``key=value`` arguments override them as in ``ktae train``), rendered by the
model's chat template; responses come from the evaluation harness's transformers backend and are
scored by the training reward (`ktae.rewards.score_responses`, the last ``\\boxed{}``). Prints, for
greedy decoding and for ``--samples`` samples per problem at ``--temperature`` (top-p 1, no top-k,
as the trainer samples): accuracy, the share of responses with a boxed answer, the share that ended
before the token limit, the mean response length, and for sampling the share of problems whose
samples are neither all right nor all wrong (the groups where GRPO and KTAE have a signal).

    python benchmarks/word_problems.py [--model smollm2] [--n 32] [--samples 4] [--temperature 0.7]
        [--max-new-tokens 24] [task_max_terms=3 ...]
"""

from __future__ import annotations

import argparse
import time

from ktae.data.templates import render_prompt
from ktae.evaluation.generation import GREEDY, Sampling, TransformersGenerator
from ktae.integrations.trl.job import JobArguments, default_job, load_datasets, parse_overrides
from ktae.rewards import extract_answer, score_responses


def summarize(label: str, generations, answers: list[str], samples: int, seconds: float) -> dict:
    scores = score_responses([g.text for g in generations], answers)
    groups = [scores[i : i + samples] for i in range(0, len(scores), samples)]
    row = {
        "decoding": label,
        "responses": len(scores),
        "accuracy": sum(scores) / len(scores),
        "boxed": sum(extract_answer(g.text) is not None for g in generations) / len(scores),
        "ended": sum(g.finish_reason == "stop" for g in generations) / len(scores),
        "mean_tokens": sum(g.num_tokens for g in generations) / len(scores),
        "seconds": round(seconds, 1),
    }
    if samples > 1:
        row["mixed_groups"] = sum(0 < sum(group) < len(group) for group in groups) / len(groups)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="anything `ktae train` takes (default: smollm2)")
    parser.add_argument("--n", type=int, default=32, help="problems")
    parser.add_argument("--samples", type=int, default=4, help="sampled responses per problem (0: greedy only)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the job's)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="task_* keys of the job (task_max_terms=3)")
    args = parser.parse_args()

    options = {**default_job(args.model), **parse_overrides(args.overrides), "task_eval_size": args.n}
    job = JobArguments.from_options(options)
    task = job.task()
    temperature = args.temperature if args.temperature is not None else options["temperature"]
    _, problems = load_datasets(job)
    answers = problems["answer"]

    started = time.perf_counter()
    generator = TransformersGenerator(args.model, batch_size=args.batch_size)
    print(f"model {args.model} loaded in {time.perf_counter() - started:.0f} s; task {task}")
    prompts = [render_prompt(p, generator.tokenizer) for p in problems["prompt"]]
    rows = []
    runs = [("greedy", 1, GREEDY)]
    if args.samples > 0:
        runs.append((f"sampled T={temperature}", args.samples, Sampling(temperature, 1.0, args.seed)))
    for label, samples, sampling in runs:
        started = time.perf_counter()
        generations = generator.generate(prompts, args.max_new_tokens, desc=label, samples=samples, sampling=sampling)
        references = [a for a in answers for _ in range(samples)]
        rows.append(summarize(label, generations, references, samples, time.perf_counter() - started))
        print(rows[-1], flush=True)
        for generation, answer in list(zip(generations, references))[:4]:
            print(f"    answer {answer}: {generation.text!r}")
    print(f"{args.n} problems, {args.max_new_tokens}-token budget:")
    for row in rows:
        mixed = f", mixed groups {row['mixed_groups']:.0%}" if "mixed_groups" in row else ""
        print(
            f"  {row['decoding']:>16}: accuracy {row['accuracy']:.0%} of {row['responses']}, boxed {row['boxed']:.0%}, "
            f"ended {row['ended']:.0%}, mean {row['mean_tokens']:.1f} tokens{mixed} ({row['seconds']} s)"
        )


if __name__ == "__main__":
    main()
