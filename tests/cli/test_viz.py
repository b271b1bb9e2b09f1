"""`ktae viz` end to end on run folders (the trainer's layout) and on rollout files (verl's dumps)."""

import base64
import json
import os
import re

import pytest

from ktae.cli import main

RESPONSES = {True: "2+3=5\n\\boxed{5}", False: "2+3=6\n6-1=5\n\\boxed{6}"}


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from ktae.tiny import build_tokenizer

    return build_tokenizer()


def make_run(folder, tokenizer, steps=(2, 4), with_checkpoint=True):
    """A run folder as `ktae train` writes it: token ids only in the rollouts, tokenizer in a checkpoint."""
    records = []
    for step in steps:
        for group in range(2):
            for i in range(4):
                correct = i < 2
                ids = tokenizer(RESPONSES[correct], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                records.append(
                    {
                        "step": step,
                        "group": group,
                        "prompt": f"2+3=? ({group})",
                        "token_ids": ids,
                        "score": float(correct),
                        "correct": correct,
                    }
                )
    _jsonl(folder / "rollouts.jsonl", records)
    _jsonl(folder / "metrics.jsonl", [{"step": s, "reward": s / 10, "accuracy": s / 10} for s in range(1, 5)])
    (folder / "config.yaml").write_text("algo: grpo\nktae: true\nktae_top: 1.0\nktae_ignore_token_ids: null\n")
    if with_checkpoint:
        tokenizer.save_pretrained(folder / "checkpoints" / "checkpoint-4")
    return folder


def page_groups(path):
    text = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="ktae-data">(.*?)</script>', text, re.S).group(1))["groups"], text


def test_viz_run_uses_the_runs_checkpoint_tokenizer(tmp_path, tokenizer, capsys):
    run = make_run(tmp_path / "run", tokenizer)
    assert main(["viz", "--run", str(run)]) == 0
    assert "report/index.html" in capsys.readouterr().out
    report = run / "report"
    expected = {"index.html", "step-2.html", "step-4.html", "curves.png", "key-tokens.png"}
    assert {p.name for p in report.iterdir()} == expected
    groups, text = page_groups(report / "step-4.html")
    assert len(groups) == 2
    assert "ignored token ids [0, 1]" in text  # the tokenizer's <pad> and <eos>
    for group in groups:
        tok = group["tok"]
        for rollout in group["rollouts"]:
            seq = list(base64.b64decode(rollout["seq"]))  # fewer than 128 distinct tokens: one byte each
            assert "".join(tok["text"][r] for r in seq) == RESPONSES[rollout["c"]] + "<eos>"
        values = {text: group["P"]["v"][profile] for text, profile in zip(tok["text"], tok["pr"])}
        # "6" and "-" occur only in the incorrect rollouts, "<eos>" in all but it is ignored.
        assert values["<eos>"] == 0.0 and values["6"] < -0.5 and values["-"] < -0.5 and values["5"] > -0.5


def test_viz_reports_a_run_killed_mid_write(tmp_path, tokenizer, capsys):
    run = make_run(tmp_path / "run", tokenizer)
    for name, torn in (("metrics.jsonl", '{"step": 5, "rew'), ("rollouts.jsonl", '{"step": 6, "group": 0, "tok')):
        with (run / name).open("a", encoding="utf-8") as handle:
            handle.write(torn)  # the last append, cut off by the kill
    assert main(["viz", "--run", str(run)]) == 0
    assert {"step-2.html", "step-4.html", "curves.png"} <= {p.name for p in (run / "report").iterdir()}
    # a damaged line before the end is no torn append: an error naming the file and line
    lines = (run / "rollouts.jsonl").read_text(encoding="utf-8").split("\n")
    lines[2] = lines[2][:-1]
    (run / "rollouts.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert main(["viz", "--run", str(run)]) == 2
    _one_line_error(capsys, "rollouts.jsonl:3: not valid JSON")


def test_viz_compares_runs_on_one_plot(tmp_path, tokenizer, capsys):
    first, second = make_run(tmp_path / "a", tokenizer), make_run(tmp_path / "b", tokenizer, steps=(3, 4))
    out = tmp_path / "compare"
    assert (
        main(
            [
                "viz",
                "--run",
                str(first),
                "--run",
                str(second),
                "--label",
                "grpo",
                "--label",
                "ktae",
                "--out",
                str(out),
                "--top",
                "0.5",
                "--step",
                "4",
            ]
        )
        == 0
    )
    assert (out / "curves.png").is_file() and (out / "key-tokens.png").is_file()
    assert not (out / "grpo" / "step-2.html").exists()  # --step 4 only
    groups, text = page_groups(out / "ktae" / "step-4.html")
    assert "top = 0.5" in text and max(max(g["P"]["v"]) for g in groups) < 0.5
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="grpo/step-4.html"' in index and 'href="ktae/step-4.html"' in index
    # A step one run did not log is said so on the index, not an error.
    assert main(["viz", "--run", str(first), "--run", str(second), "--out", str(out), "--step", "3"]) == 0
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "No rollouts at step(s) 3 in this run." in index and 'href="b/step-3.html"' in index


def test_viz_rollouts_from_a_verl_dump_folder(tmp_path, tokenizer, capsys):
    dumps = tmp_path / "rollout_data"
    for step in (1, 2):
        _jsonl(
            dumps / f"{step}.jsonl",
            [
                {
                    "input": f"question {q}",
                    "output": RESPONSES[i % 2 == 0],
                    "gts": "5",
                    "score": float(i % 2 == 0),
                    "step": step,
                }
                for q in range(2)
                for i in range(4)
            ],
        )
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    assert main(["viz", "--rollouts", str(dumps), "--tokenizer", str(tok_dir)]) == 0
    groups, _ = page_groups(dumps / "report.html")
    # Named by prompt, less the words all prompts share.
    assert [g["name"] for g in groups] == [f"step {s} · prompt …{q}" for s in (1, 2) for q in range(2)]
    assert [g["prompt"] for g in groups] == ["question 0", "question 1"] * 2
    assert all(g["nT"] == 2 and g["nF"] == 2 for g in groups)


def test_viz_reads_what_verls_own_dump_writer_writes(tmp_path, tokenizer):
    ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer", reason="verl is not installed")
    dumps = tmp_path / "rollout_data"
    outputs = [RESPONSES[True], RESPONSES[False]] * 2
    # verl's trainer calls this with trainer.rollout_data_dir set (decoded prompts and responses).
    ray_trainer.RayPPOTrainer._write_generations(
        ["2+3=?"] * 4, outputs, ["5"] * 4, [1.0, 0.0, 1.0, 0.0], {"acc": [1, 0, 1, 0]}, str(dumps), 7
    )
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    assert main(["viz", "--rollouts", str(dumps), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "r.html")]) == 0
    (group,), _ = page_groups(tmp_path / "r.html")
    assert group["name"] == "step 7 \u00b7 prompt 2+3=?" and (group["nT"], group["nF"]) == (2, 2)


def test_viz_reports_bad_input_clearly(tmp_path, tokenizer, capsys):
    assert main(["viz", "--rollouts", str(tmp_path / "missing.jsonl")]) == 2
    assert "no rollouts file" in capsys.readouterr().err
    run = make_run(tmp_path / "run", tokenizer, with_checkpoint=False)
    assert main(["viz", "--run", str(run)]) == 2
    assert "--tokenizer" in capsys.readouterr().err  # token ids and nothing to decode them with
    assert main(["viz", "--run", str(run), "--label", "a", "--label", "b"]) == 2
    assert "--label" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["viz", "--run", str(run), "--rollouts", str(run / "rollouts.jsonl")])


