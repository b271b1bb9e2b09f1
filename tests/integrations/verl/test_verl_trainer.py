"""The KTAE trainers: verl's own v1 `_compute_advantage` with the response tokens handed over, and the
trainer registry."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models
from transfer_queue import KVBatchMeta
from transformers import PreTrainedTokenizerFast, Qwen2Config
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.v1 import get_trainer_cls, trainer_base as verl_trainer_base
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from ktae import KTAEConfig, compute_key_token_values, compute_ktae_advantages
from ktae.core import estimator as core_estimator
from ktae.integrations.verl import KTAE_TRAINER_MODES, trainer as ktae_trainer
from ktae.integrations.verl.trainer import KTAEPPOTrainerSync
from ktae.models import token_pieces
from ktae.reports import load_rollouts

PAD, EOS = 0, 1
VOCAB_SIZE = 16  # the model's embedding rows: more than the tokenizer's 9 tokens, as models pad them


class InMemoryTransferQueue:
    """The part of TransferQueue's kv API the advantage step uses, over a dict, with TransferQueue's
    layouts: rows put as verl's agent loop puts them (list_of_dict_to_tensordict), got back jagged."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def kv_batch_put(self, keys, partition_id, fields, tags=None):
        for i, key in enumerate(keys):
            row = self.rows.setdefault(key, {})
            for name in fields.keys():  # noqa: SIM118 (iterating a TensorDict walks its batch, not its keys)
                column = fields[name]
                row[name] = column.unbind(0)[i] if isinstance(column, torch.Tensor) else list(column)[i]

    def kv_batch_get(self, keys, partition_id, select_fields):
        # fields no row has (e.g. values without a critic) are left out, as TransferQueue does
        return list_of_dict_to_tensordict(
            [{name: self.rows[key][name] for name in select_fields if name in self.rows[key]} for key in keys]
        )


@pytest.fixture
def queue(monkeypatch):
    store = InMemoryTransferQueue()
    monkeypatch.setattr(ktae_trainer, "tq", store)
    monkeypatch.setattr(verl_trainer_base, "tq", store)
    return store


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Ids 0 and 1 are pad and eos, 2..8 the letters a..g."""
    vocab = {"<pad>": PAD, "<eos>": EOS, **{chr(ord("a") + i): 2 + i for i in range(7)}}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", eos_token="<eos>"
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder as verl's model config reads it: the tokenizer and a config with VOCAB_SIZE rows."""
    path = tmp_path_factory.mktemp("model")
    make_tokenizer().save_pretrained(path)
    Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        architectures=["Qwen2ForCausalLM"],
    ).save_pretrained(path)
    return path


@pytest.fixture
def make_trainer(compose, model_dir):
    def make(overrides: list[str]) -> KTAEPPOTrainerSync:
        trainer = object.__new__(KTAEPPOTrainerSync)  # the advantage step needs only config and tokenizer
        trainer.config = compose([*overrides, f"actor_rollout_ref.model.path={model_dir}"])
        trainer._init_tokenizer()
        return trainer

    return make


def put_rollouts(queue, seed: int) -> tuple[list[str], list[dict]]:
    """Two prompts x 4 rollouts, keys {uid}_{session}_0 as verl's agent loop writes them; one response
    has a tool-output span masked out in the middle (multi-turn)."""
    rng = np.random.default_rng(seed)
    uids = [str(uuid.uuid4()) for _ in range(2)]
    keys, rows = [], []
    for session in range(4):
        for g, uid in enumerate(uids):
            length = int(rng.integers(2, 9))
            responses = torch.tensor(rng.integers(2, 9, size=length))
            responses[-1] = EOS
            mask = torch.ones(length, dtype=torch.int64)
            if session == 1 and g == 0:
                mask[1:3] = 0
            score = float((session + g) % 2)
            rm_scores = torch.zeros(length)
            rm_scores[-1] = score
            keys.append(f"{uid}_{session}_0")
            rows.append(
                {"uid": uid, "responses": responses, "response_mask": mask, "rm_scores": rm_scores, "score": score}
            )
    queue.kv_batch_put(
        keys, "train", list_of_dict_to_tensordict([{k: v for k, v in r.items() if k != "score"} for r in rows])
    )
    return keys, rows


def padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(tensors, layout=torch.jagged).to_padded_tensor(0)


@pytest.mark.parametrize("seed", [0, 1])
def test_ktae_trainer_runs_verls_advantage_step_with_the_response_tokens(make_trainer, queue, seed):
    trainer = make_trainer(["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4"])
    assert trainer.vocab_size == VOCAB_SIZE
    keys, rows = put_rollouts(queue, seed)
    batch = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")

    trainer._compute_advantage(batch, metrics={})

    advantages = padded([queue.rows[key]["advantages"] for key in keys])
    expected = expected_advantages(rows, "grpo", trainer.config.algorithm)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    assert advantages[padded([r["response_mask"] for r in rows]) == 0].abs().max() == 0


def expected_advantages(rows: list[dict], base: str, algorithm) -> torch.Tensor:
    """verl's ``base`` on the rows plus the core's key-token bonus (ktae.KTAEConfig base "none")."""
    responses, mask = padded([r["responses"] for r in rows]), padded([r["response_mask"] for r in rows])
    scores = torch.tensor([r["score"] for r in rows])
    rewards = torch.zeros(mask.shape)
    rewards[torch.arange(len(rows)), mask.shape[1] - 1] = scores  # only the row sums matter to outcome bases
    uids = np.array([r["uid"] for r in rows], dtype=object)
    base_advantages, _ = get_adv_estimator_fn(base)(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=algorithm
    )
    bonus = compute_ktae_advantages(
        responses, mask, scores, uids, config=KTAEConfig(ignore_token_ids=(PAD, EOS), rollout_advantage="none")
    )
    return base_advantages + bonus


class FakeTable:
    def __init__(self, dataframe):
        self.dataframe = dataframe


class FakeTracker:
    """What the key-token table uses of the wandb and trackio modules."""

    Table = FakeTable

    def __init__(self):
        self.run = object()
        self.logged = []

    def log(self, data, step=None):
        self.logged.append((data, step))


class FakeWriter:
    def __init__(self):
        self.texts = []

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))


