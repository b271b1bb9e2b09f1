"""The run folder's own rules: torn log lines, atomic writes, the writer's lock, the rollout record, the run's
options and KTAE settings."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from ktae import KTAEConfig
from ktae.reports.rollouts import load_rollouts
from ktae.run_folder import (
    KTAE_SETTINGS_FILE,
    OPTIONS_DEPTH_LIMIT,
    OPTIONS_FILE_LIMIT,
    ROLLOUTS_FILE,
    TRL_STD_EPSILON,
    KTAESettings,
    RolloutRecord,
    RunFolderInUse,
    RunFolderLock,
    append_jsonl,
    checkpoint_damage,
    drop_steps_after,
    is_metric_value,
    is_run_folder,
    load_options_yaml,
    newest_usable_checkpoint,
    open_run_folder,
    read_config,
    read_jsonl,
    read_ktae_settings,
    start_run_folder,
    write_atomic,
    write_config,
    write_ktae_settings,
)


def _torn_log(path, steps):
    """A log whose last append was cut off mid-line by a kill."""
    append_jsonl(path, [{"step": s, "reward": s / 10} for s in steps])
    with open(path, "a") as handle:
        handle.write('{"step": 9, "rew')


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    _torn_log(path, [1, 2, 3])
    with caplog.at_level(logging.WARNING, logger="ktae.run_folder"):
        assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    assert "torn last line" in caplog.text and str(path) in caplog.text
    drop_steps_after(path, 2)  # resume: never fails on it, and leaves whole lines only
    assert path.read_text() == '{"step": 1, "reward": 0.1}\n{"step": 2, "reward": 0.2}\n'


def test_a_bad_line_before_the_last_is_damage_and_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"step": 1}\n{"step": 2, oops}\n')  # ends with its newline: written whole, so damaged
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"step": 1}\n[2]\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)


def test_lines_end_at_newlines_only(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    texts = ["a\u2028b", "c\x0cd", "e\x85f"]  # line separators to str.splitlines, raw in ensure_ascii=False JSON
    path.write_text("".join(json.dumps({"step": 1, "response": t}, ensure_ascii=False) + "\n" for t in texts))
    assert [r["response"] for r in read_jsonl(path)] == texts


def test_atomic_writes_replace_whole_files_with_the_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "results.json"
    old = os.umask(0o022)
    try:
        write_atomic(path, "one")
        write_atomic(path, b"two")
    finally:
        os.umask(old)
    assert path.read_text() == "two"
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    with RunFolderLock(tmp_path), pytest.raises(RunFolderInUse, match=f"pid {os.getpid()}"):
        RunFolderLock(tmp_path).acquire()
    RunFolderLock(tmp_path).acquire().release()  # free again once released


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    script = (
        f"from ktae.run_folder import RunFolderLock; RunFolderLock({str(tmp_path)!r}).acquire(); "
        "print('locked', flush=True); import time; time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUse, match=f"pid {holder.pid}"):
            RunFolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            RunFolderLock(tmp_path).acquire().release()
            break
        except RunFolderInUse:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_rollout_records_are_what_the_reports_read(tmp_path):
    record = RolloutRecord(
        step=3,
        group=7,
        prompt="1+2=",
        response="3<eos>",
        token_ids=[5, 1],
        tokens=["3", "<eos>"],
        score=1.0,
        correct=True,
        advantages=[0.5, 0.0],
    )
    append_jsonl(tmp_path / ROLLOUTS_FILE, [record])
    assert json.loads((tmp_path / ROLLOUTS_FILE).read_text()) == {
        "step": 3,
        "group": 7,
        "prompt": "1+2=",
        "response": "3<eos>",
        "token_ids": [5, 1],
        "tokens": ["3", "<eos>"],
        "score": 1.0,
        "correct": True,
        "advantages": [0.5, 0.0],
    }
    assert load_rollouts(tmp_path) == [record]  # the reports read back the record the trainers wrote


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, True),
        (0.25, True),
        (-3.0, True),
        (True, False),
        (float("nan"), False),
        (float("inf"), False),
        ("1", False),
        (None, False),
    ],
)
def test_metric_values_are_finite_numbers_not_bools(value, expected):
    assert is_metric_value(value) is expected


def test_the_options_of_a_run_are_written_and_read_back_in_their_order(tmp_path):
    assert read_config(tmp_path) is None  # not a run folder
    options = {"model_name_or_path": "tiny", "max_steps": 3, "ktae_ignore_token_ids": None, "beta": 0.001}
    write_config(tmp_path, options)
    assert list(read_config(tmp_path).items()) == list(options.items())
    (tmp_path / "config.yaml").write_text("- max_steps\n- 1\n")
    with pytest.raises(ValueError, match=r"config\.yaml: a recipe is a mapping of keys to values, got list"):
        read_config(tmp_path)


def test_the_ktae_settings_a_run_wrote_are_read_before_its_options(tmp_path):
    settings = KTAESettings(
        ktae=True,
        estimator=KTAEConfig(top=0.5, ignore_token_ids=(0, 1), rollout_advantage="dr_grpo", epsilon=TRL_STD_EPSILON),
        rollout_advantage="TRL's own (scale_rewards=none)",
        exact_base=True,
    )
    write_config(tmp_path, {"ktae": True, "ktae_top": 1.0})
    write_ktae_settings(tmp_path, settings)
    assert read_ktae_settings(tmp_path) == settings
    assert json.loads((tmp_path / KTAE_SETTINGS_FILE).read_text())["estimator"]["ignore_token_ids"] == [0, 1]
    (tmp_path / KTAE_SETTINGS_FILE).write_text('{"ktae": true}')
    with pytest.raises(ValueError, match=r"ktae_settings\.json: not a KTAE settings record"):
        read_ktae_settings(tmp_path)


def test_a_run_folder_without_ktae_settings_has_them_worked_out_from_its_options(tmp_path):
    """Run folders written before ktae_settings.json: the TRL trainer's flat ktae_* keys."""
    assert read_ktae_settings(tmp_path) is None
    write_config(tmp_path, {"ktae": False, "ktae_top": 0.5, "ktae_ignore_token_ids": None})
    legacy = read_ktae_settings(tmp_path)
    assert legacy == KTAESettings(
        ktae=False,
        estimator=KTAEConfig(top=0.5, epsilon=TRL_STD_EPSILON),  # TRL's own base: its std + 1e-4
        rollout_advantage="TRL's own (scale_rewards=group)",
        exact_base=True,
    )
    write_config(tmp_path, {"ktae": True, "ktae_rollout_advantage": "rloo", "ktae_epsilon": 0.01})
    named = read_ktae_settings(tmp_path)
    assert (named.estimator.rollout_advantage, named.estimator.epsilon) == ("rloo", 0.01)
    assert named.rollout_advantage == "KTAE's rloo"


