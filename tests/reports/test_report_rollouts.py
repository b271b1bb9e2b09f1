import logging

import pytest
from report_helpers import rollout_records, write_jsonl

from ktae.reports.rollouts import find_run_tokenizer, load_rollouts, parse_rollout, tokenize_rollouts
from ktae.run_folder import RolloutRecord


def test_parse_accepts_the_trainer_format_and_verl_dumps():
    trainer = parse_rollout(
        {
            "step": 3,
            "group": 7,
            "prompt": "p",
            "response": "r",
            "token_ids": [1, 2],
            "tokens": ["r", ""],
            "score": 1.0,
            "correct": True,
        },
        "x",
    )
    assert (trainer.step, trainer.group, trainer.token_ids, trainer.tokens) == (3, 7, [1, 2], ["r", ""])
    # verl's rollout_data_dir: input/output/gts/score/step, no group id: the prompt is the group.
    verl = parse_rollout({"input": "What is 1+1?", "output": "2", "gts": "2", "score": 1.0, "step": 5}, "x")
    assert (verl.group, verl.prompt, verl.response, verl.step) == ("What is 1+1?", "What is 1+1?", "2", 5)
    # verl v1 dumps name each rollout with a uid of its own (<prompt uid>_<sample>_<output>):
    # the group is still the prompt, so rollouts of one prompt stay together.
    v1 = [
        parse_rollout({"input": "Q", "output": o, "score": 1.0, "uid": f"p7_{i}_0"}, "x")
        for i, o in enumerate(["1", "2"])
    ]
    assert [r.group for r in v1] == ["Q", "Q"]
    chat = parse_rollout(
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "completion": [{"role": "assistant", "content": "yo"}],
            "reward": 0,
            "uid": "u",
        },
        "x",
    )
    assert (chat.prompt, chat.response, chat.group, chat.score) == ("hi", "yo", "u", 0.0)
    assert parse_rollout({"group": 1, "response": "r", "score": None}, "x").score is None  # unscored


def test_load_drops_the_torn_last_line_of_a_run_killed_mid_write(tmp_path, caplog):
    records = [{"step": 1, "group": 0, "response": r, "score": 1} for r in ("a", "b")]
    path = write_jsonl(tmp_path / "run" / "rollouts.jsonl", records)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 1, "group": 0, "respo')
    with caplog.at_level(logging.WARNING, logger="ktae.run_folder"):
        assert [r.response for r in load_rollouts(tmp_path / "run")] == ["a", "b"]
    assert "rollouts.jsonl: dropped a torn last line" in caplog.text


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"group": 1, "response": "r"}, "score"),
        ({"group": 1, "response": "r", "score": "high"}, "score"),
        ({"group": 1, "score": 1.0}, "no response"),
        ({"response": "r", "score": 1.0}, "group"),
        ({"group": 1, "token_ids": [1, -2], "score": 1.0}, "token_ids"),
        ({"group": 1, "token_ids": [1, 2], "tokens": ["a"], "score": 1.0}, "1 tokens but 2 token_ids"),
        ({"group": 1, "response": 5, "score": 1.0}, "response must be text"),
        ({"group": 1, "token_ids": [1, 2], "advantages": [0.5], "score": 1.0}, "1 advantages but 2 token_ids"),
    ],
)
def test_parse_names_what_is_wrong(record, message):
    with pytest.raises((ValueError, TypeError), match=message):
        parse_rollout(record, "rollouts.jsonl:4")


