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
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ktae.cli.train_help import add_key_help
from ktae.run_folder import (
    CONFIG_FILE,
    RunFolderInUse,
    RunFolderLock,
    open_run_folder,
    read_config,
    start_run_folder,
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
    lock = None  # held until the job ends; the kernel drops it if the process dies
    run_dir: Path | None = None
    after_bar = ""  # while training, the progress bar's line is unfinished: messages start on a line of their own
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
                if "output_dir" in parse_overrides(args.overrides):
                    raise ValueError(f"output_dir: --resume {args.resume} continues the run in its own folder")
                run_dir = args.resume
                if not (run_dir / CONFIG_FILE).is_file():
                    raise ValueError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
                options = resolve_options(read_config(run_dir) or {}, args.overrides)
                launch = PartialState()  # the processes of `accelerate launch` (resolve_options set them up)
                check_launch(launch.num_processes)
                lock = _claim_on_main_process(launch, open_run_folder, args.resume)
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
                if "output_dir" in options:  # TRL's name for the run folder, which --output-dir names here
                    raise ValueError("output_dir: the run folder is --output-dir RUN_DIR, not a key")
                launch = PartialState()  # the processes of `accelerate launch` (resolve_options set them up)
                check_launch(launch.num_processes)
                run_dir = args.output_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
                if launch.num_processes > 1:  # one folder for every process: the main one's
                    run_dir = broadcast_object_list([run_dir])[0]
                lock = _claim_on_main_process(launch, start_run_folder, run_dir)
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
        after_bar = "\n"
        try:
            summary = job.train()
        except (OSError, RefusedFile) as error:  # a full disk while saving, a log replaced by a link
            print(f"{after_bar}ktae train: error: {error}; {_how_to_continue(run_dir)}", file=sys.stderr)
            return 2
        launch.print(json.dumps(summary, indent=2))
        return 0
    except KeyboardInterrupt:  # Ctrl-C: the lock is released below, and complete checkpoints are all kept
        print(f"{after_bar}ktae train: stopped (Ctrl-C); {_how_to_continue(run_dir)}", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()


def _claim_on_main_process(launch, claim: Callable[[Path], RunFolderLock], run_dir: Path) -> RunFolderLock | None:
    """Lock the run folder in the main process alone (it alone writes the folder) and return its lock; the
    other processes of a launch get None, or the main process's refusal as their own, so none trains on."""
    lock, refusal = None, None
    if launch.is_main_process:
        try:
            lock = claim(run_dir)
        except (ValueError, OSError, RunFolderInUse) as error:
            if launch.num_processes == 1:
                raise
            refusal = str(error)
    if launch.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
        if refusal is not None:
            raise ValueError(refusal) if launch.is_main_process else ValueError(f"(main process) {refusal}")
    return lock


def _how_to_continue(run_dir: Path | None) -> str:
    """How to go on after the job stopped midway: resume a run that started, else start it again."""
    if run_dir is not None and os.path.lexists(run_dir / CONFIG_FILE):
        resume = f"ktae train --resume {shlex.quote(str(run_dir))}"
        return f"the run keeps its complete checkpoints; continue it with: {resume}"
    where = "" if run_dir is None else f" (--output-dir {shlex.quote(str(run_dir))} starts it in the same folder)"
    return f"no run had started yet: run the command again{where}"