def test_both_trainers_build_their_records_with_one_function():
    from ktae.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    ids = [*tokenizer("1+2=3\n\\boxed{3}").input_ids, tokenizer.eos_token_id]
    common = {"step": 2, "group": "u1", "prompt": "1+2=", "token_ids": ids, "correct_threshold": 0.0}
    record = RolloutRecord.from_tokens(tokenizer, score=1.0, advantages=[0.5] * len(ids), **common)
    assert record.tokens[-2:] == ["}", "<eos>"] and "".join(record.tokens) == record.response
    assert record.response == "1+2=3\n\\boxed{3}<eos>" and record.token_ids == ids
    assert (record.score, record.correct) == (1.0, True)
    unscored = RolloutRecord.from_tokens(tokenizer, score=float("nan"), advantages=[0.0] * len(ids), **common)
    assert (unscored.score, unscored.correct) == (None, False)  # no reward function scored it


def test_a_lock_that_is_a_link_or_another_files_name_is_refused_and_left_alone(tmp_path):
    important = tmp_path / "important.txt"
    important.write_text("keep me\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / ".lock"
    lock.symlink_to(important)
    with pytest.raises(ValueError, match=rf"{lock} is a symbolic link, not a regular file: refused"):
        RunFolderLock(run_dir).acquire()
    lock.unlink()
    lock.symlink_to(tmp_path / "nothing-yet")  # a dangling link is not created through either
    with pytest.raises(ValueError, match="is a symbolic link"):
        RunFolderLock(run_dir).acquire()
    assert not (tmp_path / "nothing-yet").exists()
    lock.unlink()
    os.link(important, lock)
    with pytest.raises(ValueError, match=rf"{lock} has 2 names \(a hard link to another file\): refused"):
        RunFolderLock(run_dir).acquire()
    lock.unlink()
    assert important.read_text() == "keep me\n"
    os.mkfifo(lock)
    with pytest.raises(ValueError, match=rf"{lock} is a FIFO \(named pipe\), not a regular file: refused"):
        RunFolderLock(run_dir).acquire()
    lock.unlink()
    lock.mkdir()
    with pytest.raises(ValueError, match=rf"{lock} is a folder, not a regular file: refused"):
        RunFolderLock(run_dir).acquire()


def test_a_lock_held_by_another_process_is_not_truncated(tmp_path):
    with RunFolderLock(tmp_path):
        with pytest.raises(RunFolderInUse):
            RunFolderLock(tmp_path).acquire()
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_a_claimed_folder_is_held_for_the_with_block_and_released_after(tmp_path):
    run_dir = tmp_path / "run"
    with start_run_folder(run_dir) as lock:  # start_run_folder holds it already: with must not lock again
        assert lock._descriptor is not None
        with pytest.raises(RunFolderInUse):
            RunFolderLock(run_dir).acquire()
    RunFolderLock(run_dir).acquire().release()  # released when the block ended


def test_options_are_read_without_aliases_keys_twice_deep_nesting_or_oversize(tmp_path):
    assert load_options_yaml("a: 1\nb: [1, {c: 2}]\n", "r.yaml") == {"a": 1, "b": [1, {"c": 2}]}
    refusals = {
        "a: &x [1, 2]\nb: *x\n": r"^r\.yaml: aliases \(\*name\) are refused: write the value out \(line 2, column 4\)$",
        "base: &b {lr: 1}\nrun:\n  <<: *b\n": r"aliases \(\*name\) are refused",
        "a:\n  b: 1\n  b: 2\n": r"^r\.yaml: key 'b' given twice \(line 3, column 3\)$",
        "[" * 40 + "]" * 40: rf"^r\.yaml: nested deeper than {OPTIONS_DEPTH_LIMIT} levels: refused",
        "a: [1, 2\n": r"^r\.yaml: expected ',' or '\]', but got '<stream end>' \(line 2, column 1\)$",
        "a: 1" + "0" * 5000 + "\n": r"^r\.yaml: Exceeds the limit \(4300 digits\) for integer .*\.\.\.$",
        "x: " + "y" * OPTIONS_FILE_LIMIT: r"^r\.yaml: larger than 1 MiB: refused$",
    }
    for text, message in refusals.items():
        with pytest.raises(ValueError, match=message):
            load_options_yaml(text, "r.yaml")


def test_a_run_file_that_is_not_a_regular_file_is_refused_by_name(tmp_path):
    config = tmp_path / "config.yaml"
    config.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=rf"{config} is a symbolic link, not a regular file: refused"):
        read_config(tmp_path)
    config.unlink()
    os.mkfifo(config)  # read at once, not waited on
    with pytest.raises(ValueError, match=rf"{config} is a FIFO \(named pipe\), not a regular file: refused"):
        read_config(tmp_path)
    settings = tmp_path / KTAE_SETTINGS_FILE
    settings.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=rf"{settings} is a symbolic link"):
        read_ktae_settings(tmp_path)


