"""KTAE's estimator against a reference built the way the released implementation works.

`ktae bench`'s table (`ktae.estimator_benchmark`: median time of KTAE and of the plain GRPO advantage,
peak extra memory) plus, up to ``--reference-max-groups`` groups, the time of `released_style_reference`,
KTAE's speed-up over it and the largest difference between their advantages (benchmarks/NOTES.md).

    python benchmarks/bench_estimator.py [--groups 8,64,1024] [--reference-max-groups 8] [--json rows.json]

The reference is organised as the released code is (per group, a vocabulary-sized table and a Python loop
over the distinct tokens, Fisher p-values from scipy), with its formulas made exact (docs/spec.md), at the
default settings (``KTAEConfig()``), which is what the benchmark's KTAE call uses. It runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from ktae.estimator_benchmark import QWEN_VOCAB, run_benchmark

# docs/spec.md's constants, at KTAEConfig's defaults
ALPHA = BETA_IG = GAMMA_TF = TOP = 1.0
GRPO_EPSILON = 1e-6
BM25_K1, BM25_B = 2.0, 0.5
TF_EPS = 1e-5


def released_style_reference(responses, mask, scores, groups, vocab: int = QWEN_VOCAB) -> torch.Tensor:
    """KTAE advantages computed group by group with a vocabulary-sized table and a Python loop over
    distinct tokens, as the released implementation does, but with its formulas made exact. [B, T] float64."""
    from scipy.stats import fisher_exact

    responses, mask, scores, groups = (x.cpu() for x in (responses, mask, scores, groups))
    out = torch.zeros(responses.shape, dtype=torch.float64)
    for g in torch.unique(groups).tolist():
        rows = torch.nonzero(groups == g).flatten()
        s = scores[rows].double()
        adv = (s - s.mean()) / (s.std() + GRPO_EPSILON)
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
                x = h + GAMMA_TF * (s_t / (s_f + TF_EPS) - s_f / (s_t + TF_EPS))
                k = (ALPHA * fisher + BETA_IG * ig) * x / (ALPHA + BETA_IG)
                value[t] = TOP * math.tanh(k / 2)
        for i, r in enumerate(rows.tolist()):
            out[r] = torch.where(mask[r], adv[i] + value[responses[r]], 0.0)
    return out


def _entropy(q: float) -> float:
    return -sum(x * math.log2(x) for x in (q, 1 - q) if x > 0)


def _saturate(f: int, length: int, avg: float) -> float:
    """BM25's saturation of a token's frequency f among ``length`` response tokens."""
    if length == 0:
        return 0.0
    tf = f / length
    return tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / avg))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="8,64,1024", help="comma-separated numbers of groups (default: 8,64,1024)")
    parser.add_argument("--group-size", type=int, default=16, help="rollouts per group (default: 16)")
    parser.add_argument("--max-len", type=int, default=3072, help="response length T (default: 3072)")
    parser.add_argument("--repeats", type=int, default=5, help="timed KTAE and GRPO runs per size, median reported")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the token ids (default: 1.1)")
    parser.add_argument(
        "--reference-max-groups", type=int, default=8, help="run the slow reference up to this many groups (8)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.groups.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--groups must be comma-separated integers, got {args.groups!r}")
    if not sizes or min(sizes) < 1 or args.group_size < 2 or args.max_len < 1 or args.repeats < 1:
        parser.error("--groups, --max-len and --repeats must be >= 1 and --group-size >= 2")
    print(f"KTAE against the released-style reference on the CPU, torch {torch.__version__}")
    rows = run_benchmark(
        sizes,
        args.group_size,
        args.max_len,
        args.repeats,
        "cpu",
        args.zipf,
        reference=released_style_reference,
        reference_max_groups=args.reference_max_groups,
    )
    if args.json:
        args.json.write_text(json.dumps({"device": "cpu", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
