"""Offline GPU check: the estimator, training and evaluation on one CUDA GPU, with no network.

    python benchmarks/gpu_check.py [--out gpu_check.json]            # on a GPU node, under 5 minutes
    python benchmarks/gpu_check.py --device cpu --quick               # the script's own pieces, on a CPU

Five parts, one JSON file of results (also printed):

1. estimator: ``compute_ktae_advantages`` at 8, 64, 256 and 1024 groups x 16 rollouts x 3072 tokens
   (the batches of ``ktae bench``): median of 5 timed calls after a warm-up, each between two
   ``torch.cuda.synchronize()``, and the largest difference from the CPU result on the same batch;
2. one large group (16,000 rollouts x 4 tokens, a verl batch whose uids collapsed): time, peak
   GPU memory and the largest difference from the CPU result;
3. parity: random batches of the awkward kinds (uneven and single-rollout groups, string uids, huge
   and narrow-typed ids, half-precision scores, strided tensors, empty masks) under every rollout
   base: the largest difference of the advantages and key-token values from the CPU's, by field;
4. training: 10 steps of GRPO+KTAE with the tiny model (`ktae train`'s job, no warm start), on the GPU;
5. evaluation: ``ktae eval --limit 4`` of the checkpoint just trained, on the GPU (transformers
   backend), on a four-problem benchmark file written here (no download).

Nothing is downloaded: the tiny model and its tokenizer are built locally.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

GROUP_SIZE = 16
MAX_LEN = 3072
GROUPS = (8, 64, 256, 1024)
REPEATS = 5
TRAIN_STEPS = 10
EVAL_LIMIT = 4
# The tiny job of `ktae train`, without the warm start: GRPO+KTAE steps on the synthetic task.
TRAIN_OPTIONS = [
    "warm_start_max_steps=0",
    "eval_accuracy_steps=0",
    "num_generations=8",
    "per_device_train_batch_size=64",
    "max_completion_length=40",
    "ktae_log_rollouts_steps=5",
    "save_steps=1000",
    "task_train_size=2000",
]
# --quick: the same pieces at toy sizes, to check the script on a CPU in seconds.
QUICK_GROUPS = (2, 4)
QUICK_MAX_LEN = 64
QUICK_TRAIN_OPTIONS = [
    "tiny_hidden_size=32",
    "tiny_intermediate_size=64",
    "tiny_num_hidden_layers=1",
    "tiny_num_attention_heads=2",
    "tiny_num_key_value_heads=1",
    "task_train_size=64",
    "task_eval_size=8",
    "warm_start_max_steps=0",
    "eval_accuracy_steps=0",
    "num_generations=4",
    "per_device_train_batch_size=8",
    "max_completion_length=12",
    "ktae_log_rollouts_steps=1",
]
# Rollouts of the one large group (a batch whose uids collapsed into one).
LARGE_GROUP = 16000
QUICK_LARGE_GROUP = 500
# Parity batches: this many, with at most this many rollouts and tokens each.
PARITY_BATCHES = 40
QUICK_PARITY_BATCHES = 4
PARITY_MAX_ROLLOUTS = 96
PARITY_MAX_LEN = 48
# Above this difference from the CPU (float32 advantages, float64 statistics) the check fails.
PARITY_TOLERANCE = 1e-5
PROBLEMS = [("2+3+4=", "9"), ("1+1+5=", "7"), ("3+3+3=", "9"), ("4+2+1=", "7")]


def check_estimator(device: str, groups: tuple[int, ...], max_len: int) -> list[dict]:
    """Median time of the estimator on ``device`` and its largest difference from the CPU result."""
    import torch

    from ktae import KTAEConfig, compute_ktae_advantages
    from ktae.estimator_benchmark import QWEN_EOS, make_batch

    config = KTAEConfig(ignore_token_ids=(QWEN_EOS,))
    rows = []
    for num_groups in groups:
        batch = make_batch(num_groups, GROUP_SIZE, max_len)
        on_cpu = compute_ktae_advantages(*batch, config=config)
        on_device = [x.to(device) for x in batch]

        def call(on_device=on_device):
            return compute_ktae_advantages(*on_device, config=config)

        result = call()  # warm-up
        times = []
        for _ in range(REPEATS):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = call()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        row = {
            "groups": num_groups,
            "rollouts": num_groups * GROUP_SIZE,
            "max_len": max_len,
            "response_tokens": int(batch[1].sum()),
            "median_ms": round(1000 * statistics.median(times), 3),
            "times_ms": [round(1000 * t, 3) for t in times],
            "max_abs_diff_vs_cpu": float((result.cpu() - on_cpu).abs().max()),
        }
        if device.startswith("cuda"):
            row["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
        print(f"[gpu_check] estimator {row}", flush=True)
        rows.append(row)
    return rows


def profile_estimator(device: str, groups: tuple[int, ...], max_len: int, out: Path) -> None:
    """torch.profiler tables of one estimator call per batch size (by self device time, then by host time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ktae import KTAEConfig, compute_ktae_advantages
    from ktae.estimator_benchmark import QWEN_EOS, make_batch

    config = KTAEConfig(ignore_token_ids=(QWEN_EOS,))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sections = []
    for num_groups in groups:
        batch = [x.to(device) for x in make_batch(num_groups, GROUP_SIZE, max_len)]
        compute_ktae_advantages(*batch, config=config)  # warm-up
        with profile(activities=activities) as prof:
            compute_ktae_advantages(*batch, config=config)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        averages = prof.key_averages()
        by_device = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        sections.append(f"## {num_groups} groups, by {by_device}\n{averages.table(sort_by=by_device, row_limit=25)}")
        sections.append(
            f"## {num_groups} groups, by cpu_time_total\n{averages.table(sort_by='cpu_time_total', row_limit=25)}"
        )
    out.write_text("\n\n".join(sections) + "\n")
    print(f"[gpu_check] profile: {out}", flush=True)


def check_large_group(device: str, rollouts: int) -> dict:
    """One group of ``rollouts`` rollouts of 4 tokens each: time, peak memory, difference from the CPU."""
    import numpy as np
    import torch

    from ktae import compute_ktae_advantages

    rng = np.random.default_rng(0)
    batch = (
        torch.from_numpy(rng.integers(0, 1000, size=(rollouts, 4))),
        torch.ones(rollouts, 4, dtype=torch.bool),
        torch.from_numpy((np.arange(rollouts) % 2).astype(np.float32)),
        torch.zeros(rollouts, dtype=torch.int64),
    )
    on_cpu = compute_ktae_advantages(*batch)
    on_device = [x.to(device) for x in batch]
    compute_ktae_advantages(*on_device)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = compute_ktae_advantages(*on_device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    row = {
        "rollouts": rollouts,
        "ms": round(1000 * (time.perf_counter() - start), 3),
        "max_abs_diff_vs_cpu": float((result.cpu() - on_cpu).abs().max()),
    }
    if device.startswith("cuda"):
        row["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(f"[gpu_check] large group {row}", flush=True)
    return row


def parity_batch(seed: int):
    """One random batch of an awkward kind, on the CPU: (responses, mask, scores, group ids, options)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    rollouts = int(rng.integers(1, PARITY_MAX_ROLLOUTS + 1))
    length = int(rng.integers(1, PARITY_MAX_LEN + 1))
    vocab = int(rng.choice([5, 50, 5000]))
    ids = torch.from_numpy(rng.integers(0, vocab, size=(rollouts, length)))
    if seed % 5 == 1:  # ids near the top of int64: no table may be sized by an id's value
        ids = ids + (2**62 if seed % 2 else 2**63 - 1 - vocab)
    elif seed % 5 == 2:
        ids = ids.to(torch.int16 if vocab < 2**15 else torch.int32)
    lengths = torch.from_numpy(rng.integers(0, length + 1, size=rollouts))
    mask = torch.arange(length)[None, :] < lengths[:, None]
    if seed % 4 == 3:  # a strided view: the transpose of a [T, B] tensor
        ids, mask = ids.T.contiguous().T, mask.T.contiguous().T
    group_count = int(rng.integers(1, rollouts + 1))
    group_ids = rng.integers(0, group_count, size=rollouts)
    groups = [f"uid-{g}" for g in group_ids] if seed % 3 == 0 else torch.from_numpy(group_ids)
    score_kind = seed % 4
    if score_kind == 0:
        scores = torch.from_numpy((rng.random(rollouts) < 0.5).astype(np.float32))
    elif score_kind == 1:
        scores = torch.from_numpy(rng.normal(size=rollouts)).to(torch.float16)
    elif score_kind == 2:
        scores = torch.from_numpy(rng.random(rollouts)).to(torch.bfloat16)
    else:
        scores = torch.ones(rollouts)  # every group all correct
    base = ["grpo", "dr_grpo", "rloo", "none"][seed % 4]
    options = {"rollout_advantage": base, "top": float(rng.choice([0.5, 1.0, 2.0])), "ignore_token_ids": (0,)}
    return ids, mask, scores, groups, options


def pair_order(values):
    """Indices that list the (group, token) pairs of ``values`` by group, then token id."""
    import numpy as np
    import torch

    order = np.lexsort((values.token.cpu().numpy(), values.group.cpu().numpy()))
    return torch.from_numpy(order)


def check_parity(device: str, batches: int) -> dict:
    """Largest difference of the advantages and key-token values on ``device`` from the CPU's."""
    import torch

    from ktae import compute_ktae_advantages_with_values

    fields = ("a", "b", "c", "d", "p_value", "fisher", "info_gain", "h", "tf", "value")
    worst = dict.fromkeys(("advantages", *fields), 0.0)
    failures = []
    for seed in range(batches):
        ids, mask, scores, groups, options = parity_batch(seed)
        on_cpu, values_cpu = compute_ktae_advantages_with_values(ids, mask, scores, groups, options)
        moved = [x.to(device) for x in (ids, mask, scores)]
        device_groups = groups.to(device) if isinstance(groups, torch.Tensor) else groups
        on_device, values_device = compute_ktae_advantages_with_values(*moved, device_groups, options)
        diffs = {"advantages": (on_device.cpu() - on_cpu).abs().max().item() if on_cpu.numel() else 0.0}
        # The backends list the (group, token) pairs in different orders (the CPU kernels by first
        # appearance, the sort by id): compare them in (group, token) order.
        cpu_order, device_order = pair_order(values_cpu), pair_order(values_device)
        same_pairs = torch.equal(values_device.token.cpu()[device_order], values_cpu.token[cpu_order]) and torch.equal(
            values_device.group.cpu()[device_order], values_cpu.group[cpu_order]
        )
        if not same_pairs:
            failures.append({"seed": seed, "problem": "different (group, token) pairs"})
            continue
        for name in fields:
            here = getattr(values_cpu, name).double()[cpu_order]
            there = getattr(values_device, name).cpu().double()[device_order]
            diffs[name] = (here - there).abs().max().item() if here.numel() else 0.0
        for name, diff in diffs.items():
            worst[name] = max(worst[name], diff)
        if max(diffs.values()) > PARITY_TOLERANCE:
            failures.append({"seed": seed, "options": options, "differences": diffs})
    row = {"batches": batches, "max_abs_diff": worst, "failures": failures}
    print(f"[gpu_check] parity {row}", flush=True)
    return row


def check_training(device: str, run_dir: Path, overrides: list[str], steps: int) -> dict:
    """``steps`` GRPO+KTAE steps of the tiny job; the policy must sit on ``device``."""
    from ktae.integrations.trl.job import default_job, prepare_job, resolve_options
    from ktae.run_folder import METRICS_FILE, read_jsonl, start_run_folder

    options = resolve_options({}, [*overrides, f"max_steps={steps}"], defaults=default_job("tiny"))
    if device == "cpu":
        options["use_cpu"] = True
    started = time.perf_counter()
    with start_run_folder(run_dir):  # the job writes and deletes files only in a folder it claimed
        job = prepare_job(options, run_dir)
        model_device = str(next(job.trainer.model.parameters()).device)
        if not model_device.startswith(device):
            raise RuntimeError(f"the policy is on {model_device}, not {device}")
        summary = job.train()
    metrics = read_jsonl(run_dir / METRICS_FILE)
    return {
        "steps": summary["steps"],
        "seconds": round(time.perf_counter() - started, 1),
        "policy_device": model_device,
        "ktae_seconds_per_step": [m.get("ktae/seconds") for m in metrics],
        "accuracy": [m.get("accuracy") for m in metrics],
        "checkpoints": summary["checkpoints"],
    }


def check_evaluation(device: str, model_dir: Path, work: Path, limit: int, max_new_tokens: int) -> dict:
    """``ktae eval --limit`` of ``model_dir`` on ``device``, on a benchmark file written here."""
    from ktae.cli import main
    from ktae.evaluation.eval_folder import RESULTS_FILE, read_results

    data = work / "bench"
    data.mkdir(parents=True, exist_ok=True)
    (data / "aime24.jsonl").write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in PROBLEMS))
    out = work / "eval"
    started = time.perf_counter()
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--benchmarks",
            "aime24",
            "--data-dir",
            str(data),
            "--limit",
            str(limit),
            "--max-new-tokens",
            str(max_new_tokens),
            "--template",
            "plain",
            "--backend",
            "transformers",
            "--device",
            device,
            "--output-dir",
            str(out),
        ]
    )
    if code != 0:
        raise RuntimeError(f"ktae eval exited with {code}")
    results = read_results(out / RESULTS_FILE)
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "results": results["results"],
        "num_examples": results["num_examples"],
    }


