import dataclasses
import importlib.machinery
import json
import logging
import sys
import types
from collections import defaultdict

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer
from trl.extras import profiling as trl_profiling
from trl_tiny import build_dataset, build_model, build_tokenizer, config_options, toy_reward

from ktae import KTAEConfig, compute_key_token_values, compute_rollout_advantages
from ktae.integrations.trl import KTAEGRPOConfig, KTAEGRPOTrainer, token_pieces
from ktae.reports.keytokens import analyse
from ktae.reports.rollouts import load_rollouts, tokenize_rollouts
from ktae.run_folder import read_ktae_settings


def make_trainer(model_dir, args, kinds=("mixed",), reward_funcs=toy_reward):
    return KTAEGRPOTrainer(
        model_dir, reward_funcs, args=args, train_dataset=build_dataset(kinds), processing_class=build_tokenizer()
    )


@pytest.fixture
def trl_advantages(monkeypatch):
    """TRL's own rollout-level advantages [B] of every generation round, as GRPOTrainer returns them."""
    seen = []
    generate = GRPOTrainer._generate_and_score_completions

    def capture(self, inputs):
        batch = generate(self, inputs)
        seen.append(batch["advantages"].clone())
        return batch

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", capture)
    return seen


def record(trainer):
    """Capture every generation round (batch, gathered scores) and the inputs of every loss computation."""
    rounds, losses = [], []
    if isinstance(trainer, KTAEGRPOTrainer):
        generate = trainer._generate_and_score_round

        def capture_round(inputs):
            batch, scores = generate(inputs)
            rounds.append(({k: v.clone() for k, v in batch.items()}, scores.clone()))
            return batch, scores

        trainer._generate_and_score_round = capture_round
    compute_loss = trainer._compute_loss

    def capture_loss(model, inputs):
        losses.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
        return compute_loss(model, inputs)

    trainer._compute_loss = capture_loss
    return rounds, losses


def row_key(batch, i):
    return tuple(batch["prompt_ids"][i].tolist()), tuple(batch["completion_ids"][i].tolist())


def key_token_bonus(ids, mask, scores, groups, config) -> torch.Tensor:
    """v(group, token) at every masked token, from the core's per-(group, token) values. [B, T]"""
    mask = mask.bool()
    scored = ~torch.isnan(scores)
    records = compute_key_token_values(ids[scored], mask[scored], scores[scored], groups[scored], config=config)
    value = {(r["group"], r["token"]): r["value"] for r in records.to_records()}
    return torch.tensor(
        [
            [value[(int(g), int(t))] if m and ok else 0.0 for t, m in zip(row, row_mask)]
            for g, ok, row, row_mask in zip(groups, scored, ids, mask)
        ]
    )


def check_rounds_match_the_core(trainer, rounds, losses, trl_advantages=None):
    """Every round's advantages are the rollout-level advantage (TRL's own, or the named KTAE base) plus the
    core's key-token values at each token, and the loss used exactly those rows."""
    tokenizer = trainer.processing_class
    base = trainer.args.ktae_rollout_advantage
    config = KTAEConfig(ignore_token_ids=(tokenizer.pad_token_id, tokenizer.eos_token_id))
    assert trainer.ktae_config == dataclasses.replace(config, rollout_advantage=base or "none")
    if base is None:
        assert trl_advantages is not None and len(trl_advantages) == len(rounds)
    advantages_of_row, bonus_seen = {}, False
    for number, (batch, scores) in enumerate(rounds):
        groups = torch.arange(len(scores)) // trainer.num_generations
        mask = batch["completion_mask"].bool()
        bonus = key_token_bonus(batch["completion_ids"], mask, scores, groups, config)
        if base is None:
            rollout = trl_advantages[number]
        else:
            rollout = compute_rollout_advantages(scores, groups, method=base, epsilon=config.epsilon)
        expected = rollout[:, None] * mask + bonus
        torch.testing.assert_close(batch["advantages"], expected, rtol=0, atol=1e-6)
        for i in range(len(scores)):
            advantages_of_row[row_key(batch, i)] = batch["advantages"][i]
        bonus_seen |= bool(bonus.abs().max() > 0.1)  # token-level, not one value per rollout
    assert bonus_seen
    for inputs in losses:
        assert inputs["advantages"].dim() == 2
        for i in range(len(inputs["advantages"])):
            assert torch.equal(inputs["advantages"][i], advantages_of_row[row_key(inputs, i)])


