"""MATH in verl's parquet format, read back by verl's own RLHFDataset."""

from __future__ import annotations

import json

import pytest
from omegaconf import open_dict
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from verl.utils.dataset.rl_dataset import RLHFDataset

from ktae.data.templates import BOXED_INSTRUCTION
from ktae.integrations.verl.prepare_data import main, prepare
from ktae.integrations.verl.reward import compute_score

MATH_ROWS = [
    {"problem": "What is $2+2$?", "solution": "We add: $2+2=\\boxed{4}$.", "level": "Level 1", "type": "Algebra"},
    {
        "problem": "Half of one?",
        "solution": "It is $\\frac{1}{2}$, i.e. $\\boxed{\\frac{1}{2}}$.",
        "level": "Level 2",
        "type": "Prealgebra",
    },
]


@pytest.fixture
def math_file(tmp_path):
    path = tmp_path / "math_train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in MATH_ROWS))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")),
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    return tok


def test_math_and_math500_in_verls_format(compose, tokenizer, math_file, tmp_path, math_eval_dir):
    written = prepare(
        tmp_path / "out", train=str(math_file), val=["math500", "aime24"], benchmarks_dir=str(math_eval_dir), limit=3
    )
    data_config = compose([]).data
    with open_dict(data_config):
        data_config.filter_overlong_prompts = False

    train = RLHFDataset(data_files=[str(written["train"])], tokenizer=tokenizer, config=data_config)
    assert len(train) == 2
    first = train[0]
    assert first["raw_prompt"] == [
        {"role": "system", "content": BOXED_INSTRUCTION},
        {"role": "user", "content": "What is $2+2$?"},
    ]
    assert first["data_source"] == "math" and first["reward_model"] == {"style": "rule", "ground_truth": "4"}
    assert train[1]["reward_model"]["ground_truth"] == "\\frac{1}{2}"
    truth = train[1]["reward_model"]["ground_truth"]
    assert compute_score("math", "so \\boxed{0.5}", truth)["score"] == 1.0

    test = RLHFDataset(data_files=[str(written["test"])], tokenizer=tokenizer, config=data_config)
    assert [test[i]["data_source"] for i in range(len(test))] == ["math500"] * 3 + ["aime24"] * 3
    reference = json.loads((math_eval_dir / "aime24.jsonl").read_text().splitlines()[0])
    assert test[3]["raw_prompt"][-1]["content"] == reference["problem"]
    assert test[3]["reward_model"]["ground_truth"] == reference["answer"]


def test_plain_text_templates_are_refused(math_file, tmp_path):
    with pytest.raises(ValueError, match="chat template"):
        prepare(tmp_path / "out", train=str(math_file), val=[], template="r1")


def test_command_line_without_validation_suites(math_file, tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "out"), "--train", str(math_file), "--val"]) == 0
    assert (tmp_path / "out" / "train.parquet").is_file() and not (tmp_path / "out" / "test.parquet").exists()
    assert "train:" in capsys.readouterr().out