def test_damaged_ktae_settings_are_named_with_their_file(tmp_path):
    path = tmp_path / KTAE_SETTINGS_FILE
    write_ktae_settings(tmp_path, KTAESettings(True, KTAEConfig(), "KTAE's grpo", True))
    record = json.loads(path.read_text())
    for text, message in [
        ("{not json", r"not valid JSON \(Expecting property name"),
        (json.dumps({**record, "estimator": {**record["estimator"], "top": -1}}), "not a KTAE settings record"),
        (json.dumps(record)[:-1] + ', "ktae": false}', "duplicate key 'ktae'"),
        (b"\xff\xfe".decode("latin-1"), "not UTF-8 text"),
    ]:
        path.write_text(text, encoding="latin-1" if text.startswith("\xff") else "utf-8")
        with pytest.raises(ValueError, match=rf"^{path}: {message}"):
            read_ktae_settings(tmp_path)


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def test_a_run_starts_only_in_a_new_or_empty_folder_or_one_it_started(tmp_path):
    new = tmp_path / "new"
    start_run_folder(new).release()
    assert sorted(p.name for p in new.iterdir()) == [".ktae_run", ".lock"] and is_run_folder(new)
    start_run_folder(new).release()  # a start that failed before config.yaml: the same folder again
    empty = tmp_path / "empty"
    empty.mkdir()
    start_run_folder(empty).release()
    assert is_run_folder(empty)

    foreign = tmp_path / "hf_output"  # a Hugging Face output folder: none of it is ours
    (foreign / "checkpoint-500").mkdir(parents=True)
    (foreign / "checkpoint-500" / "model.safetensors").write_bytes(b"weights")
    (foreign / "README.md").write_text("my model card")
    (foreign / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _tree(foreign)
    message = (
        rf"^{foreign} holds files ktae did not write \('README.md', 'checkpoint-500', 'metrics.jsonl'\): "
        r"pick a new or empty folder for the run \(ktae train deletes and rewrites files only in a folder it started\)$"
    )
    with pytest.raises(ValueError, match=message):
        start_run_folder(foreign)
    assert _tree(foreign) == before and not is_run_folder(foreign)  # not even a .lock was created

    write_config(new, {"max_steps": 1})
    with pytest.raises(ValueError, match=rf"^{new} already holds a run; continue it with --resume {new}"):
        start_run_folder(new)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        start_run_folder(tmp_path / "file")


def test_a_run_is_resumed_only_from_its_folder_with_regular_files(tmp_path):
    with pytest.raises(ValueError, match=rf"^{tmp_path} is not a run folder: it has no config.yaml$"):
        open_run_folder(tmp_path)
    write_config(tmp_path, {"max_steps": 1})  # a folder written before the marker: its config.yaml makes it ours
    assert is_run_folder(tmp_path)
    open_run_folder(tmp_path).release()
    (tmp_path / "metrics.jsonl").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'metrics.jsonl'} is a symbolic link, not a regular file"):
        open_run_folder(tmp_path)
    (tmp_path / "metrics.jsonl").unlink()
    os.mkfifo(tmp_path / "rollouts.jsonl")
    with pytest.raises(ValueError, match=r"rollouts\.jsonl is a FIFO \(named pipe\), not a regular file: refused"):
        open_run_folder(tmp_path)
    (tmp_path / "rollouts.jsonl").unlink()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (tmp_path / "checkpoints").symlink_to(elsewhere)  # the run deletes old checkpoints in there
    with pytest.raises(ValueError, match=r"checkpoints is a symbolic link, not a folder: refused"):
        open_run_folder(tmp_path)
    RunFolderLock(tmp_path).acquire().release()  # every refusal released the lock