def test_load_reads_a_file_a_run_folder_or_a_folder_of_step_dumps(tmp_path):
    records = [{"step": s, "group": 0, "response": "r", "score": 1} for s in (1, 2)]
    write_jsonl(tmp_path / "run" / "rollouts.jsonl", records)
    assert [r.step for r in load_rollouts(tmp_path / "run")] == [1, 2]
    assert [r.step for r in load_rollouts(tmp_path / "run", steps=[2])] == [2]
    for step in (10, 2):
        write_jsonl(tmp_path / "dumps" / f"{step}.jsonl", [{"input": "q", "output": "a", "score": 0, "step": step}])
    assert [r.step for r in load_rollouts(tmp_path / "dumps")] == [2, 10]  # numeric order of the files
    (tmp_path / "bad.jsonl").write_text('{"group": 1, "response": "r", "score": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_rollouts(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"group": 1, "response": "r", "score": 1}\n{oops\n{"group": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_rollouts(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="no rollouts"):
        load_rollouts(tmp_path / "run", steps=[99])
    with pytest.raises(FileNotFoundError):
        load_rollouts(tmp_path / "missing")


def test_token_ids_are_decoded_with_the_tokenizer_and_pad_eos_ignored(byte_level_tokenizer):
    records = rollout_records(byte_level_tokenizer, steps=(1,), groups=1, size=2)
    rollouts = [parse_rollout(r, "x") for r in records]
    data = tokenize_rollouts(rollouts, byte_level_tokenizer)
    for rollout, ids, texts in zip(rollouts, data.token_ids, data.texts):
        assert ids.tolist() == rollout.token_ids
        assert "".join(texts) == rollout.response  # merged pieces read as the response
    assert data.ignore_token_ids == (byte_level_tokenizer.eos_token_id,)
    assert data.labels[byte_level_tokenizer.convert_tokens_to_ids("Ġx")] == "␣x"
    assert data.notices == []


def test_text_only_rollouts_are_tokenized_or_split_into_words(byte_level_tokenizer):
    rollouts = [parse_rollout({"group": 0, "response": "x = 3\nso 3", "score": s}, "x") for s in (1, 0)]
    tokenized = tokenize_rollouts(rollouts, byte_level_tokenizer)
    assert tokenized.token_ids[0].tolist() == byte_level_tokenizer("x = 3\nso 3", add_special_tokens=False)["input_ids"]
    words = tokenize_rollouts(rollouts)
    assert words.texts[0] == ["x", " ", "=", " ", "3", "\n", "so", " ", "3"]
    assert words.token_ids[0].tolist() == [0, 1, 2, 1, 3, 4, 5, 1, 3]  # numbered by text
    assert "not the model's tokens" in words.notices[0]


def test_ids_without_pieces_need_a_tokenizer_and_unscored_rollouts_are_left_out():
    with pytest.raises(ValueError, match="--tokenizer"):
        tokenize_rollouts([parse_rollout({"group": 0, "token_ids": [1, 2], "score": 1}, "x")])
    with pytest.raises(ValueError, match=r"rollout 0 \(group 7\) has no response"):  # built by hand, not parsed
        tokenize_rollouts([RolloutRecord(step=1, group=7, prompt="p", score=1.0)])
    rollouts = [parse_rollout({"group": 0, "tokens": ["a"], "token_ids": [4], "score": s}, "x") for s in (1, None)]
    data = tokenize_rollouts(rollouts)
    assert len(data.rollouts) == 1 and data.notices[0] == "1 rollout(s) without a score were left out."
    # Without a tokenizer nothing says which ids are pad and end of sequence: the page says so.
    assert "--ignore-token-ids" in data.notices[1] and data.ignore_token_ids == ()
    assert tokenize_rollouts(rollouts, ignore_token_ids=[4]).notices == data.notices[:1]


def test_find_run_tokenizer_takes_the_newest_checkpoint_with_one(tmp_path, byte_level_tokenizer):
    assert find_run_tokenizer(tmp_path) is None
    for step in (5, 40, 300):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    for step in (5, 40):
        byte_level_tokenizer.save_pretrained(tmp_path / "checkpoints" / f"checkpoint-{step}")
    assert find_run_tokenizer(tmp_path) == tmp_path / "checkpoints" / "checkpoint-40"
