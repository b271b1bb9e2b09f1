"""Evaluate a model on the math benchmarks (aime24, amc23, math500, minerva, olympiadbench).

ktae eval --model PATH_OR_ID --data-dir ../shared/data/math-eval [--benchmarks aime24,math500] [--limit N]
ktae eval --compare A/results.json B/results.json [--reference ../shared/data/math-eval/README.md]
ktae eval --responses OUTPUTS.json[.gz] [--format released|ktae] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ktae.data.benchmarks import BENCHMARKS
from ktae.data.templates import TEMPLATES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder or Hugging Face hub id")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated (default: all five)")
    parser.add_argument("--data-dir", help="folder of <benchmark>.jsonl files (default: load from the hub)")
    parser.add_argument(
        "--output-dir", help="where results.json and responses/ go (default: eval_results/<model name>)"
    )
    parser.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=3000)
    parser.add_argument("--max-model-len", type=int, default=4096, help="context length, prompt included")
    parser.add_argument("--template", default="qwen_math", choices=sorted(TEMPLATES))
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "vllm", "transformers"],
        help="auto: vLLM when installed and a GPU is present, else transformers",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="transformers backend: prompts per batch")
    parser.add_argument("--device", help="transformers backend: torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM backend")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM backend")
    parser.add_argument("--seed", type=int, default=0, help="vLLM backend")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--check-timeout", type=float, default=5.0, help="seconds per answer check")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the finished benchmarks of an earlier run in --output-dir with the same settings",
    )
    parser.add_argument("--compare", nargs="+", metavar="RESULTS_JSON", help="print these runs side by side instead")
    parser.add_argument(
        "--reference",
        metavar="README_MD",
        help="with --compare: add the reference rows of this Markdown table (math-eval/README.md)",
    )
    parser.add_argument(
        "--responses",
        nargs="+",
        metavar="FILE",
        help="grade these model outputs instead of generating (files, or folders of ktae response files)",
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", "released", "ktae"],
        help="with --responses: released (a JSON list of task_name/gt/model_output/reward records) or ktae "
        "(the responses/*.jsonl of ktae eval); auto tells them apart",
    )


def run(args: argparse.Namespace) -> int:
    from ktae.evaluation.report import comparison_table, load_reference_rows, load_results

    try:
        if args.responses:
            from ktae.evaluation.rescore import run_command

            return run_command(args)
        if args.compare:
            runs = [load_results(path) for path in args.compare]
            labels = [run["label"] for run in runs]
            for run, path in zip(runs, args.compare):
                if labels.count(run["label"]) > 1:  # the same model evaluated twice: tell the runs apart
                    run["label"] = f"{run['label']} ({Path(path).resolve().parent.name})"
            reference = load_reference_rows(args.reference) if args.reference else []
            print(comparison_table(runs, reference))
            return 0
        if args.reference:
            raise ValueError("--reference goes with --compare")
        if not args.model:
            raise ValueError("--model is required (or --compare RESULTS_JSON ...)")
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit must be > 0, got {args.limit}")
        return _evaluate(args)
    except (ValueError, OSError) as e:  # OSError: missing files, a model id from_pretrained cannot resolve
        print(f"ktae eval: error: {e}", file=sys.stderr)
        return 2


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
    )
    output_dir = Path(args.output_dir or Path("eval_results") / Path(args.model.rstrip("/")).name)
    options = dict(
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
    )
    with AnswerChecker(timeout_s=args.check_timeout) as checker:
        results = evaluate(
            settings,
            args.benchmarks,
            output_dir,
            backend=args.backend,
            resume=args.resume,
            checker=checker,
            generator_options=options,
        )
    print(results_table(results))
    print(f"\nresults: {output_dir / 'results.json'}\nresponses: {output_dir / 'responses'}/")
    return 0
