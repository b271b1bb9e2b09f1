"""Run-folder callbacks: metrics lines and short names, resume truncation, atomic checkpoint publishing."""

import json

from transformers import TrainerControl, TrainerState, TrainingArguments

from ktae.integrations.trl.callbacks import (
    AtomicCheckpointCallback,
    MetricsProgressCallback,
    RunLogCallback,
    add_short_names,
)
from ktae.run_folder import drop_steps_after, list_checkpoints


def _state(step: int) -> TrainerState:
    state = TrainerState()
    state.global_step = step
    return state


def test_short_names_from_trl_metrics():
    grpo = add_short_names({"reward": 0.25, "rewards/accuracy_reward/mean": 0.25, "completions/mean_length": 17.0})
    assert grpo["accuracy"] == 0.25 and grpo["completion_length"] == 17.0
    dapo = add_short_names({"reward": -0.5, "rewards/dapo_reward/mean": -0.5})
    assert dapo["accuracy"] == 0.25  # +1/-1 rewards: mean -0.5 is a quarter correct


def test_run_log_writes_lines_and_drops_steps_after_the_resumed_one(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    callback = RunLogCallback(tmp_path)
    callback.on_train_begin(args, _state(0), TrainerControl())
    for step in (1, 2, 3):
        callback.on_log(
            args,
            _state(step),
            TrainerControl(),
            logs={"reward": step / 10, "rewards/accuracy_reward/mean": step / 10, "note": "x"},
        )
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert lines[1] == {"step": 2, "reward": 0.2, "rewards/accuracy_reward/mean": 0.2, "accuracy": 0.2}
    # a run resumed from step 2 rewrites step 3
    RunLogCallback(tmp_path).on_train_begin(args, _state(2), TrainerControl())
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_drop_steps_after_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s, "v": s}) + "\n" for s in (1, 2, 2, 5)))
    drop_steps_after(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 2]
    drop_steps_after(tmp_path / "absent.jsonl", 3)  # nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_checkpoints_are_published_whole_and_rotated(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    callback = AtomicCheckpointCallback(tmp_path, keep=2)
    for step in (5, 10, 15):
        written = tmp_path / f"checkpoint-{step}"
        written.mkdir()
        (written / "model.safetensors").write_text(str(step))
        callback.on_save(args, _state(step), TrainerControl())
        assert not written.exists()
        assert (tmp_path / "checkpoints" / f"checkpoint-{step}" / "model.safetensors").read_text() == str(step)
    (tmp_path / "checkpoints" / "checkpoint-7.tmp").mkdir()  # not a checkpoint name: ignored
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]


def test_progress_line_shows_the_logged_key_tokens_by_total_bonus(tmp_path):
    entry = {"token": "7", "token_id": 9, "bonus": 0.25, "total": 2.0, "occurrences": 8, "groups": 2}
    blamed = {**entry, "token": "x", "bonus": -0.5, "total": -1.5, "occurrences": 3}
    (tmp_path / "key_tokens.jsonl").write_text(json.dumps({"step": 4, "credited": [entry], "blamed": [blamed]}) + "\n")
    progress = MetricsProgressCallback(tmp_path)
    assert (
        progress._new_key_tokens().split("key tokens")[1]
        == " @ step 4 (total bonus): credited '7'+2.00 | blamed 'x'-1.50"
    )
    assert progress._new_key_tokens() is None  # shown once


def test_the_best_checkpoint_outlives_rotation_and_is_named_where_it_was_published(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    callback = AtomicCheckpointCallback(tmp_path, keep=1)
    state = _state(0)
    for step in (5, 10, 15):
        state.global_step = step
        written = tmp_path / f"checkpoint-{step}"
        written.mkdir()
        if step == 5:  # the trainer names the best checkpoint where it wrote it, and saves that in its state
            state.best_global_step, state.best_model_checkpoint = 5, str(written)
        state.save_to_json(str(written / "trainer_state.json"))
        callback.on_save(args, state, TrainerControl())
    published = tmp_path / "checkpoints" / "checkpoint-5"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-15"]
    assert state.best_model_checkpoint == str(published)
    saved = json.loads((published / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(published)


def test_the_progress_says_how_long_the_run_takes(monkeypatch, capsys):
    from ktae.integrations.trl import callbacks

    assert [callbacks.format_duration(s) for s in (40, 99.4, 720, 6000)] == ["40 s", "99 s", "12 min", "1 h 40 min"]
    clock = iter([1000.0, 1046.0, 1086.0, 1126.0, 1166.0, 1206.0])  # a 46 s first step, then 40 s steps
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    state = TrainerState(max_steps=150, is_world_process_zero=True)
    progress, control = MetricsProgressCallback(), TrainerControl()
    progress.on_train_begin(None, state, control)
    for step in range(1, 6):
        state.global_step = step
        progress.on_step_end(None, state, control)
    progress.on_log(None, state, control, logs={"reward": 0.5})
    progress.training_bar.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("[ktae", "step"))]
    assert lines == [
        "[ktae train] 150 steps to train; the time they take follows the first",
        "[ktae train] 150 steps at ~46 s/step (step 1 of this session): about 1 h 55 min in all, 1 h 54 min to go",
        "[ktae train] 150 steps at ~40 s/step (steps 2-5 of this session): about 1 h 40 min in all, 1 h 37 min to go",
        "step    5 | reward 0.500 | eta 1 h 37 min",
    ]