def environment(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="results file (gpu_check.json)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --quick: check the script)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: 1 training step, 1 evaluation problem")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="also write torch.profiler tables of the smallest and largest batch",
    )
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu_check: error: no CUDA GPU: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees none. "
            "Run it on a GPU node with a CUDA build of torch; --device cpu --quick checks the script itself.",
            file=sys.stderr,
        )
        return 2
    if not args.device.startswith("cuda") and not args.quick:
        print("gpu_check: error: the full check times the GPU: use --device cpu only with --quick", file=sys.stderr)
        return 2
    report = {"environment": environment(args.device), "quick": args.quick}
    started = time.perf_counter()
    report["estimator"] = check_estimator(
        args.device, QUICK_GROUPS if args.quick else GROUPS, QUICK_MAX_LEN if args.quick else MAX_LEN
    )
    if args.profile is not None:
        sizes = QUICK_GROUPS if args.quick else GROUPS
        profile_estimator(args.device, (sizes[0], sizes[-1]), QUICK_MAX_LEN if args.quick else MAX_LEN, args.profile)
    report["large_group"] = check_large_group(args.device, QUICK_LARGE_GROUP if args.quick else LARGE_GROUP)
    report["parity"] = check_parity(args.device, QUICK_PARITY_BATCHES if args.quick else PARITY_BATCHES)
    with tempfile.TemporaryDirectory(prefix="ktae-gpu-check-") as work:
        work = Path(work)
        run_dir = work / "run"
        report["training"] = check_training(
            args.device, run_dir, QUICK_TRAIN_OPTIONS if args.quick else TRAIN_OPTIONS, 1 if args.quick else TRAIN_STEPS
        )
        checkpoint = run_dir / "checkpoints" / report["training"]["checkpoints"][-1]
        report["evaluation"] = check_evaluation(
            args.device, checkpoint, work, 1 if args.quick else EVAL_LIMIT, 8 if args.quick else 40
        )
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"[gpu_check] results: {args.out}")
    if report["parity"]["failures"]:
        failed = len(report["parity"]["failures"])
        print(f"gpu_check: error: {failed} parity batches differ from the CPU", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
