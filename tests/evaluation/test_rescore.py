"""Re-scoring model outputs without generating (``ktae eval --responses``), on a small file in the
released format (tests/evaluation/data/released_outputs.json: eight problems of the five suites,
one with two samples, each with the verdict of the grader that wrote it)."""

import gzip
import json
import os
from pathlib import Path

import pytest

from ktae.evaluation.rescore import agreement_table, disagreement_list, read_outputs, rescore_files
from ktae.rewards import AnswerChecker

RELEASED = Path(__file__).parent / "data" / "released_outputs.json"
# Accuracy % per suite, ours (and, here, the file's too: its two disagreements cancel out in Minerva).
EXPECTED = {"aime24": 100.0, "amc23": 50.0, "math500": 50.0, "minerva": 50.0, "olympiadbench": 100.0}


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(num_workers=1, timeout_s=10.0) as c:
        yield c


@pytest.fixture(scope="module")
def rescored(checker, tmp_path_factory):
    out = tmp_path_factory.mktemp("rescored")
    results, agreed = rescore_files(RELEASED, out, checker=checker)
    return out, results, agreed


def test_released_records_are_read_as_the_suites(tmp_path):
    outputs = read_outputs(RELEASED)
    assert len(outputs) == 9  # eight problems, one with two samples
    assert [o.benchmark for o in outputs[:3]] == ["aime24", "amc23", "amc23"]
    amc = [o for o in outputs if o.benchmark == "amc23"]
    assert [(o.index, o.sample, o.answer, o.verdict) for o in amc] == [(0, 0, "36", True), (0, 1, "36", False)]
    minerva = [o for o in outputs if o.benchmark == "minerva"]
    assert minerva[0].answer == ["2.45 \\times 10^{-19}", "2.45e-19"]  # nested list, accepted answers
    assert [o.index for o in minerva] == [0, 1]
    assert outputs[0].problem == "How many positive divisors does $5184$ have, plus $38$?"
    assert outputs[0].num_tokens is None
    compressed = tmp_path / "outputs.json.gz"
    compressed.write_bytes(gzip.compress(RELEASED.read_bytes()))
    assert read_outputs(compressed) == read_outputs(RELEASED, "released") == outputs
    lines = tmp_path / "outputs.jsonl"  # the same records as JSON lines
    lines.write_text("".join(json.dumps(r) + "\n" for r in json.loads(RELEASED.read_text())))
    assert read_outputs(lines) == outputs


def test_every_response_is_graded_and_compared(rescored):
    out, results, agreed = rescored
    assert results["results"] == EXPECTED
    assert results["num_examples"] == {
        "aime24": 1,
        "amc23": 1,
        "math500": 2,
        "minerva": 2,
        "olympiadbench": 2,
    }  # problems
    assert results["samples"]["amc23"] == 2
    assert results["avg_lens"]["aime24"] is None  # the released format has no token counts
    assert agreed["all"]["n"] == 9 and agreed["all"]["agree"] == pytest.approx(700 / 9)
    minerva = agreed["benchmarks"]["minerva"]
    assert (minerva["ours"], minerva["theirs"], minerva["agree"]) == (50.0, 50.0, 0.0)
    assert (minerva["ours_only"], minerva["theirs_only"]) == (1, 1)
    assert [(d["benchmark"], d["index"], d["extracted"], d["ours"], d["theirs"]) for d in agreed["disagreements"]] == [
        ("minerva", 0, "2.61 \\times 10^{-19}", False, True),
        ("minerva", 1, "\\frac{1}{8}\\sin(3t)", True, False),
    ]
    listing = disagreement_list(agreed)
    assert "minerva #0: reference `2.45 \\times 10^{-19} | 2.45e-19`, extracted `2.61 \\times 10^{-19}`" in listing
    assert "ours wrong, file correct" in listing and "ours correct, file wrong" in listing
    assert "| Minerva | 2 | 50.0 | 50.0 | 0.0 | 1 | 1 |" in agreement_table(agreed)

    assert json.loads((out / "results.json").read_text())["results"] == EXPECTED
    assert json.loads((out / "agreement.json").read_text())["all"]["n"] == 9
    assert "## Disagreements" in (out / "agreement.md").read_text()
    amc = [json.loads(line) for line in (out / "responses" / "amc23.jsonl").read_text().splitlines()]
    assert [(r["index"], r["sample"], r["extracted"], r["correct"], r["file_correct"]) for r in amc] == [
        (0, 0, "36", True, True),
        (0, 1, "35", False, False),
    ]
    no_answer = json.loads((out / "responses" / "math500.jsonl").read_text().splitlines()[1])
    assert no_answer["extracted"] is None and no_answer["check"] == "no_answer"