def test_ktae_metrics_and_key_token_table_reach_verls_loggers(make_trainer, queue, monkeypatch):
    trainer = make_trainer(
        ["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4", "algorithm.ktae.base=rloo"]
    )
    wandb, trackio, writer, file_log = FakeTracker(), FakeTracker(), FakeWriter(), FakeTracker()
    trainer.logger = SimpleNamespace(
        logger={
            "wandb": wandb,
            "trackio": SimpleNamespace(trackio=trackio),
            "tensorboard": SimpleNamespace(writer=writer),
            "file": file_log,  # verl's FileLogger: log(data, step) of one JSON line
            "console": object(),
        }
    )
    keys, rows = put_rollouts(queue, 4)
    metrics = {}
    counted = []  # the batch's tokens are counted once, for the advantages and the table together
    count = core_estimator._count
    monkeypatch.setattr(core_estimator, "_count", lambda *args: counted.append(1) or count(*args))
    trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), metrics)
    assert len(counted) == 1

    # the advantages are verl's rloo plus the bonus, and the metrics describe that bonus
    advantages = padded([queue.rows[key]["advantages"] for key in keys])
    expected = expected_advantages(rows, "rloo", trainer.config.algorithm)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    mask = padded([r["response_mask"] for r in rows]).bool()
    bonus = compute_ktae_advantages(
        padded([r["responses"] for r in rows]),
        mask,
        torch.tensor([r["score"] for r in rows]),
        [r["uid"] for r in rows],
        config=KTAEConfig(ignore_token_ids=(PAD, EOS), rollout_advantage="none"),
    ).double()
    correct = torch.tensor([r["score"] > 0 for r in rows])[:, None] & mask
    assert metrics["ktae/large_bonus_share"] == pytest.approx(float((bonus.abs() > 0.5)[mask].double().mean()))
    assert metrics["ktae/bonus_mean_correct"] == pytest.approx(float(bonus[correct].mean()))
    assert metrics["ktae/bonus_mean_incorrect"] == pytest.approx(float(bonus[mask & ~correct].mean()))
    assert metrics["ktae/large_bonus_share"] > 0

    # once the step's time is known: the time share, and the table goes to every logger that shows one
    monkeypatch.setattr(verl_trainer_base.PPOTrainer, "_compute_metrics", lambda self, *args, **kwargs: None)
    seconds = metrics["ktae/seconds"]
    trainer._compute_metrics(None, metrics, {"step": 4.0}, global_steps=3, epoch=0)
    assert metrics["ktae/time_share"] == pytest.approx(seconds / 4.0) and 0 < metrics["ktae/time_share"] < 1
    for tracker in (wandb, trackio):
        [(data, step)] = tracker.logged
        frame = data["ktae/key_tokens"].dataframe
        assert step == 3 and list(frame.columns) == [
            "kind",
            "rank",
            "token",
            "token_id",
            "total",
            "occurrences",
            "bonus",
            "groups",
        ]
    credited = frame[frame.kind == "credited"]
    blamed = frame[frame.kind == "blamed"]
    assert len(credited) and len(blamed) and (credited.bonus > 0).all() and (blamed.bonus < 0).all()
    assert list(credited.total) == sorted(credited.total, reverse=True)
    # the top credited token is the one whose occurrences add the most bonus (value x occurrences over groups)
    values = compute_key_token_values(
        padded([r["responses"] for r in rows]),
        mask,
        torch.tensor([r["score"] for r in rows]),
        [r["uid"] for r in rows],
        config=KTAEConfig(ignore_token_ids=(PAD, EOS)),
    )
    value = {(r["group"], r["token"]): r["value"] for r in values.to_records()}
    totals, occurrences = {}, {}
    for r in rows:  # every response token of the group counts, including groups where its value is 0
        for token in r["responses"][r["response_mask"].bool()].tolist():
            if (r["uid"], token) in value:
                totals[token] = totals.get(token, 0.0) + value[(r["uid"], token)]
                occurrences[token] = occurrences.get(token, 0) + 1
    best = max(totals, key=totals.get)
    assert credited.token_id.iloc[0] == best and credited.total.iloc[0] == pytest.approx(totals[best])
    assert credited.occurrences.iloc[0] == occurrences[best]
    assert credited.bonus.iloc[0] == pytest.approx(totals[best] / occurrences[best])
    assert credited.token.iloc[0] == trainer.tokenizer.decode([best])
    [(tag, text, step)] = writer.texts
    assert tag == "ktae/key_tokens" and step == 3 and f"| credited | 1 | `{credited.token.iloc[0]}` |" in text
    [(data, step)] = file_log.logged
    assert step == 3 and list(data) == ["ktae/key_tokens"]
    table = data["ktae/key_tokens"]
    assert [e["token_id"] for e in table["credited"]] == list(credited.token_id)
    assert [e["bonus"] for e in table["blamed"]] == pytest.approx(list(blamed.bonus))


def test_other_estimators_run_verls_step_unchanged(make_trainer, queue):
    trainer = make_trainer(["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=4"])
    keys, rows = put_rollouts(queue, 2)
    trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), metrics={})
    ktae_off = compute_ktae_advantages(
        padded([r["responses"] for r in rows]),
        padded([r["response_mask"] for r in rows]),
        torch.tensor([r["score"] for r in rows]),
        [r["uid"] for r in rows],
        config=KTAEConfig(top=0.0),
    )
    torch.testing.assert_close(padded([queue.rows[k]["advantages"] for k in keys]), ktae_off, rtol=0, atol=1e-6)


def test_a_baselines_rollouts_are_logged_as_ktaes(make_trainer, queue, tmp_path):
    trainer = make_trainer(
        ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=4", f"trainer.ktae_rollouts_dir={tmp_path}"]
    )
    trainer.global_steps = 2
    keys, rows = put_rollouts(queue, 6)
    for key in keys:
        queue.rows[key]["prompts"] = torch.tensor([2, 3])
    trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), metrics={})
    records = load_rollouts(tmp_path / "rollouts.jsonl")
    assert len(records) == len(keys) == 8  # both groups (the default logs up to 4)
    for record, key, row in zip(records, keys, rows):
        assert record.token_ids == row["responses"].tolist() and record.score == row["score"]
        assert list(record.advantages) == queue.rows[key]["advantages"].tolist()  # verl's grpo, unchanged


