"""Does KTAE help? GRPO, GRPO+KTAE, DAPO and DAPO+KTAE on three synthetic tasks, with seeds and tests.

Tasks (`TASKS`), each a preset of `ktae train`'s ``task_*`` keys:

- ``arithmetic``: the built-in job's chains (the control: fixed-length answers, the same digits in
  almost every rollout, little for token-level credit to tell apart);
- ``strategy``: the same chains, with a share of the warm start's solutions bare boxed answers: the
  first token chooses between working step by step (reliable) and guessing in one go (short,
  unreliable), and the step tokens (``+``, ``=``, newline) occur mostly in correct rollouts;
- ``hedge``: worked solutions with hedge lines (``~~~~``) after steps: hedges say nothing, but a
  response with many runs past the response limit before it boxes its answer (truncated, wrong),
  so ``~`` occurs mostly in incorrect rollouts and KTAE should push it down (shorter responses).

Every run of a task starts from the same supervised warm start (made once per task) and trains on
the same prompts, with the same held-out set; only the variant (`VARIANTS`) and the training seed
change, and a seed means the same prompt order in every variant, so runs pair up by seed.

    python benchmarks/compare_ktae.py --plan all --jobs 2   # everything docs/experiment.md reports
    python benchmarks/compare_ktae.py --plan main           # 3 tasks x 4 variants x 5 seeds only
    python benchmarks/compare_ktae.py --tasks hedge --variants GRPO GRPO+KTAE --seeds 0 1 max_steps=20
    python benchmarks/compare_ktae.py --plan all --report-only  # tables and plots of the finished runs

Any `ktae train` key=value applies to every run (before the options). Runs live in --work (default
runs/compare_ktae, git-ignored), one folder per task, variant and seed; an interrupted benchmark
resumes: warm starts and finished runs (``done.json``) are kept, an unfinished run starts over.
``--jobs N`` runs N at once, one CPU thread each (the tiny model gains little from a second thread, so
separate runs use the cores better). Results go to --out (default benchmarks/results):
compare_ktae.json (every number), compare_ktae.md (the tables), compare_ktae-<task>.png (curves,
mean ± standard deviation over seeds), built from whatever runs are finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ktae.run_folder import is_metric_value

TASKS: dict[str, dict] = {
    "arithmetic": {},
    "strategy": {"task_direct_answer_rate": 0.3},
    "hedge": {"task_hedge_rate": 0.4},
}
GRPO, DAPO = {"algo": "grpo"}, {"algo": "dapo"}
VARIANTS: dict[str, dict] = {
    # the comparison
    "GRPO": {**GRPO, "ktae": False},
    "GRPO+KTAE": {**GRPO, "ktae": True},
    "DAPO": {**DAPO, "ktae": False},
    "DAPO+KTAE": {**DAPO, "ktae": True},
    # why DAPO+KTAE ends lower on arithmetic: one DAPO ingredient off (with and without KTAE), a KL
    # term as GRPO has, or a smaller bonus bound
    "DAPO+KTAE top=0.5": {**DAPO, "ktae": True, "ktae_top": 0.5},
    "DAPO+KTAE+KL": {**DAPO, "ktae": True, "beta": 0.001},
    "DAPO+KL": {**DAPO, "ktae": False, "beta": 0.001},
    "DAPO+KTAE no-overlong": {**DAPO, "ktae": True, "overlong_buffer_length": 0},
    "DAPO no-overlong": {**DAPO, "ktae": False, "overlong_buffer_length": 0},
    "DAPO+KTAE no-dynamic": {**DAPO, "ktae": True, "dynamic_sampling": False},
    "DAPO no-dynamic": {**DAPO, "ktae": False, "dynamic_sampling": False},
    # is it the step size? The bonus raises the gradient norm (docs/experiment.md gives the factor): DAPO's
    # learning rate 0.03 scaled down by that factor with KTAE, up by it without
    "DAPO+KTAE lr=0.02": {**DAPO, "ktae": True, "learning_rate": 0.02},
    "DAPO lr=0.05": {**DAPO, "ktae": False, "learning_rate": 0.05},
    # sensitivity of GRPO+KTAE: the bonus bound and the weights of the Fisher term (alpha) and IG (beta)
    "GRPO+KTAE top=0.25": {**GRPO, "ktae": True, "ktae_top": 0.25},
    "GRPO+KTAE top=0.5": {**GRPO, "ktae": True, "ktae_top": 0.5},
    "GRPO+KTAE top=2": {**GRPO, "ktae": True, "ktae_top": 2.0},
    "GRPO+KTAE alpha=0": {**GRPO, "ktae": True, "ktae_alpha": 0.0},
    "GRPO+KTAE beta=0": {**GRPO, "ktae": True, "ktae_beta_ig": 0.0},
}
MAIN = ["GRPO", "GRPO+KTAE", "DAPO", "DAPO+KTAE"]
# variant -> the run it is compared with, seed by seed
BASELINES = {
    "GRPO+KTAE": "GRPO",
    "DAPO+KTAE": "DAPO",
    "DAPO+KTAE top=0.5": "DAPO",
    "DAPO+KTAE+KL": "DAPO+KL",
    "DAPO+KTAE no-overlong": "DAPO no-overlong",
    "DAPO+KTAE no-dynamic": "DAPO no-dynamic",
    "DAPO+KTAE lr=0.02": "DAPO",
    "DAPO lr=0.05": "DAPO",
    **{name: "GRPO" for name in VARIANTS if name.startswith("GRPO+KTAE ")},
}
SENSITIVITY_TASK = "hedge"
# (tasks, variants, seeds) blocks, run in this order: the main grid first, then the extras.
PLANS: dict[str, list[tuple[list[str], list[str], list[int]]]] = {
    "main": [(list(TASKS), MAIN, [0, 1, 2, 3, 4])],
    "dapo": [
        (
            ["arithmetic"],
            [
                "DAPO+KTAE no-dynamic",
                "DAPO no-dynamic",
                "DAPO+KTAE no-overlong",
                "DAPO no-overlong",
                "DAPO+KTAE top=0.5",
                "DAPO+KTAE+KL",
                "DAPO+KL",
                "DAPO+KTAE lr=0.02",
                "DAPO lr=0.05",
            ],
            [0, 1, 2, 3, 4],
        ),
    ],
    "sensitivity": [
        (
            [SENSITIVITY_TASK],
            ["GRPO+KTAE top=0.25", "GRPO+KTAE top=0.5", "GRPO+KTAE top=2", "GRPO+KTAE alpha=0", "GRPO+KTAE beta=0"],
            [0, 1, 2, 3, 4],
        )
    ],
}
PLANS["all"] = PLANS["main"] + PLANS["dapo"] + PLANS["sensitivity"]

# What the comparison changes from the default job, so that its grid of runs fits a small CPU machine:
# 20 RL steps of 8 prompts x 8 rollouts, greedy accuracy every 5 steps, a warm start of at most 600
# steps, no checkpoints but the last, rollouts (all groups) and key tokens logged every 5 steps, DAPO's
# dynamic sampling bounded at two generation rounds.
BENCHMARK_JOB = {
    "max_steps": 20,
    "per_device_train_batch_size": 64,
    "eval_accuracy_steps": 5,
    "warm_start_max_steps": 600,
    "save_steps": 100_000,
    "keep_checkpoints": 1,
    "ktae_log_rollouts_steps": 5,
    "ktae_log_rollouts_groups": 8,
    "max_num_gen_batches": 2,
    # 0/1 reward for DAPO too: the same advantages as its +-1 under group normalisation (docs/experiment.md)
    "reward": "accuracy",
    "report_to": "none",
}
WINDOW = 10  # steps averaged for the "first" and "last" values of a per-step metric
CONFIDENCE = 0.95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="`ktae train` keys for every run")
    parser.add_argument("--plan", choices=list(PLANS), help="a named set of runs (default: --tasks/--variants/--seeds)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=MAIN)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one CPU thread each")
    parser.add_argument("--report-only", action="store_true", help="no training: report the finished runs")
    parser.add_argument("--work", type=Path, default=Path("runs/compare_ktae"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    blocks = PLANS[args.plan] if args.plan else [(args.tasks, args.variants, args.seeds)]

    from ktae.integrations.trl.job import DEFAULT_JOB, resolve_options

    base = resolve_options({**DEFAULT_JOB, **BENCHMARK_JOB}, args.overrides)
    # seed by seed within a block: a benchmark stopped early leaves whole seeds, comparable across cells
    planned = [
        (task, variant, seed)
        for tasks, variants, seeds in blocks
        for seed in seeds
        for task in tasks
        for variant in variants
    ]
    planned = list(dict.fromkeys(planned))
    for task, variant, _ in planned:  # every run's options are validated before any work
        resolve_options({**base, **TASKS[task], **VARIANTS[variant]})
    started = time.perf_counter()
    if not args.report_only:
        train_all(base, planned, args.work, args.jobs)
    report = build_report(base, planned, args.work, args.out)
    report["minutes"] = round((time.perf_counter() - started) / 60, 1)
    write_report(report, args.out)
    print((args.out / "compare_ktae.md").read_text())
    return 0


# ------------------------------------------------------------------------------------------------
# Training


def run_dir_of(work: Path, task: str, variant: str, seed: int) -> Path:
    slug = variant.lower().replace("+", "-").replace(" ", "-").replace("=", "")
    return work / task / "runs" / f"{slug}-seed{seed}"


def warm_dir_of(work: Path, task: str) -> Path:
    from ktae.run_folder import WARM_START_DIR

    return work / task / WARM_START_DIR


def train_all(base: dict, planned: Sequence[tuple[str, str, int]], work: Path, jobs: int) -> None:
    """Warm starts first (one per task), then every planned run not finished yet, ``jobs`` at a time."""
    tasks = list(dict.fromkeys(task for task, _, _ in planned))
    todo = [
        (task, variant, seed)
        for task, variant, seed in planned
        if not (run_dir_of(work, task, variant, seed) / "done.json").is_file()
    ]
    print(f"[compare_ktae] {len(planned) - len(todo)} of {len(planned)} runs finished; {len(todo)} to go", flush=True)
    if not todo:
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers, before they load torch
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_single_thread
    ) as pool:
        warm = {task: pool.submit(warm_start_task, {**base, **TASKS[task]}, work / task) for task in tasks}
        for task, future in warm.items():
            print(f"[compare_ktae] warm start {task}: {future.result()}", flush=True)
        futures = []
        for task, variant, seed in todo:
            options = {
                **base,
                **TASKS[task],
                **VARIANTS[variant],
                "seed": seed,
                "model_name_or_path": str(warm_dir_of(work, task)),
                "warm_start_max_steps": 0,
            }
            futures.append(
                (task, variant, seed, pool.submit(train_one, options, run_dir_of(work, task, variant, seed)))
            )
        for task, variant, seed, future in futures:
            print(f"[compare_ktae] {task} {variant} seed {seed}: {future.result():.0f} s", flush=True)


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def warm_start_task(options: dict, task_dir: Path) -> list:
    """The warm-started policy every run of a task starts from (made once): its (step, accuracy) history."""
    from ktae.integrations.trl.job import JobArguments, load_datasets, load_model_and_tokenizer
    from ktae.integrations.trl.warmstart import warm_start

    history_path = task_dir / "warm_start_accuracy.json"
    if history_path.is_file():
        return json.loads(history_path.read_text())
    task_dir.mkdir(parents=True, exist_ok=True)
    with _output_to(task_dir / "warm_start.log"):
        job = JobArguments.from_options(options)
        model, tokenizer = load_model_and_tokenizer(job, seed=options.get("seed", 0))
        train, held_out = load_datasets(job)
        history = warm_start(model, tokenizer, train, held_out, task_dir / "warm_start", job.warm_start())
    history_path.write_text(json.dumps(history))  # last: its presence means the warm start is complete
    return history


def train_one(options: dict, run_dir: Path) -> float:
    """One RL run from the task's warm start; ``done.json`` marks it finished. Returns its seconds."""
    from ktae.integrations.trl.job import run_job

    done = run_dir / "done.json"
    if done.is_file():  # finished meanwhile, by another benchmark process sharing the work folder
        return json.loads(done.read_text())["seconds"]
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts over (no mid-run checkpoints)
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    with _output_to(run_dir / "train.log"):
        summary = run_job(options, run_dir)
    summary["seconds"] = time.perf_counter() - started
    (run_dir / "done.json").write_text(json.dumps(summary))
    return summary["seconds"]


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``path`` while inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