def test_logs_that_are_not_regular_files_are_refused_not_read_or_written_through(tmp_path):
    target = tmp_path / "important.txt"
    target.write_text("keep\n")
    log = tmp_path / "metrics.jsonl"
    log.symlink_to(target)
    with pytest.raises(ValueError, match=rf"{log} is a symbolic link, not a regular file: refused"):
        append_jsonl(log, [{"step": 1}])
    with pytest.raises(ValueError, match=rf"{log} is a symbolic link"):
        read_jsonl(log)
    assert target.read_text() == "keep\n"
    log.unlink()
    log.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=rf"{log} is a character device, not a regular file: refused"):
        read_jsonl(log, follow_links=True)
    log.unlink()
    os.mkfifo(log)
    with pytest.raises(ValueError, match=rf"{log} is a FIFO \(named pipe\)"):
        drop_steps_after(log, 3)
    log.unlink()
    log.write_bytes(b'{"step": 1}\n{"step": 2, "text": "\xff"}\n')
    with pytest.raises(ValueError, match=rf"{log}:2: not valid JSON \(not UTF-8 text: invalid start byte\)"):
        read_jsonl(log)
    log.write_bytes(b'{"step": 1}\n{"step": 2, "text": "\xe2\x80')  # torn inside a UTF-8 character
    assert read_jsonl(log) == [{"step": 1}]
    log.write_text('{"step": 1}\nnull\n')
    with pytest.raises(ValueError, match=rf"{log}:2: expected a JSON object, got NoneType"):
        read_jsonl(log)
    log.write_text('{"step": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=rf"{log}:2: not valid JSON \(nested too deeply\)"):
        read_jsonl(log)


def _checkpoint(folder, step):
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(folder / "model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    return folder


def test_a_damaged_checkpoint_is_named_and_the_newest_whole_one_found(tmp_path):
    root = tmp_path / "checkpoints"
    first, second = _checkpoint(root / "checkpoint-2", 2), _checkpoint(root / "checkpoint-4", 4)
    assert checkpoint_damage(first) is None and newest_usable_checkpoint(tmp_path) == (second, [])

    def cut(size):
        return lambda path: path.write_bytes(path.read_bytes()[:size])

    def replace(make):
        return lambda path: (path.unlink(missing_ok=True), make(path))

    damages = {
        "model.safetensors": (cut(-10), "model.safetensors: Error while deserializing header"),
        "optimizer.pt": (cut(100), "optimizer.pt: File is not a zip file"),
        "trainer_state.json": (cut(10), "trainer_state.json: not valid JSON"),
        "config.json": (replace(lambda p: p.symlink_to("/dev/zero")), "config.json is a symbolic link"),
        "rng_state.pth": (replace(os.mkfifo), "rng_state.pth is a FIFO (named pipe)"),
    }
    for name, (damage, message) in damages.items():
        folder = _checkpoint(tmp_path / name / "checkpoint-4", 4)
        damage(folder / name)
        assert message in checkpoint_damage(folder), name
    (second / "trainer_state.json").unlink()
    assert newest_usable_checkpoint(tmp_path) == (first, [(second, "trainer_state.json is missing")])
    (second / "trainer_state.json").write_text(json.dumps({"global_step": "4"}))
    assert "not a trainer state (no integer global_step)" in checkpoint_damage(second)
    (second / "model.safetensors").rename(second / "model-00001-of-00002.safetensors")
    (second / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}})
    )
    (second / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert checkpoint_damage(second) == (
        "model.safetensors.index.json names the shard 'model-00002-of-00002.safetensors', which is missing"
    )
    for path in second.iterdir():
        if path.suffix == ".safetensors":
            path.unlink()
    assert checkpoint_damage(second) == "it holds no model weights (model.safetensors)"
    (second / "model.safetensors.index.json").unlink()
    (second / "pytorch_model_fsdp_0").mkdir()  # FSDP's sharded state: weights in a folder of their own
    assert checkpoint_damage(second) is None


def test_a_second_start_in_the_same_new_folder_is_told_the_folder_is_in_use(tmp_path):
    run_dir = tmp_path / "run"
    # another ktae took the lock and has not marked the folder yet
    with RunFolderLock(run_dir), pytest.raises(RunFolderInUse, match=f"pid {os.getpid()}"):
        start_run_folder(run_dir)