def test_stock_grader_rescores_and_is_recorded(rescored, tmp_path):
    """--grader math-verify on the same file: TRL's verdicts (tests/rewards/test_math_verify_grader.py), recorded."""
    _, results, _ = rescored
    assert results["settings"]["grader"] == "ktae"
    with AnswerChecker(num_workers=1, timeout_s=10.0, grader="math-verify") as stock:
        stock_results, _ = rescore_files(RELEASED, tmp_path / "stock", checker=stock)
    assert stock_results["settings"]["grader"] == "math-verify"
    # math500: 12^{\text{th}} is not 12 to it; minerva: 2.61e-19 is 2.45e-19 after rounding to 6 decimals;
    # olympiadbench: 5\% is not $5 \%$ (ours: both right, both wrong, one of two right)
    assert stock_results["results"] == {**EXPECTED, "math500": 0.0, "minerva": 100.0, "olympiadbench": 50.0}
    assert json.loads((tmp_path / "stock" / "results.json").read_text())["settings"]["grader"] == "math-verify"


def test_ktae_response_files_are_rescored_too(rescored, checker, tmp_path):
    """A run's own responses/ folder: the same results, and full agreement with its verdicts."""
    out, results, _ = rescored
    again, agreed = rescore_files(out / "responses", tmp_path / "again", checker=checker)
    assert again["results"] == results["results"]
    assert agreed["all"]["agree"] == 100.0 and agreed["disagreements"] == []
    single, _ = rescore_files([out / "responses" / "amc23.jsonl"], tmp_path / "one", format="ktae", checker=checker)
    assert single["results"] == {"amc23": 50.0}


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(
    "records, message",
    [
        ({"task_name": "aime"}, "record 0: missing field 'prompt'"),
        ("text", "expected a JSON object"),
        ([{"task_name": "aime", "prompt": "p", "model_output": ["x"]}], "record 0: missing field 'gt'"),
        ([{"task_name": "aime", "prompt": "p", "gt": [], "model_output": ["x"]}], "record 0: field 'gt'"),
        ([{"task_name": "aime", "prompt": "p", "gt": "1", "model_output": []}], "non-empty list of str"),
        ([{"task_name": "aime", "prompt": "p", "gt": "1", "model_output": ["x"], "reward": [1, 0]}], "one verdict"),
        ([{"task_name": "aime", "prompt": "p", "gt": "1", "model_output": ["x"], "reward": ["yes"]}], "verdict"),
    ],
)
def test_malformed_released_records_are_named(tmp_path, records, message):
    with pytest.raises(ValueError, match=message):
        read_outputs(_write(tmp_path / "bad.json", records))