def _text_rollouts(path, **extra):
    """A tiny text-only rollouts file (no tokenizer needed); ``extra`` goes into the first record."""
    records = [{"group": 0, "prompt": "2+3=?", "response": RESPONSES[i < 2], "score": float(i < 2)} for i in range(4)]
    records[0].update(extra)
    return _jsonl(path, records)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("ktae viz: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_viz_refuses_bad_output_paths(tmp_path, tokenizer, capsys):
    rollouts = _text_rollouts(tmp_path / "r.jsonl")
    (tmp_path / "folder").mkdir()
    assert main(["viz", "--rollouts", str(rollouts), "--out", str(tmp_path / "folder")]) == 2
    _one_line_error(capsys, "is a folder")
    run = make_run(tmp_path / "run", tokenizer)
    (tmp_path / "file").write_text("")
    assert main(["viz", "--run", str(run), "--out", str(tmp_path / "file")]) == 2
    _one_line_error(capsys, "is a file")
    assert main(["viz", "--rollouts", str(rollouts), "--out", str(tmp_path / "file" / "r.html")]) == 2
    _one_line_error(capsys, "File exists")  # an unwritable place, also where root may write anywhere
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):
            assert main(["viz", "--rollouts", str(rollouts), "--out", str(locked / "r.html")]) == 2
            _one_line_error(capsys, "Permission denied")
            assert main(["viz", "--run", str(run), "--out", str(locked / "report")]) == 2
            _one_line_error(capsys, "Permission denied")
    finally:
        locked.chmod(0o700)


