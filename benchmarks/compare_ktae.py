"""Does KTAE help? GRPO vs GRPO+KTAE and DAPO vs DAPO+KTAE on the synthetic arithmetic task.

Every run starts from the same supervised warm start (made once) and trains on the same prompts,
with the same held-out set; only the algorithm, KTAE on/off and the training seed change. For each
variant and seed it records the greedy accuracy on the held-out prompts (final and best) and the
mean response length over the last steps, then prints and writes a table with mean and spread
(standard deviation over seeds) and one plot of the seed-averaged curves.

    python benchmarks/compare_ktae.py                       # 4 variants x 3 seeds, the default job's sizes
    python benchmarks/compare_ktae.py max_steps=20 --seeds 0    # smaller; any `ktae train` key=value applies
                                                            # (key=value before --seeds, which takes a list)

Runs live in --work (default runs/compare_ktae, git-ignored); an interrupted benchmark resumes:
the warm start and finished runs are kept, an unfinished run starts over. Results go to --out
(default benchmarks/results): compare_ktae.json, compare_ktae.md, compare_ktae.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from ktae.cli.train import (
    DEFAULT_JOB,
    WARM_START_DIR,
    load_datasets,
    load_model_and_tokenizer,
    resolve_options,
    run_job,
    section,
)
from ktae.integrations.trl.warmstart import WarmStartConfig, warm_start
from ktae.reports.curves import plot_runs, read_metrics

VARIANTS = {
    "GRPO": {"algo": "grpo", "ktae": False},
    "GRPO+KTAE": {"algo": "grpo", "ktae": True},
    "DAPO": {"algo": "dapo", "ktae": False},
    "DAPO+KTAE": {"algo": "dapo", "ktae": True},
}
# What the comparison changes from the default job: no checkpoints but the last, fewer rollout logs,
# and DAPO's dynamic sampling bounded so that a step costs at most three generation rounds.
BENCHMARK_JOB = {"save_steps": 100_000, "keep_checkpoints": 1, "ktae_log_rollouts_steps": 50, "max_num_gen_batches": 3}
LAST_STEPS = 10  # response length: mean over this many last logged steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="`ktae train` keys for every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("runs/compare_ktae"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    base = resolve_options({**DEFAULT_JOB, **BENCHMARK_JOB}, args.overrides)
    started = time.perf_counter()
    warm_dir, warm_history = shared_warm_start(base, args.work)
    runs = {}
    for name in args.variants:
        for seed in args.seeds:
            run_dir = args.work / "runs" / f"{name.lower().replace('+', '-')}-seed{seed}"
            options = {
                **base,
                **VARIANTS[name],
                "seed": seed,
                "model_name_or_path": str(warm_dir),
                "warm_start_max_steps": 0,
            }
            if not (run_dir / "done.json").is_file():
                print(f"[compare_ktae] {name} seed {seed} -> {run_dir}", flush=True)
                shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts over (no mid-run checkpoints)
                summary = run_job(options, run_dir)
                (run_dir / "done.json").write_text(json.dumps(summary))
            runs.setdefault(name, []).append(run_dir)

    table = {name: summarize_variant(dirs) for name, dirs in runs.items()}
    report = {
        "warm_start_accuracy": warm_history,
        "seeds": args.seeds,
        "options": {
            k: v
            for k, v in base.items()
            if k
            in ("max_steps", "learning_rate", "num_generations", "per_device_train_batch_size", "max_completion_length")
        },
        "variants": table,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare_ktae.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_table(report)
    (args.out / "compare_ktae.md").write_text(markdown)
    plot_mean_curves(runs, args.work / "mean", args.out / "compare_ktae.png")
    print(markdown)
    return 0


def shared_warm_start(options: dict, work: Path) -> tuple[Path, list | None]:
    """The warm-started policy every run starts from (made once, reused when present)."""
    warm_dir = work / WARM_START_DIR
    history_path = work / "warm_start_accuracy.json"
    if (warm_dir / "config.json").is_file():
        return warm_dir, json.loads(history_path.read_text()) if history_path.is_file() else None
    model, tokenizer = load_model_and_tokenizer(options)
    train, held_out = load_datasets(options)
    history = warm_start(model, tokenizer, train, held_out, warm_dir, section(options, "warm_start_", WarmStartConfig))
    history_path.write_text(json.dumps(history))
    return warm_dir, history


def summarize_variant(run_dirs: list[Path]) -> dict:
    """Per seed and over seeds (mean, standard deviation): final and best held-out accuracy, final length."""
    per_seed = []
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        evals = [r["eval/accuracy"] for r in records if "eval/accuracy" in r]
        lengths = [r["completion_length"] for r in records if "completion_length" in r]
        per_seed.append(
            {
                "run": run_dir.name,
                "start_accuracy": evals[0],
                "final_accuracy": evals[-1],
                "best_accuracy": max(evals),
                "final_length": statistics.fmean(lengths[-LAST_STEPS:]),
                "first_length": statistics.fmean(lengths[:LAST_STEPS]),
            }
        )
    spread = {}
    for key in ("final_accuracy", "best_accuracy", "final_length"):
        values = [s[key] for s in per_seed]
        spread[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return {"per_seed": per_seed, **spread}


def render_table(report: dict) -> str:
    lines = [
        "| variant | final accuracy | best accuracy | response length (last 10 steps) | seeds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in report["variants"].items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in ("final_accuracy", "best_accuracy")]
        cells.append(f"{row['final_length']['mean']:.1f} ± {row['final_length']['std']:.1f}")
        lines.append(f"| {name} | {' | '.join(cells)} | {len(row['per_seed'])} |")
    warm = report["warm_start_accuracy"]
    note = (
        f"\nGreedy accuracy on 200 held-out problems, mean ± standard deviation over seeds {report['seeds']}; "
        f"warm start (SFT) accuracy {warm[-1][1]:.3f}. "
        if warm
        else "\n"
    )
    return "\n".join(lines) + note + f"Settings: {report['options']}.\n"


def plot_mean_curves(runs: dict[str, list[Path]], mean_dir: Path, out_png: Path) -> Path:
    """Average each variant's curves over its seeds (a metrics.jsonl per variant), then plot them together."""
    metrics = ("eval/accuracy", "accuracy", "completion_length")
    dirs = []
    for name, run_dirs in runs.items():
        by_step: dict[int, dict[str, list[float]]] = {}
        for run_dir in run_dirs:
            for record in read_metrics(run_dir):
                for key in metrics:
                    if key in record:
                        by_step.setdefault(record["step"], {}).setdefault(key, []).append(record[key])
        target = mean_dir / name.lower().replace("+", "-")
        target.mkdir(parents=True, exist_ok=True)
        with open(target / "metrics.jsonl", "w") as f:
            for step in sorted(by_step):
                f.write(json.dumps({"step": step, **{k: statistics.fmean(v) for k, v in by_step[step].items()}}) + "\n")
        dirs.append(target)
    return plot_runs(dirs, out_png, metrics=list(metrics), labels=list(runs))


if __name__ == "__main__":
    sys.exit(main())
