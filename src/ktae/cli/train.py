"""Train GRPO/DAPO with or without KTAE (default: a tiny CPU job, no downloads).

``ktae train`` with no arguments builds a tiny transformer and tokenizer locally, warm-starts it
by supervised training on the synthetic arithmetic task until it solves part of it, then runs
GRPO+KTAE with `KTAEGRPOTrainer` and logs the accuracy as it rises. ``ktae train --config
recipe.yaml [key=value ...]`` runs any recipe; ``ktae train --resume RUN_DIR`` continues a killed
run from its last checkpoint. The job itself, its options and defaults: `ktae.integrations.trl.job`.

This module reads the command line, holds the run folder's lock for the whole job (a second ``ktae
train`` on it is refused) and turns the job's errors into one line and exit code 2, Ctrl-C into a line
saying how to go on and exit code 130.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from ktae.cli.train_help import add_key_help
from ktae.run_folder import (
    CONFIG_FILE,
    RunFolderInUse,
)
from ktae.safe_files import RefusedFile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_key_help(parser)  # --help lists the keys with their defaults, --help-all every TRL key too
    parser.add_argument("--config", type=Path, metavar="FILE", help="recipe YAML (default: the built-in tiny CPU job)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="set a key (listed below), its value read as YAML: max_steps=20 ktae_top=0.5 bf16=true",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        metavar="RUN_DIR",
        help="run folder, new or empty (default: runs/<timestamp>)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint (reads RUN_DIR/config.yaml)",
    )


def run(args: argparse.Namespace) -> int:
    claimed = None  # its lock is held until the job ends; the kernel drops it if the process dies
    run_dir: Path | None = args.resume or args.output_dir
    after_bar = ""  # while training, the progress bar's line is unfinished: messages start on a line of their own
    try:
        try:
            from accelerate import PartialState

            # without the trl extra: an ImportError, reported below
            from ktae.integrations.trl.job import claim_new_run, claim_resumed_run, prepare_job

            if args.resume is not None:
                if args.config is not None or args.output_dir is not None:
                    raise ValueError(
                        "--resume RUN_DIR takes the run's own config.yaml and folder: drop --config/--output-dir"
                    )
                claimed = claim_resumed_run(args.resume, args.overrides)
                if claimed.finished_step is not None:
                    PartialState().print(
                        f"[ktae train] {args.resume} is finished: it trained all {claimed.finished_step} steps. "
                        f"Nothing to resume; to train on, raise max_steps (--resume {args.resume} max_steps=N)."
                    )
                    return 0
            else:
                claimed = claim_new_run(args.config, args.overrides, args.output_dir)
            run_dir = claimed.run_dir
            job = prepare_job(claimed.options, run_dir, resume=args.resume is not None)
        except (
            ValueError,
            OSError,
            ImportError,
            yaml.YAMLError,
            RunFolderInUse,
        ) as error:  # OSError: files, hubs out of reach
            print(f"ktae train: error: {error}", file=sys.stderr)
            return 2
        after_bar = "\n"
        try:
            summary = job.train()
        except (OSError, RefusedFile) as error:  # a full disk while saving, a log replaced by a link
            print(f"{after_bar}ktae train: error: {error}; {_how_to_continue(run_dir)}", file=sys.stderr)
            return 2
        PartialState().print(json.dumps(summary, indent=2))  # the main process of a launch
        return 0
    except KeyboardInterrupt:  # Ctrl-C: the lock is released below, and complete checkpoints are all kept
        print(f"{after_bar}ktae train: stopped (Ctrl-C); {_how_to_continue(run_dir)}", file=sys.stderr)
        return 130
    finally:
        if claimed is not None and claimed.lock is not None:
            claimed.lock.release()


def _how_to_continue(run_dir: Path | None) -> str:
    """How to go on after the job stopped midway: resume a run that started, else start it again."""
    if run_dir is not None and os.path.lexists(run_dir / CONFIG_FILE):
        resume = f"ktae train --resume {shlex.quote(str(run_dir))}"
        return f"the run keeps its complete checkpoints; continue it with: {resume}"
    where = "" if run_dir is None else f" (--output-dir {shlex.quote(str(run_dir))} starts it in the same folder)"
    return f"no run had started yet: run the command again{where}"