def test_viz_refuses_a_missing_tokenizer(tmp_path, capsys):
    rollouts = _text_rollouts(tmp_path / "r.jsonl")
    assert main(["viz", "--rollouts", str(rollouts), "--tokenizer", str(tmp_path / "no-such-tokenizer")]) == 2
    _one_line_error(capsys)


@pytest.mark.parametrize(
    "line, needle",
    [
        ('"step": Infinity', "'step' must be a whole number"),
        ('"step": NaN', "'step' must be a whole number"),
        ('"step": 1.5', "'step' must be a whole number"),
        ('"token_ids": [1, 18446744073709551616], "tokens": ["a", "b"]', "below 2**63"),
    ],
)
def test_viz_refuses_out_of_range_numbers_in_records(tmp_path, capsys, line, needle):
    rollouts = _text_rollouts(tmp_path / "r.jsonl")
    text = rollouts.read_text().splitlines()
    text[0] = text[0][:-1] + ", " + line + "}"
    rollouts.write_text("\n".join(text) + "\n")
    assert main(["viz", "--rollouts", str(rollouts)]) == 2
    _one_line_error(capsys, "r.jsonl:1", needle)


def test_viz_with_a_huge_token_id_stays_small(tmp_path):
    # One id of 2e9 among small ones: counted like any other id, without an id-sized table.
    records = [
        {
            "group": 0,
            "prompt": "p",
            "token_ids": [5, 6, 2_000_000_000 if i == 0 else 7],
            "tokens": ["a", "b", "c"],
            "score": float(i < 2),
        }
        for i in range(4)
    ]
    rollouts = _jsonl(tmp_path / "r.jsonl", records)
    assert main(["viz", "--rollouts", str(rollouts), "--ignore-token-ids", "7"]) == 0
    assert (tmp_path / "r.html").is_file()


# A `ktae train` job scaled down to seconds: a 1-layer tiny model, no warm start, one RL step.
TRAIN_ONE_STEP = [
    "tiny_hidden_size=32",
    "tiny_intermediate_size=64",
    "tiny_num_hidden_layers=1",
    "tiny_num_attention_heads=2",
    "tiny_num_key_value_heads=1",
    "task_train_size=64",
    "task_eval_size=8",
    "warm_start_max_steps=0",
    "num_generations=4",
    "per_device_train_batch_size=8",
    "max_completion_length=12",
    "eval_accuracy_steps=0",
    "ktae_log_rollouts_steps=1",
    "max_steps=1",
    "save_steps=1",
]


