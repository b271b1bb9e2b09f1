"""The estimator benchmark behind ``ktae bench``: realistic batches, and the time and memory of one call.

Batches are realistic: Zipf-distributed token ids over Qwen2.5's 151,936-token vocabulary, response
lengths spread up to T, about half the rollouts correct (`make_batch`). For each size, `run_benchmark`
measures the median time of ``compute_ktae_advantages``, of the plain GRPO advantage (the same call with
KTAE off), and the peak extra memory of the KTAE call; given a ``reference`` implementation (the
released-style one of ``benchmarks/bench_estimator.py``), it also times that on the small sizes and
records the largest difference from KTAE's advantages.
"""

from __future__ import annotations

import functools
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ktae import KTAEConfig, compute_ktae_advantages

QWEN_VOCAB = 151_936
QWEN_EOS = 151_643

#: reference(responses, mask, scores, groups) -> float64 [B, T] advantages, on the CPU.
Reference = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


def median_seconds(fn, repeats: int, device: str) -> float:
    """Median wall time of ``repeats`` calls after one warm-up (numba compilation, allocator, caches)."""
    fn()
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


def peak_extra_memory(fn, device: str) -> int:
    """Peak memory the call adds above what was allocated before it (device memory on CUDA, else RSS; -1
    where the RSS cannot be read)."""
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
    sizes: Iterable[int],
    group_size: int,
    max_len: int,
    repeats: int,
    device: str,
    zipf: float,
    backend: str = "auto",
    reference: Reference | None = None,
    reference_max_groups: int = 0,
) -> list[dict]:
    """One row per number of groups in ``sizes``, printed as it is measured (`table_header`, `format_row`)."""
    rows = []
    print(table_header(reference is not None), flush=True)
    for num_groups in sizes:
        responses, mask, scores, groups = make_batch(num_groups, group_size, max_len, zipf=zipf, device=device)
        batch = (responses, mask, scores, groups)
        ktae = functools.partial(compute_ktae_advantages, *batch, backend=backend)
        grpo = functools.partial(compute_ktae_advantages, *batch, config=KTAEConfig(top=0.0))
        row = {
            "groups": num_groups,
            "rollouts": num_groups * group_size,
            "response_tokens": int(mask.sum()),
            "ktae_s": median_seconds(ktae, repeats, device),
            "grpo_s": median_seconds(grpo, repeats, device),
        }
        row["peak_extra_mib"] = peak_extra_memory(ktae, device) / 2**20
        row["ktae_over_grpo"] = row["ktae_s"] / row["grpo_s"]
        if reference is not None and num_groups <= reference_max_groups:
            start = time.perf_counter()
            expected = reference(responses, mask, scores, groups)
            row["reference_s"] = time.perf_counter() - start
            row["speedup_vs_reference"] = row["reference_s"] / row["ktae_s"]
            row["max_abs_diff_vs_reference"] = float((ktae().double().cpu() - expected).abs().max())
        rows.append(row)
        print(format_row(row, reference is not None), flush=True)
    return rows


def table_header(with_reference: bool = False) -> str:
    columns = ["groups", "rollouts", "response tokens", "KTAE", "GRPO", "KTAE/GRPO", "peak extra mem"]
    columns += ["reference", "speed-up", "max diff"] if with_reference else []
    return "| " + " | ".join(columns) + " |\n|" + "---:|" * len(columns)


def format_row(row: dict, with_reference: bool = False) -> str:
    ms = lambda s: f"{s * 1e3:,.1f} ms"  # noqa: E731
    cells = [
        str(row["groups"]),
        str(row["rollouts"]),
        f"{row['response_tokens']:,}",
        ms(row["ktae_s"]),
        ms(row["grpo_s"]),
        f"{row['ktae_over_grpo']:.1f}",
        f"{row['peak_extra_mib']:,.0f} MiB",
    ]
    if with_reference and "reference_s" in row:
        cells += [ms(row["reference_s"]), f"{row['speedup_vs_reference']:,.0f}x"]
        cells.append(f"{row['max_abs_diff_vs_reference']:.1e}")
    elif with_reference:
        cells += ["-", "-", "-"]
    return "| " + " | ".join(cells) + " |"