def check_written_ktae_settings(trainer, output_dir, scores, trl_advantages):
    """ktae_settings.json holds the trainer's resolved settings, and its KTAE base reproduces the rollout-level
    advantage the round trained on whenever it says it does."""
    settings = read_ktae_settings(output_dir)
    assert settings == trainer.ktae_settings() and settings.ktae == trainer.args.ktae
    assert settings.estimator.ignore_token_ids == trainer.ktae_config.ignore_token_ids
    groups = torch.arange(len(scores)) // trainer.num_generations
    base = compute_rollout_advantages(
        scores, groups, method=settings.estimator.rollout_advantage, epsilon=settings.estimator.epsilon
    )
    if trainer.args.ktae and trainer.args.ktae_rollout_advantage is not None:  # KTAE's own base
        args = trainer.args
        trained = compute_rollout_advantages(scores, groups, args.ktae_rollout_advantage, args.ktae_epsilon)
    else:
        trained = trl_advantages[0]
    if settings.exact_base:
        torch.testing.assert_close(base, trained, rtol=0, atol=1e-6)
    return settings


def check_metrics_of_the_round(trainer, batch, scores, log):
    """The ktae/* metrics logged for a one-round step describe that round's bonus."""
    mask = batch["completion_mask"].bool()
    groups = torch.arange(len(scores)) // trainer.num_generations
    bonus = key_token_bonus(batch["completion_ids"], mask, scores, groups, trainer.ktae_config).double()
    correct = (scores > 0)[:, None] & mask
    assert log["ktae/large_bonus_share"] == pytest.approx(float((bonus.abs() > 0.5)[mask].double().mean()))
    assert log["ktae/bonus_mean_correct"] == pytest.approx(float(bonus[correct].mean()))
    assert log["ktae/bonus_mean_incorrect"] == pytest.approx(float(bonus[mask & ~correct].mean()))
    assert 0 < log["ktae/time_share"] < 1
    assert log["ktae/seconds"] == pytest.approx(log["step_time"] * log["ktae/time_share"])


def test_grpo_ktae_trains_on_the_core_advantages_and_logs_rollouts(tiny_model_dir, tmp_path, trl_advantages):
    args = KTAEGRPOConfig(**config_options(tmp_path, algo="grpo"))
    trainer = make_trainer(tiny_model_dir, args)
    rounds, losses = record(trainer)
    trainer.train()
    assert len(rounds) == 2 and len(losses) == 2
    check_rounds_match_the_core(trainer, rounds, losses, trl_advantages)
    settings = check_written_ktae_settings(trainer, tmp_path, rounds[0][1], trl_advantages)
    assert (settings.rollout_advantage, settings.estimator.rollout_advantage) == (
        "TRL's own (scale_rewards=group)",
        "grpo",
    )
    logs = trainer.state.log_history[0]
    assert trainer.ref_model is not None and "kl" in logs  # GRPO: KL loss against the reference
    for (batch, scores), log in zip(rounds, trainer.state.log_history):
        check_metrics_of_the_round(trainer, batch, scores, log)

    lines = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1] * 4 + [2] * 4  # one whole group per step
    batch_rows = {
        tuple(b["completion_ids"][i][b["completion_mask"][i].bool()].tolist()): b["advantages"][i]
        for b, _ in rounds
        for i in range(len(b["completion_ids"]))
    }
    for line in lines:
        assert "".join(line["tokens"]) == line["response"] and len(line["tokens"]) == len(line["token_ids"])
        assert line["correct"] == (line["score"] > 0) and line["prompt"].startswith("mixed q")
        expected = batch_rows[tuple(line["token_ids"])][: len(line["token_ids"])]
        assert line["advantages"] == expected.tolist()
    key_tokens = [json.loads(line) for line in (tmp_path / "key_tokens.jsonl").read_text().splitlines()]
    assert [k["step"] for k in key_tokens] == [1, 2]
    assert all(t["bonus"] > 0 for k in key_tokens for t in k["credited"])
    assert all(t["bonus"] < 0 for k in key_tokens for t in k["blamed"])
    # one definition of "most credited/blamed": the report, recomputing from the logged rollouts (the
    # whole batch here), ranks the same tokens with the same totals
    for logged in key_tokens:
        step_rollouts = [r for r in load_rollouts(tmp_path) if r.step == logged["step"]]
        data = tokenize_rollouts(step_rollouts, ignore_token_ids=trainer.ktae_config.ignore_token_ids)
        report = analyse(data, trainer.ktae_config).top_tokens(10)
        for side in ("credited", "blamed"):
            assert [t["token_id"] for t in logged[side]] == [t["token"] for t in report[side]]
            assert [t["occurrences"] for t in logged[side]] == [t["occurrences"] for t in report[side]]
            assert [t["total"] for t in logged[side]] == pytest.approx([t["total"] for t in report[side]])


