"""Markdown tables of evaluation results, and runs side by side with the paper's reference rows."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ktae.data.benchmarks import BENCHMARKS
from ktae.evaluation.eval_folder import MAX_FILE_BYTES, check_results, read_responses, read_results, responses_path
from ktae.safe_files import loads_json, printable, read_text, short_repr

# Column titles, as the paper's table spells them.
TITLES = {"aime24": "AIME24", "amc23": "AMC23", "math500": "MATH500", "minerva": "Minerva", "olympiadbench": "Olympiad"}


def _cell(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; cells may hold names from input files, so what a terminal would act on is escaped."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(printable(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _interval(bounds) -> str:
    return "–" if bounds is None else f"[{bounds[0]:.1f}, {bounds[1]:.1f}]"


def results_table(results: dict) -> str:
    """One run: a row per benchmark, then the average. Accuracy % (the mean over samples) with its 95%
    bootstrap interval, pass@k and maj@k % for the k asked, formatted % (responses with an answer),
    mean and max length in tokens, truncated % (cut at the token limit). Results files written
    before some of these existed show "–" there."""
    names = list(results["results"])
    ks = sorted({k for name in names for k in results.get("pass_at_k", {}).get(name, {})}, key=int)
    header = ["benchmark", "n", "samples", "accuracy %", "95% CI"]
    header += [f"pass@{k} %" for k in ks] + [f"maj@{k} %" for k in ks]
    header += ["formatted %", "avg len", "max len", "truncated %"]

    def row(label, get, num_examples, samples, lengths=True):
        cells = [label, num_examples, samples, _cell(get("results")), _interval(get("ci95"))]
        cells += [_cell((get("pass_at_k") or {}).get(k)) for k in ks]
        cells += [_cell((get("maj_at_k") or {}).get(k)) for k in ks]
        if lengths:
            cells += [
                _cell(get("formatted")),
                _cell(get("avg_lens"), 0),
                _cell(get("max_lens"), 0),
                _cell(get("truncated")),
            ]
        else:
            cells += ["", "", "", ""]
        return cells

    rows = [
        row(
            TITLES.get(name, name),
            lambda key, name=name: results.get(key, {}).get(name),
            str(results["num_examples"][name]),
            str(results.get("samples", {}).get(name, 1)),
        )
        for name in names
    ]
    average = {
        "results": results["avg"],
        "ci95": results.get("avg_ci95"),
        "pass_at_k": results.get("avg_pass_at_k"),
        "maj_at_k": results.get("avg_maj_at_k"),
    }
    rows.append(row("avg", average.get, str(sum(results["num_examples"].values())), "", lengths=False))
    return markdown_table(header, rows)


#: ``--reference`` value for the KTAE paper's scores shipped with the package.
PAPER_REFERENCE = "paper"


def load_reference_rows(readme: str | Path) -> list[dict]:
    """Reference rows [{"label", "results": {name: %}, "avg"}]: ``"paper"`` for the KTAE paper's
    scores (`ktae.data.benchmarks.reference_scores`), a ``.json`` file of that layout (``{"rows": [...]}``),
    or a Markdown file whose table header names the benchmarks (AIME24, MATH500, ...)."""
    if str(readme) == PAPER_REFERENCE:
        from ktae.data.benchmarks import reference_scores

        return reference_scores()
    if Path(readme).suffix == ".json":
        return _json_reference_rows(Path(readme))
    columns: list[str | None] | None = None
    rows = []
    previous_cells = None
    for number, line in enumerate(read_text(readme, MAX_FILE_BYTES, follow_links=True).splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        starts_table, previous_cells = cells is not None and previous_cells is None, cells
        if cells is None:
            columns = None
            continue
        if columns is None:
            if not starts_table:  # only a table's first line is its header
                continue
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
                try:
                    values[name] = float(cell)
                except ValueError:
                    raise ValueError(f"{readme}:{number}: column {name}: not a number: {short_repr(cell)}") from None
                if not 0 <= values[name] <= 100:
                    raise ValueError(f"{readme}:{number}: column {name}: not a percentage in [0, 100]: {cell}")
        rows.append({"label": cells[0], "avg": values.pop("avg", None), "results": values})
    if not rows:
        raise ValueError(f"{readme}: no table with benchmark columns (AIME24, MATH500, ...) found")
    return rows


def _json_reference_rows(path: Path) -> list[dict]:
    document = loads_json(read_text(path, MAX_FILE_BYTES, follow_links=True), str(path))
    rows = document.get("rows") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f'{path}: expected {{"rows": [{{"label", "results", "avg"}}, ...]}}')
    for number, row in enumerate(rows):
        if not (isinstance(row, dict) and isinstance(row.get("label"), str) and isinstance(row.get("results"), dict)):
            raise ValueError(
                f"{path}: row {number} needs a 'label' string and a 'results' mapping, got {short_repr(row)}"
            )
        check_results(row, f"{path}: row {number}")
    return rows


def load_results(path: str | Path) -> dict:
    """A results file (`ktae.evaluation.eval_folder.read_results`: checked, an error names the file and field),
    with a ``label``: its model's name."""
    results = read_results(path)
    results["label"] = results.get("model") or Path(path).stem
    return results


