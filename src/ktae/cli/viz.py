"""Render HTML reports of the tokens KTAE credits and blames, and the training curves of runs.

ktae viz --run RUN_DIR                      # RUN_DIR/report/index.html + a page per logged step
ktae viz --run RUN_A --run RUN_B --out DIR  # runs compared on one plot
ktae viz --rollouts FILE.jsonl --tokenizer PATH_OR_ID   # one page (also verl's rollout_data_dir)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ktae import KTAEConfig

# KTAEConfig fields settable from the command line (ignore_token_ids has its own option), and what they mean.
_KTAE_OPTIONS = [f for f in dataclasses.fields(KTAEConfig) if f.name != "ignore_token_ids"]
_KTAE_MEANINGS = {
    "alpha": "weight of the Fisher term",
    "beta_ig": "weight of the information gain term",
    "gamma_tf": "weight of the term-frequency correction",
    "top": "bound of the key-token value, |v| < top (0: off)",
    "correct_threshold": "a rollout is correct when its score is above this",
    "rollout_advantage": "the rollout-level base: grpo, dr_grpo, rloo or none",
    "epsilon": "added to the group's std in the grpo base",
}


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run",
        action="append",
        type=Path,
        metavar="RUN_DIR",
        help="a training run folder (ktae train); repeat to compare runs on one plot",
    )
    source.add_argument(
        "--rollouts",
        type=Path,
        metavar="FILE",
        help="a rollouts JSONL file, or a folder of JSONL dumps (verl's trainer.rollout_data_dir)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="output: a folder for --run (default RUN_DIR/report, or ./ktae-report for several runs), "
        "an .html file for --rollouts (default: beside the input)",
    )
    parser.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="a name per --run for legends and tables (default: the folder names)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH_OR_ID",
        help="Hugging Face tokenizer (default: the run's newest checkpoint); needed for text-only rollouts",
    )
    parser.add_argument(
        "--step", type=_int_list, action="append", metavar="N[,N...]", help="only the rollouts of these training steps"
    )
    parser.add_argument(
        "--ignore-token-ids",
        type=_int_list,
        metavar="ID[,ID...]",
        help="token ids that get no value (default: the tokenizer's pad and end-of-sequence ids)",
    )
    parser.add_argument(
        "--metrics",
        type=lambda text: "all" if text == "all" else [m for m in text.split(",") if m],
        metavar="NAME[,NAME...]",
        help="metrics to plot from metrics.jsonl, or 'all' (default: reward, accuracy, lengths, KL, "
        "entropy and the KTAE shares that were logged)",
    )
    parser.add_argument(
        "--strong",
        type=float,
        default=0.5,
        metavar="V",
        help="|v| above which a token counts as strongly weighted (default: 0.5)",
    )
    ktae = parser.add_argument_group("KTAE options (default: the settings the run trained with, else the paper's)")
    for field in _KTAE_OPTIONS:
        flag = "--" + field.name.replace("_", "-")
        meaning = f"{_KTAE_MEANINGS[field.name]} (paper: {field.default})"
        if field.name == "rollout_advantage":
            ktae.add_argument(flag, default=None, metavar="NAME", help=meaning)
        else:
            ktae.add_argument(flag, type=float, default=None, metavar="X", help=meaning)


def run(args: argparse.Namespace) -> int:
    from ktae.reports import build_report, build_run_report

    overrides = {f.name: getattr(args, f.name) for f in _KTAE_OPTIONS if getattr(args, f.name) is not None}
    steps = sorted({s for group in args.step for s in group}) if args.step else None
    try:
        if args.run:
            if args.label and len(args.label) != len(args.run):
                raise ValueError(f"--label given {len(args.label)} time(s) for {len(args.run)} --run folder(s)")
            out = args.out or (args.run[0] / "report" if len(args.run) == 1 else Path("ktae-report"))
            if out.exists() and not out.is_dir():
                raise ValueError(f"--out {out} is a file; a --run report is a folder")
            index = build_run_report(
                args.run,
                out,
                labels=args.label,
                tokenizer=args.tokenizer,
                config=overrides or None,
                steps=steps,
                ignore_token_ids=args.ignore_token_ids,
                metrics=args.metrics,
                strong=args.strong,
            )
            print(f"report: {index}")
            for png in ("curves.png", "key-tokens.png"):
                if (out / png).is_file():
                    print(f"plot:   {out / png}")
        else:
            if args.label or args.metrics:
                raise ValueError("--label and --metrics apply to --run reports")
            rollouts = args.rollouts
            out = args.out or (rollouts / "report.html" if rollouts.is_dir() else rollouts.with_suffix(".html"))
            if out.is_dir():
                raise ValueError(f"--out {out} is a folder; a --rollouts report is one .html file")
            report = build_report(
                rollouts,
                out,
                tokenizer=args.tokenizer,
                config=overrides or None,
                steps=steps,
                ignore_token_ids=args.ignore_token_ids,
                strong=args.strong,
            )
            print(f"report: {report}")
    except (ValueError, TypeError, OSError) as error:  # OSError: unreadable input, unwritable output, no tokenizer
        print(f"ktae viz: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0
