"""Evaluate a model on the math benchmarks (aime24, amc23, math500, minerva, olympiadbench).

ktae eval --model PATH_OR_ID [--benchmarks aime24,math500] [--limit N] [--data-dir DIR | --hub]
ktae eval --model PATH --samples 1 --samples-per-benchmark aime24=32,amc23=32 --temperature 0.6 --pass-k 1,8,32
ktae eval --compare A/results.json B/results.json [--reference [paper | FILE]]
ktae eval --responses OUTPUTS.json[.gz] [--format released|ktae] [--grader ktae|math-verify] [--output-dir DIR]

The five suites ship with the package (ktae/data/math_eval); --data-dir reads <benchmark>.jsonl files
from another folder, --hub loads the suites from their Hugging Face hub datasets.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ktae.data.benchmarks import BENCHMARKS
from ktae.data.templates import TEMPLATES
from ktae.rewards.equivalence import DEFAULT_GRADER, GRADERS
from ktae.safe_files import printable

USAGE = """%(prog)s --model PATH_OR_ID [--benchmarks NAMES] [--limit N] [generation, sampling, grading options]
       %(prog)s --responses FILE [FILE ...] [--format {auto,released,ktae}] [--grader {ktae,math-verify}]
       %(prog)s --compare RESULTS_JSON [RESULTS_JSON ...] [--reference [paper | FILE]] [--seed N]"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = USAGE
    modes = parser.add_argument_group("modes (give one)")
    modes.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help="generate and grade: the model to evaluate, a model folder (a ktae train checkpoint), a Hugging Face "
        "hub id, a .gguf file or smollm2",
    )
    modes.add_argument(
        "--responses",
        nargs="+",
        metavar="FILE",
        help="grade model outputs that exist instead of generating (files, or folders of ktae response files)",
    )
    modes.add_argument(
        "--compare",
        nargs="+",
        metavar="RESULTS_JSON",
        help="print these runs side by side, then each later run against the first (paired)",
    )

    data = parser.add_argument_group("benchmarks (--model)")
    data.add_argument(
        "--benchmarks", default=",".join(BENCHMARKS), metavar="NAMES", help="comma-separated names (default: all five)"
    )
    data.add_argument(
        "--data-dir", metavar="DIR", help="folder of <benchmark>.jsonl files (default: the copies shipped with ktae)"
    )
    data.add_argument("--hub", action="store_true", help="load the benchmarks from their Hugging Face hub datasets")
    data.add_argument(
        "--limit", type=int, metavar="N", help="only the first N problems of each benchmark (default: all)"
    )

    generation = parser.add_argument_group("generation (--model)")
    generation.add_argument(
        "--max-new-tokens",
        type=int,
        default=3000,
        metavar="N",
        help="most tokens generated per response (the paper's protocol)",
    )
    generation.add_argument(
        "--max-model-len", type=int, default=4096, metavar="N", help="context length, prompt included"
    )
    generation.add_argument(
        "--template", default="qwen_math", choices=sorted(TEMPLATES), help="prompt template (ktae.data.TEMPLATES)"
    )
    generation.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "vllm", "transformers"],
        help="auto: vLLM when installed and a GPU is present, else transformers",
    )
    generation.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="transformers backend: prompts per batch"
    )
    generation.add_argument(
        "--device", metavar="DEVICE", help="transformers backend: torch device (default: cuda if available, else cpu)"
    )
    generation.add_argument("--dtype", default="auto", metavar="DTYPE", help="auto, bfloat16, float16 or float32")
    generation.add_argument(
        "--tensor-parallel-size", type=int, default=1, metavar="N", help="vLLM backend: GPUs per model"
    )
    generation.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        metavar="SHARE",
        help="vLLM backend: share of GPU memory it may take",
    )
    generation.add_argument(
        "--trust-remote-code", action="store_true", help="let the model folder or hub repo run its own Python code"
    )

    sampling = parser.add_argument_group("sampling (--model; --seed also seeds --compare's paired test)")
    sampling.add_argument(
        "--samples",
        type=int,
        default=1,
        metavar="N",
        help="responses per problem (default 1: the paper's greedy protocol)",
    )
    sampling.add_argument(
        "--samples-per-benchmark",
        metavar="NAME=N,...",
        help="per-benchmark --samples, for example aime24=32,amc23=32 (the others get --samples)",
    )
    sampling.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="0: greedy (default); > 0: sampling"
    )
    sampling.add_argument(
        "--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass, with --temperature > 0"
    )
    sampling.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seeds sampling (per benchmark), the bootstrap and the paired test",
    )

    grading = parser.add_argument_group("grading (--model, --responses)")
    grading.add_argument(
        "--pass-k",
        metavar="K,...",
        help="k of pass@k and maj@k, for example 1,8,32 (default: each benchmark's number of samples, when > 1)",
    )
    grading.add_argument(
        "--grader",
        default=DEFAULT_GRADER,
        choices=list(GRADERS),
        help="ktae: our answer rules on the last \\boxed{} (docs/rewards-and-eval.md); math-verify: stock "
        "math-verify's parse and verify as TRL's accuracy reward calls them, on the whole response",
    )
    grading.add_argument("--check-timeout", type=float, default=5.0, metavar="SECONDS", help="seconds per answer check")
    grading.add_argument(
        "--format",
        default="auto",
        choices=["auto", "released", "ktae"],
        help="--responses only: released (a JSON list of task_name/gt/model_output/reward records) or ktae "
        "(the responses/*.jsonl of ktae eval); auto tells them apart",
    )
    grading.add_argument(
        "--max-responses-mb",
        type=int,
        metavar="MB",
        help="--responses only: the largest file read, in MiB after decompression (default: 1024); a larger "
        "one is refused",
    )

    output = parser.add_argument_group("output (--model, --responses)")
    output.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where results.json and responses/ go (default: eval_results/<model name>, or "
        "eval_results/<file name>-rescored for --responses)",
    )
    output.add_argument(
        "--resume",
        action="store_true",
        help="--model only: reuse the finished benchmarks of an earlier run in --output-dir with the same settings",
    )

    comparison = parser.add_argument_group("comparison (--compare)")
    comparison.add_argument(
        "--reference",
        nargs="?",
        const="paper",
        metavar="paper | FILE",
        help="--compare only: add rows of published scores to the table; without a value or 'paper', the KTAE "
        "paper's (shipped with ktae), else a .json file of that layout or a Markdown file with a table of "
        "benchmark columns",
    )