def test_viz_decodes_a_ktae_train_run_with_the_tokenizer_the_run_used(tmp_path, tokenizer, capsys):
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *TRAIN_ONE_STEP]) == 0
    checkpoint = run / "checkpoints" / "checkpoint-1"
    # The folder holds the tiny tokenizer beside a Qwen2 config.json: plain AutoTokenizer takes Qwen2's
    # byte-level tokenizer from it, which splits the run's text into other ids.
    assert (checkpoint / "config.json").is_file()
    marker = "\n\\boxed{"
    assert AutoTokenizer.from_pretrained(checkpoint)(marker)["input_ids"] != tokenizer(marker)["input_ids"]
    # Rollouts with token ids only: the report must decode them with the run's own tokenizer.
    records = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    responses = [r.pop("response") for r in records]
    for record in records:
        del record["tokens"]
    _jsonl(run / "rollouts.jsonl", records)
    assert main(["viz", "--run", str(run)]) == 0
    groups, text = page_groups(run / "report" / "step-1.html")
    assert "ignored token ids [0, 1]" in text  # the tiny tokenizer's <pad> and <eos>
    shown = [
        "".join(group["tok"]["text"][t] for t in base64.b64decode(rollout["seq"]))
        for group in groups
        for rollout in group["rollouts"]
    ]
    assert sorted(shown) == sorted(responses)


def test_viz_labels_never_lead_outside_the_report_folder(tmp_path, tokenizer, capsys):
    first, second = make_run(tmp_path / "a", tokenizer), make_run(tmp_path / "b", tokenizer)
    out = tmp_path / "deep" / "compare"
    command = ["viz", "--run", str(first), "--run", str(second), "--out", str(out), "--step", "4"]
    assert main([*command, "--label", "..", "--label", "../../escaped"]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.html"))
    assert written == [
        "deep/compare/_.._escaped/step-4.html",
        "deep/compare/index.html",
        "deep/compare/run/step-4.html",
    ]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="run/step-4.html"' in index and "<h2>..</h2>" in index  # the label itself is still shown
    assert main([*command, "--label", "x/y", "--label", "x_y"]) == 0  # distinct labels, distinct folders
    assert (out / "x_y" / "step-4.html").is_file() and (out / "x_y-2" / "step-4.html").is_file()


def test_viz_refuses_inputs_that_are_not_regular_files_by_name(tmp_path, tokenizer, capsys):
    dumps = tmp_path / "dumps"  # verl's rollout_data_dir: a dump that is a link to a device, one a FIFO
    _text_rollouts(dumps / "1.jsonl")
    (dumps / "2.jsonl").symlink_to("/dev/zero")
    assert main(["viz", "--rollouts", str(dumps)]) == 2
    _one_line_error(capsys, f"{dumps / '2.jsonl'} is a symbolic link, not a regular file: refused")
    (dumps / "2.jsonl").unlink()
    os.mkfifo(dumps / "2.jsonl")
    assert main(["viz", "--rollouts", str(dumps)]) == 2  # refused at once, not waited on
    _one_line_error(capsys, f"{dumps / '2.jsonl'} is a FIFO (named pipe), not a regular file: refused")
    assert main(["viz", "--rollouts", str(dumps / "2.jsonl")]) == 2
    _one_line_error(capsys, "is a FIFO (named pipe)")
    link = tmp_path / "zero.jsonl"  # a link named on the command line is followed, to a regular file only
    link.symlink_to("/dev/zero")
    assert main(["viz", "--rollouts", str(link), "--out", str(tmp_path / "r.html")]) == 2
    _one_line_error(capsys, f"{link} is a character device, not a regular file: refused")
    run = make_run(tmp_path / "run", tokenizer)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to("/dev/zero")
    assert main(["viz", "--run", str(run)]) == 2
    _one_line_error(capsys, f"{run / 'metrics.jsonl'} is a symbolic link, not a regular file: refused")
    (run / "metrics.jsonl").unlink()
    (run / "rollouts.jsonl").unlink()
    os.mkfifo(run / "rollouts.jsonl")
    assert main(["viz", "--run", str(run)]) == 2
    _one_line_error(capsys, f"{run / 'rollouts.jsonl'} is a FIFO (named pipe), not a regular file: refused")


def test_viz_quotes_a_bad_value_short(tmp_path, capsys):
    rollouts = _text_rollouts(tmp_path / "r.jsonl", score="9" * 1_000_000)
    assert main(["viz", "--rollouts", str(rollouts), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ktae viz: error: {rollouts}:1: needs a finite numeric 'score' (or 'reward'), got '9999")
    assert len(err) < len(str(rollouts)) + 250  # not the megabyte value