def length_reward(completions, **kwargs) -> list[float]:
    """A second reward: 1 for completions of 4 characters or fewer, else 0."""
    return [float(len(text) <= 4) for text in completions]


@pytest.mark.parametrize(
    "options",
    [
        {"scale_rewards": "batch"},
        {"scale_rewards": "none"},
        {"reward_weights": [1.0, 0.5]},
        {"reward_weights": [2.0, 0.5], "multi_objective_aggregation": "normalize_then_sum", "scale_rewards": "batch"},
        {"ktae_rollout_advantage": "rloo"},
    ],
    ids=["scale-batch", "scale-none", "weighted-rewards", "normalize-then-sum", "ktae-rloo-base"],
)
def test_every_trl_rollout_advantage_gets_the_bonus(tiny_model_dir, tmp_path, trl_advantages, options):
    args = KTAEGRPOConfig(**config_options(tmp_path, max_steps=1, **options))
    rewards = [toy_reward, length_reward] if "reward_weights" in options else toy_reward
    trainer = make_trainer(tiny_model_dir, args, reward_funcs=rewards)
    rounds, losses = record(trainer)
    trainer.train()
    check_rounds_match_the_core(trainer, rounds, losses, trl_advantages)
    [(batch, scores)] = rounds
    if "reward_weights" in options:  # correctness is decided on the weighted total reward
        weights = torch.tensor(options["reward_weights"])
        rewards = trainer._gathered_rewards_per_func
        torch.testing.assert_close(scores, (rewards * weights).sum(1))
    check_metrics_of_the_round(trainer, batch, scores, trainer.state.log_history[0])
    settings = check_written_ktae_settings(trainer, tmp_path, scores, trl_advantages)
    # TRL's batch-scaled advantage, or rewards normalised before summing, have no KTAE base equal to them
    assert settings.exact_base == (options.get("scale_rewards") != "batch")


def test_every_loss_type_trains_on_the_token_advantages_with_the_entropy_mask(tiny_model_dir, tmp_path):
    args = KTAEGRPOConfig(**config_options(tmp_path, max_steps=1, top_entropy_quantile=0.5))
    trainer = make_trainer(tiny_model_dir, args)
    _, losses = record(trainer)
    trainer.train()
    [inputs] = losses
    assert inputs["advantages"].dim() == 2
    rollout_level = inputs["advantages"].sum(1, keepdim=True) / inputs["completion_mask"].sum(1, keepdim=True)
    flat = {**inputs, "advantages": rollout_level.expand_as(inputs["advantages"]) * inputs["completion_mask"]}
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"):
        trainer.loss_type = loss_type
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
        assert torch.isfinite(loss) and grads.abs().sum() > 0, loss_type
        # the per-token bonus changes what the loss sees, past the entropy mask
        trainer.model.zero_grad()
        trainer._compute_loss(trainer.model, flat).backward()
        flat_grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
        assert not torch.allclose(grads, flat_grads), loss_type


