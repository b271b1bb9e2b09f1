"""The model card (``README.md``) `KTAEGRPOTrainer` writes into its output folder at every checkpoint.

TRL's own card names GRPO's paper and links the base model by its hub id; this one names KTAE, the
algorithm the run used (GRPO or DAPO, with or without KTAE) and its settings, the model RL started
from, and the latest held-out accuracy, and links only what is a hub id.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TypeGuard

KTAE_TITLE = "KTAE: A Model-Free Algorithm to Key-Tokens Advantage Estimation in Mathematical Reasoning"
KTAE_ARXIV_ID = "2505.16826"
KTAE_CITATION = """@article{sun2025ktae,
  title   = {{KTAE: A Model-Free Algorithm to Key-Tokens Advantage Estimation in Mathematical Reasoning}},
  author  = {Sun, Wei and Yang, Wen and Jian, Pu and Du, Qianlong and Cui, Fuwei and Ren, Shuo and Zhang, Jiajun},
  journal = {arXiv preprint arXiv:2505.16826},
  year    = {2025}
}"""
TRL_CITATION = """@software{vonwerra2020trl,
  title   = {{TRL: Transformers Reinforcement Learning}},
  author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan
             and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
  license = {Apache-2.0},
  url     = {https://github.com/huggingface/trl},
  year    = {2020}
}"""

# Trainer settings shown in the card, in this order (KTAEGRPOConfig field names).
TRAINING_FIELDS = (
    "learning_rate",
    "optim",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_completion_length",
    "temperature",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "dynamic_sampling",
    "overlong_buffer_length",
    "seed",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIX = re.compile(r"\.(jsonl|json|parquet|csv|txt|arrow|ya?ml|gguf|safetensors)$")  # a local file, not a repo


@dataclass(frozen=True)
class RunDescription:
    """What the trainer cannot see for itself: where its policy came from and what it trained on.

    base_model: the model RL started from (a hub id, a local path or a phrase such as "tiny model
    built locally"); None: the policy's own ``config._name_or_path``.
    dataset: the training data (a hub id, a path or a phrase); None: not stated.
    notes: further sentences for the training section (a warm start, for example).
    """

    base_model: str | None = None
    dataset: str | None = None
    notes: tuple[str, ...] = ()


def is_hub_id(name: str | None) -> TypeGuard[str]:
    """True for names that read as a hub repository id ("org/name" or "name") and are no local folder."""
    if not name:
        return False
    return _HUB_ID.match(name) is not None and not _FILE_SUFFIX.search(name) and not os.path.exists(name)


def _linked(name: str, kind: str = "") -> str:
    return f"[{name}](https://huggingface.co/{kind}{name})" if is_hub_id(name) else f"`{name}`" if "/" in name else name


def _value(value) -> str:
    if isinstance(value, enum.Enum):  # TRL's OptimizerNames, SchedulerType...
        value = value.value
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_value, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def algorithm_name(algo: str, ktae: bool) -> str:
    """ "GRPO+KTAE", "DAPO", ...: the names of the paper's tables."""
    return algo.upper() + ("+KTAE" if ktae else "")


def model_card(
    *,
    model_name: str,
    algorithm: str,
    ktae_settings: dict | None,
    training: dict,
    steps: int,
    description: RunDescription,
    accuracy: list[tuple[int, float]] | None = None,
    tags: Sequence[str] = (),
) -> str:
    """The card's Markdown, YAML metadata first.

    ktae_settings: the `KTAEConfig` fields (None: KTAE off). training: trainer settings by field name.
    accuracy: held-out greedy accuracy as (step, share) pairs, oldest first (None or empty: not measured).
    """
    from huggingface_hub import ModelCardData

    base = description.base_model
    metadata = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        datasets=[description.dataset] if is_hub_id(description.dataset) else None,
        library_name="transformers",
        model_name=model_name,
        tags=["generated_from_trainer", *tags],
    )
    lines = ["---", metadata.to_yaml(), "---", "", f"# {model_name}", ""]
    origin = f"from {_linked(base)}" if base else "from a model whose origin the trainer was not told"
    data = f" on {_linked(description.dataset, 'datasets/')}" if description.dataset else ""
    summary = (
        f"This model was trained {origin}{data} with {algorithm}, using the `ktae` library's `KTAEGRPOTrainer` "
        f"(built on [TRL](https://github.com/huggingface/trl)), for {steps} RL step{'s' * (steps != 1)}."
    )
    lines += [summary, ""]
    if ktae_settings is not None:
        method = (
            f"KTAE ([{KTAE_TITLE}](https://arxiv.org/abs/{KTAE_ARXIV_ID})) adds to each token's rollout-level "
            "advantage a bounded bonus computed from the statistics of the prompt's sampled rollouts: how strongly "
            "the token's presence goes with a correct answer, and in which direction."
        )
        lines += [method, ""]
    lines += ["## Results", ""]
    if accuracy:
        step, share = accuracy[-1]
        line = f"Held-out greedy accuracy: **{share:.1%}** at step {step}"
        if len(accuracy) > 1:
            first_step, first_share = accuracy[0]
            line += f" ({first_share:.1%} at step {first_step})"
        lines += [line + ".", ""]
    else:
        lines += ["No held-out accuracy was measured during this run; evaluate a checkpoint with `ktae eval`.", ""]

    lines += ["## Training procedure", "", f"Algorithm: **{algorithm}**.", ""]
    lines += [*description.notes, ""] if description.notes else []
    if ktae_settings is not None:
        lines += ["KTAE settings:", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {_value(v)} |" for k, v in ktae_settings.items()]
        lines.append("")
    lines += ["Trainer settings:", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {_value(v)} |" for k, v in training.items()]
    lines += ["", "## Use", "", "```bash", "ktae eval --model PATH/TO/CHECKPOINT   # the five math benchmarks", "```"]

    lines += ["", "### Framework versions", ""]
    for package in ("ktae", "trl", "transformers", "torch"):
        try:
            lines.append(f"- {package}: {version(package)}")
        except PackageNotFoundError:
            continue
    lines += ["", "## Citations", "", "Cite KTAE as:", "", "```bibtex", KTAE_CITATION, "```", ""]
    lines += ["Cite TRL as:", "", "```bibtex", TRL_CITATION, "```", ""]
    return "\n".join(lines)
