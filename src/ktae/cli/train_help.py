"""``ktae train --help`` and ``--help-all``: every key of a job with its default and meaning.

Generated from the job's own documentation, never a copy of it: the fields of `JobArguments` and of
`KTAEGRPOConfig` (their ``help`` metadata, TRL's included) for the names and meanings, and the built-in
job (`default_job`) for the defaults, since it overrides the fields' defaults. A field added to either
class is listed without a change here. ``--help`` lists the job keys, the KTAE/DAPO keys and the TRL
keys people set most (`COMMON_TRL_KEYS`, plus every trainer key the built-in job sets); ``--help-all``
lists every one of TRL's ~200.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import re
import textwrap
from collections.abc import Iterator
from typing import Any

import yaml

from ktae.cli import HelpFormatter

#: TRL `GRPOConfig` (and `transformers.TrainingArguments`) keys ``ktae train --help`` lists beside ours.
COMMON_TRL_KEYS = (
    # length and batches
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_generations",
    "generation_batch_size",
    "steps_per_generation",
    "num_iterations",
    # optimizer
    "learning_rate",
    "optim",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    # generation
    "max_completion_length",
    "temperature",
    "top_p",
    "use_vllm",
    "vllm_mode",
    "vllm_gpu_memory_utilization",
    # loss
    "epsilon",
    "epsilon_high",
    "loss_type",
    "scale_rewards",
    "reward_weights",
    "mask_truncated_completions",
    "top_entropy_quantile",
    # memory and precision
    "bf16",
    "gradient_checkpointing",
    # logging and saving
    "logging_steps",
    "save_steps",
    "report_to",
    "log_completions",
    "seed",
)
# Set by ``ktae train --output-dir`` (the run folder), never by a key.
_RUN_FOLDER_KEY = "output_dir"
# The mark ``HelpFormatter`` replaces with the key listing, so that TRL is imported only to print help.
_KEYS, _ALL_KEYS = "\0ktae-train-keys\0", "\0ktae-train-all-keys\0"
_MISSING = object()
_REAL_MODEL = "smollm2"  # any name other than the tiny model gets the real-model job


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a job: its built-in default, where other defaults differ, its meaning."""

    name: str
    default: Any  # the built-in job's value (model_name_or_path: tiny)
    real_model: Any  # the built-in job's value for a real model, when it differs (else _MISSING)
    recipe: Any  # what a --config recipe that leaves the key out gets, when it differs (else _MISSING)
    help: str
    minimum: int | None = None


def yaml_value(value: Any) -> str:
    """A value as one would write it after ``KEY=`` (YAML, one line)."""
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=2**31)
    except yaml.representer.RepresenterError:
        return repr(value)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _MISSING


def _key(field: dataclasses.Field, tiny: dict[str, Any], real: dict[str, Any]) -> Key:
    recipe = _field_default(field)
    default = tiny.get(field.name, recipe)
    real_value = real.get(field.name, recipe)
    return Key(
        name=field.name,
        default=default,
        real_model=_MISSING if yaml_value(real_value) == yaml_value(default) else real_value,
        recipe=_MISSING if yaml_value(recipe) == yaml_value(default) else recipe,
        help=" ".join(str(field.metadata.get("help", "")).split()),
        minimum=field.metadata.get("minimum"),
    )


