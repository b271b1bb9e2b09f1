import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ktae.data import load_math_train, load_prompt_dataset, read_records
from ktae.rewards import accuracy_reward


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_custom_fields_and_template(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "1+1?", "final": "2"}, {"question": "2+2?", "final": 4}])
    ds = load_prompt_dataset(path, problem_field="question", answer_field="final", template="qwen_math")
    assert ds.column_names == ["prompt", "answer", "problem"]
    assert ds["answer"] == ["2", "4"]
    assert ds[0]["prompt"][0]["role"] == "system" and "\\boxed{}" in ds[0]["prompt"][0]["content"]
    assert ds[0]["prompt"][1] == {"role": "user", "content": "1+1?"}
    plain = load_prompt_dataset(path, problem_field="question", answer_field="final", template="plain")
    assert plain[1]["prompt"].startswith("2+2?\n")


def test_parquet_and_json_give_the_same_dataset(tmp_path):
    rows = [{"problem": "p1", "answer": "1"}, {"problem": "p2", "answer": "\\frac12"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    a = load_prompt_dataset(tmp_path / "d.parquet", template="r1")
    b = load_prompt_dataset(tmp_path / "d.json", template="r1")
    assert a.to_list() == b.to_list()
    assert "<think>" in a[0]["prompt"] and "User: p1" in a[0]["prompt"]


def test_mixed_answers_become_lists_and_rewards_accept_them(math_eval_dir):
    ds = load_prompt_dataset(math_eval_dir / "minerva.jsonl")
    assert len(ds) == 272
    assert all(isinstance(a, list) and a for a in ds["answer"])
    answers = ds["answer"][:4]
    completions = [f"\\boxed{{{a[0]}}}" for a in answers]
    assert accuracy_reward(completions, answers) == [1.0] * 4


def test_math_train_answers_come_from_the_solution_box(tmp_path):
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [{"problem": "What is 1/2+1/2?", "solution": "We add: $\\frac12+\\frac12=\\boxed{1}$.", "level": "Level 1"}],
    )
    ds = load_math_train(path)
    assert ds["answer"] == ["1"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "solution": "no box"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'solution' has no \\boxed"):
        load_math_train(bad)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"problem": "p"}', "missing field 'answer'"),
        ('{"problem": "", "answer": "1"}', "field 'problem' must be a non-empty string"),
        ('{"problem": "p", "answer": []}', "field 'answer' must be a non-empty string or list"),
        ('{"problem": "p", "answer": null}', "field 'answer' must be"),
        ("[1, 2]", "expected a JSON object"),
        ('{"problem": "p", "answer": "1"', "not valid JSON"),
    ],
)
def test_malformed_rows_are_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"problem": "ok", "answer": "1"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_prompt_dataset(path)
    assert "d.jsonl:2" in str(info.value)


def test_missing_file_and_unknown_template(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        read_records(tmp_path / "nope.jsonl")
    write_jsonl(tmp_path / "d.jsonl", [{"problem": "p", "answer": "1"}])
    with pytest.raises(ValueError, match="unknown prompt template 'chatml'"):
        load_prompt_dataset(tmp_path / "d.jsonl", template="chatml")


def test_numeric_and_nested_answers_read_as_the_rewards_read_them(tmp_path):
    rows = [{"problem": "p1", "answer": 142.0}, {"problem": "p2", "answer": [["9.6\n"], "9.60"]}]
    ds = load_prompt_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert ds["answer"] == [["142"], ["9.6", "9.60"]]  # an Arrow column has one type: all lists