def comparison_table(runs: list[dict], reference_rows: Sequence[dict] = ()) -> str:
    """Runs (results dicts with a ``label``) and reference rows side by side: accuracy % per benchmark
    and the mean; benchmarks appear in the suites' order, "–" where a run has none."""
    present: set[str] = {name for run in [*runs, *reference_rows] for name in run["results"]}
    names = [n for n in BENCHMARKS if n in present] + sorted(present - set(BENCHMARKS))
    rows = []
    for run in [*reference_rows, *runs]:
        rows.append([str(run["label"])] + [_cell(run["results"].get(n)) for n in names] + [_cell(run.get("avg"))])
    return markdown_table(["model"] + [TITLES.get(n, n) for n in names] + ["avg"], rows)


def load_problem_records(results: dict, results_path: str | Path) -> dict[str, list[dict]] | None:
    """A run's per-problem records: its ``per_problem`` or, for results written before they were,
    rebuilt from the responses files beside ``results_path``; None when neither is there."""
    from ktae.evaluation.harness import problem_records

    if "per_problem" in results:
        return results["per_problem"]
    folder = Path(results_path).parent
    paths = {name: responses_path(folder, name) for name in results.get("responses", {})}
    if not paths or set(paths) != set(results["results"]) or not all(p.is_file() for p in paths.values()):
        return None
    return {name: problem_records(name, read_responses(path)) for name, path in paths.items()}


def _paired_scores(name: str, a: list[dict], b: list[dict]) -> tuple[list[float], list[float]]:
    """Per-problem mean correctness of both runs, paired by problem key; an error names the problems
    only one run has."""

    def by_key(problems):
        keyed: dict[tuple[str, int], dict] = {}
        seen: dict[str, int] = {}
        for p in problems:
            occurrence = seen[p["key"]] = seen.get(p["key"], -1) + 1  # a problem repeated in a benchmark
            keyed[(p["key"], occurrence)] = p
        return keyed

    a_keyed, b_keyed = by_key(a), by_key(b)
    if a_keyed.keys() != b_keyed.keys():

        def ids(keyed, keys):
            listed = sorted(keyed[k]["id"] for k in keys)
            return ", ".join(map(str, listed[:10])) + (f" and {len(listed) - 10} more" if len(listed) > 10 else "")

        only_a, only_b = a_keyed.keys() - b_keyed.keys(), b_keyed.keys() - a_keyed.keys()
        parts = [f"only in A: problem(s) {ids(a_keyed, only_a)}" if only_a else "", ""]
        parts[1] = f"only in B: problem(s) {ids(b_keyed, only_b)}" if only_b else ""
        raise ValueError(
            f"{name}: the runs cover different problems ({'; '.join(p for p in parts if p)}); "
            "a paired comparison needs the same problems (same data, same --limit)"
        )
    keys = list(a_keyed)

    def mean_correct(p):
        return sum(p["correct"]) / len(p["correct"])

    return [mean_correct(a_keyed[k]) for k in keys], [mean_correct(b_keyed[k]) for k in keys]


def paired_comparison_table(
    a: dict, b: dict, a_problems: dict[str, list[dict]], b_problems: dict[str, list[dict]], seed: int = 0
) -> str:
    """B − A per benchmark both runs have and for their average: accuracy points, the paired
    bootstrap 95% interval, the sign-flip test's p-value and the verdict at 0.05, then a sentence."""
    from ktae.evaluation.metrics import PairedComparison, paired_comparison, verdict_in_words

    names = [n for n in BENCHMARKS if n in a_problems and n in b_problems]
    names += sorted((a_problems.keys() & b_problems.keys()) - set(names))
    if not names:
        raise ValueError(f"{printable(a['label'])} and {printable(b['label'])} have no benchmark in common")
    pairs = {name: _paired_scores(name, a_problems[name], b_problems[name]) for name in names}

    def compared(label: str, selected: list[str]) -> tuple[list[str], PairedComparison]:
        a_scores, b_scores = [pairs[n][0] for n in selected], [pairs[n][1] for n in selected]
        result = paired_comparison(a_scores, b_scores, seed=seed)
        a_mean = sum(sum(s) / len(s) for s in a_scores) / len(a_scores)
        row = [
            label,
            str(result.num_problems),
            _cell(100 * a_mean),
            _cell(100 * (a_mean + result.difference)),
            f"{100 * result.difference:+.1f}",
            _interval([100 * result.ci_low, 100 * result.ci_high]),
            f"{result.p_value:.3g}",
            verdict_in_words(result),
            result.method,
        ]
        return row, result

    rows = [compared(TITLES.get(n, n), [n])[0] for n in names]
    average_row, average = compared("avg", names)
    rows.append(average_row)
    header = ["benchmark", "problems", "A %", "B %", "B − A", "95% CI", "p-value", "verdict", "test"]
    over = "the benchmark" if len(names) == 1 else f"the mean of {len(names)} benchmarks"
    if average.p_value < 0.05:
        words = "beats" if average.difference > 0 else "is worse than"
        conclusion = f"B {words} A on {over} at the 0.05 level (p = {average.p_value:.3g})."
    else:
        conclusion = f"B does not beat A on {over} at the 0.05 level (p = {average.p_value:.3g})."
    return "\n".join(
        [
            f"A: {printable(a['label'])}\nB: {printable(b['label'])}",
            "",
            markdown_table(header, rows),
            "",
            f"{conclusion} B − A in accuracy points; intervals: paired bootstrap over problems; p-values: "
            + "two-sided paired sign-flip test over problems (exact McNemar with one sample per problem).",
        ]
    )
