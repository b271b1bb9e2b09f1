"""Benchmark the KTAE estimator against the plain GRPO advantage: ``ktae bench``.

For each number of groups, the median time of ``compute_ktae_advantages`` and of the plain GRPO
advantage (the same call with KTAE off) on realistic batches, the peak extra memory of the KTAE call,
and their ratio (`ktae.estimator_benchmark`). ``python benchmarks/bench_estimator.py`` adds a reference
built the way the released implementation works, on the small sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

import torch

from ktae.core.counting import BACKENDS
from ktae.estimator_benchmark import QWEN_VOCAB, run_benchmark


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", default="8,64,1024", help="comma-separated numbers of groups (default: 8,64,1024)")
    parser.add_argument("--group-size", type=int, default=16, help="rollouts per group (default: 16)")
    parser.add_argument("--max-len", type=int, default=3072, help="response length T (default: 3072)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement, median reported")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the token ids (default: 1.1)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device the batches live on"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how the estimator counts tokens (default: auto; see ktae.core.counting)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")


def _usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, found before any work starts; None when nothing is."""
    try:
        sizes = [int(x) for x in args.groups.split(",") if x.strip()]
    except ValueError:
        return f"--groups must be comma-separated integers, got {args.groups!r}"
    if not sizes or min(sizes) < 1 or args.group_size < 2 or args.max_len < 1 or args.repeats < 1:
        return "--groups, --max-len and --repeats must be >= 1 and --group-size >= 2"
    if not (math.isfinite(args.zipf) and args.zipf > 1):
        return f"--zipf must be a finite number > 1 (a Zipf law needs an exponent above 1), got {args.zipf}"
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        return f"--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return (
            f"--device {args.device}: CUDA is not available to this torch build ({torch.__version__}); use --device cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)"
    if device.type not in ("cpu", "cuda"):
        return f"--device {args.device}: the benchmark runs on cpu or cuda"
    if args.backend == "cpu-kernels" and device.type != "cpu":
        return f"--backend cpu-kernels needs --device cpu, got {args.device}"
    if args.json is not None:
        if args.json.is_dir():
            return f"--json {args.json} is a folder; give a file path"
        folder = args.json.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            return f"--json {args.json}: cannot write into {folder} (missing or not writable)"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _usage_error(args)
    if problem:
        print(f"ktae bench: error: {problem}", file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.groups.split(",") if x.strip()]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"ktae bench on {args.device} ({device_name}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.group_size} rollouts x {args.max_len} tokens per group, vocabulary {QWEN_VOCAB:,}, zipf {args.zipf}, "
        f"backend {args.backend}"
    )
    rows = run_benchmark(sizes, args.group_size, args.max_len, args.repeats, args.device, args.zipf, args.backend)
    if args.json:
        try:
            args.json.write_text(
                json.dumps({"device": args.device, "device_name": device_name, "rows": rows}, indent=2)
            )
        except OSError as error:
            print(f"ktae bench: error: cannot write {args.json}: {error.strerror or error}", file=sys.stderr)
            return 2
    return 0