def test_ktae_trainers_are_registered_over_verls_modes():
    for mode, ktae_mode in KTAE_TRAINER_MODES.items():
        cls = get_trainer_cls(ktae_mode)
        assert issubclass(cls, get_trainer_cls(mode)) and cls.base_trainer_mode == mode


def test_ktae_trainer_validates_and_restores_the_verl_mode(compose, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        verl_trainer_base.PPOTrainer,
        "__init__",
        lambda self, config: seen.setdefault("mode", config.trainer.v1.trainer_mode),
    )
    config = compose(
        ["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4", "trainer.v1.trainer_mode=ktae_sync"]
    )
    KTAEPPOTrainerSync(config)
    assert seen["mode"] == "sync" and config.trainer.v1.trainer_mode == "sync"
    bad = compose(
        ["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=1", "trainer.v1.trainer_mode=ktae_sync"]
    )
    with pytest.raises(ValueError, match=r"rollout\.n"):
        KTAEPPOTrainerSync(bad)


def test_rollout_log_in_the_format_ktae_viz_reads(make_trainer, queue, tmp_path):
    trainer = make_trainer(
        [
            "algorithm.adv_estimator=ktae",
            "actor_rollout_ref.rollout.n=4",
            f"trainer.ktae_rollouts_dir={tmp_path}",
            "trainer.ktae_rollout_groups_per_step=1",
        ]
    )
    trainer.global_steps = 7
    keys, rows = put_rollouts(queue, 3)
    for key in keys:
        queue.rows[key]["prompts"] = torch.tensor([2, 3])
    first_group = [i for i, r in enumerate(rows) if r["uid"] == rows[0]["uid"]]
    gap_id = len(trainer.tokenizer) + 2  # a model row the tokenizer has no token for: no text
    for tensor in (rows[first_group[0]]["responses"], queue.rows[keys[first_group[0]]]["responses"]):
        tensor[0] = gap_id
    trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), metrics={})

    records = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == len(first_group) == 4  # one whole group
    letters = "".join(chr(ord("a") + i) for i in range(7))
    for record, i in zip(records, first_group):
        ids = rows[i]["responses"].tolist()
        assert record["step"] == 7 and record["group"] == rows[i]["uid"] and record["prompt"] == "ab"
        assert record["token_ids"] == ids
        # the pieces of the TRL trainer's rollout log (one rule): they concatenate to the decoded text
        assert record["tokens"] == token_pieces(trainer.tokenizer, ids)
        assert record["tokens"] == [letters[t - 2] if 1 < t < 9 else "<eos>" if t == EOS else "" for t in ids]
        assert record["response"] == "".join(record["tokens"]) == trainer.tokenizer.decode(ids)
        assert record["score"] == rows[i]["score"] and record["correct"] == (rows[i]["score"] > 0)
        assert record["advantages"] == queue.rows[keys[i]]["advantages"].tolist()
    loaded = load_rollouts(tmp_path / "rollouts.jsonl")
    assert [r.token_ids for r in loaded] == [r["token_ids"] for r in records]


def test_ids_in_the_model_vocabulary_past_the_tokenizer_count_and_ids_beyond_it_are_refused(make_trainer, queue):
    trainer = make_trainer(["algorithm.adv_estimator=ktae", "actor_rollout_ref.rollout.n=4"])
    keys, rows = put_rollouts(queue, 5)
    for token_id in (len(trainer.tokenizer), VOCAB_SIZE - 1):  # padded embedding rows: sampling can pick them
        for tensor in (rows[0]["responses"], queue.rows[keys[0]]["responses"]):
            tensor[0] = token_id
        trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), {})
        advantages = padded([queue.rows[key]["advantages"] for key in keys])
        expected = expected_advantages(rows, "grpo", trainer.config.algorithm)
        torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    for tensor in (rows[0]["responses"], queue.rows[keys[0]]["responses"]):
        tensor[0] = VOCAB_SIZE  # no model row: not a token the policy sampled
    with pytest.raises(ValueError, match=rf"token id {VOCAB_SIZE} .*vocab_size={VOCAB_SIZE}"):
        trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), {})
