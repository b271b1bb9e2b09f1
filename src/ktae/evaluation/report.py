"""Markdown tables of evaluation results, and runs side by side with the paper's reference rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ktae.data.benchmarks import BENCHMARKS

# Column titles, as the paper's table spells them.
TITLES = {"aime24": "AIME24", "amc23": "AMC23", "math500": "MATH500", "minerva": "Minerva", "olympiadbench": "Olympiad"}


def _cell(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: dict) -> str:
    """One run: a row per benchmark (accuracy %, formatted %, mean and max length in tokens), then the average."""
    rows = [
        [
            TITLES.get(name, name),
            str(results["num_examples"][name]),
            _cell(results["results"][name]),
            _cell(results["formatted"][name]),
            _cell(results["avg_lens"][name], 0),
            _cell(results["max_lens"][name], 0),
        ]
        for name in results["results"]
    ]
    rows.append(["avg", str(sum(results["num_examples"].values())), _cell(results["avg"]), "", "", ""])
    return markdown_table(["benchmark", "n", "accuracy %", "formatted %", "avg len", "max len"], rows)


def load_reference_rows(readme: str | Path) -> list[dict]:
    """The reference rows of the Markdown table in ``readme`` whose header names the benchmarks
    (``shared/data/math-eval/README.md``): [{"label", "results": {name: %}, "avg"}]."""
    columns: list[str | None] | None = None
    rows = []
    for line in Path(readme).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            columns = None
            continue
        if columns is None:
            keys = [re.sub(r"[^a-z0-9]", "", c.lower()) for c in cells]
            if not any(k in ("aime24", "math500") for k in keys):
                continue
            by_title = {re.sub(r"[^a-z0-9]", "", t.lower()): n for n, t in TITLES.items()}
            columns = [by_title.get(k, "avg" if k == "avg" else None) for k in keys]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        values = {}
        for name, cell in zip(columns[1:], cells[1:]):
            if name is not None:
                values[name] = float(cell)
        rows.append({"label": cells[0], "avg": values.pop("avg", None), "results": values})
    if not rows:
        raise ValueError(f"{readme}: no table with benchmark columns (AIME24, MATH500, ...) found")
    return rows


def load_results(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    results = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(results, dict) or "results" not in results:
        raise ValueError(f"{path}: not a ktae eval results file (no 'results')")
    results.setdefault("label", results.get("model", path.stem))
    return results


def comparison_table(runs: list[dict], reference_rows: list[dict] = ()) -> str:
    """Runs (results dicts with a ``label``) and reference rows side by side: accuracy % per benchmark
    and the mean; benchmarks appear in the suites' order, "–" where a run has none."""
    present = {name for run in [*runs, *reference_rows] for name in run["results"]}
    names = [n for n in BENCHMARKS if n in present] + sorted(present - set(BENCHMARKS))
    rows = []
    for run in [*reference_rows, *runs]:
        rows.append([str(run["label"])] + [_cell(run["results"].get(n)) for n in names] + [_cell(run.get("avg"))])
    return markdown_table(["model"] + [TITLES.get(n, n) for n in names] + ["avg"], rows)