def test_malformed_ktae_records_are_named(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"benchmark": "aime24", "answer": "1", "response": "x"}\n{"benchmark": "aime24"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: missing field 'answer'"):
        read_outputs(path)
    path.write_text('{"benchmark": "aime24", "index": 0, "answer": "1", "response": "x"}\n' * 2)
    with pytest.raises(ValueError, match="problem 0 sample 0 appears twice"):
        read_outputs(path)
    with pytest.raises(ValueError, match="not valid JSON"):
        read_outputs(RELEASED, "ktae")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_outputs(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown responses format"):
        read_outputs(RELEASED, "csv")


@pytest.mark.parametrize("format", ["ktae", "released"])
def test_responses_with_other_line_separators_stay_whole(tmp_path, format):
    response = "so\u2028the answer\x0cis \\boxed{1}\x85"  # raw in JSON written with ensure_ascii=False
    record = (
        {"benchmark": "aime24", "answer": "1", "response": response}
        if format == "ktae"
        else {"task_name": "aime24", "prompt": "q", "model_output": [response], "gt": "1"}
    )
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    [output] = read_outputs(path, format)
    assert output.response == response


def test_output_folder_must_not_hold_the_inputs(rescored, checker):
    out, _, _ = rescored
    with pytest.raises(ValueError, match="holds the responses being re-scored"):
        rescore_files(out / "responses", out, checker=checker)


def _ktae_file(path, answers_by_problem: list[tuple[str, list[str]]], benchmark: str = "aime24"):
    """A ktae response file: per problem its reference and its samples' answers, each as a boxed response."""
    records = [
        {"benchmark": benchmark, "index": i, "sample": s, "problem": f"p{i}", "answer": reference}
        | {"response": f"so \\boxed{{{answer}}}"}
        for i, (reference, answers) in enumerate(answers_by_problem)
        for s, answer in enumerate(answers)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_majority_vote_counts_each_problems_samples_together(checker, tmp_path):
    """Samples 3, 7, 7, 7 of a problem whose answer is 3: any sample is right (pass@4 100%), the vote is 7
    (maj@4 0%)."""
    path = _ktae_file(tmp_path / "r.jsonl", [("3", ["3", "7", "7", "7"])])
    results, _ = rescore_files(path, tmp_path / "out", checker=checker)
    assert results["pass_at_k"]["aime24"] == {"4": 100.0}
    assert results["maj_at_k"]["aime24"] == {"4": 0.0}
    assert results["per_problem"]["aime24"][0]["groups"] == [0, 1, 1, 1]


def test_rescoring_a_generated_run_gives_its_figures(checker, tmp_path):
    """Generation and re-scoring group answers through one function: the same groups, pass@k and maj@k,
    wrong answers that are equal in value (2 and 4/2) in one group."""
    from ktae.evaluation import EvalSettings, score_benchmark, summarize
    from ktae.evaluation.eval_folder import write_eval_folder
    from ktae.evaluation.generation import Generation

    problems = [
        ("1", ["2", "\\frac{4}{2}", "1", "1"]),  # a tie of 2 against 2: the wrong group comes first
        ("1", ["1", "2", "\\frac{4}{2}", "0.5"]),
        ("\\frac{1}{2}", ["0.5", "1", "\\frac{2}{4}", "3"]),
        ("5", ["4", "6", "7", "8"]),
    ]
    examples = [{"problem": f"p{i}", "answer": reference} for i, (reference, _) in enumerate(problems)]
    generations = [Generation(f"so \\boxed{{{a}}}", 5, "stop") for _, answers in problems for a in answers]
    records = {"aime24": score_benchmark("aime24", examples, [None] * 4, generations, checker, samples=4)}
    generated = summarize(records, EvalSettings(model="m", temperature=1.0, samples=4), pass_k=[1, 2, 4])
    write_eval_folder(tmp_path / "run", generated, records)
    assert [p["groups"] for p in generated["per_problem"]["aime24"]][:2] == [[0, 0, 1, 1], [0, 1, 1, 2]]
    assert generated["maj_at_k"]["aime24"]["4"] == 25.0  # problem 3 only: 1/2 twice against 1 and 3

    rescored, _ = rescore_files(tmp_path / "run", tmp_path / "again", checker=checker, pass_k=[1, 2, 4])
    for key in ("results", "pass_at_k", "num_examples", "samples"):
        assert rescored[key] == generated[key], key
    assert rescored["maj_at_k"]["aime24"]["4"] == generated["maj_at_k"]["aime24"]["4"]
    assert [p["groups"] for p in rescored["per_problem"]["aime24"]] == [
        p["groups"] for p in generated["per_problem"]["aime24"]
    ]


def test_samples_of_one_problem_must_agree_on_it(checker, tmp_path):
    path = tmp_path / "r.jsonl"
    _ktae_file(path, [("3", ["3", "7"])])
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1].replace('"answer": "3"', '"answer": "4"') + "\n")
    with pytest.raises(ValueError, match="aime24: problem 0: its samples differ in the problem or the reference"):
        rescore_files(path, tmp_path / "out", checker=checker)
    _ktae_file(path, [("3", ["3", "7"]), ("4", ["4"])])
    with pytest.raises(ValueError, match=r"aime24: problems have different numbers of samples \(\[1, 2\]\)"):
        rescore_files(path, tmp_path / "out", checker=checker)


def _released(path, records):
    path.write_text(json.dumps(records))
    return path


def _one_released(task_name="aime", gt="1", **fields):
    return {"task_name": task_name, "prompt": "p", "gt": gt, "model_output": ["\\boxed{1}"], **fields}


@pytest.mark.parametrize("name", ["../../escaped", "{tmp}/escaped", "a/b", ".hidden", "", "x\x1b[2J", "a" * 101])
@pytest.mark.parametrize("format", ["released", "ktae"])
def test_names_from_the_file_never_form_paths(checker, tmp_path, name, format):
    """A benchmark name from the file becomes responses/<name>.jsonl: one that is not a plain file name is
    refused by name before anything is written, instead of writing outside the output folder."""
    name = name.format(tmp=tmp_path)
    record = (
        _one_released(task_name=name)
        if format == "released"
        else {"benchmark": name, "answer": "1", "response": "\\boxed{1}"}
    )
    path = tmp_path / "in" / "r.json"
    path.parent.mkdir()
    path.write_text(json.dumps([record] if format == "released" else record))
    out = tmp_path / "a" / "b" / "out"
    field = "task_name" if format == "released" else "benchmark"
    with pytest.raises(ValueError, match=rf"field '{field}': .* is not a benchmark name") as refused:
        rescore_files(path, out, format=format, checker=checker)
    assert len(str(refused.value)) < 400
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [Path("in/r.json")]


def test_a_gzip_bomb_is_refused_within_the_limit(tmp_path):
    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(gzip.compress(b" " * (8 << 20) + json.dumps([_one_released()]).encode()))
    assert bomb.stat().st_size < 20_000
    with pytest.raises(ValueError, match=rf"{bomb} decompresses to more than 1 MiB: refused"):
        read_outputs(bomb, max_bytes=1 << 20)
    assert len(read_outputs(bomb, max_bytes=9 << 20)) == 1  # the limit is an option
    plain = tmp_path / "big.json"
    plain.write_bytes(gzip.decompress(bomb.read_bytes()))
    with pytest.raises(ValueError, match=rf"{plain} is larger than 1 MiB: refused"):
        read_outputs(plain, max_bytes=1 << 20)


def test_damaged_gzip_is_named(tmp_path):
    whole = gzip.compress(json.dumps([_one_released()]).encode())
    truncated = tmp_path / "cut.json.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=rf"{truncated}: truncated gzip data"):
        read_outputs(truncated)
    corrupt = tmp_path / "crc.json.gz"
    corrupt.write_bytes(whole[:-8] + bytes([whole[-8] ^ 0xFF]) + whole[-7:])  # a wrong CRC-32
    with pytest.raises(ValueError, match=rf"{corrupt}: not valid gzip data \(CRC check failed"):
        read_outputs(corrupt)


def test_entries_that_are_not_regular_files_are_refused_at_once(tmp_path):
    """A link the user names is followed to a regular file only; in a folder no link is followed; a FIFO is
    refused without waiting for a writer."""
    to_zero = tmp_path / "zero.json"
    to_zero.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=f"{to_zero} is a character device, not a regular file: refused"):
        read_outputs(to_zero)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=f"{fifo} is a FIFO"):
        read_outputs(fifo)  # would block forever if it waited for a writer
    real = _released(tmp_path / "real.json", [_one_released()])
    named_link = tmp_path / "link.json"
    named_link.symlink_to(real)
    assert read_outputs(named_link) == read_outputs(real)
    folder = tmp_path / "responses"
    folder.mkdir()
    (folder / "aime24.jsonl").write_text(json.dumps({"benchmark": "aime24", "answer": "1", "response": "1"}) + "\n")
    (folder / "amc23.jsonl").symlink_to(folder / "aime24.jsonl")
    with pytest.raises(ValueError, match=f"{folder / 'amc23.jsonl'} is a symbolic link, not a regular file"):
        read_outputs(folder)