# ------------------------------------------------------------------------------------------------
# Measures of one run


# Per-step training signals averaged over a run (and its last steps): the size of KTAE's bonus on correct and
# incorrect rollouts' tokens (against group-normalised rollout advantages of about +-1), the policy's
# entropy and drift, the size of the SGD update (`update_size`), and what DAPO's dynamic sampling and
# overlong shaping did.
DIAGNOSTICS = {
    "ktae/bonus_mean_correct": "bonus, correct",
    "ktae/bonus_mean_incorrect": "bonus, incorrect",
    "ktae/large_bonus_share": "share abs(bonus) > 0.5",
    "entropy": "entropy",
    "kl": "KL",
    "grad_norm": "grad norm",
    "update_size": "update size",
    "frac_reward_zero_std": "groups all alike",
    "dynamic_sampling/gen_batches": "generation rounds",
    "rewards/overlong_penalty/mean": "overlong penalty",
}


def run_measures(run_dir: Path) -> dict:
    """Per-run numbers: greedy held-out accuracy (final, best, area under the curve), sampled accuracy of
    the training rollouts, response length and truncated share (first and last steps), and bonus sizes."""
    from ktae.reports.curves import read_metrics

    records = read_metrics(run_dir)
    evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
    clip = max_grad_norm(run_dir)
    for record in records:
        if is_metric_value(record.get("learning_rate")) and is_metric_value(record.get("grad_norm")):
            record["update_size"] = record["learning_rate"] * min(record["grad_norm"], clip)

    def series(key: str) -> list[float]:
        return [r[key] for r in records if is_metric_value(r.get(key))]

    def window_mean(values: list[float], last: bool) -> float | None:
        part = values[-WINDOW:] if last else values[:WINDOW]
        return statistics.fmean(part) if part else None

    sampled, length, clipped = series("accuracy"), series("completion_length"), series("completions/clipped_ratio")
    measures = {
        "final_accuracy": evals[-1][1],
        "best_accuracy": max(a for _, a in evals),
        "auc_accuracy": area_under_curve(evals),
        "sampled_accuracy_first": window_mean(sampled, last=False),
        "sampled_accuracy_last": window_mean(sampled, last=True),
        "sampled_accuracy_mean": statistics.fmean(sampled),
        "length_first": window_mean(length, last=False),
        "length_last": window_mean(length, last=True),
        "truncated_first": window_mean(clipped, last=False),
        "truncated_last": window_mean(clipped, last=True),
    }
    for key in DIAGNOSTICS:
        values = series(key)
        measures[key] = statistics.fmean(values) if values else None
        measures[key + "_last"] = window_mean(values, last=True)
    measures["behaviour"] = rollout_behaviour(run_dir)
    done = run_dir / "done.json"
    measures["seconds"] = json.loads(done.read_text()).get("seconds") if done.is_file() else None
    return measures


