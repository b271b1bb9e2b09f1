"""Benchmark validation during training: the evaluation harness on the math suites every few steps.

`BenchmarkCallback` runs `ktae.evaluation.harness.evaluate` (the prompts, generation, answer checking and
metrics of ``ktae eval``, nothing of its own) on the policy being trained, between two optimizer steps:
before the first step, every ``benchmark_eval_steps`` steps and after the last. Each evaluation writes
``RUN_DIR/benchmarks/step-N/`` (``results.json`` and ``responses/``, which ``ktae eval --compare`` reads)
and logs `benchmark_metrics` with the step, to metrics.jsonl and the trackers of ``report_to``. With
``keep_best_checkpoint`` the step with the best ``best_checkpoint_metric`` is saved as a checkpoint and
kept whatever ``keep_checkpoints`` says; the trainer state records it (``best_metric``,
``best_global_step``, ``best_model_checkpoint``), so a resumed run keeps comparing against it.

Under `accelerate launch` every process generates its share of the prompts (`ShardedGenerator`) inside
TRL's own generation context (`trl.models.unwrap_model_for_generation`: ZeRO-3 weights gathered, gradient
checkpointing off); the main process checks the answers and writes the results, and every process learns
the figures, so that all take the same decision to save.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ktae.evaluation.generation import GREEDY, Generation, Sampling, TransformersGenerator
from ktae.evaluation.harness import EvalSettings
from ktae.integrations.trl.callbacks import format_duration
from ktae.run_folder import BENCHMARKS_DIR, CHECKPOINT_PREFIX, CHECKPOINTS_DIR

PREFIX = "benchmark/"


def benchmark_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The logged figures of a harness results dict, in percent as ``ktae eval`` reports them:
    ``benchmark/avg`` (the mean over the suites of each suite's accuracy, avg@N over its N samples per
    problem), ``benchmark/<suite>``, and with several samples ``benchmark/pass@k`` and ``benchmark/maj@k``
    (means over the suites) and ``benchmark/<suite>/pass@k``, ``benchmark/<suite>/maj@k`` (k: the samples)."""
    metrics = {f"{PREFIX}avg": float(results["avg"])}
    for suite, accuracy in results["results"].items():
        metrics[f"{PREFIX}{suite}"] = float(accuracy)
        for kind, label in (("pass_at_k", "pass"), ("maj_at_k", "maj")):
            for k, value in results[kind][suite].items():
                metrics[f"{PREFIX}{suite}/{label}@{k}"] = float(value)
    for kind, label in (("avg_pass_at_k", "pass"), ("avg_maj_at_k", "maj")):
        for k, value in results[kind].items():
            metrics[f"{PREFIX}{label}@{k}"] = float(value)
    return metrics


def metric_names(suites: Sequence[str], samples: int) -> list[str]:
    """The keys `benchmark_metrics` logs for these suites and samples per problem."""
    names = [f"{PREFIX}avg", *(f"{PREFIX}{suite}" for suite in suites)]
    if samples > 1:
        for label in ("pass", "maj"):
            names += [f"{PREFIX}{label}@{samples}", *(f"{PREFIX}{suite}/{label}@{samples}" for suite in suites)]
    return names


class ShardedGenerator:
    """A generator whose ``generate`` calls are shared out over the processes of a launch.

    The main process calls ``generate`` as the harness does; the others wait in ``serve`` for its requests
    until ``stop``. Each process generates every ``num_processes``-th prompt (the counts made equal with
    repeats, so that sharded models run their forward passes in step), and the main process gets all
    responses back in order. Sampled responses depend on the process count (each process draws from the seed).
    """

    def __init__(self, generator: TransformersGenerator, state):
        self.generator = generator
        self.state = state
        self.tokenizer = generator.tokenizer

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        desc: str = "generating",
        *,
        samples: int = 1,
        sampling: Sampling = GREEDY,
    ) -> list[Generation]:
        from accelerate.utils import broadcast_object_list

        request: list[Any] = [(prompts, max_new_tokens, desc, samples, sampling)]
        broadcast_object_list(request)
        answer = self._share(*request[0])
        assert answer is not None  # the main process gets every response
        return answer

    def serve(self) -> None:
        from accelerate.utils import broadcast_object_list

        while True:
            request: list[Any] = [None]
            broadcast_object_list(request)
            if request[0] is None:
                return
            self._share(*request[0])

    def stop(self) -> None:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list([None])

    def _share(self, prompts, max_new_tokens, desc, samples, sampling) -> list[Generation] | None:
        from accelerate.utils import gather_object

        count, rank = self.state.num_processes, self.state.process_index
        mine = list(range(rank, len(prompts), count))
        share = math.ceil(len(prompts) / count)
        padded = mine + [mine[-1] if mine else 0] * (share - len(mine))
        outputs = self.generator.generate(
            [prompts[i] for i in padded], max_new_tokens, desc, samples=samples, sampling=sampling
        )
        everyone = gather_object([(mine, outputs[: len(mine) * samples])])
        if not self.state.is_main_process:
            return None
        by_prompt: list[list[Generation]] = [[] for _ in prompts]
        for indices, generations in everyone:
            for j, i in enumerate(indices):
                by_prompt[i] = generations[j * samples : (j + 1) * samples]
        return [generation for responses in by_prompt for generation in responses]


