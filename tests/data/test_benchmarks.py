import json
import os

import pytest

from ktae.data import BENCHMARKS, benchmarks, load_benchmark, parse_benchmark_names
from ktae.data.benchmarks import reference_scores
from ktae.evaluation import load_reference_rows

SIZES = {"aime24": 30, "amc23": 83, "math500": 500, "minerva": 272, "olympiadbench": 675}


@pytest.mark.parametrize("name", list(SIZES))
def test_packaged_suites_load_with_no_argument(name):
    examples = load_benchmark(name)
    assert len(examples) == SIZES[name]
    assert all(set(e) == {"problem", "answer"} and e["problem"].strip() for e in examples)
    assert load_benchmark(name, limit=3) == examples[:3]


def test_aime24_is_the_2024_contest():
    examples = load_benchmark("aime24")
    assert examples[0]["answer"] == "204"  # 2024 AIME I, problem 2 (Aya's walk)
    assert "Aya" in examples[0]["problem"]
    assert all(e["answer"].isdigit() and 0 <= int(e["answer"]) <= 999 for e in examples)  # AIME answers: 000-999


def test_a_folder_replaces_the_packaged_copy(tmp_path):
    rows = [{"problem": "What is 1+1?", "answer": "2"}, {"problem": "Name a root of x^2=4.", "answer": ["2", "-2"]}]
    (tmp_path / "aime24.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_benchmark("aime24", tmp_path) == rows
    assert load_benchmark("aime24", str(tmp_path), limit=1) == rows[:1]


def test_hub_source_reads_the_suites_own_fields(monkeypatch):
    seen = []

    def fake_read_records(source, split="train", name=None):  # the hub is out of reach in tests
        seen.append((source, split))
        return [("hub row 0", {"question": "Find x.", "final_answer": ["3"]})]

    monkeypatch.setattr(benchmarks, "read_records", fake_read_records)
    assert load_benchmark("olympiadbench", hub=True) == [{"problem": "Find x.", "answer": ["3"]}]
    assert seen == [("math-ai/olympiadbench", "test")]
    with pytest.raises(ValueError, match="not both"):
        load_benchmark("aime24", "somewhere", hub=True)


def test_names():
    assert list(BENCHMARKS) == list(SIZES)
    assert parse_benchmark_names("aime24, math500,aime24") == ["aime24", "math500"]
    with pytest.raises(ValueError, match=r"unknown benchmark.*'gsm8k'.*choose from aime24"):
        parse_benchmark_names("aime24,gsm8k")
    with pytest.raises(ValueError, match="no benchmark"):
        parse_benchmark_names(" , ")


def test_missing_suite_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"benchmark 'amc23'.*amc23\.jsonl not found"):
        load_benchmark("amc23", tmp_path)


def test_reference_scores_match_the_packaged_readme(math_eval_dir):
    rows = reference_scores()
    assert len(rows) == 8
    assert {(r["base_model"], r["algorithm"], r["ktae"]) for r in rows} == {
        (f"Qwen/Qwen2.5-Math-{size}", algo, ktae)
        for size in ("1.5B", "7B")
        for algo in ("grpo", "dapo")
        for ktae in (0, 1)
    }
    in_readme = load_reference_rows(math_eval_dir / "README.md")
    assert [(r["label"], r["results"], r["avg"]) for r in rows] == [
        (r["label"], r["results"], r["avg"]) for r in in_readme
    ]
    for row in rows:
        assert list(row["results"]) == list(SIZES)
        assert row["avg"] == pytest.approx(sum(row["results"].values()) / 5, abs=0.1)  # means of unrounded columns


def test_suite_files_that_are_not_regular_files_are_refused(tmp_path):
    """A suite in --data-dir is read only from a regular file of its own (found in a folder: no link is
    followed), within a size limit: a link to /dev/zero, a FIFO or a link elsewhere is refused at once."""
    (tmp_path / "aime24.jsonl").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=f"{tmp_path / 'aime24.jsonl'} is a symbolic link, not a regular file"):
        load_benchmark("aime24", tmp_path)
    os.mkfifo(tmp_path / "amc23.jsonl")
    with pytest.raises(ValueError, match=f"{tmp_path / 'amc23.jsonl'} is a FIFO"):
        load_benchmark("amc23", tmp_path)  # would wait for a writer forever
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n")
    (tmp_path / "minerva.jsonl").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="is a symbolic link"):
        load_benchmark("minerva", tmp_path)


def test_a_suite_file_above_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "MAX_SUITE_BYTES", 1000)
    (tmp_path / "aime24.jsonl").write_text(json.dumps({"problem": "p" * 1000, "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=f"{tmp_path / 'aime24.jsonl'} is larger than 1000 bytes: refused"):
        load_benchmark("aime24", tmp_path)
    (tmp_path / "aime24.jsonl").write_text('{"problem": "p", "answer": "1", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"aime24\.jsonl:1: duplicate key 'answer'"):
        load_benchmark("aime24", tmp_path)