def max_grad_norm(run_dir: Path) -> float:
    """The run's gradient clipping norm: its config.yaml's ``max_grad_norm``, else the trainer's default."""
    from ktae.integrations.trl import KTAEGRPOConfig
    from ktae.run_folder import read_config

    value = (read_config(run_dir) or {}).get("max_grad_norm")
    return float(value if value is not None else KTAEGRPOConfig.__dataclass_fields__["max_grad_norm"].default)


def rollout_behaviour(run_dir: Path) -> dict:
    """What the logged rollouts did, at the first and the last logged step: share correct, share of bare
    answers (the strategy task's guesses) and their accuracy, hedge lines per response and the accuracy
    of responses with and without any, share cut at the response limit (no end-of-sequence token)."""
    from ktae.data.synthetic import BOXED, HEDGE_LINE
    from ktae.run_folder import ROLLOUTS_FILE, read_jsonl
    from ktae.tiny import EOS

    path = run_dir / ROLLOUTS_FILE
    if not path.is_file():
        return {}
    by_step: dict[int, list[dict]] = {}
    for record in read_jsonl(path):
        by_step.setdefault(record["step"], []).append(record)

    def share(rows: list[dict], keep) -> float | None:
        return statistics.fmean(keep(r) for r in rows) if rows else None

    profile = {}
    for name, step in (("first", min(by_step)), ("last", max(by_step))):
        rows = by_step[step]
        direct = [r for r in rows if r["response"].startswith(BOXED)]
        hedged = [r for r in rows if HEDGE_LINE in r["response"]]
        plain = [r for r in rows if HEDGE_LINE not in r["response"]]
        profile[name] = {
            "step": step,
            "rollouts": len(rows),
            "correct": share(rows, lambda r: r["correct"]),
            "direct_share": len(direct) / len(rows),
            "direct_correct": share(direct, lambda r: r["correct"]),
            "worked_correct": share([r for r in rows if not r["response"].startswith(BOXED)], lambda r: r["correct"]),
            "hedge_lines": share(rows, lambda r: r["response"].count(HEDGE_LINE)),
            "hedged_correct": share(hedged, lambda r: r["correct"]),
            "unhedged_correct": share(plain, lambda r: r["correct"]),
            "cut": share(rows, lambda r: not (r["tokens"] and r["tokens"][-1] == EOS)),
        }
    return profile


