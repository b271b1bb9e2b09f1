"""Page weight and load time of a key-token report over 1,000 rollouts of 3,000 tokens.

Builds the report from a rollouts JSONL file (synthetic text with a Zipf-distributed vocabulary,
groups of 16, about half the rollouts correct), then opens it in headless Chromium and reads
the time from navigation start to the end of the first render (the page records it in
``data-render-ms``). Prints the figures and the bytes per token.

    python benchmarks/bench_viz.py [--rollouts 1000] [--tokens 3000] [--group-size 16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ktae.reports import build_report
from ktae.reports.keytokens import analyse
from ktae.reports.rollouts import load_rollouts, tokenize_rollouts


def synthetic_rollouts(path: Path, rollouts: int, tokens: int, group_size: int, vocab: int = 50_000, seed: int = 0):
    """Rollouts in the trainer's JSONL format: decoded pieces and ids, Zipf-distributed tokens;
    correct rollouts draw a few hundred tokens more often, so values spread over the scale."""
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    random.seed(seed)
    pieces = ["\n", " ", "\n\n"] + [
        (" " if random.random() < 0.6 else "") + "".join(random.choices(letters, k=random.randint(1, 6)))
        for _ in range(vocab - 3)
    ]
    favoured = rng.choice(2000, size=300, replace=False)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(rollouts):
            correct = bool(rng.random() < 0.5)
            ids = np.minimum(rng.zipf(1.2, size=tokens) - 1, vocab - 1)
            if correct:
                swap = rng.random(tokens) < 0.05
                ids[swap] = rng.choice(favoured, size=int(swap.sum()))
            ids = ids.tolist()
            record = {
                "step": 1,
                "group": index // group_size,
                "prompt": f"Problem {index // group_size}",
                "token_ids": ids,
                "tokens": [pieces[i] for i in ids],
                "score": float(correct),
            }
            handle.write(json.dumps(record) + "\n")


def open_in_chromium(url: str, screenshot: Path) -> tuple[float | None, float]:
    """(first-render ms the page logs, wall seconds of a headless Chromium screenshot of it).

    The screenshot is taken once the page has loaded, laid out and painted, so the wall time
    covers what a reader waits for (plus the browser's own start, measured on a blank page).
    """
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("bench_viz: chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        start = time.perf_counter()
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1200,1400",
                f"--screenshot={screenshot}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        wall = time.perf_counter() - start
    if not screenshot.is_file():
        sys.exit(f"bench_viz: Chromium did not render {url}:\n{result.stderr[-2000:]}")
    match = re.search(r"ktae report: first render done (\d+) ms", result.stderr)
    return (float(match.group(1)) if match else None), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--keep", type=Path, help="keep the rollouts and report in this folder")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_viz_"))
    folder.mkdir(parents=True, exist_ok=True)
    rollouts_path = folder / "rollouts.jsonl"
    try:
        synthetic_rollouts(rollouts_path, args.rollouts, args.tokens, args.group_size)
        total_tokens = args.rollouts * args.tokens
        print(
            f"{args.rollouts} rollouts x {args.tokens} tokens = {total_tokens:,} tokens, "
            f"groups of {args.group_size}; "
            f"rollouts.jsonl {rollouts_path.stat().st_size / 1e6:.1f} MB"
        )

        start = time.perf_counter()
        rollouts = load_rollouts(rollouts_path)
        loaded = time.perf_counter()
        data = tokenize_rollouts(rollouts)
        tokenized = time.perf_counter()
        analyse(data)
        analysed = time.perf_counter()
        print(
            f"stages: read {loaded - start:.2f} s, pieces {tokenized - loaded:.2f} s, "
            f"statistics (compute_key_token_values) {analysed - tokenized:.2f} s"
        )

        start = time.perf_counter()
        report = build_report(rollouts_path, folder / "report.html")
        build = time.perf_counter() - start
        weight = report.stat().st_size
        print(f"build_report: {build:.2f} s end to end")
        print(f"page weight: {weight / 1e6:.2f} MB ({weight / total_tokens:.2f} bytes per token)")

        blank = folder / "blank.html"
        blank.write_text("<!DOCTYPE html><html><body></body></html>")
        _, baseline = open_in_chromium(blank.as_uri(), folder / "blank.png")
        render_ms, wall = open_in_chromium(report.as_uri(), folder / "report.png")
        print(
            f"headless Chromium: first render done {render_ms / 1000:.2f} s after navigation start; "
            f"screenshot after {wall:.2f} s vs {baseline:.2f} s for a blank page (+{wall - baseline:.2f} s)"
        )
        last = -(-args.rollouts // args.group_size) - 1
        render_ms, wall = open_in_chromium(report.as_uri() + f"#g{last}", folder / "last-group.png")
        print(
            f"opened on the last group (#g{last}): first render {render_ms / 1000:.2f} s, screenshot after {wall:.2f} s"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
