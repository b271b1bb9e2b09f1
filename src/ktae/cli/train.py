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

from ktae.run_folder import CONFIG_FILE, RunFolderInUse, RunFolderLock, read_config


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
            from accelerate import PartialState
            from accelerate.utils import broadcast_object_list

            from ktae.integrations.trl.job import (  # without the trl extra: an ImportError, reported below
                check_launch,
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
                if not (run_dir / CONFIG_FILE).is_file():
                    raise ValueError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
                options = resolve_options(read_config(run_dir) or {}, args.overrides)
                launch = PartialState()  # the processes of `accelerate launch` (resolve_options set them up)
                check_launch(launch.num_processes)
                if launch.is_main_process:
                    lock = RunFolderLock(run_dir).acquire()
                finished = finished_step(run_dir, options.get("max_steps", -1))
                if finished is not None:
                    launch.print(
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
                launch = PartialState()  # the processes of `accelerate launch` (resolve_options set them up)
                check_launch(launch.num_processes)
                run_dir = args.output_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
                if launch.num_processes > 1:  # one folder for every process: the main one's
                    run_dir = broadcast_object_list([run_dir])[0]
                if launch.is_main_process:
                    lock = RunFolderLock(run_dir).acquire()
                    if (run_dir / CONFIG_FILE).exists():
                        raise ValueError(
                            f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another folder"
                        )
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
        summary = job.train()
        launch.print(json.dumps(summary, indent=2))
        return 0
    finally:
        if lock is not None:
            lock.release()
