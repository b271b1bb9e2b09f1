"""One large group: time and peak memory of the estimator as a group grows (issue 21).

    python benchmarks/bench_group_size.py                       # groups of 10,000 and 16,000 rollouts
    python benchmarks/bench_group_size.py --sizes 2000 20000 --tokens 64 --vocab 50000

A verl batch whose uids collapse into one group gives the estimator one group of thousands of
rollouts. Its Fisher p-values then have large margins (n_T, n_F); this benchmark shows that time and
memory follow the batch (its tokens and the (margin, table) cells present) and not n_T x n_F.

Each size runs in a fresh process (so that peak memory is its own): one group of N rollouts of
``--tokens`` token ids drawn uniformly from ``--vocab`` ids, half of the rollouts correct, one call of
``compute_ktae_advantages`` after a small warm-up call, repeated (``--repeats``; the fastest is shown, a
failed call is not repeated). "peak extra mem" is the growth of the process's peak resident memory
during those calls. ``--max-memory-gb`` caps the child's address space above what
it holds before the call, so that a run that would need more fails quickly instead of swapping.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from ktae import compute_ktae_advantages

size, tokens, vocab, backend, cap_gb, repeats = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
responses = torch.from_numpy(rng.integers(0, vocab, size=(size, tokens)))
mask = torch.ones(size, tokens, dtype=torch.bool)
scores = torch.from_numpy((np.arange(size) % 2).astype(np.float32))
group = torch.zeros(size, dtype=torch.int64)
compute_ktae_advantages(responses[:8], mask[:8], scores[:8], group[:8], backend=backend)  # compile, start threads


def rss_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


if cap_gb:
    limit = rss_kib("VmSize:") * 1024 + int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
before = rss_kib("VmRSS:")
times, error = [], None
for _ in range(repeats):
    start = time.perf_counter()
    try:
        compute_ktae_advantages(responses, mask, scores, group, backend=backend)
    except (MemoryError, RuntimeError) as err:
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
    times.append(time.perf_counter() - start)
    if error:
        break
seconds = min(times)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_extra_mib": max(peak - before, 0) / 1024, "error": error}))
"""


def run_case(size: int, tokens: int, vocab: int, backend: str, cap_gb: float, repeats: int, timeout: float) -> dict:
    args = json.dumps([size, tokens, vocab, backend, cap_gb, repeats])
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"seconds": None, "peak_extra_mib": None, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"seconds": None, "peak_extra_mib": None, "error": done.stderr.strip().splitlines()[-1][:100]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 16_000], help="rollouts in the group")
    parser.add_argument("--tokens", type=int, default=4, help="response tokens per rollout (default 4)")
    parser.add_argument("--vocab", type=int, default=1000, help="token ids drawn from 0..vocab-1 (default 1000)")
    parser.add_argument("--backend", default="auto", help="counting backend (default auto)")
    parser.add_argument("--max-memory-gb", type=float, default=6.0, help="cap per run, 0 for none (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per size, the fastest shown (default 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per size (default 600)")
    args = parser.parse_args(argv)
    print(f"one group, {args.tokens} tokens per rollout, ids uniform over {args.vocab}, backend={args.backend}")
    print("| rollouts | time | peak extra mem | result |")
    print("|---:|---:|---:|---|")
    for size in args.sizes:
        row = run_case(size, args.tokens, args.vocab, args.backend, args.max_memory_gb, args.repeats, args.timeout)
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.3f} s"
        memory = "-" if row["peak_extra_mib"] is None else f"{row['peak_extra_mib']:,.0f} MiB"
        print(f"| {size:,} | {seconds} | {memory} | {row['error'] or 'ok'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
