"""``python -m ktae.integrations.verl.demo --output-dir DIR [--steps N] [--adv-estimator ktae|grpo] [--seed S]
[verl overrides ...]``: a few real steps of verl's training loop on CPU, with nothing to download.

Builds, under ``DIR``: a tiny Qwen2 model and a byte-level BPE tokenizer with a ChatML chat template
(``model/``), trained locally on the synthetic arithmetic task's texts, and the task's problems in
verl's parquet format (``data/``). Then runs ``python -m ktae.integrations.verl trainer.device=cpu ...``
(the launcher's CPU mode, :mod:`ktae.integrations.verl.cpu`) for N steps in ``DIR`` (its output in
``DIR/train.log``, verl's metrics in ``DIR/verl_metrics.jsonl``, every rollout with the advantages
training used in ``DIR/rollouts.jsonl``), and prints one JSON object: per step ``actor/pg_loss``,
``actor/grad_norm``, ``ktae/seconds`` (KTAE runs), the mean absolute advantage over response tokens,
the most credited and blamed tokens (KTAE runs), and a few of verl's figures. Exit status 0 only if
every step trained: finite loss, a finite non-zero gradient.

The reward (:func:`compute_score`) is 1 when the reference answer appears anywhere in the response:
an untrained tiny model never boxes an answer, so the project's boxed-answer reward would score every
rollout 0 and leave nothing to learn from. Extra arguments are verl overrides, appended last
(``trainer.n_gpus_per_node=2`` trains with two FSDP ranks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktae.data.synthetic import ArithmeticTask, sample_problem
from ktae.data.templates import apply_template, render_prompt
from ktae.integrations.signals import KEY_TOKENS_TABLE
from ktae.integrations.verl.prepare_data import verl_rows, write_parquet
from ktae.run_folder import ROLLOUTS_FILE, RolloutRecord, read_jsonl
from ktae.tiny import TinyModelConfig, build_model

ESTIMATORS = ("ktae", "grpo")
TEMPLATE = "qwen_math"
TASK = ArithmeticTask()
PROMPTS_PER_STEP = 4
ROLLOUTS_PER_PROMPT = 8
RESPONSE_LENGTH = 16
#: Problems in the training file: enough that no two steps of a default run share one.
TRAIN_PROBLEMS = 64
#: Texts the tokenizer is trained on. Its alphabet is theirs (not all 256 bytes), so that a random
#: model's samples are mostly the task's digits and words and sometimes contain the answer.
TOKENIZER_TEXTS = 2000
TOKENIZER_VOCAB = 160
# The policy: an 83k-parameter Qwen2 (its vocabulary is the tokenizer's).
MODEL_SIZES = TinyModelConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
PAD, CHAT_START, CHAT_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
#: ChatML, as Qwen's tokenizers render chat messages (`ktae.data.templates.render_prompt` writes the same).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
#: AF_UNIX socket paths are at most 107 bytes; Ray puts "session_<date>_<pid>/sockets/plasma_store"
#: (63 characters) under its temp dir.
MAX_RAY_TEMP_DIR = 107 - 64
METRICS_FILE = "verl_metrics.jsonl"
#: Environment variable naming the demo run (its output folder) in every process the run starts.
RUN_MARKER = "KTAE_VERL_DEMO_RUN"
LOG_FILE = "train.log"


def compute_score(data_source, solution_str: str, ground_truth, extra_info=None, **kwargs) -> dict:
    """The demo's verl reward: 1.0 when the reference answer occurs in the response, else 0.0."""
    found = str(ground_truth) in solution_str
    return {"score": float(found), "acc": found}


@dataclass(frozen=True)
class DemoAssets:
    """What `build_assets` wrote: the model folder, the parquet files, the longest prompt in tokens."""

    model_dir: Path
    train_file: Path
    val_file: Path
    max_prompt_length: int


