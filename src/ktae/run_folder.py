"""The run folder that ``ktae train`` fills: its file names, how each file is written, and who may write it.

Layout of ``RUN_DIR`` (training writes it; reports and evaluation read it)::

    config.yaml                 CONFIG_FILE      the run's options; ``--resume`` reads them (`read_config`)
    ktae_settings.json          KTAE_SETTINGS_FILE  the KTAE settings the run trained with, resolved (`KTAESettings`)
    metrics.jsonl               METRICS_FILE     one JSON object per logged step ({"step", <metric>: value})
    rollouts.jsonl              ROLLOUTS_FILE    one `RolloutRecord` per line
    key_tokens.jsonl            KEY_TOKENS_FILE  {"step", "credited": [...], "blamed": [...]} per logged step
    tb/                         TENSORBOARD_DIR  TensorBoard events
    checkpoints/checkpoint-N/   CHECKPOINTS_DIR  complete checkpoints only (published with one rename)
    warm_start/                 WARM_START_DIR   the policy RL started from
    merged/                     MERGED_DIR       a LoRA run's final adapter merged into its base (a full model)
    benchmarks/step-N/          BENCHMARKS_DIR   benchmark results during training (``ktae eval``'s layout)
    curves.png                  CURVES_FILE      training curves of metrics.jsonl
    .lock                       LOCK_FILE        held (flock) by the one process writing the folder

The JSONL logs are appended one whole line per ``write``; a kill during an append can still leave a
torn last line, which `read_jsonl` (the one reader of these logs) and `drop_steps_after` drop (with a
warning) instead of failing.
Whole files (config, settings, reports, results) go through `write_atomic`.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ktae.core.config import KTAEConfig

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
KTAE_SETTINGS_FILE = "ktae_settings.json"
METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
KEY_TOKENS_FILE = "key_tokens.jsonl"
TENSORBOARD_DIR = "tb"
CHECKPOINTS_DIR = "checkpoints"
WARM_START_DIR = "warm_start"
MERGED_DIR = "merged"
BENCHMARKS_DIR = "benchmarks"
CURVES_FILE = "curves.png"
LOCK_FILE = ".lock"
CHECKPOINT_PREFIX = "checkpoint-"

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")

#: What TRL's GRPOTrainer adds to a group's reward standard deviation before dividing by it: TRL's own
#: group-scaled rollout-level advantage is KTAE's "grpo" base with this epsilon.
TRL_STD_EPSILON = 1e-4


@dataclasses.dataclass(kw_only=True)
class RolloutRecord:
    """One sampled response as a line of ``rollouts.jsonl``: both trainers write it (built by `from_tokens`),
    reports read it (`ktae.reports.rollouts.parse_rollout`).

    The trainers fill every field. T is the number of response tokens kept: padding and everything after
    the end of sequence are dropped, the end-of-sequence token itself is kept. Read from other tools' logs
    (verl's rollout dumps, any JSONL of rollouts), a record may lack the step, the token ids and pieces
    (text only), the verdict and the advantages: None.
    """

    step: int | None  # the optimizer step these rollouts trained (1-based)
    group: int | str  # id of the prompt group (rollouts of one prompt share it)
    prompt: str  # the prompt as text (chat messages joined as "role: content" lines)
    response: str | None = None  # == "".join(tokens)
    token_ids: list[int] | None = None  # [T] response token ids
    tokens: list[str] | None = None  # [T] display piece of each token
    score: float | None  # total reward; None when no reward function scored the rollout
    correct: bool | None = None  # score > the KTAE correct_threshold
    advantages: list[float] | None = None  # [T] per-token advantage the update used

    @classmethod
    def from_tokens(
        cls,
        tokenizer,
        *,
        step: int,
        group: int | str,
        prompt: str,
        token_ids: Sequence[int],
        score: float | None,
        correct_threshold: float,
        advantages: Sequence[float],
    ) -> RolloutRecord:
        """A trainer's record of one rollout: its kept response tokens decoded into pieces that concatenate to
        the response (`ktae.models.token_pieces`), a NaN score (no reward function scored it) as None, and
        the verdict from the KTAE threshold."""
        from ktae.models import token_pieces

        pieces = token_pieces(tokenizer, token_ids)
        if score is not None and math.isnan(score):
            score = None
        return cls(
            step=step,
            group=group,
            prompt=prompt,
            response="".join(pieces),
            token_ids=list(token_ids),
            tokens=pieces,
            score=score,
            correct=score is not None and score > correct_threshold,
            advantages=list(advantages),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def read_options_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping of options (a recipe, or a run's ``config.yaml``), read with ``yaml.safe_load``."""
    path = Path(path)
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    if loaded is not None and not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: a recipe is a mapping of keys to values, got {type(loaded).__name__}")
    return dict(loaded or {})


def read_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The options of a run (``RUN_DIR/config.yaml``); None when the folder has none."""
    path = Path(run_dir) / CONFIG_FILE
    return read_options_file(path) if path.is_file() else None


def write_config(run_dir: str | os.PathLike, options: Mapping[str, Any]) -> Path:
    """Write the options of a run to ``RUN_DIR/config.yaml`` (atomically, in the given key order)."""
    return write_atomic(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(dict(options), sort_keys=False))


@dataclasses.dataclass(frozen=True)
class KTAESettings:
    """The KTAE settings a run trained with, resolved: ``RUN_DIR/ktae_settings.json`` (the TRL trainer writes it
    when training starts; reports recompute the run's key-token values and advantages with it).

    ``estimator``'s ``rollout_advantage`` and ``epsilon`` name the KTAE base equal to the rollout-level
    advantage the run trained with (TRL's own, when KTAE did not compute it); ``ignore_token_ids`` are the
    ids the tokenizer gave.
    """

    ktae: bool  # the update added KTAE's key-token bonus (False: the rollout-level advantage alone)
    estimator: KTAEConfig
    rollout_advantage: str  # who computed the rollout-level advantage, and how, in words
    exact_base: bool  # False: no KTAE base equals it, and ``estimator`` names the nearest

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "estimator": self.estimator.to_dict()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> KTAESettings:
        record = json.loads(text)
        return cls(**{**record, "estimator": KTAEConfig.from_dict(record["estimator"])})


def write_ktae_settings(run_dir: str | os.PathLike, settings: KTAESettings) -> Path:
    return write_atomic(Path(run_dir) / KTAE_SETTINGS_FILE, settings.to_json())


def read_ktae_settings(run_dir: str | os.PathLike) -> KTAESettings | None:
    """The KTAE settings of a run; for a run folder written before ``ktae_settings.json`` existed, worked out
    from its ``config.yaml`` (`legacy_ktae_settings`). None when the folder has neither."""
    path = Path(run_dir) / KTAE_SETTINGS_FILE
    if path.is_file():
        try:
            return KTAESettings.from_json(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a KTAE settings record ({error})") from None
    config = read_config(run_dir)
    return None if config is None else legacy_ktae_settings(config, Path(run_dir) / CONFIG_FILE)


def legacy_ktae_settings(config: Mapping[str, Any], where: str | os.PathLike) -> KTAESettings:
    """KTAE settings from a run's options alone: the TRL trainer's flat ``ktae_*`` keys, or a ``ktae``
    mapping at the top or under ``algorithm`` (verl's ``algorithm.ktae``, whose ``base`` is verl's own)."""
    fields = {f.name for f in dataclasses.fields(KTAEConfig)}
    algorithm = config.get("algorithm")
    section = algorithm.get("ktae") if isinstance(algorithm, dict) and "ktae" in algorithm else config.get("ktae")
    if isinstance(section, dict):
        options = {key: value for key, value in section.items() if key != "base"}
        description = f"KTAE's {options.get('rollout_advantage') or KTAEConfig.rollout_advantage}"
    else:
        options = {key[5:]: value for key, value in config.items() if key.startswith("ktae_") and key[5:] in fields}
        if options.get("rollout_advantage") is None:  # the bonus was added to TRL's own rollout-level advantage
            if options.get("epsilon") is None:
                options["epsilon"] = TRL_STD_EPSILON
            description = f"TRL's own (scale_rewards={config.get('scale_rewards', 'group')})"
        else:
            description = f"KTAE's {options['rollout_advantage']}"
    options = {key: value for key, value in options.items() if value is not None}
    try:
        estimator = KTAEConfig.from_dict(options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    return KTAESettings(ktae=section is not False, estimator=estimator, rollout_advantage=description, exact_base=True)


def write_atomic(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write a file through a temp file and ``os.replace``, so readers never see half of it.

    The file gets the usual permissions (``0o666`` less the umask), not the temp file's private ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any] | RolloutRecord]) -> None:
    """Append records as JSON lines with one ``write`` (a kill leaves at most one torn line at the end)."""
    lines = "".join((r.to_json() if isinstance(r, RolloutRecord) else json.dumps(r)) + "\n" for r in records)
    if not lines:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(lines)


def is_metric_value(value: Any) -> bool:
    """Whether a `METRICS_FILE` value is a number to plot or average: finite, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL log of this folder, dropping a torn last line (with a warning).

    Torn: the file's last line, not valid JSON and without its newline. Any other line that is not a
    JSON object is damage, not a torn append: ValueError naming the file and line.
    """
    return [record for _, record in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """`read_jsonl` with the line number of each record, for readers that name the line of a record
    they refuse."""
    path = Path(path)
    # Split at newlines only: records may hold other line separators (U+2028, form feed) in their text.
    lines = path.read_text(encoding="utf-8").split("\n")  # ends with "" when the last line is whole
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # cut off before its newline, which every append ends with
                logger.warning("%s: dropped a torn last line (%d characters, cut off mid-write)", path, len(line))
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records


def drop_steps_after(path: str | os.PathLike, step: int) -> None:
    """Keep only the records of a JSONL log with ``"step" <= step`` (atomically); no-op if the file is absent.

    Run on resume: the resumed run writes the later steps again. A torn last line is dropped too.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = [record for record in read_jsonl(path) if record["step"] <= step]
    write_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a ``checkpoint-N`` folder name, None for any other name."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run folder (``checkpoints/checkpoint-N``), oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def unpublished_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """``RUN_DIR/checkpoint-N`` folders: the trainer writes there first, so they may be incomplete."""
    return [p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if checkpoint_step(p) is not None]


class RunFolderInUse(RuntimeError):
    """Another process holds the run folder's lock."""


class RunFolderLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``, which holds the owner's pid.

    The kernel drops the lock when the process ends, however it ends, so a crashed run leaves no
    stale lock; the file itself stays and is reused.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._descriptor: int | None = None

    def acquire(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderInUse(f"{self.path.parent} is being written by another process (pid {holder})") from None
            raise
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor releases the flock
            self._descriptor = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