def area_under_curve(points: Sequence[tuple[float, float]]) -> float:
    """Trapezoid area under (step, value) divided by the step span: the curve's mean height."""
    steps = np.array([p[0] for p in points], dtype=float)
    values = np.array([p[1] for p in points], dtype=float)
    if len(points) < 2:
        return float(values[0])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


# ------------------------------------------------------------------------------------------------
# Statistics over seeds


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Mean, standard deviation and Student-t interval of the mean over seeds."""
    from scipy import stats

    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if data.size < 2:
        return {"mean": mean, "std": 0.0, "low": None, "high": None, "n": int(data.size)}
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, data.size - 1) * std / math.sqrt(data.size))
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": int(data.size)}


def paired_test(baseline: Sequence[float], treated: Sequence[float]) -> dict:
    """treated − baseline seed by seed: mean difference, its t-interval, the paired t-test's p and the
    exact sign-flip (permutation) test's p of `ktae.evaluation.metrics` over the seeds' differences."""
    from scipy import stats

    from ktae.evaluation.metrics import sign_flip_p_value

    differences = np.asarray(treated, dtype=float) - np.asarray(baseline, dtype=float)
    interval = t_interval(differences)
    if differences.size < 2 or not differences.any():
        t_p = 1.0
    elif np.all(differences == differences[0]):
        t_p = 0.0
    else:
        t_p = float(stats.ttest_rel(treated, baseline).pvalue)
    flip_p, method = sign_flip_p_value([differences])
    return {
        "difference": interval["mean"],
        "low": interval["low"],
        "high": interval["high"],
        "t_test_p": t_p,
        "sign_flip_p": flip_p,
        "sign_flip_method": method,
        "seeds": int(differences.size),
        "wins": int((differences > 0).sum()),
        "losses": int((differences < 0).sum()),
    }


# Measures tabled per variant, with the per-run key and how to show it.
TABLED = {
    "final_accuracy": "final greedy acc.",
    "auc_accuracy": "greedy acc. AUC",
    "sampled_accuracy_last": "sampled acc. (last 10)",
    "sampled_accuracy_mean": "sampled acc. AUC",
    "length_last": "length (last 10)",
    "truncated_last": "truncated (last 10)",
}
COMPARED = ("final_accuracy", "auc_accuracy", "sampled_accuracy_mean", "sampled_accuracy_last", "length_last")


def build_report(base: Mapping, planned: Sequence[tuple[str, str, int]], work: Path, out: Path) -> dict:
    """Every finished planned run's measures, per task and variant, with intervals and paired tests."""
    runs: dict[str, dict[str, dict[int, dict]]] = {}
    for task, variant, seed in planned:
        run_dir = run_dir_of(work, task, variant, seed)
        if (run_dir / "done.json").is_file():
            runs.setdefault(task, {}).setdefault(variant, {})[seed] = run_measures(run_dir)
    report: dict = {
        "settings": {
            k: base.get(k)
            for k in (
                "max_steps",
                "eval_accuracy_steps",
                "learning_rate",
                "optim",
                "num_generations",
                "per_device_train_batch_size",
                "max_completion_length",
                "temperature",
                "task_train_size",
                "task_eval_size",
                "max_num_gen_batches",
                "reward",
            )
        },
        "tasks": {},
        "confidence": CONFIDENCE,
        "interval": "Student-t interval of the mean over seeds",
        "paired_tests": "paired t-test and exact sign-flip test over seeds (same seed = same prompts and warm start)",
    }
    for task, variants in runs.items():
        warm_path = work / task / "warm_start_accuracy.json"
        entry: dict = {
            "preset": TASKS[task],
            "warm_start_accuracy": json.loads(warm_path.read_text()) if warm_path.is_file() else None,
            "variants": {},
            "comparisons": {},
        }
        for variant, by_seed in variants.items():
            summary = {
                key: t_interval([m[key] for m in by_seed.values()])
                for key in TABLED
                if all(is_metric_value(m[key]) for m in by_seed.values())
            }
            entry["variants"][variant] = {
                "options": VARIANTS[variant],
                "seeds": sorted(by_seed),
                "summary": summary,
                "behaviour": mean_behaviour([m["behaviour"] for m in by_seed.values()]),
                "diagnostics": {
                    key: statistics.fmean(m[key] for m in by_seed.values() if m[key] is not None)
                    for key in DIAGNOSTICS
                    if any(m[key] is not None for m in by_seed.values())
                },
                "per_seed": by_seed,
            }
        for treated, baseline in BASELINES.items():
            if treated not in variants or baseline not in variants:
                continue
            seeds = sorted(set(variants[treated]) & set(variants[baseline]))
            if len(seeds) < 2:
                continue
            entry["comparisons"][f"{treated} vs {baseline}"] = {
                key: paired_test(
                    [variants[baseline][s][key] for s in seeds], [variants[treated][s][key] for s in seeds]
                )
                for key in COMPARED
            }
        # the main comparison's KTAE runs only: ablations and sensitivity runs would weigh in unevenly
        entry["key_tokens"] = key_token_summary(
            [run_dir_of(work, task, v, s) for v in variants if v in MAIN and "KTAE" in v for s in variants[v]]
        )
        report["tasks"][task] = entry
        plot_task(
            task,
            {v: [run_dir_of(work, task, v, s) for s in by_seed] for v, by_seed in variants.items() if v in MAIN},
            out,
        )
    return report


