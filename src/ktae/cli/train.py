"""Train GRPO/DAPO with or without KTAE (default: a tiny CPU job, no downloads).

``ktae train`` with no arguments builds a tiny transformer and tokenizer locally, warm-starts it
by supervised training on the synthetic arithmetic task until it solves part of it, then runs
GRPO+KTAE with `KTAEGRPOTrainer` and logs the accuracy as it rises. ``ktae train --config
recipe.yaml [key=value ...]`` runs any recipe; ``ktae train --resume RUN_DIR`` continues a killed
run from its last checkpoint. The job itself, its options and defaults: `ktae.integrations.trl.job`.

This module reads the command line, picks the run folder, holds its lock for the whole job (a second
``ktae train`` on it is refused) and turns the job's errors into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from ktae.run_folder import RunFolderInUse, open_run_folder, read_config, start_run_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="recipe YAML (default: the built-in tiny CPU job)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, values read as YAML (max_steps=20)"
    )
    parser.add_argument("--output-dir", type=Path, help="run folder (default: runs/<timestamp>)")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint (reads RUN_DIR/config.yaml)",
    )


def run(args: argparse.Namespace) -> int:
    lock = None  # held until the job ends; the kernel drops it if the process dies
    try:
        try:
            from ktae.integrations.trl.job import (  # without the trl extra: an ImportError, reported below
                default_job,
                finished_step,
                parse_overrides,
                prepare_job,
                read_recipe,
                resolve_options,
            )

            if args.resume is not None:
                if args.config is not None or args.output_dir is not None:
                    raise ValueError(
                        "--resume RUN_DIR takes the run's own config.yaml and folder: drop --config/--output-dir"
                    )
                run_dir = args.resume
                lock = open_run_folder(run_dir)
                options = resolve_options(read_config(run_dir) or {}, args.overrides)
                finished = finished_step(run_dir, options.get("max_steps", -1))
                if finished is not None:
                    print(
                        f"[ktae train] {run_dir} is finished: it trained all {finished} steps. "
                        f"Nothing to resume; to train on, raise max_steps (--resume {run_dir} max_steps=N)."
                    )
                    return 0
            else:
                if args.config is not None:
                    recipe, defaults = read_recipe(args.config), None
                else:
                    recipe = {}
                    defaults = default_job(parse_overrides(args.overrides).get("model_name_or_path"))
                options = resolve_options(recipe, args.overrides, defaults=defaults)
                run_dir = args.output_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
                lock = start_run_folder(run_dir)
            job = prepare_job(options, run_dir, resume=args.resume is not None)
        except (
            ValueError,
            OSError,
            ImportError,
            yaml.YAMLError,
            RunFolderInUse,
        ) as error:  # OSError: files, hubs out of reach
            print(f"ktae train: error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(job.train(), indent=2))
        return 0
    finally:
        if lock is not None:
            lock.release()