def test_references_nested_too_deep_are_refused_by_name(tmp_path):
    nested = tmp_path / "deep.json"
    nested.write_text(
        '[{"task_name": "aime", "prompt": "p", "model_output": ["1"], "gt": '
        + "[" * 100_000
        + '"1"'
        + "]" * 100_000
        + "}]"
    )
    with pytest.raises(ValueError, match=f"{nested}: nested too deeply to read"):
        read_outputs(nested)
    gt: object = "1"
    for _ in range(20):
        gt = [gt]
    with pytest.raises(ValueError, match=r"record 0: field 'gt': a reference nests lists more than 16 deep"):
        read_outputs(_released(tmp_path / "twenty.json", [_one_released(gt=gt)]))


def test_a_key_given_twice_is_refused(tmp_path):
    released = tmp_path / "twice.json"
    released.write_text('[{"task_name": "aime", "prompt": "p", "gt": "1", "gt": "2", "model_output": ["1"]}]')
    with pytest.raises(ValueError, match=f"{released}: duplicate key 'gt'"):
        read_outputs(released)
    lines = tmp_path / "twice.jsonl"
    lines.write_text('{"benchmark": "aime24", "answer": "1", "answer": "2", "response": "1"}\n')
    with pytest.raises(ValueError, match=f"{lines}:1: duplicate key 'answer'"):
        read_outputs(lines, "ktae")