def mean_behaviour(profiles: Sequence[dict]) -> dict:
    """`rollout_behaviour` averaged over seeds (each figure over the seeds that have it)."""
    merged: dict[str, dict] = {}
    for when in ("first", "last"):
        rows = [p[when] for p in profiles if when in p]
        keys = dict.fromkeys(k for row in rows for k in row)
        merged[when] = {
            k: statistics.fmean(row[k] for row in rows if row.get(k) is not None)
            for k in keys
            if any(row.get(k) is not None for row in rows)
        }
    return merged


def key_token_totals(run_dirs: Iterable[Path]) -> tuple[int, dict[str, dict[str, float]]]:
    """(logged rounds, {"credited" | "blamed": {token: total bonus}}) summed over the runs' key-token logs."""
    from ktae.run_folder import KEY_TOKENS_FILE, read_jsonl

    totals: dict[str, dict[str, float]] = {"credited": {}, "blamed": {}}
    rounds = 0
    for run_dir in run_dirs:
        path = run_dir / KEY_TOKENS_FILE
        if not path.is_file():
            continue
        for record in read_jsonl(path):
            rounds += 1
            for side in totals:
                for item in record.get(side, []):
                    totals[side][item["token"]] = totals[side].get(item["token"], 0.0) + item["total"]
    return rounds, totals


