import pytest

from ktae.data import BENCHMARKS, load_benchmark, parse_benchmark_names

SIZES = {"aime24": 30, "amc23": 83, "math500": 500, "minerva": 272, "olympiadbench": 675}


@pytest.mark.parametrize("name", list(SIZES))
def test_suites_load_from_a_local_folder(name, math_eval_dir):
    examples = load_benchmark(name, math_eval_dir)
    assert len(examples) == SIZES[name]
    assert all(set(e) == {"problem", "answer"} and e["problem"].strip() for e in examples)
    assert load_benchmark(name, math_eval_dir, limit=3) == examples[:3]


def test_names():
    assert list(BENCHMARKS) == list(SIZES)
    assert parse_benchmark_names("aime24, math500,aime24") == ["aime24", "math500"]
    with pytest.raises(ValueError, match="unknown benchmark.*'gsm8k'.*choose from aime24"):
        parse_benchmark_names("aime24,gsm8k")
    with pytest.raises(ValueError, match="no benchmark"):
        parse_benchmark_names(" , ")


def test_missing_suite_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmark 'amc23'.*amc23.jsonl not found"):
        load_benchmark("amc23", tmp_path)