def run(args: argparse.Namespace) -> int:
    from ktae.evaluation.report import comparison_table, load_reference_rows, load_results

    try:
        if args.responses:
            return _rescore(args)
        if args.compare:
            if args.model:
                raise ValueError("--compare prints runs that exist: it does not go with --model")
            runs = [load_results(path) for path in args.compare]
            labels = [run["label"] for run in runs]
            for run, path in zip(runs, args.compare):
                if labels.count(run["label"]) > 1:  # the same model evaluated twice: tell the runs apart
                    run["label"] = f"{run['label']} ({Path(path).resolve().parent.name})"
            _mark_graders(runs)
            reference = load_reference_rows(args.reference) if args.reference else []
            print(comparison_table(runs, reference))
            _print_paired_comparisons(runs, args.compare, args.seed)
            return 0
        if args.reference:
            raise ValueError("--reference goes with --compare")
        if args.hub and args.data_dir:
            raise ValueError("--data-dir and --hub are two sources of the benchmarks: give one")
        if not args.model:
            raise ValueError("--model is required (or --responses FILE ..., or --compare RESULTS_JSON ...)")
        return _evaluate(args)
    except (ValueError, OSError) as e:  # OSError: missing files, a model id from_pretrained cannot resolve
        print(f"ktae eval: error: {printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the answer checker's workers are closed on the way out (its with-blocks)
        print(f"ktae eval: stopped (Ctrl-C); {printable(_after_interrupt(args))}", file=sys.stderr)
        return 130


def _after_interrupt(args: argparse.Namespace) -> str:
    """What a stopped run leaves behind, and how to go on."""
    from ktae.evaluation.eval_folder import RESPONSES_DIR

    if args.responses:
        return "the re-scored outputs are written once all are graded: nothing was written; run the command again"
    if args.compare or not args.model:
        return "nothing was written"
    finished = sorted(path.stem for path in (_output_dir(args) / RESPONSES_DIR).glob("*.jsonl"))
    kept = f"the finished benchmarks ({', '.join(finished)}) are kept" if finished else "no benchmark had finished"
    return f"{kept} in {_output_dir(args)}; to continue: {_command_line(args, resume=True)}"


def _command_line(args: argparse.Namespace, resume: bool) -> str:
    """The ``ktae eval`` command of ``args`` (the options that differ from their defaults), with --resume."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    words = ["ktae", "eval"]
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if not action.option_strings or value == action.default or action.dest == "resume":
            continue
        option = action.option_strings[-1]
        if isinstance(value, bool):
            words.append(option)
        else:
            words += [option, *(map(str, value) if isinstance(value, list) else [str(value)])]
    return shlex.join([*words, *(["--resume"] if resume or args.resume else [])])


def _output_dir(args: argparse.Namespace) -> Path:
    return Path(args.output_dir or Path("eval_results") / Path(args.model.rstrip("/")).name)


def _mark_graders(runs: list[dict]) -> None:
    """Runs graded by different graders are compared as they are, each label naming its grader, after a note."""
    from ktae.evaluation.harness import run_grader

    graders = [run_grader(run) for run in runs]
    if len(set(graders)) < 2:
        return
    for run, grader in zip(runs, graders):
        run["label"] = f"{run['label']} [{grader}]"
    names = printable(", ".join(dict.fromkeys(graders)))
    print(
        f"note: these runs were graded differently ({names}), so their differences include the graders'; "
        "to compare like with like, re-grade one: ktae eval --responses RUN_DIR --grader NAME\n"
    )


def _print_paired_comparisons(runs: list[dict], paths: list[str], seed: int) -> None:
    """Each run after the first against the first, paired over the same problems."""
    from ktae.evaluation.report import load_problem_records, paired_comparison_table

    if len(runs) < 2:
        return
    problems = []
    for run, path in zip(runs, paths):
        records = load_problem_records(run, path)
        if records is None:
            print(f"\nno paired comparison: {printable(path)} has no per-problem records and no responses/ beside it")
            return
        problems.append(records)
    for run, records in zip(runs[1:], problems[1:]):
        print("\n" + paired_comparison_table(runs[0], run, problems[0], records, seed=seed))


def _rescore(args: argparse.Namespace) -> int:
    """``--responses FILE ...``: grade, write, and print the results and the agreement with the file's verdicts."""
    from ktae.evaluation.eval_folder import AGREEMENT_REPORT
    from ktae.evaluation.report import results_table
    from ktae.evaluation.rescore import (
        MAX_RESPONSES_BYTES,
        agreement_table,
        default_label,
        disagreement_list,
        rescore_files,
    )
    from ktae.rewards import AnswerChecker

    for option in ("model", "compare", "reference"):
        if getattr(args, option, None):
            raise ValueError(f"--responses re-scores outputs that exist: it does not go with --{option}")
    if args.max_responses_mb is not None and args.max_responses_mb < 1:
        raise ValueError(f"--max-responses-mb must be >= 1, got {args.max_responses_mb}")
    label = default_label(args.responses)
    output_dir = Path(args.output_dir or Path("eval_results") / f"{label}-rescored")
    with AnswerChecker(timeout_s=args.check_timeout, grader=args.grader) as checker:
        results, agreed = rescore_files(
            args.responses,
            output_dir,
            format=args.format,
            checker=checker,
            label=label,
            pass_k=_int_list(args.pass_k, "--pass-k") if args.pass_k is not None else None,
            max_bytes=MAX_RESPONSES_BYTES if args.max_responses_mb is None else args.max_responses_mb << 20,
        )
    print(results_table(results))
    if agreed is not None:
        print(f"\nagreement with the file's verdicts (ours: --grader {args.grader}):\n{agreement_table(agreed)}")
        print(f"\ndisagreements ({len(agreed['disagreements'])}):\n{disagreement_list(agreed, limit=30)}")
    _print_outputs(output_dir)
    if agreed is not None:
        print(f"agreement: {output_dir / AGREEMENT_REPORT}")
    return 0


def _print_outputs(output_dir: Path) -> None:
    from ktae.evaluation.eval_folder import RESPONSES_DIR, RESULTS_FILE

    print(f"\nresults: {output_dir / RESULTS_FILE}\nresponses: {output_dir / RESPONSES_DIR}/")


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated integers, got {text!r}") from None


def _samples_per_benchmark(text: str | None) -> dict[str, int]:
    """ "aime24=32,amc23=32" -> {"aime24": 32, "amc23": 32}."""
    overrides = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, count = part.partition("=")
        if not sep:
            raise ValueError(f"--samples-per-benchmark: expected NAME=N, got {part!r}")
        try:
            overrides[name.strip()] = int(count)
        except ValueError:
            raise ValueError(f"--samples-per-benchmark: expected NAME=N with an integer N, got {part!r}") from None
    return overrides


def _evaluate(args: argparse.Namespace) -> int:
    from ktae.evaluation.harness import EvalSettings, evaluate
    from ktae.evaluation.report import results_table
    from ktae.rewards import AnswerChecker

    settings = EvalSettings(
        model=args.model,
        template=args.template,
        max_new_tokens=args.max_new_tokens,
        max_model_len=args.max_model_len,
        limit=args.limit,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        hub=args.hub,
        samples=args.samples,
        samples_per_benchmark=_samples_per_benchmark(args.samples_per_benchmark),
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    output_dir = _output_dir(args)
    options = dict(
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
    )
    with AnswerChecker(timeout_s=args.check_timeout, grader=args.grader) as checker:
        results = evaluate(
            settings,
            args.benchmarks,
            output_dir,
            backend=args.backend,
            resume=args.resume,
            checker=checker,
            generator_options=options,
            pass_k=_int_list(args.pass_k, "--pass-k") if args.pass_k is not None else None,
        )
    print(results_table(results))
    _print_outputs(output_dir)
    return 0