def key_token_summary(run_dirs: Iterable[Path], count: int = 8) -> dict:
    """The ``count`` tokens KTAE credited and blamed most over the runs' logged rounds, by summed total bonus."""
    rounds, totals = key_token_totals(run_dirs)
    ranked = {
        side: [
            {"token": token, "total": round(total, 2)}
            for token, total in sorted(values.items(), key=lambda kv: -abs(kv[1]))[:count]
        ]
        for side, values in totals.items()
    }
    return {"rounds": rounds, **ranked}


def plot_task(task: str, runs: Mapping[str, list[Path]], out: Path) -> Path | None:
    """Curves of the main variants on a task, mean over seeds with a ±1 standard deviation band."""
    from ktae.reports.curves import plot_panels, read_metrics

    if not runs:
        return None
    metrics = {
        "eval/accuracy": "greedy held-out accuracy",
        "accuracy": "sampled accuracy (training rollouts)",
        "completion_length": "response length (tokens)",
        "completions/clipped_ratio": "truncated share",
        "entropy": "policy entropy (nats per token)",
        "ktae/bonus_mean_incorrect": "KTAE bonus on incorrect rollouts",
    }
    panels: dict[str, dict[str, list]] = {title: {} for title in metrics.values()}
    bands: dict[str, dict[str, list]] = {title: {} for title in metrics.values()}
    for variant, run_dirs in runs.items():
        by_step: dict[str, dict[int, list[float]]] = {key: {} for key in metrics}
        for run_dir in run_dirs:
            for record in read_metrics(run_dir):
                for key in metrics:
                    if is_metric_value(record.get(key)):
                        by_step[key].setdefault(record["step"], []).append(record[key])
        for key, title in metrics.items():
            steps = sorted(by_step[key])
            means = [statistics.fmean(by_step[key][s]) for s in steps]
            stds = [statistics.stdev(by_step[key][s]) if len(by_step[key][s]) > 1 else 0.0 for s in steps]
            panels[title][variant] = list(zip(steps, means))
            bands[title][variant] = [(s, m - d, m + d) for s, m, d in zip(steps, means, stds)]
    return plot_panels(panels, out / f"compare_ktae-{task}.png", bands=bands)