def test_key_token_table_reaches_the_trackers_of_report_to(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = KTAEGRPOConfig(**config_options(tmp_path, max_steps=2, report_to="tensorboard"))
    trainer = make_trainer(tiny_model_dir, args)
    trackers = {}
    for name in ("wandb", "trackio"):  # stand-ins for the W&B and trackio modules
        tracker = types.ModuleType(name)
        tracker.__spec__ = importlib.machinery.ModuleSpec(name, None)
        tracker.run, tracker.logged, tracker.Table = object(), [], lambda dataframe: dataframe
        tracker.log = lambda data, step=None, tracker=tracker: tracker.logged.append((data, step))
        monkeypatch.setitem(sys.modules, name, tracker)
        monkeypatch.setattr(trl_profiling, name, tracker, raising=False)  # TRL's step timings go there too
        trackers[name] = tracker
    trainer.args.report_to = ["tensorboard", "wandb", "trackio"]  # after the callbacks are set up
    trainer.train()
    for tracker in trackers.values():
        tables = [(data, step) for data, step in tracker.logged if "ktae/key_tokens" in data]
        assert len(tables) == 2  # one table per logging step
        for data, step in tables:
            frame = data["ktae/key_tokens"]
            assert step is None  # W&B / trackio keep their own step, as with TRL's completions table
            assert list(frame.columns) == [
                "kind",
                "rank",
                "token",
                "token_id",
                "total",
                "occurrences",
                "bonus",
                "groups",
            ]
            credited, blamed = frame[frame.kind == "credited"], frame[frame.kind == "blamed"]
            assert (credited.bonus > 0).all() and (blamed.bonus < 0).all() and len(credited) + len(blamed) > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = list((tmp_path / "tb").glob("**/events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    texts = accumulator.Tensors("ktae/key_tokens/text_summary")
    assert [t.step for t in texts] == [1, 2]
    text = texts[-1].tensor_proto.string_val[0].decode()
    assert "| credited | 1 |" in text or "| blamed | 1 |" in text
    assert {"train/ktae/large_bonus_share", "train/ktae/time_share"} <= set(accumulator.Tags()["scalars"])


def test_dapo_ktae_clip_higher_no_kl_overlong_penalty(tiny_model_dir, tmp_path, trl_advantages):
    args = KTAEGRPOConfig(**config_options(tmp_path, algo="dapo"))
    trainer = make_trainer(tiny_model_dir, args)
    rounds, losses = record(trainer)
    trainer.train()
    assert trainer.ref_model is None and trainer.beta == 0.0
    assert (trainer.epsilon_low, trainer.epsilon_high, trainer.loss_type) == (0.2, 0.28, "dapo")
    assert trainer.reward_func_names == ["toy_reward", "overlong_penalty"]
    for batch, scores in rounds:  # the total reward includes the penalty on the last buffer token
        lengths = batch["completion_mask"].sum(1)
        toy = scores - torch.where(lengths >= args.max_completion_length, -1.0, 0.0)
        assert set(toy.tolist()) <= {0.0, 1.0}
    check_rounds_match_the_core(trainer, rounds, losses, trl_advantages)
    assert "kl" not in trainer.state.log_history[0]


def test_ktae_off_reproduces_trl(tiny_model_dir, tmp_path):
    options = config_options(tmp_path / "trl", beta=0.001)
    trl_trainer = GRPOTrainer(
        tiny_model_dir,
        toy_reward,
        train_dataset=build_dataset(),
        processing_class=build_tokenizer(),
        args=GRPOConfig(**{k: v for k, v in options.items() if not k.startswith("ktae_")}),
    )
    _, trl_losses = record(trl_trainer)
    trl_trainer.train()
    args = KTAEGRPOConfig(**config_options(tmp_path / "ours", algo="grpo", ktae=False))
    trainer = make_trainer(tiny_model_dir, args)
    _, losses = record(trainer)
    trainer.train()
    assert len(losses) == len(trl_losses) == 2
    for ours, theirs in zip(losses, trl_losses):
        assert torch.equal(ours["completion_ids"], theirs["completion_ids"])
        assert ours["advantages"].dim() == 1 and torch.equal(ours["advantages"], theirs["advantages"])
    assert (tmp_path / "ours" / "rollouts.jsonl").exists()
    assert read_ktae_settings(tmp_path / "ours").ktae is False


def test_dynamic_sampling_drops_groups_that_score_alike(tiny_model_dir, tmp_path, trl_advantages):
    options = config_options(tmp_path, dynamic_sampling=True, per_device_train_batch_size=8, max_steps=1)
    trainer = make_trainer(tiny_model_dir, KTAEGRPOConfig(**options), kinds=("easy", "hard", "mixed"))
    rounds, losses = record(trainer)
    trainer.train()
    score_of_row = {row_key(b, i): s[i].item() for b, s in rounds for i in range(len(s))}
    tokenizer = trainer.processing_class
    for inputs in losses:
        assert len(inputs["completion_ids"]) == 8
        groups = defaultdict(list)
        for i in range(8):
            groups[tokenizer.decode(inputs["prompt_ids"][i], skip_special_tokens=True)].append(
                score_of_row[row_key(inputs, i)]
            )
        assert all(prompt.startswith("mixed") and len(set(s)) == 2 for prompt, s in groups.items()), groups
    check_rounds_match_the_core(trainer, rounds, losses, trl_advantages)
    logs = [e for e in trainer.state.log_history if "dynamic_sampling/gen_batches" in e]
    assert len(logs) == 1 and logs[0]["dynamic_sampling/filler_group_share"] == 0
    assert len(rounds) == logs[0]["dynamic_sampling/gen_batches"] > 1  # it had to draw more prompts


def test_dynamic_sampling_stops_after_max_num_gen_batches(tiny_model_dir, tmp_path, caplog):
    options = config_options(tmp_path, dynamic_sampling=True, max_num_gen_batches=2, max_steps=1)
    trainer = make_trainer(tiny_model_dir, KTAEGRPOConfig(**options), kinds=("easy", "hard"))
    rounds, losses = record(trainer)
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert len(rounds) == 2 and "still score alike after 2 generation batches" in caplog.text
    assert trainer.state.log_history[0]["dynamic_sampling/filler_group_share"] == 1.0
    assert torch.equal(losses[0]["advantages"], torch.zeros_like(losses[0]["advantages"]))


@pytest.mark.parametrize("kind", ["datasets", "torch"])
def test_dynamic_sampling_refuses_a_dataset_without_indexing(tiny_model_dir, tmp_path, kind):
    rows = build_dataset(("mixed",))
    if kind == "datasets":
        stream = rows.to_iterable_dataset()
    else:

        class Stream(torch.utils.data.IterableDataset):
            def __iter__(self):
                return iter(rows)

        stream = Stream()
    args = KTAEGRPOConfig(**config_options(tmp_path, dynamic_sampling=True, max_steps=1))
    with pytest.raises(ValueError, match="needs a map-style train_dataset, got"):
        KTAEGRPOTrainer(tiny_model_dir, toy_reward, args=args, train_dataset=stream, processing_class=build_tokenizer())


def test_ktae_needs_groups_of_two(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="num_generations must be >= 2 with ktae on"):
        KTAEGRPOConfig(**config_options(tmp_path, num_generations=1, per_device_train_batch_size=1))


def test_ids_past_the_tokenizer_but_in_the_model_vocabulary_are_trained_on(tmp_path):
    # Models pad their embedding rows past the tokenizer's tokens, and sampling picks those ids too: the
    # estimator's bound is the model's vocabulary (refusing ids beyond it), not len(tokenizer).
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    model.resize_token_embeddings(len(tokenizer) + 8)
    model.save_pretrained(tmp_path / "model")
    args = KTAEGRPOConfig(**config_options(tmp_path / "run", max_steps=1))
    trainer = make_trainer(str(tmp_path / "model"), args)
    assert trainer.vocab_size == len(tokenizer) + 8
    rounds, losses = record(trainer)
    trainer.train()
    ((batch, scores),) = rounds
    ids, mask = batch["completion_ids"], batch["completion_mask"].bool()
    assert (ids[mask] >= len(tokenizer)).any()  # the padded rows were sampled and are in the batch
    assert torch.isfinite(batch["advantages"]).all() and len(losses) == 1
    beyond = ids.clone()
    beyond[0, 0] = trainer.vocab_size
    view = trainer._group_rows(beyond, mask, len(beyond))
    with pytest.raises(ValueError, match=rf"token id {trainer.vocab_size} .*vocab_size={trainer.vocab_size}"):
        trainer._ktae_advantages(view, scores, trainer.num_generations, batch["advantages"][:, 0])


def test_token_pieces_concatenate_to_the_text_across_multibyte_characters():
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["plain words and more words"], vocab_size=270, min_frequency=1)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    ids = tokenizer.encode("words é 😀 more")
    pieces = token_pieces(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == "words é 😀 more"
    assert len(pieces) == len(ids) and "" in pieces and "😀" in pieces


def test_resume_restores_the_extra_prompt_stream_and_trims_the_logs(tiny_model_dir, tmp_path):
    options = config_options(tmp_path, dynamic_sampling=True, save_steps=2, save_strategy="steps", max_steps=3)
    make_trainer(tiny_model_dir, KTAEGRPOConfig(**options), kinds=("easy", "mixed")).train()
    state = json.loads((tmp_path / "checkpoint-2" / "ktae_trainer_state.json").read_text())
    drawn = state["extra_generation_batches"]
    assert drawn > 0  # steps 1-2 needed extra prompts
    steps_before = [json.loads(line)["step"] for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert steps_before == [1] * 4 + [2] * 4 + [3] * 4  # one logged group per step, whatever the rounds

    resumed = make_trainer(tiny_model_dir, KTAEGRPOConfig(**options), kinds=("easy", "mixed"))
    next_batch, draws = resumed._next_extra_generation_batch, []
    resumed._next_extra_generation_batch = lambda: draws.append(resumed._extra_batches_drawn) or next_batch()
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed._extra_batches_drawn >= drawn and draws[:1] in ([], [drawn])  # continues where it stopped
    steps_after = [json.loads(line)["step"] for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert steps_after == steps_before  # step 3 dropped at resume, then written again

    # the model card of a trainer used directly: its base model is the policy's local folder, not a hub link
    card = (tmp_path / "README.md").read_text()
    assert f"from `{tiny_model_dir}` with GRPO+KTAE" in card and "for 3 RL steps" in card
    assert "huggingface.co/" + tiny_model_dir.lstrip("/") not in card and "No held-out accuracy was measured" in card
    assert not list(tmp_path.glob("*.tmp"))
