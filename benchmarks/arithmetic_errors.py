"""What the final policies of compare_ktae's arithmetic runs get wrong, step by step.

Evidence for docs/experiment.md's question "why does DAPO+KTAE end lower on arithmetic?": for every
finished arithmetic run in compare_ktae's work folder, the final checkpoint's greedy solutions of the
200 held-out problems (the ones its greedy accuracy is measured on), each classified by its first
faulty line (`first_fault`), plus how often each digit is written against the correct solutions and
which digits KTAE blamed most in the run's logged rounds.

    python benchmarks/compare_ktae.py --plan all --jobs 2      # the runs (this script only reads them)
    python benchmarks/arithmetic_errors.py                      # -> benchmarks/results/arithmetic_errors.{json,md}

Decoding is greedy, on one CPU thread: about 5 s per run.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
TASK = "arithmetic"
DIGITS = "0123456789"
# First faulty line of a greedy solution, in the order a reader meets them.
FAULTS = (
    "miscopied operand",  # a step's left side is not the previous result, or its right side not the next term
    "wrong result",  # the step's operands are right, its result is not
    "malformed step",  # a line that is neither a step nor the boxed answer
    "missing step",  # the answer is boxed before the last term is used
    "extra step",  # a step after the last term
    "wrong boxed value",  # every step right, the boxed value differs from the last result
    "no boxed answer",  # every step right, no boxed answer before the response ends
)
_STEP = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")
_TERM = re.compile(r"([+-]?)(\d+)")


def _load_compare_ktae():
    spec = importlib.util.spec_from_file_location("compare_ktae", BENCHMARKS / "compare_ktae.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_ktae = _load_compare_ktae()


def first_fault(prompt: str, response: str) -> str | None:
    """The kind of the first faulty line of ``response`` to the chain ``prompt`` (e.g. ``"7+5-3="``), one
    of `FAULTS`, or None for a right solution. Each step is judged against the response's own previous
    result, so an error is counted once, where it is made."""
    from ktae.data.synthetic import BOXED

    terms = [(sign or "+", int(number)) for sign, number in _TERM.findall(prompt.rstrip("="))]
    value, steps = terms[0][1], terms[1:]
    lines = response.split("\n")
    for index, line in enumerate(lines):
        if line.startswith(BOXED):
            if index < len(steps):
                return "missing step"
            return None if line == f"{BOXED}{value}}}" else "wrong boxed value"
        match = _STEP.match(line)
        if match is None:
            return "malformed step"
        if index >= len(steps):
            return "extra step"
        left, operator, right, result = int(match[1]), match[2], int(match[3]), int(match[4])
        if (left, operator, right) != (value, *steps[index]):
            return "miscopied operand"
        value = left + right if operator == "+" else left - right
        if result != value:
            return "wrong result"
    return "missing step" if len(lines) < len(steps) else "no boxed answer"


def digit_use(responses: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    """How often each digit is written in ``responses``, as a multiple of its count in the correct solutions."""
    written = collections.Counter("".join(responses))
    expected = collections.Counter("".join(references))
    return {d: (written[d] / expected[d] if expected[d] else None) for d in DIGITS}


def blamed_digits(run_dir: Path) -> dict[str, float]:
    """Each digit's total bonus over the run's logged key-token rounds (credited and blamed), lowest first."""
    _, sides = compare_ktae.key_token_totals([run_dir])
    totals: collections.Counter[str] = collections.Counter()
    for side in sides.values():
        totals.update({token: total for token, total in side.items() if token in DIGITS})
    return dict(sorted(totals.items(), key=lambda kv: kv[1]))


def analyse_run(run_dir: Path, held_out, max_new_tokens: int) -> dict:
    """Greedy accuracy, first faults and digit use of the run's final checkpoint on ``held_out``."""
    from transformers import AutoModelForCausalLM

    from ktae.integrations.trl.callbacks import greedy_completions
    from ktae.models import load_tokenizer
    from ktae.rewards import accuracy_reward
    from ktae.run_folder import checkpoint_step, list_checkpoints

    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} has no checkpoint to analyse")
    final = checkpoints[-1]
    tokenizer = load_tokenizer(str(final))
    model = AutoModelForCausalLM.from_pretrained(final)
    responses = greedy_completions(model, tokenizer, held_out["prompt"], max_new_tokens)
    faults = [first_fault(p, r) for p, r in zip(held_out["prompt"], responses)]
    verdicts = accuracy_reward(responses, answer=held_out["answer"])
    counts = collections.Counter(f for f in faults if f is not None)
    return {
        "step": checkpoint_step(final),
        "problems": len(responses),
        "accuracy": sum(verdicts) / len(verdicts),  # the reward's verdicts, as the run's greedy accuracy
        # solutions the reward and the step check judge differently (a right answer after a faulty step)
        "verdict_mismatches": sum((f is None) != bool(v) for f, v in zip(faults, verdicts)),
        "first_faults": {kind: counts[kind] for kind in FAULTS},
        "digit_use": digit_use(responses, held_out["completion"]),
        "digit_bonus": blamed_digits(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/compare_ktae"), help="compare_ktae's --work")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "results")
    parser.add_argument(
        "--variants", nargs="+", choices=list(compare_ktae.VARIANTS), default=list(compare_ktae.VARIANTS)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)

    import torch

    from ktae.integrations.trl.job import DEFAULT_JOB, JobArguments, load_datasets, resolve_options

    torch.set_num_threads(1)  # tiny model: one thread, and no contention with a running benchmark
    options = resolve_options({**DEFAULT_JOB, **compare_ktae.BENCHMARK_JOB, **compare_ktae.TASKS[TASK]})
    _, held_out = load_datasets(JobArguments.from_options(options))
    runs: dict[str, dict[int, dict]] = {}
    for variant in args.variants:
        for seed in args.seeds:
            run_dir = compare_ktae.run_dir_of(args.work, TASK, variant, seed)
            if not (run_dir / "done.json").is_file():
                continue
            runs.setdefault(variant, {})[seed] = analyse_run(run_dir, held_out, options["max_completion_length"])
            print(f"[arithmetic_errors] {variant} seed {seed}: accuracy {runs[variant][seed]['accuracy']:.3f}")
    if not runs:
        parser.error(f"no finished {TASK} run under {args.work}: run benchmarks/compare_ktae.py first")
    report = {
        "task": TASK,
        "faults": list(FAULTS),
        "variants": runs,
        "pairs": pair_digit_use(runs, compare_ktae.BASELINES),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "arithmetic_errors.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "arithmetic_errors.md").write_text(render_markdown(report))
    print((args.out / "arithmetic_errors.md").read_text())
    return 0


def pair_digit_use(runs: Mapping[str, Mapping[int, dict]], baselines: Mapping[str, str], top: int = 3) -> list[dict]:
    """For each KTAE run with a base run of the same seed: its ``top`` most blamed digits, and how often
    the KTAE run and the base run write them (against the correct solutions)."""
    pairs = []
    for treated, baseline in baselines.items():
        if "KTAE" not in treated:  # a run without KTAE blamed nothing
            continue
        for seed in sorted(set(runs.get(treated, {})) & set(runs.get(baseline, {}))):
            ktae_run, base_run = runs[treated][seed], runs[baseline][seed]
            digits = [d for d, total in ktae_run["digit_bonus"].items() if total < 0][:top]
            pairs.append(
                {
                    "variant": treated,
                    "baseline": baseline,
                    "seed": seed,
                    "blamed": {d: round(ktae_run["digit_bonus"][d], 1) for d in digits},
                    "use_ktae": statistics.fmean(ktae_run["digit_use"][d] for d in digits) if digits else None,
                    "use_base": statistics.fmean(base_run["digit_use"][d] for d in digits) if digits else None,
                }
            )
    return pairs


def render_markdown(report: Mapping) -> str:
    faults = report["faults"]
    lines = [
        "# Greedy errors of the final policies, arithmetic task",
        "",
        "Held-out problems by the first faulty line of the greedy solution (mean over seeds; per seed in "
        "arithmetic_errors.json).",
        "",
        "| variant | seeds | accuracy | " + " | ".join(faults) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in faults) + " |",
    ]
    for variant, by_seed in report["variants"].items():
        rows = list(by_seed.values())
        cells = [f"{statistics.fmean(r['first_faults'][f] for r in rows):.1f}" for f in faults]
        accuracy = statistics.fmean(r["accuracy"] for r in rows)
        lines.append(f"| {variant} | {len(rows)} | {accuracy:.3f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The digits each KTAE run blamed most (total bonus over its logged rounds) and how often they are "
        "written, as a multiple of their count in the correct solutions, by that run and by its base run of "
        "the same seed:",
        "",
        "| KTAE variant | seed | most blamed digits | their use, KTAE run | their use, base run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for pair in report["pairs"]:
        blamed = " ".join(f"`{d}` {total:+.0f}" for d, total in pair["blamed"].items()) or "–"
        use = [f"{pair[k]:.2f}×" if pair[k] is not None else "–" for k in ("use_ktae", "use_base")]
        lines.append(f"| {pair['variant']} (vs {pair['baseline']}) | {pair['seed']} | {blamed} | {use[0]} | {use[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
