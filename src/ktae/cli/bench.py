"""Benchmark the KTAE estimator against the plain GRPO advantage and a released-style reference.

Batches are realistic: Zipf-distributed token ids over Qwen2.5's 151,936-token vocabulary,
response lengths spread up to T, about half the rollouts correct. For each size the table gives
the median time of ``compute_ktae_advantages``, of the plain GRPO advantage (the same call with
KTAE off), of a reference built the way the released code works (a vocabulary-sized table per
group and a Python loop over its distinct tokens with scipy's Fisher test; small sizes only),
the peak extra memory of the KTAE call, and the ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ktae import KTAEConfig, compute_ktae_advantages
from ktae.core.counting import BACKENDS

QWEN_VOCAB = 151_936
QWEN_EOS = 151_643


def make_batch(
    num_groups: int,
    group_size: int,
    max_len: int,
    vocab: int = QWEN_VOCAB,
    zipf: float = 1.1,
    seed: int = 0,
    device: str = "cpu",
):
    """responses [B, T] int64 (right-padded with the eos id), mask [B, T] bool, scores [B], group ids [B]."""
    rng = np.random.default_rng(seed)
    batch = num_groups * group_size
    ranks = rng.zipf(zipf, size=(batch, max_len)) - 1
    ids = rng.permutation(vocab)[ranks % vocab]  # frequent ids spread over the vocabulary
    lengths = rng.integers(1, max_len + 1, size=batch)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    ids[~mask] = QWEN_EOS
    scores = (rng.random(batch) < 0.5).astype(np.float32)
    groups = np.repeat(np.arange(num_groups), group_size)
    to = lambda x: torch.from_numpy(x).to(device)  # noqa: E731
    return to(ids), to(mask), to(scores), to(groups)


def released_style_reference(responses, mask, scores, groups, vocab: int = QWEN_VOCAB) -> torch.Tensor:
    """KTAE advantages computed group by group with a vocabulary-sized table and a Python loop over
    distinct tokens, as the released implementation does, but with its formulas made exact."""
    from scipy.stats import fisher_exact

    responses, mask, scores, groups = (x.cpu() for x in (responses, mask, scores, groups))
    out = torch.zeros(responses.shape, dtype=torch.float64)
    for g in torch.unique(groups).tolist():
        rows = torch.nonzero(groups == g).flatten()
        s = scores[rows].double()
        adv = (s - s.mean()) / (s.std() + 1e-6)
        correct = s > 0
        n_t, n_f = int(correct.sum()), int((~correct).sum())
        presence = torch.zeros(len(rows), vocab, dtype=torch.int64)
        counts = torch.zeros(len(rows), vocab, dtype=torch.int64)
        for i, r in enumerate(rows.tolist()):
            toks = responses[r][mask[r]]
            counts[i] = torch.bincount(toks, minlength=vocab)
            presence[i] = counts[i] > 0
        value = torch.zeros(vocab, dtype=torch.float64)
        if n_t and n_f:
            a_all, b_all = presence[correct].sum(0), presence[~correct].sum(0)
            f_t_all, f_f_all = counts[correct].sum(0), counts[~correct].sum(0)
            len_t, len_f = int(f_t_all.sum()), int(f_f_all.sum())
            avg = (len_t + len_f) / 2
            n = n_t + n_f

            for t in torch.nonzero(a_all + b_all).flatten().tolist():
                a, b = int(a_all[t]), int(b_all[t])
                c, d = n_t - a, n_f - b
                p = min(fisher_exact([[a, b], [c, d]]).pvalue, 1.0)
                fisher = 0.0 if p >= 1.0 else math.exp(-2 * p)
                ig = _entropy(n_t / n) - (
                    (a + b) / n * _entropy(a / (a + b)) + ((c + d) / n * _entropy(c / (c + d)) if c + d else 0)
                )
                h = math.asin(math.sqrt(a / n_t)) - math.asin(math.sqrt(b / n_f))
                s_t, s_f = _saturate(int(f_t_all[t]), len_t, avg), _saturate(int(f_f_all[t]), len_f, avg)
                x = h + s_t / (s_f + 1e-5) - s_f / (s_t + 1e-5)
                value[t] = math.tanh((fisher + ig) * x / 4)
        for i, r in enumerate(rows.tolist()):
            out[r] = torch.where(mask[r], adv[i] + value[responses[r]], 0.0)
    return out


def _entropy(q: float) -> float:
    return -sum(x * math.log2(x) for x in (q, 1 - q) if x > 0)


def _saturate(f: int, length: int, avg: float) -> float:
    if length == 0:
        return 0.0
    tf = f / length
    return tf * 3 / (tf + 2 * (0.5 + 0.5 * length / avg))


def _median_seconds(fn, repeats: int, device: str) -> float:
    fn()  # warm-up: numba compilation, allocator, caches
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_extra_memory(fn, device: str) -> int:
    """Peak memory the call adds above what was allocated before it (device memory on CUDA, else RSS)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if not os.path.exists("/proc/self/statm"):
        return -1
    before = peak = _rss_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    fn()
    done.set()
    sampler.join()
    return max(peak, _rss_bytes()) - before