# ------------------------------------------------------------------------------------------------
# Writing


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_ktae.json").write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    (out / "compare_ktae.md").write_text(render_markdown(report))


def _cell(summary: Mapping, key: str, digits: int) -> str:
    if key not in summary:
        return "–"
    s = summary[key]
    if s["low"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


BEHAVIOUR = (
    "variant",
    "correct",
    "direct_share",
    "direct_correct",
    "worked_correct",
    "hedge_lines",
    "hedged_correct",
    "unhedged_correct",
    "cut",
)
BEHAVIOUR_HEADER = (
    "| logged rollouts, first → last logged step (mean over seeds) | correct | bare answers | bare correct | "
    "worked correct | hedge lines | hedged correct | unhedged correct | cut at the limit |"
)


def _change(first: float | None, last: float | None, digits: int) -> str:
    def show(value: float | None) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    return f"{show(first)} → {show(last)}"


def render_markdown(report: dict) -> str:
    lines = [
        "# compare_ktae results",
        "",
        f"Settings: {report['settings']}.",
        "",
        "Cells: mean ± standard deviation over seeds [95% Student-t interval of the mean]. Greedy accuracy: "
        f"held-out prompts, measured every {report['settings']['eval_accuracy_steps']} steps "
        "(AUC: the trapezoid mean over steps 0 to the end). Sampled "
        "accuracy: the share of correct training rollouts (temperature 1, fresh prompts each step), last 10 steps "
        "or mean over all steps (AUC). Length in tokens; truncated: share of rollouts cut at the response limit.",
    ]
    for task, entry in report["tasks"].items():
        warm = entry["warm_start_accuracy"]
        lines += [
            "",
            f"## {task}",
            "",
            f"Preset: `{entry['preset'] or 'the default job task'}`; "
            f"warm start (step, greedy acc.): {warm[-1] if warm else '–'}.",
            "",
        ]
        lines.append("| variant | seeds | " + " | ".join(TABLED.values()) + " |")
        lines.append("| --- | --- |" + " --- |" * len(TABLED))
        for variant, row in entry["variants"].items():
            cells = [_cell(row["summary"], key, 1 if key == "length_last" else 3) for key in TABLED]
            lines.append(f"| {variant} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        if entry["comparisons"]:
            lines += [
                "",
                "Paired by seed (difference = variant − baseline; p: paired t-test / exact sign-flip):",
                "",
            ]
            lines.append("| comparison | " + " | ".join(TABLED.get(k, k) for k in COMPARED) + " |")
            lines.append("| --- |" + " --- |" * len(COMPARED))
            for name, tests in entry["comparisons"].items():
                cells = []
                for key in COMPARED:
                    t = tests[key]
                    digits = 1 if key == "length_last" else 3
                    interval = f" [{t['low']:+.{digits}f}, {t['high']:+.{digits}f}]" if t["low"] is not None else ""
                    cells.append(
                        f"{t['difference']:+.{digits}f}{interval} p={t['t_test_p']:.2f}/{t['sign_flip_p']:.2f} "
                        f"({t['wins']}–{t['losses']})"
                    )
                lines.append(f"| {name} ({tests[COMPARED[0]]['seeds']} seeds) | " + " | ".join(cells) + " |")
        lines += ["", BEHAVIOUR_HEADER, "| --- |" + " --- |" * (len(BEHAVIOUR) - 1)]
        for variant, row in entry["variants"].items():
            first, last = row["behaviour"].get("first", {}), row["behaviour"].get("last", {})
            cells = [_change(first.get(k), last.get(k), 2 if k == "hedge_lines" else 3) for k in BEHAVIOUR[1:]]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| training signals, mean over steps and seeds | " + " | ".join(DIAGNOSTICS.values()) + " |",
            "| --- |" + " --- |" * len(DIAGNOSTICS),
        ]
        for variant, row in entry["variants"].items():
            cells = [f"{row['diagnostics'][k]:.3g}" if k in row["diagnostics"] else "–" for k in DIAGNOSTICS]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        tokens = entry.get("key_tokens") or {}
        if tokens.get("rounds"):

            def show(items):
                return ", ".join(f"`{json.dumps(i['token'])[1:-1]}` {i['total']:+.0f}" for i in items)

            lines += [
                "",
                "Key tokens of the GRPO+KTAE and DAPO+KTAE runs "
                f"(total bonus summed over {tokens['rounds']} logged rounds): "
                f"credited {show(tokens['credited'])}; blamed {show(tokens['blamed'])}.",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
