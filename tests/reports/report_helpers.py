"""Rollout files and headless Chromium runs shared by the report tests."""

import json
import subprocess
import tempfile
from pathlib import Path


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


GOOD = "Let x = {g}. Then 2x + 1 = {r}, so the answer is \\boxed{{{r}}}."
BAD = "Wait: café {g}\nWe compute 12 × 4 = 48 ✓\nThus \\boxed{{{w}}} <script>document.title='pwned'</script>"


def rollout_records(tokenizer, steps=(10, 20), groups=2, size=4):
    """Whole groups of rollouts in the trainer's rollouts.jsonl format: half correct, half not."""
    records = []
    for step in steps:
        for g in range(groups):
            for i in range(size):
                correct = i % 2 == 0
                text = GOOD.format(g=g, r=2 * g + 1) if correct else BAD.format(g=g, w=g + 40)
                ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                records.append(
                    {
                        "step": step,
                        "group": g,
                        "prompt": f"Solve problem {g}: <b>2x + 1</b>?",
                        "response": text + tokenizer.eos_token,
                        "token_ids": ids,
                        "score": 1.0 if correct else 0.0,
                        "correct": correct,
                    }
                )
    return records


def run_chromium(binary: str, url: str, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
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
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