def build_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained on ``texts``, with ChatML's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=[PAD, CHAT_START, CHAT_END], show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=CHAT_END)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_assets(output_dir: Path, seed: int) -> DemoAssets:
    """Write the tokenizer and model (``model/``) and the problems (``data/``) under ``output_dir``."""
    rng = random.Random(seed)
    corpus = [sample_problem(rng, TASK) for _ in range(TOKENIZER_TEXTS)]
    tokenizer = build_tokenizer(
        [render_prompt(apply_template(row["prompt"], TEMPLATE)) + row["completion"] + CHAT_END for row in corpus]
    )
    model = build_model(tokenizer, MODEL_SIZES, seed)
    model_dir = output_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    problems: dict[str, str] = {}  # distinct prompts: a rollout's group is found again by its prompt
    while len(problems) < TRAIN_PROBLEMS + PROMPTS_PER_STEP:
        row = sample_problem(rng, TASK)
        problems.setdefault(row["prompt"], row["answer"])
    examples = [{"data_source": "ktae_demo", "problem": p, "answer": a} for p, a in problems.items()]
    train, val = examples[:TRAIN_PROBLEMS], examples[TRAIN_PROBLEMS:]
    data_dir = output_dir / "data"
    train_file = write_parquet(verl_rows(train, "train", TEMPLATE), data_dir / "train.parquet")
    val_file = write_parquet(verl_rows(val, "test", TEMPLATE), data_dir / "val.parquet")
    prompt_length = max(
        len(
            tokenizer.apply_chat_template(
                apply_template(e["problem"], TEMPLATE), add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for e in examples
    )
    return DemoAssets(model_dir, train_file, val_file, prompt_length)


def demo_overrides(
    assets: DemoAssets, output_dir: Path, steps: int, estimator: str, seed: int, ray_temp_dir: Path
) -> list[str]:
    """The launcher's overrides: the CPU mode (with its defaults: one rank), the demo's files, a small
    batch, every rollout logged."""
    return [
        "trainer.device=cpu",
        f"algorithm.adv_estimator={estimator}",
        f"data.train_files={assets.train_file}",
        f"data.val_files={assets.val_file}",
        f"data.train_batch_size={PROMPTS_PER_STEP}",
        f"data.max_prompt_length={assets.max_prompt_length}",
        f"data.max_response_length={RESPONSE_LENGTH}",
        f"data.seed={seed}",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={assets.model_dir}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS_PER_STEP}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={ROLLOUTS_PER_PROMPT}",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        # the paper's GRPO loss: KL to the reference model, which also runs the reference model
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.001",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={ROLLOUTS_PER_PROMPT}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={ROLLOUTS_PER_PROMPT}",
        f"actor_rollout_ref.rollout.n={ROLLOUTS_PER_PROMPT}",
        f"actor_rollout_ref.rollout.seed={seed}",
        "actor_rollout_ref.rollout.dtype=float32",
        "reward.custom_reward_function.path=pkg://ktae.integrations.verl.demo",
        "reward.custom_reward_function.name=compute_score",
        "trainer.logger=[console,file]",
        "trainer.project_name=ktae-demo",
        f"trainer.experiment_name={estimator}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.total_training_steps={steps}",
        f"trainer.ktae_rollouts_dir={output_dir}",
        f"trainer.ktae_rollout_groups_per_step={PROMPTS_PER_STEP}",
        "++ray_kwargs.ray_init.include_dashboard=False",
        f"++ray_kwargs.ray_init._temp_dir={ray_temp_dir}",
    ]


def processes_of(run: str) -> list:
    """Live processes of the demo run ``run``: those whose environment carries ``RUN_MARKER=run``,
    which the launcher is started with and its Ray cluster's daemons and workers inherit."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(RUN_MARKER) == run:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def stop_processes_of(run: str) -> int:
    """End what :func:`processes_of` finds (TERM, then KILL after 10 s), Ray's ``ray stop`` for this run
    only; returns how many there were."""
    import psutil

    processes = processes_of(run)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return len(processes)


def run_launcher(overrides: list[str], output_dir: Path, timeout: float) -> int:
    """``python -m ktae.integrations.verl <overrides>`` in ``output_dir`` (Hydra's outputs land there),
    output to ``train.log``; returns its exit status, or raises TimeoutError after ``timeout`` seconds.
    Whatever of its Ray cluster outlives it is stopped."""
    run = str(output_dir)
    env = {
        **os.environ,
        RUN_MARKER: run,
        "VERL_FILE_LOGGER_PATH": str(output_dir / METRICS_FILE),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "ktae.integrations.verl", *overrides]
    with open(output_dir / LOG_FILE, "w") as log:
        launcher = subprocess.Popen(
            command, cwd=output_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
            raise TimeoutError(f"training did not finish in {timeout:.0f} s; see {output_dir / LOG_FILE}") from None
        finally:
            stop_processes_of(run)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(output_dir: Path, steps: int) -> dict:
    """The run's per-step figures from verl's metrics log and the rollout log; ``trained`` says whether
    all ``steps`` steps ran with a finite loss and a finite non-zero gradient."""
    metrics: dict[int, dict] = {}
    key_tokens: dict[int, dict] = {}
    metrics_path = output_dir / METRICS_FILE
    for line in read_jsonl(metrics_path) if metrics_path.exists() else []:
        data = line["data"]
        if KEY_TOKENS_TABLE in data:
            key_tokens[line["step"]] = data[KEY_TOKENS_TABLE]
        else:
            metrics.setdefault(line["step"], {}).update(data)
    rollouts_path = output_dir / ROLLOUTS_FILE
    rollouts = [RolloutRecord(**r) for r in read_jsonl(rollouts_path)] if rollouts_path.exists() else []
    reported = []
    for step in sorted(metrics):
        values = metrics[step]
        advantages = [abs(a) for r in rollouts if r.step == step for a in r.advantages or ()]
        entry: dict[str, Any] = {"step": step}
        for key in (
            "actor/pg_loss",
            "actor/grad_norm",
            "actor/kl_loss",
            "ktae/seconds",
            "critic/score/mean",
            "training/rollout_probs_diff_max",
            "timing_s/step",
        ):
            entry[key] = values.get(key)
        entry["mean_abs_advantage"] = sum(advantages) / len(advantages) if advantages else None
        tokens = key_tokens.get(step)
        entry["key_tokens"] = (
            {kind: [(e["token"], round(e["bonus"], 4)) for e in tokens[kind][:5]] for kind in ("credited", "blamed")}
            if tokens
            else None
        )
        reported.append(entry)
    trained = len(reported) == steps and all(
        _finite(e["actor/pg_loss"]) and _finite(e["actor/grad_norm"]) and e["actor/grad_norm"] > 0 for e in reported
    )
    return {"steps": reported, "trained": trained}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ktae.integrations.verl.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="folder for the model, data and logs")
    parser.add_argument("--steps", type=int, default=2, help="training steps (default 2)")
    parser.add_argument("--adv-estimator", choices=ESTIMATORS, default="ktae", help="advantage estimator")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the data and the sampling")
    parser.add_argument(
        "--ray-temp-dir",
        type=Path,
        default=None,
        help=f"Ray's temp dir (default OUTPUT_DIR/ray; at most {MAX_RAY_TEMP_DIR} characters)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before the run is stopped")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (verl overrides are key=value)")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    output_dir = args.output_dir.resolve()
    if output_dir.exists() and any(output_dir.iterdir()):
        parser.error(f"--output-dir {output_dir} is not empty: the demo writes a fresh folder")
    ray_temp_dir = (args.ray_temp_dir or output_dir / "ray").resolve()
    if len(str(ray_temp_dir)) > MAX_RAY_TEMP_DIR:
        parser.error(
            f"Ray's temp dir {ray_temp_dir} is longer than {MAX_RAY_TEMP_DIR} characters, too long for its "
            "sockets: pass a shorter --output-dir or --ray-temp-dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)

    assets = build_assets(output_dir, args.seed)
    command = demo_overrides(assets, output_dir, args.steps, args.adv_estimator, args.seed, ray_temp_dir)
    started = time.perf_counter()
    error = None
    try:
        status: int | None = run_launcher([*command, *overrides], output_dir, args.timeout)
    except TimeoutError as timeout:
        status, error = None, str(timeout)
    summary = {
        "adv_estimator": args.adv_estimator,
        "output_dir": str(output_dir),
        "log": str(output_dir / LOG_FILE),
        "launcher_exit_status": status,
        **({"error": error} if error else {}),
        "seconds": round(time.perf_counter() - started, 1),
        **summarize(output_dir, args.steps),
    }
    print(json.dumps(summary, indent=2))
    return 0 if status == 0 and summary["trained"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
