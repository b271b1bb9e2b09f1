"""Reward scoring throughput: responses per second for one training step's batch.

Builds N responses (default 16,384 = 1,024 prompts x 16 rollouts, the paper's step) from the
answers of the five suites: per prompt, rollouts that box the reference answer, box another
problem's answer, or give no answer, after a paragraph of reasoning text. Then scores them with
``ktae.rewards.score_responses`` in the calling process and with a pool of worker processes,
and prints responses/second and the speed-up.

    python benchmarks/bench_rewards.py [--n 16384] [--workers 8] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from ktae.data import BENCHMARKS, load_benchmark
from ktae.rewards import AnswerChecker, score_responses

REASONING = "Let us reason step by step. We expand, collect terms and simplify the expression. " * 12


def build_batch(data_dir: Path | None, n: int, rollouts: int, seed: int) -> tuple[list[str], list]:
    rng = random.Random(seed)
    examples = [e for name in BENCHMARKS for e in load_benchmark(name, data_dir)]
    responses, answers = [], []
    for _ in range(n // rollouts):
        example = rng.choice(examples)
        reference = example["answer"] if isinstance(example["answer"], str) else example["answer"][0]
        for _ in range(rollouts):
            kind = rng.random()
            if kind < 0.5:
                boxed = f"\\boxed{{{reference}}}"
            elif kind < 0.85:
                other = rng.choice(examples)["answer"]
                boxed = f"\\boxed{{{other if isinstance(other, str) else other[0]}}}"
            else:
                boxed = "I am not sure."
            responses.append(f"{REASONING}\nTherefore the answer is {boxed}.")
            answers.append(example["answer"])
    return responses, answers


def measure(checker: AnswerChecker, responses: list[str], answers: list) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = score_responses(responses, answers, checker=checker)
    return time.perf_counter() - start, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder of <suite>.jsonl files (default: the suites shipped with ktae)",
    )
    args = parser.parse_args()
    responses, answers = build_batch(args.data_dir, args.n, args.rollouts, args.seed)
    print(
        f"{len(responses)} responses ({len(responses) // args.rollouts} prompts x {args.rollouts}), "
        f"{sum(map(len, responses)) / len(responses):.0f} characters on average, {os.cpu_count()} CPUs"
    )

    with AnswerChecker(num_workers=0, timeout_s=args.timeout) as checker:
        single_s, single_scores = measure(checker, responses, answers)
    print(f"single process     : {single_s:8.2f} s  {len(responses) / single_s:9.0f} responses/s")

    with AnswerChecker(num_workers=args.workers, timeout_s=args.timeout) as checker:
        checker.check(["1"] * args.workers, ["1"] * args.workers)  # start the workers outside the timing
        pool_s, pool_scores = measure(checker, responses, answers)
    print(f"{args.workers} worker processes : {pool_s:8.2f} s  {len(responses) / pool_s:9.0f} responses/s")
    print(f"speed-up           : {single_s / pool_s:8.2f}x")
    agree = sum(a == b for a, b in zip(pool_scores, single_scores))
    print(
        f"accuracy           : {sum(pool_scores) / len(pool_scores):.3f} (single process: "
        f"{sum(single_scores) / len(single_scores):.3f}; the two agree on {agree}/{len(pool_scores)})"
    )


if __name__ == "__main__":
    main()