def run_benchmark(
    sizes,
    group_size: int,
    max_len: int,
    repeats: int,
    reference_max_groups: int,
    device: str,
    zipf: float,
    backend: str = "auto",
) -> list[dict]:
    rows = []
    for num_groups in sizes:
        responses, mask, scores, groups = make_batch(num_groups, group_size, max_len, zipf=zipf, device=device)
        batch = (responses, mask, scores, groups)
        ktae = functools.partial(compute_ktae_advantages, *batch, backend=backend)
        grpo = functools.partial(compute_ktae_advantages, *batch, config=KTAEConfig(top=0.0))
        row = {
            "groups": num_groups,
            "rollouts": num_groups * group_size,
            "response_tokens": int(mask.sum()),
            "ktae_s": _median_seconds(ktae, repeats, device),
            "grpo_s": _median_seconds(grpo, repeats, device),
        }
        row["peak_extra_mib"] = _peak_extra_memory(ktae, device) / 2**20
        row["ktae_over_grpo"] = row["ktae_s"] / row["grpo_s"]
        if num_groups <= reference_max_groups:
            start = time.perf_counter()
            reference = released_style_reference(responses, mask, scores, groups)
            row["reference_s"] = time.perf_counter() - start
            row["speedup_vs_reference"] = row["reference_s"] / row["ktae_s"]
            row["max_abs_diff_vs_reference"] = float((ktae().double().cpu() - reference).abs().max())
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


HEADER = (
    "| groups | rollouts | response tokens | KTAE | GRPO | KTAE/GRPO "
    "| peak extra mem | reference | speed-up | max diff |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _format_row(row: dict) -> str:
    ms = lambda s: f"{s * 1e3:,.1f} ms"  # noqa: E731
    ref = (
        (ms(row["reference_s"]), f"{row['speedup_vs_reference']:,.0f}x", f"{row['max_abs_diff_vs_reference']:.1e}")
        if "reference_s" in row
        else ("-", "-", "-")
    )
    return (
        f"| {row['groups']} | {row['rollouts']} | {row['response_tokens']:,} "
        f"| {ms(row['ktae_s'])} | {ms(row['grpo_s'])} "
        f"| {row['ktae_over_grpo']:.1f} | {row['peak_extra_mib']:,.0f} MiB | {ref[0]} | {ref[1]} | {ref[2]} |"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", default="8,64,1024", help="comma-separated numbers of groups (default: 8,64,1024)")
    parser.add_argument("--group-size", type=int, default=16, help="rollouts per group (default: 16)")
    parser.add_argument("--max-len", type=int, default=3072, help="response length T (default: 3072)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement, median reported")
    parser.add_argument(
        "--reference-max-groups",
        type=int,
        default=8,
        help="run the slow released-style reference only up to this many groups (default: 8)",
    )
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the token ids (default: 1.1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
    print(HEADER, flush=True)
    rows = run_benchmark(
        sizes,
        args.group_size,
        args.max_len,
        args.repeats,
        args.reference_max_groups,
        args.device,
        args.zipf,
        args.backend,
    )
    if args.json:
        try:
            args.json.write_text(
                json.dumps({"device": args.device, "device_name": device_name, "rows": rows}, indent=2)
            )
        except OSError as error:
            print(f"ktae bench: error: cannot write {args.json}: {error.strerror or error}", file=sys.stderr)
            return 2
    return 0