class BenchmarkCallback(TrainerCallback):
    """Benchmarks the policy before training, every ``every_steps`` steps and after the last step (module docstring).

    ``settings``: the harness's (``model`` is a label, the step is added to it); ``tokenizer``: the policy's;
    ``run_dir``: the run folder (``step-N/`` folders go to its ``benchmarks/``). Set ``trainer`` (the
    `KTAEGRPOTrainer`) once it exists: generation needs its wrapped model and accelerator. Place it before
    ``RunLogCallback`` so that the figures join the log record of their step; the ones measured before the
    first step join step 1's.
    """

    def __init__(
        self,
        settings: EvalSettings,
        suites: Sequence[str],
        tokenizer,
        every_steps: int,
        run_dir: str | Path,
        batch_size: int = 16,
        keep_best: bool = False,
        best_metric: str = f"{PREFIX}avg",
        starting_model: str | None = None,
    ):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        names = metric_names(suites, max(settings.samples_for(s) for s in suites))
        if best_metric not in names:
            raise ValueError(f"best_checkpoint_metric {best_metric!r} is not logged; choose one of {', '.join(names)}")
        self.settings, self.suites, self.tokenizer = settings, list(suites), tokenizer
        self.every_steps, self.run_dir, self.batch_size = every_steps, Path(run_dir), batch_size
        self.output_dir = self.run_dir / BENCHMARKS_DIR
        self.keep_best, self.best_metric, self.starting_model = keep_best, best_metric, starting_model
        self.trainer: Any = None
        self.history: list[tuple[int, dict[str, float]]] = []
        self._pending: dict[str, float] | None = None
        self._checker: Any = None  # an AnswerChecker, started on the main process at the first evaluation
        self._remaining = 0

    def on_train_begin(self, args, state, control, **kwargs):
        steps = [s for s in range(1, state.max_steps + 1) if s % self.every_steps == 0 or s == state.max_steps]
        steps = ([0] if state.global_step == 0 else []) + [s for s in steps if s > state.global_step]
        self._remaining = len(steps)
        if state.is_world_process_zero and steps:
            problems = self.settings.limit or "all"
            print(
                f"[ktae train] benchmarks {', '.join(self.suites)} ({problems} problems each, "
                f"{self.settings.samples} sample(s) per problem, up to {self.settings.max_new_tokens} new tokens) at "
                f"{len(steps)} steps ({', '.join(map(str, steps[:4]))}{', ...' if len(steps) > 4 else ''}): "
                f"{self.output_dir}/step-N; the first one says how long they take"
            )
        if state.global_step == 0:
            self._evaluate(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_steps == 0 or state.global_step >= state.max_steps:
            self._evaluate(state, control)
            control.should_log = True  # so the figures are written with this step
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is not None and logs is not None:
            logs.update(self._pending)
            self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        if self._checker is not None:
            self._checker.close()
            self._checker = None

    def _evaluate(self, state, control) -> None:
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list
        from trl.distributed import DistributedBackend
        from trl.models import unwrap_model_for_generation

        from ktae.evaluation.harness import evaluate
        from ktae.rewards import AnswerChecker

        trainer, launch, step = self.trainer, PartialState(), state.global_step
        if trainer is None:
            raise RuntimeError("BenchmarkCallback.trainer is not set")
        started = time.perf_counter()
        results = None
        with (
            unwrap_model_for_generation(
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            ) as model,
            DistributedBackend(trainer.accelerator).summon_full_params(trainer.model_wrapped, recurse=False),
        ):
            was_training = model.training
            model.eval()
            try:
                generator: Any = TransformersGenerator.from_model(
                    model, self.tokenizer, batch_size=self.batch_size, max_model_len=self.settings.max_model_len
                )
                sharded = launch.num_processes > 1
                generator = ShardedGenerator(generator, launch) if sharded else generator
                if launch.is_main_process:
                    self._checker = self._checker or AnswerChecker()
                    try:
                        results = evaluate(
                            replace(self.settings, model=f"{self.settings.model} step {step}"),
                            self.suites,
                            self.output_dir / f"step-{step}",
                            checker=self._checker,
                            generator=generator,
                        )
                    finally:
                        if sharded:
                            generator.stop()
                else:
                    generator.serve()
            finally:
                model.train(was_training)
        metrics = benchmark_metrics(results) if results is not None else None
        if launch.num_processes > 1:  # every process takes the same decisions (to save) from the same figures
            metrics = broadcast_object_list([metrics])[0]
        assert metrics is not None
        self.history.append((step, metrics))
        self._pending = metrics
        self._remaining -= 1
        seconds = time.perf_counter() - started
        if launch.is_main_process:
            left = self._remaining
            more = f"; {left} more: about {format_duration(left * seconds)}" if left else ""
            print(
                f"[ktae train] benchmarks at step {step}: avg {metrics[f'{PREFIX}avg']:.1f}% "
                f"({format_duration(seconds)}{more})"
            )
        value = metrics[self.best_metric]
        if self.keep_best and (state.best_metric is None or value > state.best_metric):
            state.best_metric, state.best_global_step = value, step
            if step > 0:  # a checkpoint of this step, kept whatever keep_checkpoints says
                state.best_model_checkpoint = str(self.run_dir / CHECKPOINTS_DIR / f"{CHECKPOINT_PREFIX}{step}")
                control.should_save = True
            else:  # before training: the model RL starts from
                state.best_model_checkpoint = self.starting_model