def job_keys(all_trl_keys: bool = False) -> Iterator[tuple[str, list[Key], bool]]:
    """(section title, keys, whether they are TRL's) of ``ktae train``'s keys, in the classes' order."""
    from trl import GRPOConfig

    from ktae.integrations.trl.config import KTAEGRPOConfig
    from ktae.integrations.trl.job import JOB_KEYS, JobArguments, default_job

    tiny, real = default_job(None), default_job(_REAL_MODEL)
    job_fields = list(dataclasses.fields(JobArguments))
    yield "job keys (ktae.integrations.trl.job.JobArguments)", [_key(f, tiny, real) for f in job_fields], False
    unlisted = sorted(JOB_KEYS - {f.name for f in job_fields})  # job keys kept outside JobArguments, if any
    if unlisted:
        yield "other job keys", [Key(name, tiny.get(name), _MISSING, _MISSING, "") for name in unlisted], False

    trainer = [f for f in dataclasses.fields(KTAEGRPOConfig) if f.init and f.name != _RUN_FOLDER_KEY]
    own = set(inspect.get_annotations(KTAEGRPOConfig))  # the fields KTAEGRPOConfig adds or redefines
    ktae_keys = [_key(f, tiny, real) for f in trainer if f.name in own]
    yield "KTAE and DAPO keys (ktae.integrations.trl.KTAEGRPOConfig)", ktae_keys, False
    if all_trl_keys:
        title = "every other trainer key (trl.GRPOConfig, transformers.TrainingArguments)"
        yield title, [_key(f, tiny, real) for f in trainer if f.name not in own], True
        return
    wanted = set(COMMON_TRL_KEYS) | {name for name in {**tiny, **real} if name not in JOB_KEYS}
    count = sum(1 for f in dataclasses.fields(GRPOConfig) if f.init and f.name != _RUN_FOLDER_KEY)
    title = f"TRL GRPOConfig keys set most often (all {count}: ktae train --help-all)"
    yield title, [_key(f, tiny, real) for f in trainer if f.name not in own and f.name in wanted], True


def _summary(text: str, length: int = 60) -> str:
    """The first sentences of ``text``, as few as make ``length`` characters."""
    sentences = re.split(r"(?<=[a-z0-9)\]`'\"][.!?])\s+(?=[A-Z])", text)
    summary = sentences.pop(0)
    while sentences and len(summary) < length:
        summary += " " + sentences.pop(0)
    return summary


def format_keys(all_trl_keys: bool = False, width: int = 100) -> str:
    """The key listing of ``ktae train --help`` (``--help-all``: every TRL key, each with its whole help)."""
    lines = [
        "keys: KEY=VALUE overrides, values read as YAML (0.1, true, null, [1, 2]); a --config recipe holds the same",
        "keys; the run folder is --output-dir, not output_dir. KEY = the built-in job's value",
        "(model_name_or_path=tiny); in brackets where they differ: 'real model' (the built-in job for any other",
        "model: a hub id, a folder, a .gguf file, smollm2) and 'recipe' (a --config recipe that leaves the key out).",
    ]
    lines = textwrap.wrap(" ".join(lines), width)
    body = textwrap.TextWrapper(width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    for title, keys, trl_keys in job_keys(all_trl_keys):
        lines += ["", f"{title}:"]
        for key in keys:
            notes = [f"integer >= {key.minimum}"] if key.minimum is not None else []
            notes += [f"real model: {yaml_value(key.real_model)}"] if key.real_model is not _MISSING else []
            notes += [f"recipe: {yaml_value(key.recipe)}"] if key.recipe is not _MISSING else []
            lines.append(f"  {key.name} = {yaml_value(key.default)}" + (f"   [{'; '.join(notes)}]" if notes else ""))
            # TRL's help runs to paragraphs: its first sentences here, all of it with --help-all
            text = _summary(key.help) if trl_keys and not all_trl_keys else key.help
            lines += body.wrap(text or "(no help)")
    return "\n".join(lines)


class JobKeysHelpFormatter(HelpFormatter):
    """`HelpFormatter` that prints the key listing where the epilog holds its mark (built when printed)."""

    def add_text(self, text: str | None) -> None:
        if text in (_KEYS, _ALL_KEYS):
            try:
                text = format_keys(all_trl_keys=text == _ALL_KEYS, width=max(60, self._width))
            except ImportError as error:  # without the trl extra
                text = f"The keys are listed once the trl extra is installed (pip install 'ktae[trl]'): {error}"
        super().add_text(text)


class _HelpAll(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        parser.epilog = _ALL_KEYS
        parser.print_help()
        parser.exit()


def add_key_help(parser: argparse.ArgumentParser) -> None:
    """``--help`` lists the common keys after the options, ``--help-all`` every key."""
    parser.formatter_class = JobKeysHelpFormatter
    parser.epilog = _KEYS
    parser.add_argument(
        "--help-all", action=_HelpAll, help="show this help with every key (all of TRL's GRPOConfig) and exit"
    )
