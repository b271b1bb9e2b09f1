import json

import pytest
from trl_tiny import build_model, build_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 policy saved in Hugging Face format (GRPO's KL reference loads it by path).

    Pass ``processing_class=build_tokenizer()`` with it: loading the word-level tokenizer back from
    disk gives a byte-level Qwen2Tokenizer (the model type decides the class in transformers 5).
    """
    path = tmp_path_factory.mktemp("tiny_qwen2")
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    return str(path)


@pytest.fixture
def suites(tmp_path):
    """Two small suites under the packaged names (the tiny model's own arithmetic)."""
    folder = tmp_path / "suites"
    folder.mkdir()
    problems = {"aime24": [("1+2=", "3"), ("2+2=", "4"), ("3+4=", "7")], "amc23": [("5+1=", "6"), ("1+1=", "2")]}
    for name, rows in problems.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in rows))
    return folder
